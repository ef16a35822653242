"""Run ONE trial, as a plain function (STYLE 16, like Optuna's `study/_optimize.py::_run_trial`):
suggest its params, run the objective inside the heartbeat, `tell` Optuna once, then end its
MLflow run, hand how it ended to the caller (`FinishedTrial`: cli and demo print it through
report.format_trial_line) and refresh the study's parent run; re-raise unless the error is
the configuration's own fault (TRIAL_ERRORS).

MLflow is reached through the study's tracker (`ctx.tracker`, tracking.study_tracker): the
trial's child run is started before training (its id is a user attr, epochs are logged live)
and ended after `tell`. With tracking off the tracker and the run do nothing.

A trial can be taken away from a live worker: stopped (SIGSTOP, a frozen VM) past the
storage's `grace_period`, it is failed and re-queued by another worker, which closes its
MLflow run FAILED. Before each write to that run (an epoch, the result) and at `tell` the
trial's state is checked: a trial no longer RUNNING is dropped with one line ("trial N was
taken over by another worker: dropping it"), nothing more is written for it, and the worker
goes on to its next trial. (A write that had already passed its check when the worker was
stopped, one epoch at most, still lands: no check can recall a write on its way.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from celebhpo.config import StudyConfig
from celebhpo.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ModelError,
    TrackingError,
    TrainingError,
    mask_url,
)
from celebhpo.hpo.budget import no_weights
from celebhpo.hpo.liveness import (
    RETRY_WANTED,
    TrialTakenOver,
    heartbeat,
    requeue_finished,
    trial_taken_over,
)
from celebhpo.hpo.outage import StorageUnavailable, StudyDeleted
from celebhpo.hpo.record import StudyRecord
from celebhpo.hpo.results import leaderboard
from celebhpo.hpo.retry import FAIL_REASON
from celebhpo.hpo.space import suggest_params
from celebhpo.objectives import violations
from celebhpo.stopping import Interrupted, StopRequest
from celebhpo.tracking import NullTracker, NullTrialRun, StudyTracker, TrialRun

__all__ = ["SETUP_ERRORS", "TRIAL_ERRORS", "FinishedTrial", "TrialContext", "run_trial"]

# The configuration's own fault (it diverged): the trial FAILs, counts, the study goes on.
TRIAL_ERRORS = (TrainingError,)
# Not the configuration's fault, and every trial would hit it (no data, no weights, the
# tracking store down after its retries): the trial FAILs, is re-queued, the worker stops.
SETUP_ERRORS = (DataError, ConfigError, CheckpointError, ModelError, TrackingError)


@dataclass(frozen=True)
class FinishedTrial:
    """How one trial ended, for its worker's line (report.format_trial_line)."""

    number: int
    state: str  # Optuna's state name: COMPLETE, PRUNED, FAIL
    metric: str | list[str]  # a list, with `value` a list, in a study of several metrics
    value: float | list[float] | None
    params: dict[str, Any]
    epochs_run: int
    duration_s: float
    pruned_at: int | None = None
    fail_reason: str = ""
    violated: list[str] = field(default_factory=list)  # the constraints a COMPLETE trial misses
    worker: str = ""  # the `--devices` worker's label ("gpu1"); "" for a lone worker


def _ignore(_: FinishedTrial) -> None:
    pass


@dataclass
class TrialContext:
    """What running a study's trials needs, made once per `optimize` call."""

    study: optuna.Study
    cfg: StudyConfig
    record: StudyRecord  # what the study stores beside Optuna (grid, MLflow ids...)
    tracker: StudyTracker | NullTracker  # MLflow, or nothing with tracking off
    echo: Callable[[str], None]  # one line for people, with the worker's label
    device: str | None = None
    progress: bool = True
    data_cache: dict[str, Any] = field(default_factory=dict)  # data config -> DataBundle
    stop: StopRequest = field(default_factory=StopRequest)  # Ctrl-C/SIGTERM (celebhpo.stopping)
    on_trial: Callable[[FinishedTrial], None] = _ignore  # told as each trial ends
    worker: str = ""  # the `--devices` worker's label, e.g. "gpu1"


@dataclass
class _Outcome:
    """How the attempt ended, as `tell` and the MLflow run need it."""

    state: TrialState = TrialState.FAIL
    value: float | list[float] | None = None
    reason: str = ""
    error: BaseException | None = None  # raised again once the trial is told
    requeue: bool = False
    taken_over: bool = False  # another worker failed and re-queued it meanwhile
    lost: bool = False  # the storage is unreachable past its retries, or the study deleted
    logged: dict[str, Any] = field(default_factory=dict)
    run: TrialRun | NullTrialRun | None = None


