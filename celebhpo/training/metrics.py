"""Multi-label metrics on a whole split, the per-class report, and threshold tuning.

Conventions (each one fixes a mistake of the seed notebooks):
- inputs are probabilities `sigmoid(logits)` (N, A) and 0/1 targets (N, A), one row per image
  of the WHOLE split (never the last batch's figures);
- an attribute is predicted present when `prob > threshold` (threshold 0.5 or tuned per
  attribute); attributes are independent: never a softmax across them, never `logit > 0.5`;
- sklearn is always called as `f(y_true=targets, y_pred=preds)`.

Attributes with no positive example have no average precision: mAP averages over the
attributes that have at least one positive (NaN if none has). Precision/recall/F1 use
`zero_division=0`. Balanced accuracy of an attribute is the mean recall of the classes present
in the split (sklearn's `balanced_accuracy_score`), so it is plain accuracy for an attribute
whose targets are all one value.

`mean_acc_reliable` (when the attribute names are given) is the mean accuracy over the
attributes whose labels a published re-annotation found trustworthy: the 12 with at least 95%
annotator agreement that are present (celebhpo.data.quality; shown and logged as
`mean_acc_reliable12`); the per-class report's `label_quality` column gives each attribute's
agreement band: reliable / moderate / low / chance (unrated: not rated there).

Imports no optuna/mlflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    classification_report,
    precision_recall_fscore_support,
)

from celebhpo.data.quality import label_quality, reliable_mask
from celebhpo.objectives import better

__all__ = [
    "THRESHOLD_METRICS",
    "average_precisions",
    "better_row",
    "compute_metrics",
    "mean_acc_over",
    "per_class_report",
    "predict",
    "tune_thresholds",
]


def _as_arrays(probs: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(targets)
    if p.ndim != 2 or p.shape != t.shape:
        raise ValueError(f"probs {p.shape} and targets {t.shape} must both be (N, attributes)")
    return p, (t > 0.5).astype(np.int64)  # labels given as 0/1 floats or ints


def _thresholds(thresholds: float | Any, n_attr: int) -> np.ndarray:
    th = np.asarray(thresholds, dtype=np.float64)
    if th.ndim == 0:
        return np.full(n_attr, float(th))
    th = th.reshape(-1)
    if th.shape[0] != n_attr:
        raise ValueError(f"{th.shape[0]} thresholds for {n_attr} attributes")
    return th


def predict(probs: Any, thresholds: float | Any = 0.5) -> np.ndarray:
    """(N, A) 0/1 int predictions: `probs > thresholds` (a scalar or one per attribute)."""
    p = np.asarray(probs, dtype=np.float64)
    return (p > _thresholds(thresholds, p.shape[1])[None, :]).astype(np.int64)


def average_precisions(probs: Any, targets: Any) -> np.ndarray:
    """(A,) average precision per attribute; NaN where the split has no positive."""
    p, t = _as_arrays(probs, targets)
    out = np.full(p.shape[1], np.nan)
    has_pos = t.any(0)
    if has_pos.sum() == 1:  # sklearn reads a single column as a binary problem
        j = int(np.flatnonzero(has_pos)[0])
        out[j] = average_precision_score(t[:, j], p[:, j])
    elif has_pos.any():  # one call for all columns: sklearn's input checks are the cost
        out[has_pos] = average_precision_score(t[:, has_pos], p[:, has_pos], average=None)
    return out


def compute_metrics(probs: Any, targets: Any, thresholds: float | Any = 0.5,
                    attributes: Sequence[str] | None = None) -> dict[str, float]:
    """Whole-split metrics: mean_acc, balanced_acc, map and micro/macro/weighted
    precision/recall/f1 (keys like `macro_f1`); with the `attributes`' names also
    mean_acc_reliable (NaN when none of them counts, see the module docstring)."""
    p, t = _as_arrays(probs, targets)
    pred = predict(p, thresholds)
    if p.shape[0] == 0:
        raise ValueError("compute_metrics needs at least one image")

    correct = pred == t  # (N, A)
    pos = t == 1
    n_pos = pos.sum(0)  # (A,)
    n_neg = t.shape[0] - n_pos
    tpr = np.where(n_pos > 0, (correct & pos).sum(0) / np.maximum(n_pos, 1), np.nan)
    tnr = np.where(n_neg > 0, (correct & ~pos).sum(0) / np.maximum(n_neg, 1), np.nan)
    balanced = np.nanmean(np.stack([tpr, tnr]), axis=0)  # (A,) mean recall of present classes

    ap = average_precisions(p, t)
    out = {
        "mean_acc": float(correct.mean(0).mean()),
        **({} if attributes is None else {"mean_acc_reliable": mean_acc_over(
            correct, reliable_mask(attributes))}),
        "balanced_acc": float(balanced.mean()),
        "map": float(np.nanmean(ap)) if np.isfinite(ap).any() else math.nan,
    }
    for avg in ("micro", "macro", "weighted"):
        if t.shape[1] == 1:  # sklearn reads one column as binary, not multilabel
            prec, rec, f1, _ = precision_recall_fscore_support(
                y_true=t[:, 0], y_pred=pred[:, 0], average="binary", zero_division=0
            )
        else:
            prec, rec, f1, _ = precision_recall_fscore_support(
                y_true=t, y_pred=pred, average=avg, zero_division=0
            )
        out[f"{avg}_precision"] = float(prec)
        out[f"{avg}_recall"] = float(rec)
        out[f"{avg}_f1"] = float(f1)
    return out


def mean_acc_over(correct: np.ndarray, mask: np.ndarray) -> float:
    """Mean over the attributes in `mask` of (N, A) 0/1 `correct`'s per-attribute accuracy."""
    if len(mask) != correct.shape[1]:
        raise ValueError(f"{len(mask)} attribute names for {correct.shape[1]} columns")
    return float(correct[:, mask].mean(0).mean()) if mask.any() else math.nan


