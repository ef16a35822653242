"""A trial's objective, as in Optuna's examples (STYLE 7): the trial's data, `training.fit`
with a progress bar and a reporter that reports each epoch's metric to Optuna (raising
TrialPruned when told to; in a study of several metrics through its shadow pruner,
hpo/shadow.py) and logs it to the trial's MLflow run, then the result logged.

Resume on retry (`[study] resume`, on by default): after each epoch but the last the run's
resume state (training.resume: weights, optimizer, schedule, RNG, history, best epoch; about
4x the model) is logged to the trial's MLflow run as `resume/state.pt`, overwritten each
epoch, and the run's tag `resume_epoch` says which epoch it holds (uploaded while the next
epoch trains, and joined before the trial ends, however it ends: hpo.resume_states). A trial
re-queued after its worker died (liveness.requeue: system attr `retry_history`) looks for
the latest state among its earlier attempts' runs, replays those epochs through the
reporter (Optuna and the new run see the whole curve; pruning may fire there) and trains only
the epochs after it; its run is tagged
`retry_of` (the attempt it replaces), `resumed_from_run` and `resumed_from_epoch`. The states
are deleted when the trial ends for good (COMPLETE, PRUNED, diverged). With tracking off
(`[study] tracking = "off"`, `--no-tracking`) no run keeps them: a retried trial starts over.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from celebhpo.config import StudyConfig
from celebhpo.data import DataBundle, load_data
from celebhpo.errors import CheckpointError, TrainingError
from celebhpo.hpo.measures import StudyLatencyCache, closest_infeasible
from celebhpo.hpo.results import best_trial, direction
from celebhpo.hpo.resume_states import RESUME_DIR, RESUME_FILE, RESUME_TAG, ResumeStates
from celebhpo.hpo.shadow import ShadowPruner, shadow_pruner
from celebhpo.objectives import MEASURED, best_of, better, violations
from celebhpo.stopping import StopRequest
from celebhpo.tracking import NullTrialRun, TrialRun
from celebhpo.training.epoch import StopCheck
from celebhpo.training.latency import count_params_m, measure_latency
from celebhpo.training.loop import Callback, FitResult, fit
from celebhpo.training.models import create_model
from celebhpo.training.progress import EpochProgress

__all__ = ["RESUME_DIR", "RESUME_FILE", "RESUME_TAG", "TrialReporter", "train"]

log = logging.getLogger(__name__)



class TrialReporter(Callback):
    """Logs each epoch to the trial's MLflow run (once `run` is set), reports `metric` to
    Optuna and raises TrialPruned when the pruner says so. In a study of several metrics
    (`objectives`), Optuna's report refuses the trial: its shadow pruner (hpo/shadow.py)
    judges the curve of `metric` instead; `report=False` reports nothing."""

    def __init__(self, trial: optuna.Trial, metric: str, direction: str = "minimize",
                 epochs: int | None = None, *, report: bool = True,
                 objectives: list[str] | None = None) -> None:
        self.trial = trial
        objectives = objectives or [metric]
        self.report = report and len(objectives) == 1  # Optuna refuses several metrics
        self.shadow = shadow_pruner(trial, objectives, metric, direction) if report else None
        self.epochs = epochs  # the last epoch is never pruned: it would save nothing
        self.metric = metric
        self.direction = direction
        self.run: TrialRun | None = None
        self.history: list[dict[str, Any]] = []
        self.pruned_at: int | None = None
        self.resume: dict[str, Any] | None = None  # a state whose epochs fit_start replays
        self.resumed_from = 0

    def on_fit_start(self, info: dict[str, Any]) -> None:
        """fit has restored `resume` (when set): report its epochs again, as they were. The
        run's tag `device` becomes the device fit resolved (`auto` -> `cpu`, `cuda:0`): the
        param `train.device` stays the study's setting (tracking.trial_params)."""
        if self.run is not None and info.get("device"):
            self.run.log(tags={"device": info["device"]})
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
        judge: optuna.Trial | ShadowPruner | None = self.shadow or (
            self.trial if self.report else None)
        if judge is None:
            return
        judge.report(value, epoch)
        if (self.epochs is None or epoch < self.epochs) and judge.should_prune():
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
            best = best_of(scored, self.direction,  # first of ties, as fit
                           key=lambda h: float(h[self.metric]))
            out.update(best_epoch=int(best["epoch"]),
                       **{k: _num(best.get(k)) for k in _FIGURES if k in best})
        return out