class _OwnedRun:
    """The trial's MLflow run, written only while the trial is still this worker's: the
    worker that takes a trial over closes its run FAILED, and that run stays as it left it.
    Each write is a safe point: a stop request (`ctx.stop`) raises Interrupted before it.
    Everything else is the run's own (`TrialRun`, or `NullTrialRun` with tracking off)."""

    def __init__(self, run: TrialRun | NullTrialRun, ctx: TrialContext, trial: optuna.Trial
                 ) -> None:
        self._run, self._ctx, self._trial = run, ctx, trial

    def __getattr__(self, name: str) -> Any:
        return getattr(self._run, name)

    def _check(self) -> None:
        self._ctx.stop.check()
        if trial_taken_over(self._ctx.study, self._trial):
            raise TrialTakenOver(f"trial {self._trial.number}")

    def log_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        self._check()
        self._run.log_epoch(epoch, metrics)

    def log_result(self, result: Any, config: dict[str, Any], log_checkpoint: bool = True
                   ) -> dict[str, Any]:
        self._check()
        return self._run.log_result(result, config, log_checkpoint)


def run_trial(ctx: TrialContext, trial: optuna.Trial) -> int | None:
    """Train the claimed trial's configuration, report each epoch (pruning), log to MLflow,
    tell Optuna. Returns the trial number, or None when another worker took the trial over
    (dropped, see the module docstring). Trial errors fail the trial and the loop goes on;
    an interrupt or a setup error fails and re-queues it, then propagates."""
    # late: the objective imports torch (training, data), 1.4-1.9 s measured, which
    # `celebhpo study list/show/create` would pay for nothing (they import celebhpo.hpo)
    from celebhpo.hpo.objective import TrialReporter, train

    started = time.perf_counter()
    # the claim recorded the first beat; keep it alive. What ends the heartbeat thread (the
    # database lost past the retries, the study deleted) stops training at its next safe point
    with heartbeat(ctx.study, trial, on_error=ctx.stop.abort):
        try:
            params, tcfg = _configure(ctx, trial)
        except UpdateFinishedTrialError:  # failed as stale by another worker (an outage)
            _drop(ctx, trial.number)
            return None
        study_cfg = ctx.cfg.study
        reporter = TrialReporter(trial, study_cfg.metric, study_cfg.resolved_direction(),
                                 epochs=tcfg.train.epochs,
                                 objectives=study_cfg.objective_names())

        def objective(run: TrialRun | NullTrialRun) -> tuple[float, dict[str, Any]]:
            return train(tcfg, _OwnedRun(run, ctx, trial), reporter, ctx.data_cache,
                         progress=ctx.progress, keep_all=ctx.cfg.study.checkpoints == "all",
                         stop=ctx.stop, echo=ctx.echo)

        out = _attempt(ctx, trial, params, tcfg, objective)
        summary = {**reporter.summary(), **out.logged,
                   "duration_s": round(time.perf_counter() - started, 3)}
        if not (out.taken_over or out.lost):
            try:
                _tell(ctx.study, trial, out, summary, study_cfg.constraints)
            except (StorageUnavailable, StudyDeleted) as e:
                out.reason, out.error, out.lost = str(e), e, True
    if out.lost:  # nothing can be told: the worker stops (see _abandon)
        _abandon(ctx, out)
        raise out.error  # type: ignore[misc]
    if out.taken_over:
        _drop(ctx, trial.number)
        return None
    if out.requeue:
        requeue_finished(ctx.study, trial)
    if out.run is not None:
        out.run.end(out.state.name, reason=out.reason or None, pruned_at=reporter.pruned_at)
    names = study_cfg.objective_names()
    ctx.on_trial(FinishedTrial(
        number=trial.number, state=out.state.name,
        metric=names if study_cfg.multi_objective() else names[0], value=out.value,
        params=params, epochs_run=summary.get("epochs_run", 0),
        duration_s=summary["duration_s"], pruned_at=summary.get("pruned_at"),
        fail_reason=summary.get(FAIL_REASON, ""), violated=list(summary.get("violated", [])),
        worker=ctx.worker))
    if not ctx.stop.requested:  # stopping: the plots can wait for the next trial's worker
        _refresh_parent(ctx)
    if out.error is not None:
        raise out.error
    return trial.number


