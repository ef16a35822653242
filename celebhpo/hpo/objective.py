"""A trial's objective, as in Optuna's examples (STYLE 7): the trial's data, `training.fit`
with a progress bar and a reporter that reports each epoch's metric to Optuna (raising
TrialPruned when told to) and logs it to the trial's MLflow run, then the result logged.

Resume on retry (`[study] resume`, on by default): after each epoch the run's resume state
(training.resume: weights, optimizer, schedule, RNG, history, best epoch; about 4x the model)
is logged to the trial's MLflow run as `resume/state.pt`, overwritten each epoch, and the
run's tag `resume_epoch` says which epoch it holds. A trial re-queued after its worker died
(liveness.requeue: system attr `retry_history`) looks for the latest state among its earlier
attempts' runs, replays those epochs through the reporter (Optuna and the new run see the
whole curve; pruning may fire there) and trains only the epochs after it; its run is tagged
`retry_of` (the attempt it replaces), `resumed_from_run` and `resumed_from_epoch`. The states
are deleted when the trial ends for good (COMPLETE, PRUNED, diverged).

This module imports torch (through training and data); trial.py imports it only when a trial
runs, so commands that only read studies start fast.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import optuna
from mlflow.entities import RunTag
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from celebhpo._interrupt import shielded
from celebhpo.config import StudyConfig
from celebhpo.data import DataBundle, load_data
from celebhpo.errors import CheckpointError, TrackingError, TrainingError
from celebhpo.hpo.results import best_trial, better
from celebhpo.tracking import TrialRun
from celebhpo.training.checkpoint import load_resume_state, save_resume_state
from celebhpo.training.loop import Callback, FitResult, fit
from celebhpo.training.progress import EpochProgress
from celebhpo.training.resume import check_state, data_shape

__all__ = ["RESUME_DIR", "RESUME_FILE", "RESUME_TAG", "TrialReporter", "train"]

log = logging.getLogger(__name__)

RESUME_DIR = "resume"  # the artifact folder of a trial's run that holds its resume state
RESUME_FILE = "state.pt"
RESUME_TAG = "resume_epoch"  # tag of a trial's run: the epoch its resume/state.pt holds


class TrialReporter(Callback):
    """Logs each epoch to the trial's MLflow run (once `run` is set), reports `metric` to
    Optuna and raises TrialPruned when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str, direction: str = "minimize",
                 epochs: int | None = None) -> None:
        self.trial = trial
        self.epochs = epochs  # the last epoch is never pruned: it would save nothing
        self.metric = metric
        self.direction = direction
        self.run: TrialRun | None = None
        self.history: list[dict[str, Any]] = []
        self.pruned_at: int | None = None
        self.resume: dict[str, Any] | None = None  # a state whose epochs fit_start replays
        self.resumed_from = 0

    def on_fit_start(self, info: dict[str, Any]) -> None:
        """fit has restored `resume` (when set): report its epochs again, as they were."""
        if self.resume is None:
            return
        rows, self.resume = self.resume["history"], None
        self.resumed_from = len(rows)
        for row in rows:
            self.on_epoch_end(int(row["epoch"]), dict(row))

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        self.history.append(dict(metrics))
        if self.run is not None:
            self.run.log_epoch(epoch, metrics)
        value = float(metrics[self.metric])
        with shielded():  # a storage write (celebhpo._interrupt)
            self.trial.report(value, epoch)
        if (self.epochs is None or epoch < self.epochs) and self.trial.should_prune():
            self.pruned_at = epoch
            raise optuna.TrialPruned(f"pruned at epoch {epoch}: {self.metric} {value:.4f}")

    def summary(self) -> dict[str, Any]:
        """User attrs from the epochs seen (a pruned or failed trial has no FitResult): the
        best epoch by the study's metric (fit's rule) and its validation figures."""
        out: dict[str, Any] = {"epochs_run": len(self.history), "pruned_at": self.pruned_at}
        if self.resumed_from:
            out["resumed_from_epoch"] = self.resumed_from
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
    worker (`data_cache`). A retried trial resumes from its earlier attempts' latest resume
    state (module docstring). Returns (the trial's value, user attrs to store)."""
    trial = reporter.trial
    reporter.run = run
    bar = EpochProgress(tcfg.train.epochs, label=f"t{trial.number:03d}", enabled=progress)
    try:
        data = _data(tcfg, data_cache, progress)
        with tempfile.TemporaryDirectory(prefix="celebhpo-trial-") as tmp:
            if data.skipped:  # name them where the trial's figures are
                _log_skipped(run, data.skipped, Path(tmp) / "skipped_images.csv")
            states = _States(run, trial, Path(tmp), keep=tcfg.study.resume)
            result = _fit(tcfg, data, bar, reporter, Path(tmp) / "model.pt", states)
            value = float(result.best_metrics[reporter.metric])
            keep = keep_all or _best_so_far(trial.study, value)
            logged = run.log_result(result, tcfg.to_dict(), log_checkpoint=keep)
        states.discard()
    finally:
        bar.close()
    logged.update(device=str(result.device), checkpoint_logged=keep,
                  **{k: _num(result.best_metrics.get(k))
                     for k in ("val_loss", "val_mean_acc", "val_map")},
                  best_epoch=result.best_epoch)
    return value, logged


def _fit(tcfg: StudyConfig, data: DataBundle, bar: EpochProgress, reporter: TrialReporter,
         ckpt: Path, states: _States) -> FitResult:
    """fit, resumed from an earlier attempt's state when there is a usable one. A state that
    does not load into the model after all (nothing replayed yet) is dropped with one line."""
    callbacks = [bar, reporter]
    if not states.keep:
        return fit(tcfg, data, callbacks, ckpt)
    state = reporter.resume = states.find(tcfg, data)
    try:
        try:
            return fit(tcfg, data, callbacks, ckpt, on_state=states, resume=state)
        except CheckpointError as e:
            if state is None or reporter.resumed_from:
                raise
            log.warning("trial %d: resume state unusable, training from epoch 1: %s",
                        reporter.trial.number, e)
            reporter.resume = None
            states.forget()
            return fit(tcfg, data, callbacks, ckpt, on_state=states)
    except (optuna.TrialPruned, TrainingError):
        states.discard()  # it ends for good: no retry will want them
        raise


def _data(tcfg: StudyConfig, cache: dict[str, DataBundle], progress: bool) -> DataBundle:
    """Decoded images for the trial's data config, loaded once per worker; the images that
    could not be read are named once, when they are skipped."""
    key = json.dumps(dataclasses.asdict(tcfg.data), sort_keys=True)
    if key not in cache:
        cache[key] = data = load_data(tcfg.data, splits=("train", "val"), progress=progress)
        if data.skipped:
            shown = ", ".join(f"{name} ({reason})" for name, reason in data.skipped[:5])
            more = f" and {len(data.skipped) - 5} more" if len(data.skipped) > 5 else ""
            log.warning("skipped %d unreadable images in %s: %s%s (listed in each trial's "
                        "skipped_images.csv)", len(data.skipped), data.root, shown, more)
    return cache[key]


def _log_skipped(run: TrialRun, skipped: list[tuple[str, str]], path: Path) -> None:
    """skipped_images.csv (image, reason) on the trial's run, and its count as a tag."""
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("image", "reason"), *skipped])
    tracker = run.tracker
    tracker.call("log artifact", tracker.client.log_artifact, run.run_id, str(path))
    tracker.call("set tag", tracker.client.set_tag, run.run_id, "skipped_images",
                 str(len(skipped)))


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


