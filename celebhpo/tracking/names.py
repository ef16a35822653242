"""A trial run's name: `t007 resnet50 lr=1e-3 p=0.3 f=512`, short and exact enough to tell
trials apart in the MLflow runs table, the leaderboard and the heatmap's labels; and the
MLflow name of a figure (`mlflow_metric`: `val_mean_acc_reliable` is logged as
`val_mean_acc_reliable12`, the mean over the 12 reliable attributes, data.quality)."""

from __future__ import annotations

import math
from typing import Any

from celebhpo.data.quality import shown_name, stored_name

__all__ = ["BEST_EPOCH_PREFIX", "STUDY_BEST_PREFIX", "figure_key", "final_run_name",
           "mlflow_metric", "param_name", "trial_run_name"]

# Metric names (one meaning each; README "Comparing runs in the MLflow UI"):
# a trial's single values at its own best epoch, step 0 (`best_epoch/epoch`, ...)
BEST_EPOCH_PREFIX = "best_epoch/"
# the parent's copy of the best trial so far, step = trials finished (`study_best/value`, ...)
STUDY_BEST_PREFIX = "study_best/"


def mlflow_metric(key: str) -> str:
    """The MLflow metric name of a figure's key (a loop's, a trial's user attr):
    `val_mean_acc_reliable` -> `val_mean_acc_reliable12`, any other key as it is."""
    return shown_name(key)


def figure_key(metric: str) -> str:
    """The figure's key (a trial's user attr) of an MLflow metric name: `mlflow_metric` undone."""
    return stored_name(metric)


_SHORT = {"lr": "lr", "dropout": "p", "num_features": "f", "weight_decay": "wd",
          "batch_size": "bs", "optimizer": "opt", "scheduler": "sched", "epochs": "ep"}
_ORDER = ["lr", "dropout", "num_features"]


def _compact(value: Any) -> str:
    """1e-3, 0.3, 512, resnet50: short enough for a run name, exact enough to tell apart."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    if abs(value) < 1e-2 or abs(value) >= 1e5:
        mantissa, exp = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"
    return f"{value:.3g}"


def param_name(key: str) -> str:
    """The MLflow param of a `[space]` key, the same on the parent run (its choices or range)
    and on a trial's run (its value): its place in the config, `lr` -> `train.lr`,
    `data.image_size` -> `data.image_size`."""
    return key if "." in key else f"train.{key}"


def trial_run_name(trial_number: int, params: dict[str, Any]) -> str:
    """`t007 resnet50 lr=1e-3 p=0.3 f=512`: arch first, then lr, dropout, num_features, the
    rest of the searched params in name order."""
    parts = [f"t{trial_number:03d}"]
    if "arch" in params:
        parts.append(str(params["arch"]))
    rest = sorted(k for k in params if k != "arch" and k not in _ORDER)
    for key in [k for k in _ORDER if k in params] + rest:
        parts.append(f"{_SHORT.get(key, key)}={_compact(params[key])}")
    return " ".join(parts)


def final_run_name(trial: Any) -> str:
    """The run name of an Optuna FrozenTrial as its run ends up: a pruned one marked
    ` [pruned@N]` (N = user attr pruned_at), a failed one ` [failed]` (see TrialRun.end)."""
    name = trial_run_name(trial.number, trial.params)
    state = trial.state.name
    if state == "PRUNED":
        at = trial.user_attrs.get("pruned_at")
        name += f" [pruned@{at}]" if at is not None else " [pruned]"
    elif state == "FAIL":
        name += " [failed]"
    return name
