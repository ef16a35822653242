"""Metrics on a whole split, threshold tuning, the per-class report.

Several tests encode the seed notebooks' mistakes: figures from the last batch, softmax across
independent attributes, `logit > 0.5`, and predictions/targets passed to sklearn swapped.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    precision_score,
    recall_score,
)

from celebhpo._io import report_to_dict
from celebhpo.training.metrics import (
    average_precisions,
    compute_metrics,
    per_class_report,
    predict,
    tune_thresholds,
)

KEYS = {"mean_acc", "balanced_acc", "map"} | {
    f"{a}_{m}" for a in ("micro", "macro", "weighted") for m in ("precision", "recall", "f1")
}


def _random(n: int = 200, a: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = (rng.random((n, a)) < np.linspace(0.1, 0.6, a)).astype(np.float32)
    p = np.clip(0.35 * t + 0.65 * rng.random((n, a)), 0, 1)  # informative, imperfect
    return p, t


def test_keys_and_agreement_with_sklearn_per_attribute():
    p, t = _random()
    m = compute_metrics(p, t)
    assert set(m) == KEYS
    pred = (p > 0.5).astype(int)
    assert m["mean_acc"] == pytest.approx(np.mean([(pred[:, j] == t[:, j]).mean()
                                                   for j in range(t.shape[1])]))
    assert m["balanced_acc"] == pytest.approx(np.mean(
        [balanced_accuracy_score(t[:, j], pred[:, j]) for j in range(t.shape[1])]))
    assert m["map"] == pytest.approx(np.mean(
        [average_precision_score(t[:, j], p[:, j]) for j in range(t.shape[1])]))
    assert m["macro_f1"] == pytest.approx(np.mean(
        [f1_score(t[:, j], pred[:, j]) for j in range(t.shape[1])]))
    assert m["micro_recall"] == pytest.approx(((pred == 1) & (t == 1)).sum() / t.sum())


def test_precision_and_recall_are_not_swapped():
    # 4 positives; the model finds one of them and nothing else: precision 1, recall 1/4.
    # Passing (preds, targets) to sklearn in the wrong order would give precision 1/4.
    t = np.array([[1], [1], [1], [1], [0], [0], [0], [0]], dtype=np.float32)
    p = np.array([[0.9], [0.2], [0.2], [0.2], [0.1], [0.1], [0.1], [0.1]])
    m = compute_metrics(p, t)
    assert m["micro_precision"] == pytest.approx(1.0)
    assert m["micro_recall"] == pytest.approx(0.25)
    assert m["macro_precision"] == pytest.approx(1.0)
    assert m["macro_recall"] == pytest.approx(0.25)
    report = per_class_report(p, t, ["A"], 0.5)
    assert report.loc[0, "precision"] == pytest.approx(1.0)
    assert report.loc[0, "recall"] == pytest.approx(0.25)
    assert report.loc[0, "support"] == 4  # positives in the targets, not in the predictions


def test_accuracy_is_of_the_whole_split_not_the_last_batch():
    # 100 images; the last 10 (the "last batch") are all right, the first 90 half wrong
    t = np.zeros((100, 2), dtype=np.float32)
    p = np.zeros((100, 2))
    p[:45] = 0.9  # wrong: predicted present, absent
    whole = compute_metrics(p, t)["mean_acc"]
    assert whole == pytest.approx(0.55)
    assert compute_metrics(p[-10:], t[-10:])["mean_acc"] == 1.0  # what the seed reported


def test_threshold_is_on_probabilities_per_attribute():
    # prob 0.6 is present, 0.4 is absent, whatever the other attributes say (no softmax:
    # a row's probabilities need not sum to 1), and the rule is prob > threshold
    p = np.array([[0.6, 0.6, 0.6], [0.4, 0.4, 0.4]])
    assert predict(p).tolist() == [[1, 1, 1], [0, 0, 0]]
    assert predict(p, [0.7, 0.5, 0.3]).tolist() == [[0, 1, 1], [0, 0, 1]]
    assert predict(np.array([[0.5]])).tolist() == [[0]]  # strictly greater


def test_map_skips_attributes_without_positives():
    p, t = _random(a=3)
    t[:, 1] = 0
    ap = average_precisions(p, t)
    assert np.isnan(ap[1]) and np.isfinite(ap[[0, 2]]).all()
    assert compute_metrics(p, t)["map"] == pytest.approx(np.mean(ap[[0, 2]]))
    assert np.isnan(compute_metrics(p, np.zeros_like(t))["map"])


def test_per_attribute_thresholds_change_the_figures():
    p, t = _random()
    th = np.full(t.shape[1], 0.7)
    assert compute_metrics(p, t, th) == compute_metrics(p, t, 0.7)
    assert compute_metrics(p, t, th)["micro_recall"] < compute_metrics(p, t)["micro_recall"]
    with pytest.raises(ValueError, match="thresholds"):
        compute_metrics(p, t, [0.5, 0.5])


SCORES = {"accuracy": accuracy_score, "f1": f1_score, "balanced_accuracy": balanced_accuracy_score}


@pytest.mark.parametrize("metric", sorted(SCORES))
def test_tuned_thresholds_reach_the_best_value_of_any_threshold(metric):
    p, t = _random(n=150, a=8, seed=3)
    p = np.round(p, 2)  # many ties: cuts inside a run of equal values must be skipped
    p[:5, 0] = 0.0  # probability 0: "everything positive" is not a cut `prob > t` can make
    score = SCORES[metric]
    th = tune_thresholds(p, t, metric=metric)
    assert ((th >= 0) & (th <= 1)).all()
    for j in range(t.shape[1]):
        # brute force: every threshold in [0, 1] that gives a distinct prediction
        candidates = np.concatenate([[0.0, 1.0], (np.unique(p[:, j])[:-1] + np.unique(p[:, j])[1:]) / 2])
        brute = max(score(t[:, j], (p[:, j] > c).astype(int)) for c in candidates)
        assert score(t[:, j], (p[:, j] > th[j]).astype(int)) == pytest.approx(brute)
        # the midpoint rule: > and >= agree on this split
        assert ((p[:, j] > th[j]) == (p[:, j] >= th[j])).all()


def test_accuracy_tuning_keeps_an_attribute_the_model_cannot_separate_mostly_absent():
    """F1's trap: for an attribute the model cannot tell apart, "always present" maximises F1
    (the issue's Wavy_Hair at 0.092); accuracy tuning predicts the majority class instead, and
    a constant answer only because it is the best accuracy on this split."""
    rng = np.random.default_rng(1)
    t = (rng.random((400, 1)) < 0.3).astype(np.float32)
    p = rng.random((400, 1)) * 0.6  # unrelated to the labels
    f1_th = tune_thresholds(p, t, metric="f1")[0]
    acc_th = tune_thresholds(p, t, metric="accuracy")[0]
    assert (p[:, 0] > f1_th).mean() > 0.5  # F1: most faces "have" it
    assert (p[:, 0] > acc_th).mean() < 0.1  # accuracy: nearly no one
    majority = max(t.mean(), 1 - t.mean())
    assert accuracy_score(t[:, 0], p[:, 0] > acc_th) >= majority - 1e-9


def test_ties_on_the_metric_go_to_the_threshold_nearest_half():
    t = np.array([[0], [0], [1], [1]], dtype=np.float32)
    p = np.array([[0.1], [0.2], [0.8], [0.9]])  # any cut between 0.2 and 0.8 is perfect
    assert tune_thresholds(p, t, metric="accuracy")[0] == pytest.approx(0.5)
    p = np.array([[0.05], [0.1], [0.15], [0.3]])  # perfect cut only between 0.1 and 0.15
    assert tune_thresholds(p, t, metric="accuracy")[0] == pytest.approx(0.125)


def test_threshold_metric_none_keeps_half_and_an_unknown_one_is_refused():
    p, t = _random(n=50, a=3, seed=2)
    assert tune_thresholds(p, t, metric="none").tolist() == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="threshold metric 'recall'"):
        tune_thresholds(p, t, metric="recall")


def test_tuning_helps_a_miscalibrated_attribute_and_leaves_untunable_ones_at_half():
    rng = np.random.default_rng(0)
    t = (rng.random((300, 3)) < 0.3).astype(np.float32)
    p = 0.1 + 0.2 * t + 0.05 * rng.random((300, 3))  # perfectly ranked, all below 0.5
    t[:, 1] = 0  # no positive: nothing to tune on
    t[:, 2] = 1  # no negative either
    for metric in ("accuracy", "f1", "balanced_accuracy"):
        th = tune_thresholds(p, t, metric=metric)
        assert 0.15 < th[0] < 0.3
        assert accuracy_score(t[:, 0], p[:, 0] > th[0]) == 1.0
        assert th[1] == 0.5 and th[2] == 0.5


def test_per_class_report_columns_and_values():
    p, t = _random()
    names = [f"attr{j}" for j in range(t.shape[1])]
    th = tune_thresholds(p, t, metric="f1")
    df = per_class_report(p, t, names, th)
    assert list(df["attribute"]) == names
    for col in ("support", "precision", "recall", "f1", "accuracy", "threshold", "ap",
                "precision_tuned", "recall_tuned", "f1_tuned", "accuracy_tuned"):
        assert col in df.columns, col
    for j in range(t.shape[1]):
        assert df.loc[j, "support"] == int(t[:, j].sum())
        assert df.loc[j, "f1"] == pytest.approx(f1_score(t[:, j], p[:, j] > 0.5))
        assert df.loc[j, "precision_tuned"] == pytest.approx(
            precision_score(t[:, j], p[:, j] > th[j], zero_division=0))
        assert df.loc[j, "recall_tuned"] == pytest.approx(recall_score(t[:, j], p[:, j] > th[j]))
    assert (df["f1_tuned"] >= df["f1"] - 1e-12).all()  # tuned on this very split


def test_report_to_dict_is_strict_json():
    p, t = _random(a=3)
    t[:, 0] = 0  # no positives: AP is NaN -> None
    d = report_to_dict(per_class_report(p, t, ["A", "B", "C"], 0.5))
    assert set(d) == {"A", "B", "C"}
    assert d["A"]["ap"] is None and isinstance(d["B"]["f1"], float)
    assert isinstance(d["B"]["support"], int)
    json.dumps(d, allow_nan=False)