# -- resume states in MLflow -------------------------------------------------------------------
class _States:
    """The trial's resume states: its own run's, uploaded after each epoch (fit's
    `on_state`), and its earlier attempts' (a retry's), found and at the end deleted. A
    retry's run is tagged `retry_of` whether or not it `keep`s states ([study] resume)."""

    def __init__(self, run: TrialRun, trial: optuna.Trial, folder: Path, *, keep: bool) -> None:
        self.run, self.trial, self.folder, self.keep = run, trial, folder, keep
        self.tracker = run.tracker
        self.uploaded = False
        self.warned = False
        self.earlier = self._earlier_runs()  # (run id, its resume epoch or 0), newest first
        if self.earlier:
            self._tag(run.run_id, retry_of=self.earlier[0][0])

    def __call__(self, state: dict[str, Any]) -> None:
        """Upload the state of the epoch just finished. A failure costs only a longer retry,
        never the trial: one warning."""
        path = self.folder / RESUME_FILE
        try:
            save_resume_state(path, state, durable=False)
            self.tracker.call("log resume state", self.tracker.client.log_artifact,
                              self.run.run_id, str(path), RESUME_DIR)
            self.uploaded = True
            self._tag(self.run.run_id, **{RESUME_TAG: state["epoch"]})
        except (TrackingError, CheckpointError, OSError) as e:
            if not self.warned:
                log.warning("trial %d: resume state of epoch %d not saved (a retry would "
                            "start earlier): %s", self.trial.number, state["epoch"], e)
            self.warned = True

    def find(self, tcfg: StudyConfig, data: DataBundle) -> dict[str, Any] | None:
        """The latest earlier attempt's state that loads and fits this run, else None."""
        for run_id, epoch in sorted(self.earlier, key=lambda r: -r[1]):  # stable: newest first
            if not epoch:
                continue
            try:
                path = self.tracker.call(
                    "download resume state", self.tracker.client.download_artifacts, run_id,
                    f"{RESUME_DIR}/{RESUME_FILE}", str(self.folder / run_id))
                state = load_resume_state(path)
                check_state(state, tcfg.to_dict(), data_shape(data))
            except (TrackingError, CheckpointError, OSError) as e:
                log.warning("trial %d: resume state of MLflow run %s skipped: %s",
                            self.trial.number, run_id, e)
                continue
            log.warning("trial %d resumed from epoch %d of MLflow run %s", self.trial.number,
                        state["epoch"], run_id)
            self._tag(self.run.run_id, resumed_from_run=run_id,
                      resumed_from_epoch=state["epoch"])
            return state
        return None

    def discard(self) -> None:
        """Delete the resume states of this run and the earlier attempts' (best effort)."""
        runs = [r for r, epoch in self.earlier if epoch]
        if self.uploaded:
            runs.insert(0, self.run.run_id)
        for run_id in runs:
            try:
                info = self.tracker.call("get run", self.tracker.client.get_run, run_id).info
                repo = get_artifact_repository(info.artifact_uri, tracking_uri=self.tracker.uri)
                self.tracker.call("delete resume state", repo.delete_artifacts, RESUME_DIR)
                self.tracker.call("delete tag", self.tracker.client.delete_tag, run_id,
                                  RESUME_TAG)
            except Exception as e:  # noqa: BLE001 - a leftover state never fails a trial
                log.warning("trial %d: resume state of MLflow run %s not deleted: %s",
                            self.trial.number, run_id, e)

    def forget(self) -> None:
        """Untag the run's resume: `find`'s state did not load after all."""
        for key in ("resumed_from_run", "resumed_from_epoch"):
            self.tracker.call("delete tag", self.tracker.client.delete_tag, self.run.run_id, key)

    def _earlier_runs(self) -> list[tuple[str, int]]:
        trials = {t.number: t for t in self.trial.study.get_trials(deepcopy=False)}
        me = trials.get(self.trial.number)
        history = me.system_attrs.get("retry_history", []) if me is not None else []
        out = []
        for number in reversed(history):
            run_id = trials[number].user_attrs.get("mlflow_run_id") if number in trials else None
            if run_id:
                tags = self.tracker.call("get run", self.tracker.client.get_run, run_id).data.tags
                out.append((run_id, int(tags.get(RESUME_TAG, 0))))
        return out

    def _tag(self, run_id: str, **tags: Any) -> None:
        self.tracker.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
