"""The label-quality data file: loaded from the package, with its source, and used to leave
the noisy attributes out of mean_acc_reliable."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import celebhpo.data
from celebhpo.data import ATTRIBUTES
from celebhpo.data import quality as q
from celebhpo.training.metrics import compute_metrics, per_class_report

FILE = Path(celebhpo.data.__file__).parent / q.QUALITY_FILE


def test_the_lists_come_from_the_data_file_with_their_source():
    raw = json.loads(FILE.read_text(encoding="utf-8"))
    assert q.noisy_attributes() == raw["noisy"]
    assert q.reliable_attributes() == raw["reliable"]
    assert q.reliable_confirmed() is raw["confirmed"]
    assert raw["source"]["arxiv"] == "2210.07356" and "2210.07356" in q.QUALITY_SOURCE
    assert raw["source"]["title"] in q.QUALITY_SOURCE
    # the paper's three near-random attributes, spelled as CelebA's label file spells them
    assert set(raw["noisy"]) >= {"High_Cheekbones", "Pointy_Nose", "Oval_Face"}
    names = set(raw["noisy"]) | set(raw["reliable"]) | set(raw["agreement"])
    assert names <= set(ATTRIBUTES)
    assert not set(raw["noisy"]) & set(raw["reliable"])
    assert all(0 <= v <= 1 for v in raw["agreement"].values())
    assert q.label_quality("Oval_Face") == "noisy"
    assert q.label_quality(raw["reliable"][0]) == "reliable"
    assert q.label_quality("Not_An_Attribute") == "unrated"


def test_the_noisy_attributes_are_left_out_of_mean_acc_reliable():
    rng = np.random.default_rng(0)
    t = (rng.random((120, 40)) < 0.4).astype(np.float32)
    p = rng.random((120, 40))
    noisy = [ATTRIBUTES.index(a) for a in q.noisy_attributes()]
    p[:, noisy] = 1 - t[:, noisy]  # every noisy answer wrong: it must not pull the mean down
    m = compute_metrics(p, t, attributes=ATTRIBUTES)
    correct = (p > 0.5) == (t > 0.5)
    if q.reliable_confirmed():
        keep = [ATTRIBUTES.index(a) for a in q.reliable_attributes()]
    else:
        keep = [j for j in range(40) if j not in noisy]
    by_hand = np.mean([correct[:, j].mean() for j in keep])
    assert m["mean_acc_reliable"] == pytest.approx(by_hand)
    assert m["mean_acc"] == pytest.approx(correct.mean())
    assert m["mean_acc_reliable"] > m["mean_acc"]
    assert "mean_acc_reliable" not in compute_metrics(p, t)  # only when names are given
    # nothing left to average: NaN, not a made-up number
    only_noisy = compute_metrics(p[:, noisy], t[:, noisy], attributes=q.noisy_attributes())
    assert math.isnan(only_noisy["mean_acc_reliable"])


def test_the_per_class_report_flags_each_attribute():
    rng = np.random.default_rng(1)
    t = (rng.random((50, 40)) < 0.4).astype(np.float32)
    report = per_class_report(rng.random((50, 40)), t, list(ATTRIBUTES), 0.5)
    flags = dict(zip(report["attribute"], report["label_quality"], strict=True))
    assert {a for a, f in flags.items() if f == "noisy"} == set(q.noisy_attributes())
    assert {a for a, f in flags.items() if f == "reliable"} == set(q.reliable_attributes())
    assert set(flags.values()) <= {"reliable", "noisy", "unrated"}
