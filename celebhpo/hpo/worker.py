"""The worker: `optimize` opens a study and runs its trials (trial.py) until the budget, the
grid or the timeout says stop.

What to do next (run, wait, or stop: the `--trials` budget and the grid): budget.py.

Every trial is claimed atomically together with its owner record (liveness.py): a grid
point or re-queued trial from the queue, else a fresh slot for the sampler.

A worker with nothing left to start waits while trials it could take over are running on
other workers (any, on a PostgreSQL storage with heartbeats; this machine's, elsewhere; any
without an owner record yet), so a trial whose worker dies is still re-run; `--timeout`
bounds the wait.

Trials left RUNNING by a dead worker are failed, re-queued and their MLflow runs closed
FAILED by the next worker to look: see liveness.py for the rule. A point whose re-runs are
used up is given up (retry.given_up): the summary names it, `optimize` exits 1, and
`--retry-given-up` (retry.requeue_given_up) queues it once more. A worker whose trial was
taken away while it ran (stopped past `grace_period`, then woken) drops it with one line and
goes on to the next.

Ctrl-C/SIGTERM (celebhpo.stopping): the handler only records the request; the worker answers
it at its next safe point (a batch, an epoch, a chunk of the image cache, between trials, in
its waits): it fails and re-queues the running trial (MLflow run FAILED) and raises
Interrupted (`optimize` exits 130 for SIGINT, 143 for SIGTERM). A second signal exits at
once and leaves the trial to the recovery above.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from optuna.trial import FrozenTrial

from celebhpo.config import StudyConfig
from celebhpo.errors import StudyError, TrackingError
from celebhpo.hpo.budget import next_action
from celebhpo.hpo.launch import WORKER_ENV
from celebhpo.hpo.liveness import (
    claim_new_trial,
    claim_waiting_trial,
    fail_and_requeue,
    heartbeat_interval,
    own_running_trials,
    recover_lost_trials,
)
from celebhpo.hpo.outage import DEFAULT_RETRY_S, RetryPolicy, StorageUnavailable, StudyDeleted
from celebhpo.hpo.results import best_trial, pareto_front, state_counts
from celebhpo.hpo.retry import GivenUp, given_up
from celebhpo.hpo.storage import StorageSpec, as_spec, optuna_quiet
from celebhpo.hpo.studies import StudyRecord, open_study
from celebhpo.hpo.trial import FinishedTrial, TrialContext, run_trial
from celebhpo.stopping import Interrupted, StopRequest, stop_on_signals
from celebhpo.tracking import NullTracker, StudyTracker, study_tracker, study_tracking_uri
from celebhpo.training.devices import resolve_device

__all__ = ["OptimizeSummary", "optimize"]


@dataclasses.dataclass
class OptimizeSummary:
    """What `optimize` did, for its last lines (report.format_optimize_summary)."""

    study_name: str
    counts: dict[str, int]  # Optuna state name -> trials of the study in that state
    ran: list[int]  # numbers of the trials this call ran
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    metric: str = "val_loss"
    stopped: str = ""  # why it stopped
    front: list[int] = dataclasses.field(default_factory=list)  # several metrics: the front
    worker: str = ""  # the `--devices` worker's label ("gpu1"); "" for a lone worker
    # points given up after their retry limit (retry.given_up): `optimize` then exits 1
    given_up: list[GivenUp] = dataclasses.field(default_factory=list)


def optimize(
    *,
    study_name: str | None = None,
    storage: StorageSpec | str,
    n_trials: int | None = None,
    timeout: float | None = None,
    device: str | None = None,
    tracking_uri: str | None = None,
    tracking: bool = True,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    on_trial: Callable[[FinishedTrial], None] | None = None,
    stop: StopRequest | None = None,
    storage_retry: float = DEFAULT_RETRY_S,
) -> OptimizeSummary:
    """Run trials of a study until it holds `n_trials` trials in all (shared by every worker),
    the grid is exhausted, or `timeout` seconds have passed (no trial starts after that).
    Resumes a study that was interrupted. See the module docstring for the rules on counting
    and on recovering trials of dead workers. Ctrl-C/SIGTERM fails and re-queues the running
    trial, then raises celebhpo.stopping.Interrupted. `tracking_uri` names the study's
    tracking store with this worker's credentials (the study keeps none); `tracking=False`
    (--no-tracking) runs without MLflow, as a study with `[study] tracking = "off"` always does (nothing
    logged, no checkpoint or resume state kept); `device` is checked before any
    trial is claimed. `echo` gets notes as they happen (waiting, recovered trials, warnings);
    `on_trial` is told how each trial ended. The summary is returned, not printed. `stop`:
    a request the caller already listens for (the CLI does, from its first line); a
    request made before the call is answered at the first safe point. `storage_retry`:
    seconds a lost database is retried before the worker stops (outage.py): then
    StorageUnavailable, the trial left to the recovery; a deleted study: StudyDeleted."""
    if n_trials is not None and n_trials < 1:
        raise StudyError(f"--trials {n_trials}: give a number >= 1")
    if timeout is not None and timeout <= 0:
        raise StudyError(f"--timeout {timeout}: give a number of seconds > 0")
    if device:
        resolve_device(device, key="--device")  # e.g. no GPU behind --devices: one line now
    stop = stop or StopRequest()  # from here on a signal is a request, answered at safe points
    with stop_on_signals(stop):
        spec = as_spec(storage)  # a URL given from Python: parsed here, once
        label = os.environ.get(WORKER_ENV, "")
        prefix = f"[{label}] " if label else ""
        policy = RetryPolicy(storage_retry, what=f"storage {spec.masked}",
                             notify=lambda text: echo(prefix + text), stop=stop)
        study, cfg, record = open_study(study_name, spec, worker=True, policy=policy)
        tracker = _tracker(cfg, record, tracking_uri, tracking,
                           echo=lambda text: echo(prefix + text))
        ctx = TrialContext(study, cfg, record, tracker, echo=lambda text: echo(prefix + text),
                           device=device,
                           # several workers drawing bars in one terminal garble each other
                           progress=progress and not label,
                           on_trial=on_trial or (lambda _: None), worker=label, stop=stop)
        with optuna_quiet():
            return _run(ctx, spec, n_trials, timeout)


def _tracker(cfg: StudyConfig, record: StudyRecord, uri: str | None, enabled: bool,
             echo: Callable[[str], None]) -> StudyTracker | NullTracker:
    """The study's tracker, chosen once: its MLflow store (checked now, before any training),
    or nothing when the study or this worker runs with tracking off."""
    if cfg.study.tracking == "off" or not enabled:
        cfg.study.tracking = "off"  # as the trials' configs say (the objective reads it)
        echo("MLflow tracking is off: trials are not logged and keep no checkpoint or "
             "resume state (a retried trial starts over; export-best needs tracking)")
        return study_tracker(None, enabled=False)
    tracker = study_tracker(study_tracking_uri(record.tracking_uri, uri),
                            experiment_id=record.experiment_id,
                            parent_run_id=record.parent_run_id, grid=record.grid,
                            config=record.config)
    tracker.check()
    return tracker


# -- the loop ----------------------------------------------------------------------------------
@dataclasses.dataclass
class _Progress:
    ran: list[int] = dataclasses.field(default_factory=list)  # trials this call ran
    running: int | None = None  # the trial being run, for the last line of a stop


def _run(ctx: TrialContext, spec: StorageSpec, n_trials: int | None, timeout: float | None
         ) -> OptimizeSummary:
    done = _Progress()
    _close_orphan_runs(ctx)
    try:
        stopped = _loop(ctx, spec, n_trials, timeout, done)
    except Interrupted as e:
        _fail_own_running(ctx, f"{e} before the trial ended")
        failed = "" if done.running is None else f"; trial {done.running} is failed and re-queued"
        ctx.echo(f"interrupted ({signal.Signals(e.signum).name}) after {len(done.ran)} trials"
                 f"{failed}: run optimize again to resume")
        raise
    except StorageUnavailable as e:  # the storage's retries ran out (outage.py)
        left = "" if done.running is None else (
            f"; trial {done.running} is left to the recovery (failed and re-queued once a "
            "worker sees its heartbeat or process gone)")
        raise StorageUnavailable(
            f"{e}: this worker stopped after {len(done.ran)} trials{left}; the study is "
            "resumable: run optimize again once the database is back") from None
    except StudyDeleted as e:
        where = "waited" if done.running is None else f"ran trial {done.running}"
        try:
            ctx.tracker.kill_study_runs()
            closed = "its MLflow runs are closed KILLED"
        except TrackingError as t:
            closed = f"its MLflow runs could not be closed ({t})"
        raise StudyDeleted(f"{e} while this worker {where}; {closed}") from None
    return _summary(ctx, done.ran, stopped)


def _loop(ctx: TrialContext, spec: StorageSpec, n_trials: int | None, timeout: float | None,
          done: _Progress) -> str:
    """Claim and run trials until there is nothing to start; returns why it stopped."""
    grid = ctx.record.grid
    interval = heartbeat_interval(ctx.study)
    poll = min(float(interval), 5.0) if interval else 1.0
    started = time.monotonic()
    waiting_note = ""
    while True:
        ctx.stop.check()  # between trials (celebhpo.stopping)
        if timeout is not None and time.monotonic() - started >= timeout:
            stopped = f"--timeout {timeout:g} s reached"
            break
        trials = _recover(ctx, spec)
        action, why = next_action(trials, n_trials, grid=grid, heartbeat=spec.heartbeat)
        if action == "done":
            stopped = why
            break
        if action == "wait":
            if why != waiting_note:
                ctx.echo(why)
                waiting_note = why
            ctx.stop.wait(poll)  # ends at once on Ctrl-C/SIGTERM
            continue
        waiting_note = ""
        trial = claim_waiting_trial(ctx.study)
        if trial is None and not grid:
            trial = claim_new_trial(ctx.study)
        if trial is None:
            continue  # another worker took the last queued point (or our slot): look again
        done.running = trial.number
        number = run_trial(ctx, trial)
        done.running = None
        if number is not None:  # None: taken over by another worker, dropped
            done.ran.append(number)
    ctx.stop.check()  # a request the last trial did not reach a safe point for
    return stopped


def _summary(ctx: TrialContext, ran: list[int], stopped: str) -> OptimizeSummary:
    """The parent run's last status, then what `optimize` returns."""
    gone = [GivenUp.of(t, ctx.record.grid)
            for t in given_up(ctx.study.get_trials(deepcopy=False))]
    try:  # the parent run: FINISHED when the study is done, FAILED if every trial failed
        ctx.tracker.set_study_run_status(ctx.study, done=True, given_up=[
            (g.trial, g.params, g.attempts) for g in gone])  # its tag, removed when none
    except TrackingError as e:
        ctx.echo(f"warning: MLflow parent run status not set: {e}")
    best = best_trial(ctx.study)
    return OptimizeSummary(
        study_name=ctx.study.study_name, counts=state_counts(ctx.study.get_trials(deepcopy=False)),
        ran=ran, best_trial=best.number if best else None,
        best_value=best.value if best else None, best_params=dict(best.params) if best else {},
        metric=ctx.cfg.study.metric, stopped=stopped,
        front=[t.number for t in pareto_front(ctx.study)] if ctx.cfg.study.multi_objective()
        else [], worker=ctx.worker, given_up=gone)