def better_row(metric: str, direction: str) -> Callable[[dict[str, Any], dict[str, Any]], bool]:
    """Whether history row `a` beats row `b` on `metric` (strictly: a tie keeps the earlier
    epoch). A NaN value (mAP of a split with no positive) never beats a number
    (`objectives.better`)."""
    return lambda a, b: better(a[metric], b[metric], direction)


THRESHOLD_METRICS = ("accuracy", "f1", "balanced_accuracy", "none")


def tune_thresholds(probs: Any, targets: Any, metric: str = "accuracy") -> np.ndarray:
    """(A,) per-attribute thresholds maximising `metric` on this split: "accuracy" (the
    default), "f1" or "balanced_accuracy"; "none" keeps 0.5 for every attribute.

    Exact and sort-based, O(N log N) per attribute: sort the probabilities in decreasing order;
    cutting after the k-th image predicts the top k positive, and cumulative sums of the sorted
    targets give TP and FP of every cut at once. Only cuts a threshold can make count: not
    inside a run of equal probabilities, and not "everything positive" when the lowest
    probability is 0 (no `prob > t` with t in [0, 1] makes it positive). The threshold of a cut
    is the midpoint between the last probability kept positive and the next one (so `prob > t`
    and `prob >= t` agree on this split); "nothing positive" is (max + 1) / 2. So an attribute
    becomes constant only when that maximises the metric on this split. Of the cuts that tie
    on the metric, the one whose threshold is closest to 0.5 wins. An attribute whose split
    has no positive or no negative cannot be tuned: it keeps 0.5.
    """
    if metric not in THRESHOLD_METRICS:
        raise ValueError(f"unknown threshold metric {metric!r}: use one of "
                         f"{', '.join(THRESHOLD_METRICS)}")
    p, t = _as_arrays(probs, targets)
    n, n_attr = p.shape
    out = np.full(n_attr, 0.5)
    if n == 0 or metric == "none":
        return out
    order = np.argsort(-p, axis=0, kind="stable")  # (N, A) descending
    s = np.take_along_axis(p, order, axis=0)  # (N, A) sorted probabilities
    y = np.take_along_axis(t, order, axis=0)  # (N, A) targets in that order
    tp = np.vstack([np.zeros((1, n_attr)), np.cumsum(y, axis=0)])  # (N+1, A): cut after k rows
    fp = np.arange(n + 1)[:, None] - tp
    n_pos, n_neg = tp[-1], n - tp[-1]  # (A,)
    score = _cut_scores(metric, tp, fp, n_pos, n_neg)
    # the threshold of every cut: between the last kept positive and the first kept negative
    padded = np.vstack([np.ones((1, n_attr)), s, np.zeros((1, n_attr))])
    th = (padded[:-1] + padded[1:]) / 2  # (N+1, A); cut 0 -> (max + 1) / 2
    valid = np.ones((n + 1, n_attr), dtype=bool)
    valid[1:n] = s[:-1] > s[1:]  # a cut inside a run of equal probabilities
    valid[n] = s[-1] > 0  # "all positive" needs a threshold below the lowest probability
    score = np.where(valid, score, -np.inf)
    best = score.max(0)  # (A,)
    # among the cuts that tie on the metric (up to rounding), the threshold nearest 0.5
    ties = score >= best[None, :] - 1e-12
    pick = np.argmin(np.where(ties, np.abs(th - 0.5), np.inf), axis=0)
    tuned = th[pick, np.arange(n_attr)]
    tunable = (n_pos > 0) & (n_neg > 0)
    out[tunable] = tuned[tunable]
    return out


