"""The worker: `optimize` opens a study and runs its trials (trial.py) until the budget, the
grid or the timeout says stop.

Budget (`optimize --trials N`, shared by all workers): a worker starts another trial while
the study holds fewer than N trials that count. COMPLETE, PRUNED, RUNNING (another
worker's) and FAIL count — except a FAIL that was re-queued because its worker stopped
(Ctrl-C, SIGTERM, kill -9, a lost heartbeat): its re-run is what counts, so a killed trial
neither eats the budget nor is lost. A trial that fails on its own (NaN loss) counts.
Workers of a non-grid study decide independently, so several deciding at the same instant
may overshoot N by at most one trial each; grid studies are exact (queued points are claimed
atomically).

Every trial is claimed atomically together with its owner record (liveness.py): a grid
point or re-queued trial from the queue, else a fresh slot for the sampler.

A worker with nothing left to start waits while trials it could take over are running on
other workers (any, on a PostgreSQL storage with heartbeats; this machine's, elsewhere; any
without an owner record yet), so a trial whose worker dies is still re-run; `--timeout`
bounds the wait.

Trials left RUNNING by a dead worker are failed, re-queued and their MLflow runs closed
FAILED by the next worker to look: see liveness.py for the rule. A worker whose trial was
taken away while it ran (stopped past `grace_period`, then woken) drops it with one line and
goes on to the next. Ctrl-C/SIGTERM fails and re-queues the running trial (MLflow run
FAILED), then the worker exits (`optimize` exits 130).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from celebhpo._interrupt import hold_or_raise, shielded
from celebhpo.errors import StudyError, TrackingError
from celebhpo.hpo.launch import WORKER_ENV
from celebhpo.hpo.liveness import (
    DUPLICATE_OF,
    claim_new_trial,
    claim_waiting_trial,
    fail_and_requeue,
    heartbeat_interval,
    is_local,
    is_owned,
    own_running_trials,
    recover_lost_trials,
)
from celebhpo.hpo.results import best_trial, pareto_front, state_counts
from celebhpo.hpo.storage import StorageSpec, optuna_quiet, parse_storage
from celebhpo.hpo.studies import open_study
from celebhpo.hpo.trial import TrialContext, run_trial
from celebhpo.report import format_optimize_summary
from celebhpo.tracking import (
    Tracker,
    close_orphan_runs,
    set_study_run_status,
    study_tracking_uri,
)
from celebhpo.training.devices import resolve_device

__all__ = ["OptimizeSummary", "optimize"]


@dataclasses.dataclass
class OptimizeSummary:
    study_name: str
    counts: dict[str, int]  # Optuna state name -> trials of the study in that state
    ran: list[int]  # numbers of the trials this call ran
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    metric: str = "val_loss"
    stopped: str = ""  # why it stopped
    front: list[int] = dataclasses.field(default_factory=list)  # several metrics: the front

    def __str__(self) -> str:
        return format_optimize_summary(dataclasses.asdict(self))


def optimize(
    *,
    study_name: str | None = None,
    storage: str,
    n_trials: int | None = None,
    timeout: float | None = None,
    device: str | None = None,
    tracking_uri: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> OptimizeSummary:
    """Run trials of a study until it holds `n_trials` trials in all (shared by every worker),
    the grid is exhausted, or `timeout` seconds have passed (no trial starts after that).
    Resumes a study that was interrupted. See the module docstring for the rules on counting
    and on recovering trials of dead workers. Ctrl-C/SIGTERM fails and re-queues the running
    trial, then raises KeyboardInterrupt. `tracking_uri` names the study's tracking store
    with this worker's credentials (the study keeps none); `device` is checked before any
    trial is claimed."""
    if n_trials is not None and n_trials < 1:
        raise StudyError(f"--trials {n_trials}: give a number >= 1")
    if timeout is not None and timeout <= 0:
        raise StudyError(f"--timeout {timeout}: give a number of seconds > 0")
    if device:
        resolve_device(device, key="--device")  # e.g. no GPU behind --devices: one line now
    study, cfg, attrs = open_study(study_name, storage, worker=True)
    spec = parse_storage(storage)
    tracker = Tracker(study_tracking_uri(attrs["tracking_uri"], tracking_uri))
    tracker.check()  # a clear error before any training
    label = os.environ.get(WORKER_ENV, "")
    prefix = f"[{label}] " if label else ""
    ctx = TrialContext(study, cfg, attrs, tracker, echo=lambda text: echo(prefix + text),
                       device=device,
                       # several workers drawing bars in one terminal garble each other
                       progress=progress and not label)
    with _interrupts(ctx.stop), optuna_quiet():
        return _run(ctx, spec, n_trials, timeout)


@contextmanager
def _interrupts(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt inside optimize only (main thread), and set
    `stop`: an interrupt raised where Python drops exceptions ("Exception ignored in ...", an
    at-fork hook while the image cache's pool forks) still stops the worker, at its next
    epoch or trial (trial.py and the loop check `stop`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    owner = os.getpid()

    def raise_interrupt(signum: int, frame: Any) -> None:
        if os.getpid() != owner:
            # a forked helper (e.g. the image decoding pool) inherited this handler: end it
            # the way the signal would, without a KeyboardInterrupt traceback
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        stop.set()
        hold_or_raise(f"signal {signal.Signals(signum).name}")  # see celebhpo._interrupt

    previous = {s: signal.signal(s, raise_interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# -- the loop ----------------------------------------------------------------------------------
def _run(ctx: TrialContext, spec: StorageSpec, n_trials: int | None, timeout: float | None
         ) -> OptimizeSummary:
    grid = bool(ctx.attrs.get("grid"))
    interval = heartbeat_interval(ctx.study)
    poll = min(float(interval), 5.0) if interval else 1.0
    started = time.monotonic()
    ran: list[int] = []
    waiting_note = ""
    _close_orphan_runs(ctx)
    try:
        while True:
            if ctx.stop.is_set():  # an interrupt that was dropped where it landed
                raise KeyboardInterrupt("interrupted")
            if timeout is not None and time.monotonic() - started >= timeout:
                stopped = f"--timeout {timeout:g} s reached"
                break
            trials = _recover(ctx, spec)
            action, why = _next(trials, n_trials, grid=grid, heartbeat=spec.heartbeat)
            if action == "done":
                stopped = why
                break
            if action == "wait":
                if why != waiting_note:
                    ctx.echo(why)
                    waiting_note = why
                time.sleep(poll)
                continue
            waiting_note = ""
            with shielded():  # a claim is a transaction (celebhpo._interrupt)
                trial = claim_waiting_trial(ctx.study)
                if trial is None and not grid:
                    trial = claim_new_trial(ctx.study)
            if trial is None:
                continue  # another worker took the last queued point (or our slot): look again
            number = run_trial(ctx, trial)
            if number is not None:  # None: taken over by another worker, dropped
                ran.append(number)
    except KeyboardInterrupt:
        _fail_own_running(ctx, "interrupted (Ctrl-C/SIGTERM) before the trial ended")
        ctx.echo(f"interrupted after {len(ran)} trials; the running trial is failed and "
                 "re-queued: run optimize again to resume")
        raise
    try:  # the parent run: FINISHED when the study is done, FAILED if every trial failed
        set_study_run_status(ctx.tracker, ctx.attrs["parent_run_id"], ctx.study, done=True)
    except TrackingError as e:
        ctx.echo(f"warning: MLflow parent run status not set: {e}")
    best = best_trial(ctx.study)
    summary = OptimizeSummary(
        study_name=ctx.study.study_name, counts=state_counts(ctx.study.get_trials(deepcopy=False)),
        ran=ran, best_trial=best.number if best else None,
        best_value=best.value if best else None, best_params=dict(best.params) if best else {},
        metric=ctx.cfg.study.metric, stopped=stopped,
        front=[t.number for t in pareto_front(ctx.study)] if ctx.cfg.study.multi_objective()
        else [])
    ctx.echo(str(summary))
    return summary


def _next(trials: list[FrozenTrial], n_trials: int | None, *, grid: bool, heartbeat: bool
          ) -> tuple[str, str]:
    """("run" | "wait" | "done", why)."""
    running = [t for t in trials if t.state == TrialState.RUNNING]
    # an owner-less trial is recovered after grace_period wherever its worker ran
    watchable = [t for t in running
                 if heartbeat or is_local(t.user_attrs) or not is_owned(t.user_attrs)]
    waiting_for = (f"waiting for trial(s) {', '.join(str(t.number) for t in watchable)} "
                   "running on other workers (to take over if a worker dies)")
    if n_trials is not None:
        used = _budget_used(trials)
        if used >= n_trials:
            return ("wait", waiting_for) if watchable else (
                "done", f"the study holds {used} trials (--trials {n_trials})")
    if not grid:
        return "run", ""
    if any(t.state == TrialState.WAITING for t in trials):
        return "run", ""
    return ("wait", waiting_for) if watchable else ("done", "the grid is exhausted")


def _budget_used(trials: list[FrozenTrial]) -> int:
    """Trials that count against `--trials`: see the module docstring."""
    rerun = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return sum(1 for t in trials
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
               or (t.state == TrialState.FAIL and t.number not in rerun
                   and DUPLICATE_OF not in t.user_attrs))


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
        close_orphan_runs(ctx.tracker, ctx.attrs["parent_run_id"],
                          {t.number: t.state.name for t in trials})
    except TrackingError as e:
        ctx.echo(f"warning: could not close MLflow runs of lost trials: {e}")