def train(tcfg: StudyConfig, run: TrialRun | NullTrialRun, reporter: TrialReporter,
          data_cache: dict[str, DataBundle], *, progress: bool, keep_all: bool,
          stop: StopRequest | None = None, echo: Callable[[str], None] | None = None
          ) -> tuple[float | list[float], dict[str, Any]]:
    """Train the trial's config `tcfg` and log the result to its `run`; the checkpoint goes
    along when `keep_all`, when the trial is the best so far and meets the constraints, or
    in a study of several metrics (any trial may be on the front). Data is decoded once per
    worker (`data_cache`). A retried trial resumes from its earlier attempts' latest resume
    state (module docstring). The finished model's size and latency are measured
    (`_measure`), and the constraints checked. A `stop` request is answered between batches,
    epochs and cache chunks (Interrupted). `echo` gets the resume states' lines (the worker's
    label added). Returns (the trial's value, or its values in a
    study of several metrics; user attrs to store)."""
    stop = stop or StopRequest()
    trial = reporter.trial
    reporter.run = run
    bar = EpochProgress(tcfg.train.epochs, label=f"t{trial.number:03d}", enabled=progress)
    try:
        data = _data(tcfg, data_cache, progress, stop)
        with tempfile.TemporaryDirectory(prefix="celebhpo-trial-") as tmp:
            if data.skipped:  # name them where the trial's figures are
                _log_skipped(run, data.skipped, Path(tmp) / "skipped_images.csv")
            # leaving the block (any way) joins the resume state's upload in flight
            with ResumeStates(run, trial, Path(tmp), keep=tcfg.study.resume
                              and tcfg.study.tracking == "on",  # kept in MLflow
                              echo=echo, last_epoch=tcfg.train.epochs) as states:
                result = _fit(tcfg, data, [StopCheck(stop), bar], reporter,
                              Path(tmp) / "model.pt", states)
            figures = {**result.best_metrics, **_measure(tcfg, len(data.attributes),
                                                         result.device, trial.study)}
            values = [float(figures[m]) for m in tcfg.study.objective_names()]
            missed = [k for k, v in violations(figures, tcfg.study.constraints).items() if v > 0]
            keep = keep_all or tcfg.study.multi_objective() or (
                not missed and _best_so_far(trial.study, values[0])) or closest_infeasible(
                trial.study, figures, tcfg.study.constraints)  # export-best's --trial advice
            logged = run.log_result(result, tcfg.to_dict(), log_checkpoint=keep)
            _log_measured(run, figures, tcfg.study.constraints, missed)
        states.discard()
    finally:
        bar.close()
    logged.update(device=str(result.device), checkpoint_logged=keep,
                  **{k: _num(figures.get(k)) for k in _FIGURES if k in figures},
                  best_epoch=result.best_epoch, violated=missed)
    return (values if tcfg.study.multi_objective() else values[0]), logged


# a trial's figures stored as user attrs: the best epoch's, and the finished model's
_FIGURES = ("val_loss", "val_mean_acc", "val_map", "val_mean_acc_reliable",
            "val_worst_group_acc", *MEASURED)


def _measure(tcfg: StudyConfig, n_labels: int, device: str, study: optuna.Study
             ) -> dict[str, float]:
    """params_m and the latency (ms per image at batch 1, and at 64 when the study's metric or
    constraints use latency; on the trial's device) of the trial's architecture at its image
    size: a fresh model of the same shape (latency does not depend on the weights)."""
    model = create_model(tcfg.train.arch, num_labels=n_labels,
                         num_features=tcfg.train.num_features, dropout=tcfg.train.dropout,
                         pretrained="none").to(device)
    out = {"params_m": count_params_m(model)}
    # batch 64 costs ~8 s for ResNet50 on one CPU core: only when the study asks for latency
    s = tcfg.study
    wanted = "latency_ms" in s.objective_names() or "max_latency_ms" in s.constraints
    out.update(measure_latency(model, tcfg.data.image_size, device,
                               batch_sizes=(1, 64) if wanted else (1,),
                               channels_last=tcfg.train.channels_last,
                               cache=StudyLatencyCache(study)))  # once per configuration
    return out


def _log_measured(run: TrialRun | NullTrialRun, figures: dict[str, Any],
                  constraints: dict[str, float], missed: list[str]) -> None:
    """The model's size and latency as metrics of the trial's run; with constraints, the tag
    `feasible` (and `violated`, the constraints it misses)."""
    metrics = {k: float(figures[k])
               for k in MEASURED if _num(figures.get(k)) is not None}
    tags = {}
    if constraints:
        tags["feasible"] = "false" if missed else "true"
        if missed:
            tags["violated"] = ",".join(missed)
    run.log(metrics, tags)


def _fit(tcfg: StudyConfig, data: DataBundle, first: list[Callback], reporter: TrialReporter,
         ckpt: Path, states: ResumeStates) -> FitResult:
    """fit (callbacks: `first`, then the reporter), resumed from an earlier attempt's state
    when there is a usable one. A state that does not load into the model after all (nothing
    replayed yet) is dropped with one line."""
    callbacks = [*first, reporter]
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


def _data(tcfg: StudyConfig, cache: dict[str, DataBundle], progress: bool, stop: StopRequest
          ) -> DataBundle:
    """Decoded images for the trial's data config, loaded once per worker; the images that
    could not be read are named once, when they are skipped."""
    key = json.dumps(dataclasses.asdict(tcfg.data), sort_keys=True)
    if key not in cache:
        cache[key] = data = load_data(tcfg.data, splits=("train", "val"), progress=progress,
                                      stop=stop)
        if data.skipped:
            shown = ", ".join(f"{name} ({reason})" for name, reason in data.skipped[:5])
            more = f" and {len(data.skipped) - 5} more" if len(data.skipped) > 5 else ""
            log.warning("skipped %d unreadable images in %s: %s%s (listed in each trial's "
                        "skipped_images.csv)", len(data.skipped), data.root, shown, more)
    return cache[key]


def _log_skipped(run: TrialRun | NullTrialRun, skipped: list[tuple[str, str]], path: Path
                 ) -> None:
    """skipped_images.csv (image, reason) on the trial's run, and its count as a tag."""
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("image", "reason"), *skipped])
    run.log_file(path)
    run.log(tags={"skipped_images": len(skipped)})


def _best_so_far(study: optuna.Study, value: float) -> bool:
    """Whether `value` is at least as good as every COMPLETE trial's (a tie is)."""
    best = best_trial(study)
    return best is None or value == best.value or better(value, best.value, direction(study))


def _num(value: Any) -> float | None:
    """A finite float for a user attr (JSON has no NaN), else None."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
