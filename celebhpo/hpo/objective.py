"""A trial's objective, as in Optuna's examples (STYLE 7): the trial's data, `training.fit`
with a progress bar and a reporter that reports each epoch's metric to Optuna (raising
TrialPruned when told to) and logs it to the trial's MLflow run, then the result logged.

This module imports torch (through training and data); trial.py imports it only when a trial
runs, so commands that only read studies start fast.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import optuna

from celebhpo.config import StudyConfig
from celebhpo.data import DataBundle, load_data
from celebhpo.hpo.results import best_trial, better
from celebhpo.tracking import TrialRun
from celebhpo.training.loop import Callback, fit
from celebhpo.training.progress import EpochProgress

__all__ = ["TrialReporter", "train"]


class TrialReporter(Callback):
    """Logs each epoch to the trial's MLflow run (once `run` is set), reports `metric` to
    Optuna and raises TrialPruned when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str, direction: str = "minimize") -> None:
        self.trial = trial
        self.metric = metric
        self.direction = direction
        self.run: TrialRun | None = None
        self.history: list[dict[str, Any]] = []
        self.pruned_at: int | None = None

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        self.history.append(dict(metrics))
        if self.run is not None:
            self.run.log_epoch(epoch, metrics)
        value = float(metrics[self.metric])
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            raise optuna.TrialPruned(f"pruned at epoch {epoch}: {self.metric} {value:.4f}")

    def summary(self) -> dict[str, Any]:
        """User attrs from the epochs seen (a pruned or failed trial has no FitResult): the
        best epoch by the study's metric (fit's rule) and its validation figures."""
        out: dict[str, Any] = {"epochs_run": len(self.history), "pruned_at": self.pruned_at}
        scored = [h for h in self.history if _num(h.get(self.metric)) is not None]
        if scored:
            pick = min if self.direction == "minimize" else max
            best = pick(scored, key=lambda h: float(h[self.metric]))  # first of ties, as fit
            out.update(best_epoch=int(best["epoch"]), val_loss=_num(best.get("val_loss")),
                       val_mean_acc=_num(best.get("val_mean_acc")),
                       val_map=_num(best.get("val_map")))
        return out


def train(tcfg: StudyConfig, run: TrialRun, reporter: TrialReporter,
          data_cache: dict[str, DataBundle], *, progress: bool, keep_all: bool
          ) -> tuple[float, dict[str, Any]]:
    """Train the trial's config `tcfg` and log the result to its `run`; the checkpoint goes
    along when `keep_all` or when the trial is the best so far. Data is decoded once per
    worker (`data_cache`). Returns (the trial's value, user attrs to store)."""
    trial = reporter.trial
    reporter.run = run
    bar = EpochProgress(tcfg.train.epochs, label=f"t{trial.number:03d}", enabled=progress)
    try:
        data = _data(tcfg, data_cache, progress)
        with tempfile.TemporaryDirectory(prefix="celebhpo-trial-") as tmp:
            result = fit(tcfg, data, callbacks=[bar, reporter],
                         checkpoint_path=Path(tmp) / "model.pt")
            value = float(result.best_metrics[reporter.metric])
            keep = keep_all or _best_so_far(trial.study, value)
            logged = run.log_result(result, tcfg.to_dict(), log_checkpoint=keep)
    finally:
        bar.close()
    logged.update(device=str(result.device), checkpoint_logged=keep,
                  **{k: _num(result.best_metrics.get(k))
                     for k in ("val_loss", "val_mean_acc", "val_map")},
                  best_epoch=result.best_epoch)
    return value, logged


def _data(tcfg: StudyConfig, cache: dict[str, DataBundle], progress: bool) -> DataBundle:
    """Decoded images for the trial's data config, loaded once per worker."""
    key = json.dumps(dataclasses.asdict(tcfg.data), sort_keys=True)
    if key not in cache:
        cache[key] = load_data(tcfg.data, splits=("train", "val"), progress=progress)
    return cache[key]


def _best_so_far(study: optuna.Study, value: float) -> bool:
    """Whether `value` is at least as good as every COMPLETE trial's (a tie is)."""
    best = best_trial(study)
    return best is None or value == best.value or better(study)(value, best.value)


def _num(value: Any) -> float | None:
    """A finite float for a user attr (JSON has no NaN), else None."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
