"""Subgroup slices: every figure equals a pandas group-by written here, on random data with an
empty group; and fit carries them (per-epoch keys, FitResult.slices at the tuned thresholds)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from celebhpo.config import StudyConfig
from celebhpo.data.quality import reliable_attributes
from celebhpo.errors import ConfigError
from celebhpo.training.loop import fit
from celebhpo.training.metrics import compute_metrics
from celebhpo.training.slices import (
    group_names,
    metric_key,
    resolve_slices,
    slice_metrics,
    worst_group_acc,
)
from tests.training.test_loop import _bundle

NAMES = ["Male", "Young", "Smiling", "Blond_Hair", "Oval_Face", "Eyeglasses"]


def _data(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs, targets, thresholds): no image is Male=1 and Young=1 (an empty group)."""
    rng = np.random.default_rng(seed)
    t = (rng.random((n, len(NAMES))) < 0.45).astype(np.float32)
    t[t[:, 0] == 1, 1] = 0  # Male=1,Young=1 is empty
    p = np.clip(0.4 * t + 0.6 * rng.random(t.shape), 0, 1)
    th = rng.uniform(0.3, 0.7, len(NAMES))
    return p, t, th


def _by_hand(p, t, th, slices):
    """The same figures with a pandas group-by: per (group, attribute) accuracy."""
    correct = pd.DataFrame((p > th[None, :]) == (t > 0.5), columns=NAMES).astype(float)
    keys = pd.DataFrame(t[:, [NAMES.index(s) for s in slices]].astype(int), columns=slices)
    others = [a for a in NAMES if a not in slices]
    per = correct[others].groupby([keys[s] for s in slices]).mean()  # non-empty groups only
    counts = keys.value_counts()
    return per, counts, others


def test_slice_metrics_equal_a_pandas_group_by_with_an_empty_group():
    p, t, th = _data()
    slices = ["Male", "Young"]
    res = slice_metrics(p, t, NAMES, slices, th)
    per, counts, others = _by_hand(p, t, th, slices)

    # groups: all four listed, the empty one with n = 0 and no accuracy
    assert list(res.groups["group"]) == ["Male=0,Young=0", "Male=0,Young=1", "Male=1,Young=0",
                                         "Male=1,Young=1"]
    assert list(res.groups["key"]) == ["Male0_Young0", "Male0_Young1", "Male1_Young0",
                                       "Male1_Young1"]
    for row in res.groups.itertuples():
        key = (row.Male, row.Young)
        if key == (1, 1):
            assert row.n == 0 and math.isnan(row.mean_acc)
            continue
        assert row.n == counts[key]
        # mean over the NON-slice attributes only
        assert row.mean_acc == pytest.approx(per.loc[key].mean())
    assert res.worst_group_acc == pytest.approx(per.mean(axis=1).min())
    worst_key = per.mean(axis=1).idxmin()
    assert res.worst_group == f"Male={worst_key[0]},Young={worst_key[1]}"

    # per attribute: accuracy per group, worst group, largest gap; no slice attribute in it
    assert list(res.attributes["attribute"]) == others
    for rec in res.attributes.to_dict(orient="records"):
        a = rec["attribute"]
        assert rec["worst_group_acc"] == pytest.approx(per[a].min())
        assert rec["gap"] == pytest.approx(per[a].max() - per[a].min())
        assert rec["acc[Male=0,Young=1]"] == pytest.approx(per.loc[(0, 1), a])
        assert math.isnan(rec["acc[Male=1,Young=1]"])

    # the per-epoch shortcut agrees, at the same thresholds
    idx = resolve_slices(slices, NAMES)
    assert worst_group_acc(p, t, idx, th) == pytest.approx(res.worst_group_acc)
    assert worst_group_acc(p, t, idx) == pytest.approx(
        slice_metrics(p, t, NAMES, slices, 0.5).worst_group_acc)


