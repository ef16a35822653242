"""What a trial's run keeps besides its curves: its few best-epoch metrics, and the wide
tables as files MLflow's artifact view shows as tables and images.

A trial's metric list stays short (README "Comparing runs in the MLflow UI"): its per-epoch
curves, the best-epoch figures in BEST_EPOCH_METRICS (those no curve already shows) under
`best_epoch/`, and the model's size and latency. Everything else is a file:
classification_report.csv/.json/.png (per attribute), slices.csv/.png (per group and
attribute, with `[study] slices`), best_epoch.json (every figure of the best epoch),
thresholds.json, config.json and curves.png.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from celebhpo._io import report_to_dict
from celebhpo.errors import mask_url
from celebhpo.tracking import plots
from celebhpo.tracking.client import one_line
from celebhpo.tracking.names import BEST_EPOCH_PREFIX, mlflow_metric

__all__ = ["BEST_EPOCH_METRICS", "TEST_METRICS", "best_epoch_metrics", "headline_test_metrics",
           "table_png", "write_config", "write_curves", "write_result_files"]

log = logging.getLogger(__name__)

# The best epoch's figures kept as metrics (`best_epoch/<name>`): the ones a user compares
# across trials that no per-epoch curve shows. `tuned` in a name: at the per-attribute
# thresholds tuned on validation; otherwise at 0.5 (every curve is at 0.5).
BEST_EPOCH_METRICS = ("val_macro_f1", "val_micro_f1", "val_tuned_mean_acc",
                      "val_tuned_balanced_acc", "val_tuned_mean_acc_reliable",
                      "val_tuned_macro_f1", "val_tuned_micro_f1", "val_tuned_worst_group_acc")
# The test split's figures (export-best) kept as metrics, `test/<scoring>/<name>`; the whole
# table belongs in a file (test_metrics.json)
TEST_METRICS = ("loss", "tuned/mean_acc", "0.5/mean_acc", "baseline/mean_acc",
                "tuned/macro_f1", "tuned/worst_group_acc")
# the classification report's columns drawn in its PNG (all in [0, 1])
_REPORT_COLUMNS = ("ap", "precision", "recall", "f1", "accuracy", "precision_tuned",
                   "recall_tuned", "f1_tuned", "accuracy_tuned")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(float(value)) else None


def best_epoch_metrics(result: Any) -> dict[str, float]:
    """`best_epoch/epoch` and `best_epoch/<name>` for each name of BEST_EPOCH_METRICS that
    the trial has (finite) and that is not one of its per-epoch curves (`result` is a
    training.loop.FitResult)."""
    curves = {k for row in result.history for k in row}
    out = {f"{BEST_EPOCH_PREFIX}epoch": float(result.best_epoch)}
    for name in BEST_EPOCH_METRICS:
        value = _number(result.best_metrics.get(name))
        if value is not None and name not in curves:
            out[f"{BEST_EPOCH_PREFIX}{mlflow_metric(name)}"] = value
    return out


def headline_test_metrics(test: dict[str, Any]) -> dict[str, float]:
    """`test/<path>` for each path of TEST_METRICS in `test` (evaluate's nested metrics of
    the test split: {"tuned": {"mean_acc": ...}, "loss": ...}) with a finite value."""
    out = {}
    for path in TEST_METRICS:
        node: Any = test
        for part in path.split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        value = _number(node)
        if value is not None:
            out[f"test/{path}"] = value
    return out


def write_config(config: dict[str, Any], out: Path) -> str:
    """config.json (the trial's resolved config, URL passwords masked) in `out`."""
    (out / "config.json").write_text(mask_url(json.dumps(config, indent=2, default=str)))
    return "config.json"


def write_curves(history: Sequence[dict[str, Any]], out: Path, title: str) -> list[str]:
    """curves.png in `out` (["curves.png"]), or [] with a warning: a plot never fails a
    trial."""
    try:
        plots.training_curves(list(history), out / "curves.png", title=title)
    except Exception as e:  # noqa: BLE001 - a plot must never fail the trial
        log.warning("skipped curves.png (%s): %s", title, one_line(str(e), 200))
        return []
    return ["curves.png"]


def write_result_files(result: Any, out: Path, title: str) -> list[str]:
    """A finished trial's files in `out`: classification_report.csv/.json/.png,
    thresholds.json, best_epoch.json, slices.csv/.png (when `result.slices`) and curves.png.
    Returns their names."""
    report = result.report
    report.to_csv(out / "classification_report.csv", index=False)
    (out / "classification_report.json").write_text(
        json.dumps(report_to_dict(report), indent=2, default=float))
    (out / "thresholds.json").write_text(json.dumps(
        {str(a): float(t) for a, t in zip(report["attribute"], result.thresholds, strict=True)},
        indent=2))
    figures = {k: v for k, v in result.best_metrics.items() if _number(v) is not None}
    (out / "best_epoch.json").write_text(json.dumps(
        {"epoch": int(result.best_epoch), **dict(sorted(figures.items()))}, indent=2))
    files = ["classification_report.csv", "classification_report.json", "thresholds.json",
             "best_epoch.json"]
    files += _png(lambda path: table_png(
        report, "attribute", [c for c in _REPORT_COLUMNS if c in report.columns], path,
        f"{title}: per attribute, validation at the best epoch (0.5 and tuned thresholds)"),
        out / "classification_report.png")
    slices = result.slices
    if slices is not None:
        slices.long().to_csv(out / "slices.csv", index=False)
        files.append("slices.csv")
        table = slices.attributes
        columns = [c for c in table.columns if c.startswith("acc[")] + ["worst_group_acc", "gap"]
        files += _png(lambda path: table_png(
            table, "attribute", columns, path,
            f"{title}: accuracy per group, validation, tuned thresholds"), out / "slices.png")
    return files + write_curves(result.history, out, title)


def _png(draw: Any, path: Path) -> list[str]:
    try:
        draw(path)
    except Exception as e:  # noqa: BLE001 - a plot must never fail the trial
        log.warning("skipped %s: %s", path.name, one_line(str(e), 200))
        return []
    return [path.name]


def table_png(frame: pd.DataFrame, label: str, columns: Sequence[str], path: str | Path,
              title: str) -> Path:
    """The `columns` of `frame` (values in [0, 1]) as a heatmap, one row per `frame[label]`:
    the wide table at a glance, beside its CSV (which has the numbers: writing them in the
    cells made each PNG ~10x slower to draw, seconds per trial on a busy CPU)."""
    from matplotlib.figure import Figure  # late: start-up cost, as in plots.py

    if frame.empty or not columns:
        raise ValueError("an empty table")
    values = frame[list(columns)].to_numpy(dtype=float)
    rows = [str(v) for v in frame[label]]
    # margins from the labels' lengths (7-pt text is about 0.06 in a character), not from
    # savefig's bbox_inches="tight", which draws the figure twice: most of a PNG's time
    left, bottom = 0.2 + 0.06 * max(map(len, rows)), 0.2 + 0.045 * max(map(len, columns))
    width = max(left + 0.9 * len(columns) + 1.4, 0.5 + 0.075 * len(title))
    height = bottom + 0.5 + 0.16 * len(frame)
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=left / width, right=1 - 1.4 / width, bottom=bottom / height,
                        top=1 - 0.45 / height)
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap="viridis", vmin=0,
                      vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(frame)), rows, fontsize=7)
    ax.set_xticks(range(len(columns)), list(columns), rotation=45, ha="right", fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.9 / width, pad=0.15 / width)
    fig.savefig(path, dpi=100)
    return Path(path)
