"""What a worker does next: run a trial, wait, or stop (worker.py asks, between trials).

Budget (`optimize --trials N`, shared by all workers): a worker starts another trial while
the study holds fewer than N trials that count. COMPLETE, PRUNED, RUNNING (another
worker's) and FAIL count — except a FAIL that was re-queued because its worker stopped
(Ctrl-C, SIGTERM, kill -9, a lost heartbeat): its re-run is what counts, so a killed trial
neither eats the budget nor is lost. A trial that fails on its own (NaN loss) counts.
Workers of a non-grid study decide independently, so several deciding at the same instant
may overshoot N by at most one trial each; grid studies are exact (queued points are claimed
atomically).

A worker with nothing left to start waits while trials it could take over are running on
other workers (any, on a PostgreSQL storage with heartbeats; this machine's, elsewhere; any
without an owner record yet), so a trial whose worker dies is still re-run.
"""

from __future__ import annotations

from optuna.trial import FrozenTrial, TrialState

from celebhpo.hpo.owner import is_local, is_owned
from celebhpo.hpo.retry import DUPLICATE_OF, retry_history

__all__ = ["budget_used", "next_action"]


def next_action(trials: list[FrozenTrial], n_trials: int | None, *, grid: bool, heartbeat: bool
          ) -> tuple[str, str]:
    """("run" | "wait" | "done", why)."""
    running = [t for t in trials if t.state == TrialState.RUNNING]
    # an owner-less trial is recovered after grace_period wherever its worker ran
    watchable = [t for t in running
                 if heartbeat or is_local(t.user_attrs) or not is_owned(t.user_attrs)]
    waiting_for = (f"waiting for trial(s) {', '.join(str(t.number) for t in watchable)} "
                   "running on other workers (to take over if a worker dies)")
    if n_trials is not None:
        used = budget_used(trials)
        if used >= n_trials:
            return ("wait", waiting_for) if watchable else (
                "done", f"the study holds {used} trials (--trials {n_trials})")
    if not grid:
        return "run", ""
    if any(t.state == TrialState.WAITING for t in trials):
        return "run", ""
    return ("wait", waiting_for) if watchable else ("done", "the grid is exhausted")


def budget_used(trials: list[FrozenTrial]) -> int:
    """Trials that count against `--trials`: see the module docstring."""
    rerun = {n for t in trials for n in retry_history(t)}
    return sum(1 for t in trials
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
               or (t.state == TrialState.FAIL and t.number not in rerun
                   and DUPLICATE_OF not in t.user_attrs))
