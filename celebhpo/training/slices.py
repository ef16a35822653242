"""Subgroup slices: accuracy per group of images, the groups made by the TRUE labels of a few
slice attributes (`[study] slices`, e.g. Male x Young -> 4 groups).

Per group: its number of images and its mean accuracy over the non-slice attributes (a slice
attribute is constant inside a group, so it is left out of every figure here). Over the
groups that have at least one image: the worst group's mean accuracy, and per non-slice
attribute its accuracy in each group, its worst-group accuracy and its largest gap between
groups. Empty groups are listed with n = 0 and no accuracy, and are skipped for worst/gap.

Groups are named `Male=1,Young=0` for people and `Male1_Young0` in MLflow metric keys (which
allow only alphanumerics, `_ - . /` and spaces). numpy and pandas only: cheap enough for
every epoch (`worst_group_acc`).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from celebhpo.errors import ConfigError, did_you_mean
from celebhpo.training.metrics import predict

__all__ = ["MAX_SLICES", "SliceResult", "group_names", "metric_key", "resolve_slices",
           "slice_metrics", "worst_group_acc"]

MAX_SLICES = 4  # 16 groups: more leaves most of them nearly empty on a validation subset
SLICES_KEY = "[study] slices"
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_key(name: str) -> str:
    """`name` with every character MLflow refuses in a metric key replaced by `_`."""
    return _UNSAFE.sub("_", name)


def resolve_slices(slices: Sequence[str], attributes: Sequence[str],
                   key: str = SLICES_KEY) -> list[int]:
    """Column indices of the slice attributes; ConfigError naming `key` when one is not in
    `attributes`, is repeated, or there are more than MAX_SLICES."""
    names = [str(s) for s in slices]
    attributes = [str(a) for a in attributes]
    missing = [s for s in names if s not in attributes]
    if missing:
        close = did_you_mean(missing[0], attributes)
        hint = (f"did you mean '{close[0]}'?" if close
                else f"use names from: {', '.join(attributes)}")
        raise ConfigError(f"{key}: {', '.join(repr(s) for s in missing)} is not an attribute of "
                          f"the data; {hint}")
    if len(set(names)) != len(names) or len(names) > MAX_SLICES:
        raise ConfigError(f"{key} = {names}: give at most {MAX_SLICES} different attributes")
    return [attributes.index(s) for s in names]


def group_names(slices: Sequence[str]) -> list[tuple[str, str]]:
    """(table name, metric-key name) of every group, in the order group ids count: the last
    slice attribute varies fastest, 0 before 1."""
    out = []
    for values in itertools.product((0, 1), repeat=len(slices)):
        pairs = list(zip(slices, values, strict=True))
        out.append((",".join(f"{a}={v}" for a, v in pairs),
                    metric_key("_".join(f"{a}{v}" for a, v in pairs))))
    return out


def _group_accuracy(correct: np.ndarray, truth: np.ndarray, idx: Sequence[int]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n per group (G,), accuracy per group and non-slice attribute (G, A'), the non-slice
    column indices (A',)); accuracy is NaN for an empty group."""
    n_groups = 2 ** len(idx)
    gid = np.zeros(len(truth), dtype=np.int64)
    for j in idx:  # the group id of every image, in group_names order
        gid = gid * 2 + truth[:, j]
    others = np.array([j for j in range(truth.shape[1]) if j not in set(idx)], dtype=np.int64)
    onehot = np.zeros((len(truth), n_groups))
    onehot[np.arange(len(truth)), gid] = 1.0
    n = onehot.sum(0)  # (G,)
    hits = onehot.T @ correct[:, others].astype(np.float64)  # (G, A') correct answers
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(n[:, None] > 0, hits / n[:, None], np.nan)
    return n.astype(np.int64), acc, others


