"""The label-quality data file: loaded from the package, with its source, in agreement with the
CSV it was filled from (the paper's Table 1 as transcribed), and used to average
mean_acc_reliable over exactly the paper's 12 reliable attributes."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

import celebhpo.data
from celebhpo.data import ATTRIBUTES
from celebhpo.data import quality as q
from celebhpo.errors import ConfigError
from celebhpo.training.metrics import compute_metrics, per_class_report

HERE = Path(celebhpo.data.__file__).parent
FILE = HERE / q.QUALITY_FILE
CSV = HERE / "celeba_label_agreement.csv"  # the repository's copy, shipped as package data


def _csv_rows() -> dict[str, dict[str, str]]:
    with CSV.open(encoding="utf-8", newline="") as f:
        return {r["attribute"]: r for r in csv.DictReader(f)}


def test_the_json_agrees_with_the_csv_for_all_40_attributes():
    raw, rows = json.loads(FILE.read_text(encoding="utf-8")), _csv_rows()
    assert sorted(rows) == sorted(ATTRIBUTES) == sorted(raw["attributes"])
    for name, row in rows.items():
        got = raw["attributes"][name]
        d = int(row["disagreements_per_1000"])
        assert got["disagreements_per_1000"] == d, name
        assert got["agreement"] == pytest.approx(1 - d / 1000, abs=1e-12), name
        assert got["band"] == row["band"] in q.BANDS, name
        assert q.agreement(name) == pytest.approx(1 - d / 1000) and q.agreement_band(name) == row["band"]
        # the bands follow the figures: reliable <= 50 disagreements (>= 95% agreement)
        assert (row["band"] == "reliable") == (d <= 50), name
    reliable = [a for a, r in rows.items() if r["band"] == "reliable"]
    chance = [a for a, r in rows.items() if r["band"] == "chance"]
    assert len(reliable) == 12 and raw["reliable"] == reliable == q.reliable_attributes()
    assert sorted(chance) == raw["noisy"] == q.noisy_attributes() == [
        "High_Cheekbones", "Oval_Face", "Pointy_Nose"]
    assert raw["confirmed"] is True and q.reliable_confirmed()


def test_the_data_file_names_its_source():
    raw = json.loads(FILE.read_text(encoding="utf-8"))
    assert raw["source"]["arxiv"] == "2210.07356" and "2210.07356" in q.QUALITY_SOURCE
    assert raw["source"]["title"] in q.QUALITY_SOURCE
    assert "Table 1" in raw["source"]["table"] and "transcribed" in raw["source"]["transcription"]
    assert set(raw["bands"]) == set(q.BANDS)
    assert q.label_quality("Oval_Face") == "chance" and q.label_quality("Eyeglasses") == "reliable"
    assert q.label_quality("Smiling") == "moderate" and q.label_quality("Young") == "low"
    assert q.label_quality("Not_An_Attribute") == "unrated" and q.agreement("Nope") is None
    assert (HERE / "celeba_label_agreement.md").read_text(encoding="utf-8").count("2210.07356") == 1


def test_mean_acc_reliable_is_the_mean_over_exactly_the_csvs_12_reliable_attributes():
    rows = _csv_rows()
    reliable = [a for a, r in rows.items() if r["band"] == "reliable"]  # from the CSV itself
    keep = [ATTRIBUTES.index(a) for a in reliable]
    rng = np.random.default_rng(0)
    t = (rng.random((120, 40)) < 0.4).astype(np.float32)
    p = rng.random((120, 40))
    p[:, keep] = np.where(rng.random((120, 12)) < 0.9, t[:, keep], 1 - t[:, keep])
    m = compute_metrics(p, t, attributes=ATTRIBUTES)
    correct = (p > 0.5) == (t > 0.5)
    by_hand = np.mean([correct[:, j].mean() for j in keep])
    assert m["mean_acc_reliable"] == pytest.approx(by_hand, abs=1e-12)
    assert m["mean_acc"] == pytest.approx(correct.mean())
    # one more attribute (the best-agreeing non-reliable one) would change it: the set matters
    moderate = ATTRIBUTES.index("Double_Chin")
    assert by_hand != pytest.approx(correct[:, [*keep, moderate]].mean(0).mean())
    assert m["mean_acc_reliable"] > m["mean_acc"]
    assert "mean_acc_reliable" not in compute_metrics(p, t)  # only when names are given
    # a model of a few attributes: the reliable ones present
    few = [ATTRIBUTES.index(a) for a in ("Male", "Young", "Eyeglasses", "Oval_Face")]
    sub = compute_metrics(p[:, few], t[:, few], attributes=[ATTRIBUTES[j] for j in few])
    assert sub["mean_acc_reliable"] == pytest.approx(correct[:, few][:, [0, 2]].mean())
    # nothing left to average: NaN, not a made-up number
    noisy = [ATTRIBUTES.index(a) for a in q.noisy_attributes()]
    only_noisy = compute_metrics(p[:, noisy], t[:, noisy], attributes=q.noisy_attributes())
    assert math.isnan(only_noisy["mean_acc_reliable"])


def test_the_per_class_report_gives_each_attributes_band():
    rng = np.random.default_rng(1)
    t = (rng.random((50, 40)) < 0.4).astype(np.float32)
    report = per_class_report(rng.random((50, 40)), t, list(ATTRIBUTES), 0.5)
    flags = dict(zip(report["attribute"], report["label_quality"], strict=True))
    assert flags == {a: r["band"] for a, r in _csv_rows().items()}


def test_shown_and_stored_names():
    assert q.shown_name("val_mean_acc_reliable") == "val_mean_acc_reliable12"
    assert q.shown_name("val_tuned_mean_acc_reliable") == "val_tuned_mean_acc_reliable12"
    assert q.shown_name("val_mean_acc") == "val_mean_acc" and q.shown_name("x") == "x"
    for key in ("val_mean_acc_reliable", "best_epoch/val_tuned_mean_acc_reliable", "val_map"):
        assert q.stored_name(q.shown_name(key)) == key


def test_select_attributes_by_band_and_name_in_the_models_order():
    names = list(ATTRIBUTES)
    assert q.select_attributes("reliable", names) == [a for a in names
                                                      if a in q.reliable_attributes()]
    assert q.select_attributes("Young, chance", names) == [
        "High_Cheekbones", "Oval_Face", "Pointy_Nose", "Young"]
    with pytest.raises(ConfigError, match=r"^--attributes: 'relable' is neither a band nor an "
                       r"attribute of the model; did you mean 'reliable'\?$"):
        q.select_attributes("relable", names)
    with pytest.raises(ConfigError, match=r"'Eyeglases' .* did you mean 'Eyeglasses'\?$"):
        q.select_attributes("reliable,Eyeglases", names)
    with pytest.raises(ConfigError, match=r"^--attributes: give a band"):
        q.select_attributes(" , ", names)
    with pytest.raises(ConfigError, match=r"^--attributes chance: none of the model's 2 "):
        q.select_attributes("chance", ["Male", "Young"])