def _configure(ctx: TrialContext, trial: optuna.Trial) -> tuple[dict[str, Any], StudyConfig]:
    """The trial's params (suggested, or its grid point's) and the config they make."""
    params = suggest_params(trial, ctx.cfg.space)
    tcfg = ctx.cfg.with_params(params)
    if ctx.device:
        tcfg.train.device = ctx.device
    trial.set_user_attr("device", tcfg.train.device)
    return params, tcfg


def _attempt(ctx: TrialContext, trial: optuna.Trial, params: dict[str, Any], tcfg: StudyConfig,
             objective: Callable[[TrialRun | NullTrialRun], tuple[float, dict[str, Any]]]
             ) -> _Outcome:
    """Start the trial's MLflow run and run the objective in it; what either raises becomes
    the outcome."""
    out = _Outcome()
    try:
        out.run = ctx.tracker.start_trial(
            trial, params, tcfg.to_dict(),
            tags={"study": ctx.study.study_name, "device": tcfg.train.device})
        out.value, out.logged = objective(out.run)
        out.state = TrialState.COMPLETE
    except (TrialTakenOver, UpdateFinishedTrialError):
        out.taken_over = True  # Optuna's error: it went between our check and its write
    except optuna.TrialPruned as e:
        out.state, out.reason = TrialState.PRUNED, str(e)
    except TRIAL_ERRORS as e:
        out.reason = str(e)
    except ModelError as e:  # no weights: every trial would fail alike (budget.no_weights)
        out.reason, out.requeue, out.error = str(e), True, ModelError(no_weights(e, trial.number))
    except SETUP_ERRORS as e:
        out.reason, out.error, out.requeue = str(e), e, True
    except Interrupted as e:  # a stop request, at a safe point (celebhpo.stopping)
        out.reason, out.error, out.requeue = str(e), e, True
    except (StorageUnavailable, StudyDeleted) as e:  # the storage is gone (outage.py)
        out.reason, out.error, out.lost = str(e), e, True
    except Exception as e:
        out.reason, out.error = f"{type(e).__name__}: {e}", e
    return out


def _tell(study: optuna.Study, trial: optuna.Trial, out: _Outcome, summary: dict[str, Any],
          constraints: dict[str, float]) -> None:
    """Store the trial's user attrs (`summary`, plus the masked reason of a failure) and, for
    a completed trial of a study with constraints, its constraint values (Optuna's
    `set_constraint`: <= 0 is met), then tell Optuna how it ended; `out.taken_over` when
    another worker finished it first."""
    if out.state == TrialState.FAIL:
        summary[FAIL_REASON] = mask_url(out.reason)
    if out.requeue:  # marked before the FAIL: see liveness.requeue_orphans
        summary[RETRY_WANTED] = True
    try:
        for key, val in summary.items():
            trial.set_user_attr(key, val)
        if out.state == TrialState.COMPLETE:
            for key, val in violations(summary, constraints).items():
                trial.set_constraint(key, val)
            study.tell(trial, out.value)
        else:
            study.tell(trial, state=out.state)
    except (UpdateFinishedTrialError, ValueError):  # ValueError: "Cannot tell a FAIL trial"
        if not trial_taken_over(study, trial):
            raise
        out.taken_over = True


def _abandon(ctx: TrialContext, out: _Outcome) -> None:
    """The trial cannot be told. Storage unreachable: its MLflow run ends FAILED now, and
    the trial, still RUNNING in Optuna, is failed and re-queued by the recovery once the
    database is back. Study deleted: the worker closes every run of the study KILLED."""
    if out.run is not None and isinstance(out.error, StorageUnavailable):
        out.run.end("FAIL", reason=out.reason)  # quiet: a warning if MLflow is down too


def _drop(ctx: TrialContext, number: int) -> None:
    """One line for a trial taken over by another worker; its MLflow run is that worker's to
    close, unless this worker opened it after the takeover (then it is closed FAILED here)."""
    ctx.echo(f"trial {number} was taken over by another worker: dropping it")
    try:
        ctx.tracker.close_orphan_runs({number: "FAIL"})
    except TrackingError as e:
        ctx.echo(f"warning: could not close MLflow run of trial {number}: {e}")


def _refresh_parent(ctx: TrialContext) -> None:
    try:
        ctx.tracker.refresh_parent(ctx.study, leaderboard(ctx.study))
    except (StorageUnavailable, StudyDeleted):
        raise  # the worker stops on these
    except Exception as e:  # a summary never fails the study (nor a plotting library's bug)
        ctx.echo(f"warning: parent run summary not refreshed: {type(e).__name__}: {e}")