def test_one_slice_and_the_long_form_and_metric_keys():
    p, t, th = _data(seed=1)
    res = slice_metrics(p, t, NAMES, ["Smiling"], th)
    per, counts, others = _by_hand(p, t, th, ["Smiling"])
    assert list(res.groups["n"]) == [counts[(0,)], counts[(1,)]]
    assert res.worst_group_acc == pytest.approx(per.mean(axis=1).min())

    long = res.long()
    assert list(long.columns) == ["metric", "attribute", "group", "n", "value"]
    acc = long[long["metric"] == "accuracy"].set_index(["attribute", "group"])["value"]
    assert acc[("Eyeglasses", "Smiling=1")] == pytest.approx(per.loc[1, "Eyeglasses"])
    gap = long[(long["metric"] == "gap") & (long["attribute"] == "Male")]["value"].item()
    assert gap == pytest.approx(abs(per.loc[0, "Male"] - per.loc[1, "Male"]))
    assert "Smiling" not in set(long["attribute"])

    m = res.metrics()
    assert m["slice/worst_group_acc"] == pytest.approx(res.worst_group_acc)
    assert m["slice/mean_acc/Smiling1"] == pytest.approx(per.loc[1].mean())
    assert m["slice/gap/Oval_Face"] == pytest.approx(
        abs(per.loc[0, "Oval_Face"] - per.loc[1, "Oval_Face"]))
    assert len(m) == 1 + 2 + 2 * len(others)


def test_names_are_mlflow_safe_and_bad_slices_are_one_config_error():
    assert group_names(["A", "B"])[1] == ("A=0,B=1", "A0_B1")
    assert metric_key("a=b,c (d)") == "a_b_c _d_"
    with pytest.raises(ConfigError, match=r"\[study\] slices: 'Beard' is not an attribute.*"
                                          r"use names from: Male, Young"):
        resolve_slices(["Male", "Beard"], NAMES)
    with pytest.raises(ConfigError, match="at most 4 different"):
        resolve_slices(["Male", "Male"], NAMES)
    with pytest.raises(ConfigError, match="at most 4"):
        resolve_slices(NAMES[:5], NAMES)


def _cfg(**study) -> StudyConfig:
    train = {"arch": "tiny", "epochs": 2, "batch_size": 16, "eval_batch_size": 10,
             "lr": 3e-3, "device": "cpu", "num_features": 16, "dropout": 0.0, "seed": 0,
             "amp": "off"}
    return StudyConfig.from_dict({"train": train, "study": study}, source="test")


def test_fit_history_and_slices_match_the_checkpoints_outputs(tmp_path):
    from celebhpo.data import BatchLoader
    from celebhpo.training.checkpoint import Checkpoint
    from celebhpo.training.loop import evaluate

    data = _bundle()
    result = fit(_cfg(), data, checkpoint_path=tmp_path / "best.pt")
    for h in result.history:  # both keys, every epoch
        assert 0 <= h["val_mean_acc_reliable"] <= 1 and 0 <= h["val_worst_group_acc"] <= 1
    model = Checkpoint.load(result.checkpoint_path).model()
    val = data.splits["val"]
    out = evaluate(model, BatchLoader(val.images, val.labels, 100, shuffle=False, flip=False,
                                      device="cpu"))
    expect = slice_metrics(out.probs, out.targets, data.attributes, ["Male", "Young"],
                           result.thresholds)
    got = result.slices
    assert got is not None
    pd.testing.assert_frame_equal(got.groups, expect.groups, atol=1e-6)
    pd.testing.assert_frame_equal(got.attributes, expect.attributes, atol=1e-6)
    assert result.best_metrics["val_tuned_worst_group_acc"] == pytest.approx(
        expect.worst_group_acc, abs=1e-6)
    best = result.history[result.best_epoch - 1]
    assert best["val_worst_group_acc"] == pytest.approx(
        slice_metrics(out.probs, out.targets, data.attributes, ["Male", "Young"]).worst_group_acc,
        abs=1e-6)
    # reliable mean: the 12 attributes annotators agree on (data.quality)
    keep = [j for j, a in enumerate(data.attributes) if a in reliable_attributes()]
    assert len(keep) == 12
    correct = (out.probs > 0.5) == (out.targets > 0.5)
    assert best["val_mean_acc_reliable"] == pytest.approx(correct[:, keep].mean(), abs=1e-6)
    tuned = compute_metrics(out.probs, out.targets, result.thresholds, data.attributes)
    assert result.best_metrics["val_tuned_mean_acc_reliable"] == pytest.approx(
        tuned["mean_acc_reliable"], abs=1e-6)


def test_a_missing_slice_attribute_is_one_config_error_before_training():
    data = _bundle(n_train=32, n_val=12)
    data.attributes[20] = "Man"  # the data has no "Male" column now
    with pytest.raises(ConfigError, match=r"\[study\] slices: 'Male' is not an attribute"):
        fit(_cfg(), data)


def test_fit_with_slices_off():
    off = fit(_cfg(slices=[]), _bundle(n_train=32, n_val=12))
    assert off.slices is None
    assert all("val_worst_group_acc" not in h for h in off.history)
    assert all("val_mean_acc_reliable" in h for h in off.history)
    assert "val_tuned_worst_group_acc" not in off.best_metrics