# -- trials of dead workers --------------------------------------------------------------------
def _recover(ctx: TrialContext, spec: StorageSpec) -> list[FrozenTrial]:
    """Fail and re-queue trials whose worker is gone (liveness.py); close their MLflow runs.
    Returns the study's trials afterwards."""
    trials, lost = recover_lost_trials(ctx.study, heartbeat=spec.heartbeat,
                                       grace_period=ctx.cfg.study.grace_period)
    if lost:
        ctx.echo(f"trial(s) {', '.join(str(t.number) for t in lost)} lost their worker: "
                 "failed and re-queued")
        _close_orphan_runs(ctx, trials)
    return trials


def _fail_own_running(ctx: TrialContext, reason: str) -> None:
    own = own_running_trials(ctx.study)
    for t in own:
        fail_and_requeue(ctx.study, t, reason)
    if own:
        _close_orphan_runs(ctx)


def _close_orphan_runs(ctx: TrialContext, trials: list[FrozenTrial] | None = None) -> None:
    trials = trials if trials is not None else ctx.study.get_trials(deepcopy=False)
    try:
        ctx.tracker.close_orphan_runs({t.number: t.state.name for t in trials})
    except TrackingError as e:
        ctx.echo(f"warning: could not close MLflow runs of lost trials: {e}")
