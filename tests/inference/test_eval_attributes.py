"""`evaluate --attributes reliable` scores exactly the paper's 12 reliable attributes (read
from the repository's CSV copy), with the same figures as the full evaluation's per-attribute
rows; a bad value is one line with a did-you-mean, and nothing is written. A real (untrained,
seeded) tiny model on real synthetic images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import celebhpo.data
from celebhpo.cli import cli
from tests.helpers import write_tiny_model

CSV = Path(celebhpo.data.__file__).parent / "celeba_label_agreement.csv"


def _reliable_from_csv() -> list[str]:
    with CSV.open(encoding="utf-8", newline="") as f:
        return [r["attribute"] for r in csv.DictReader(f) if r["band"] == "reliable"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("eval-attributes") / "model", threshold=0.4)


def _run(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["evaluate", *map(str, args)])
    return result.exit_code, result.output


def test_evaluate_reliable_scores_exactly_the_12(model, synth_root, tmp_path):
    code, every = _run(model, synth_root, "--slices", "", "--out", tmp_path / "all")
    assert code == 0, every
    code, out = _run(model, synth_root, "--attributes", "reliable", "--slices", "Male,Young",
                     "--out", tmp_path / "rel")
    assert code == 0, out
    reliable = _reliable_from_csv()
    ordered = [a for a in celebhpo.data.ATTRIBUTES if a in reliable]  # the model's order
    assert out.splitlines()[1] == ("scored: 12 of 40 attributes (--attributes reliable): "
                                   + ", ".join(ordered))
    assert "mean_acc_reliable12" in out and "\nmean_acc_reliable " not in out
    full = pd.read_csv(tmp_path / "all" / "classification_report.csv").set_index("attribute")
    sub = pd.read_csv(tmp_path / "rel" / "classification_report.csv")
    assert list(sub["attribute"]) == ordered and set(sub["label_quality"]) == {"reliable"}
    m = json.loads((tmp_path / "rel" / "metrics.json").read_text())
    m_all = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert m["scored"] == {"asked": "reliable", "attributes": ordered, "of": 40}
    assert "scored" not in m_all
    for label, column in (("tuned", "accuracy_tuned"), ("0.5", "accuracy")):
        by_hand = float(np.mean([full.at[a, column] for a in reliable]))
        assert m[label]["mean_acc"] == pytest.approx(by_hand, abs=1e-12), label
        assert m[label]["mean_acc_reliable"] == pytest.approx(by_hand, abs=1e-12), label
        # the whole evaluation's reliable mean is the same figure
        assert m_all[label]["mean_acc_reliable"] == pytest.approx(by_hand, abs=1e-12), label
        assert m_all[label]["mean_acc"] != pytest.approx(by_hand, abs=1e-6), label
    # the slices still group by Young (not scored) and Male (scored): every image in a group
    assert m["slices"]["slices"] == ["Male", "Young"]
    assert sum(g["n"] for g in m["slices"]["groups"]) == m["n_images"] == 30
    assert {r["attribute"] for r in m["slices"]["largest_gaps"]} <= set(ordered) - {"Male"}


def test_evaluate_names_and_a_bad_value(model, synth_root, tmp_path):
    code, out = _run(model, synth_root, "--attributes", "Smiling,Eyeglasses", "--slices", "")
    assert code == 0, out
    assert out.splitlines()[1] == ("scored: 2 of 40 attributes (--attributes "
                                   "Smiling,Eyeglasses): Eyeglasses, Smiling")
    code, out = _run(model, synth_root, "--attributes", "relable", "--out", tmp_path / "bad")
    assert code == 1
    assert [line for line in out.splitlines() if line.strip()] == [
        "Error: --attributes: 'relable' is neither a band nor an attribute of the model; did "
        "you mean 'reliable'?"]
    assert not (tmp_path / "bad").exists()