def _cut_scores(metric: str, tp: np.ndarray, fp: np.ndarray, n_pos: np.ndarray,
                n_neg: np.ndarray) -> np.ndarray:
    """(N+1, A) the metric of every cut, from its true and false positives."""
    tn = n_neg[None, :] - fp
    if metric == "accuracy":
        return (tp + tn) / np.maximum(n_pos + n_neg, 1)[None, :]
    if metric == "f1":
        denom = 2 * tp + fp + (n_pos[None, :] - tp)
        return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return 0.5 * (tp / np.maximum(n_pos, 1) + tn / np.maximum(n_neg, 1))


def _sklearn_report(t: np.ndarray, pred: np.ndarray, attributes: list[str]) -> pd.DataFrame:
    if t.shape[1] == 1:  # one column reads as binary: report its positive class only
        raw = classification_report(y_true=t[:, 0], y_pred=pred[:, 0], labels=[1],
                                    target_names=attributes, output_dict=True, zero_division=0)
    else:
        raw = classification_report(y_true=t, y_pred=pred, target_names=attributes,
                                    output_dict=True, zero_division=0)
    rows = [raw[a] for a in attributes]
    return pd.DataFrame({
        "precision": [r["precision"] for r in rows],
        "recall": [r["recall"] for r in rows],
        "f1": [r["f1-score"] for r in rows],
        "support": [int(r["support"]) for r in rows],
    })


def per_class_report(probs: Any, targets: Any, attributes: list[str],
                     thresholds: float | Any = 0.5) -> pd.DataFrame:
    """One row per attribute (sklearn `classification_report`, positive class):

    attribute, label_quality (the agreement band: celebhpo.data.quality), support
    (positives), positive_rate, ap, precision/recall/f1/accuracy at 0.5,
    threshold (the given per-attribute thresholds), precision_tuned/recall_tuned/f1_tuned/
    accuracy_tuned at those thresholds.
    """
    p, t = _as_arrays(probs, targets)
    attributes = [str(a) for a in attributes]
    if len(attributes) != p.shape[1]:
        raise ValueError(f"{len(attributes)} attribute names for {p.shape[1]} columns")
    th = _thresholds(thresholds, p.shape[1])
    at_half = _sklearn_report(t, predict(p, 0.5), attributes)
    pred_tuned = predict(p, th)
    tuned = _sklearn_report(t, pred_tuned, attributes)
    df = pd.DataFrame({
        "attribute": attributes,
        "label_quality": [label_quality(a) for a in attributes],
        "support": at_half["support"],
        "positive_rate": t.mean(0) if len(t) else np.nan,
        "ap": average_precisions(p, t),
        "precision": at_half["precision"],
        "recall": at_half["recall"],
        "f1": at_half["f1"],
        "accuracy": (predict(p, 0.5) == t).mean(0),
        "threshold": th,
        "precision_tuned": tuned["precision"],
        "recall_tuned": tuned["recall"],
        "f1_tuned": tuned["f1"],
        "accuracy_tuned": (pred_tuned == t).mean(0),
    })
    return df