def _inputs(probs: Any, targets: Any, thresholds: float | Any) -> tuple[np.ndarray, np.ndarray]:
    truth = (np.asarray(targets) > 0.5).astype(np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != truth.shape or p.ndim != 2:
        raise ValueError(f"probs {p.shape} and targets {truth.shape} must both be (N, attributes)")
    return predict(p, thresholds) == truth, truth


def _nanmin(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.min()) if finite.size else math.nan


def worst_group_acc(probs: Any, targets: Any, idx: Sequence[int],
                    thresholds: float | Any = 0.5) -> float:
    """The lowest mean accuracy (over the non-slice attributes) of the non-empty groups made by
    the slice columns `idx`: the per-epoch figure (val_worst_group_acc)."""
    correct, truth = _inputs(probs, targets, thresholds)
    _, acc, others = _group_accuracy(correct, truth, idx)
    return _nanmin(acc.mean(1)) if len(others) else math.nan


@dataclass
class SliceResult:
    """Slice metrics of one split at one set of thresholds (see the module docstring)."""

    slices: list[str]  # the slice attributes
    groups: pd.DataFrame  # group, key, one 0/1 column per slice attribute, n, mean_acc
    attributes: pd.DataFrame  # attribute, acc[<group>] per group, worst_group_acc,
    #                           worst_group, gap
    worst_group_acc: float  # NaN when no group has an image
    worst_group: str  # its group's name ("" when none)

    def long(self) -> pd.DataFrame:
        """Everything as one tidy table (slices.csv): metric, attribute, group, n, value.
        metric: mean_acc (per group, attribute empty), worst_group_mean_acc, accuracy (per
        attribute and group), worst_group_acc (per attribute, at its worst group), gap."""
        n = dict(zip(self.groups["group"], self.groups["n"], strict=True))
        rows: list[tuple[str, str, str, int | None, float]] = [
            ("mean_acc", "", g, int(n[g]), float(v))
            for g, v in zip(self.groups["group"], self.groups["mean_acc"], strict=True)]
        rows.append(("worst_group_mean_acc", "", self.worst_group,
                     int(n[self.worst_group]) if self.worst_group else None,
                     self.worst_group_acc))
        for rec in self.attributes.to_dict(orient="records"):
            a = rec["attribute"]
            rows += [("accuracy", a, g, int(n[g]), float(rec[f"acc[{g}]"])) for g in n]
            rows.append(("worst_group_acc", a, rec["worst_group"],
                         int(n[rec["worst_group"]]) if rec["worst_group"] else None,
                         float(rec["worst_group_acc"])))
            rows.append(("gap", a, "", None, float(rec["gap"])))
        frame = pd.DataFrame(rows, columns=["metric", "attribute", "group", "n", "value"])
        frame["n"] = frame["n"].astype("Int64")
        return frame

    def metrics(self, prefix: str = "slice/") -> dict[str, float]:
        """MLflow metrics (finite values only): `{prefix}worst_group_acc`,
        `{prefix}mean_acc/<group key>` per non-empty group, `{prefix}worst_acc/<attribute>`
        and `{prefix}gap/<attribute>`."""
        out = {f"{prefix}worst_group_acc": self.worst_group_acc}
        for key, n, v in zip(self.groups["key"], self.groups["n"], self.groups["mean_acc"],
                             strict=True):
            if n > 0:
                out[f"{prefix}mean_acc/{key}"] = float(v)
        for a, w, g in zip(self.attributes["attribute"], self.attributes["worst_group_acc"],
                           self.attributes["gap"], strict=True):
            out[f"{prefix}worst_acc/{metric_key(a)}"] = float(w)
            out[f"{prefix}gap/{metric_key(a)}"] = float(g)
        return {k: v for k, v in out.items() if math.isfinite(v)}


def slice_metrics(probs: Any, targets: Any, attributes: Sequence[str], slices: Sequence[str],
                  thresholds: float | Any = 0.5) -> SliceResult:
    """Slice metrics of (N, A) probabilities against (N, A) 0/1 targets at `thresholds`
    (a scalar or one per attribute). ConfigError when a slice attribute is not in
    `attributes` (see resolve_slices)."""
    attributes = [str(a) for a in attributes]
    idx = resolve_slices(slices, attributes)
    slices = [attributes[j] for j in idx]
    correct, truth = _inputs(probs, targets, thresholds)
    n, acc, others = _group_accuracy(correct, truth, idx)
    names = group_names(slices)
    mean = acc.mean(1) if len(others) else np.full(len(n), np.nan)  # (G,)
    groups = pd.DataFrame({"group": [g for g, _ in names], "key": [k for _, k in names]})
    for k, a in enumerate(slices):
        groups[a] = [int(v[k]) for v in itertools.product((0, 1), repeat=len(slices))]
    groups["n"] = n
    groups["mean_acc"] = mean
    table = pd.DataFrame({"attribute": [attributes[j] for j in others]})
    for g, (name, _) in enumerate(names):
        table[f"acc[{name}]"] = acc[g]
    live = n > 0
    worst_rows = np.where(live[:, None], acc, np.inf)  # (G, A')
    best_rows = np.where(live[:, None], acc, -np.inf)
    any_live = bool(live.any())
    table["worst_group_acc"] = worst_rows.min(0) if any_live else np.nan
    table["worst_group"] = ([names[i][0] for i in worst_rows.argmin(0)] if any_live
                            else [""] * len(others))
    table["gap"] = best_rows.max(0) - worst_rows.min(0) if any_live else np.nan
    worst = _nanmin(np.where(live, mean, np.nan))
    worst_name = (names[int(np.nanargmin(np.where(live, mean, np.nan)))][0]
                  if math.isfinite(worst) else "")
    return SliceResult(slices=slices, groups=groups, attributes=table, worst_group_acc=worst,
                       worst_group=worst_name)
