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

__all__ = ["budget_used", "next_action", "no_weights", "pruned_only"]


def next_action(trials: list[FrozenTrial], n_trials: int | None, *, grid: bool, heartbeat: bool
          ) -> tuple[str, str]:
    """("run" | "wait" | "done", why)."""
    running = [t for t in trials if t.state == TrialState.RUNNING]
    # an owner-less trial is recovered after grace_period wherever its worker ran
    watchable = [t for t in running
                 if heartbeat or is_local(t.user_attrs) or not is_owned(t.user_attrs)]
    waiting_for = (f"waiting for trial(s) {', '.join(str(t.number) for t in watchable)} "
                   "running on other workers (to take over if a worker dies)")
    no_model = pruned_only(trials, grid)
    no_model = f"; {no_model}" if no_model else ""
    if n_trials is not None:
        used = budget_used(trials)
        if used >= n_trials:
            return ("wait", waiting_for) if watchable else (
                "done", f"the study holds {used} trials (--trials {n_trials}){no_model}")
    if not grid:
        return "run", ""
    if any(t.state == TrialState.WAITING for t in trials):
        return "run", ""
    return ("wait", waiting_for) if watchable else ("done", f"the grid is exhausted{no_model}")


def pruned_only(trials: list[FrozenTrial], grid: bool, name: str = "") -> str:
    """When every finished trial was pruned (none COMPLETE, none running or queued): the
    cause and the fix, in one line (optimize's stop reason, export-best's error); else ""."""
    states = [t.state.name for t in trials]
    if "PRUNED" not in states or {"COMPLETE", "RUNNING", "WAITING"} & set(states):
        return ""
    counts = ", ".join(f"{states.count(s)} {s}" for s in ("PRUNED", "FAIL") if s in states)
    study = f" of study '{name}'" if name else ""
    again = "celebhpo study create STUDY_FILE --replace --set study.pruner=none"
    more = "" if grid else ", or run more trials (optimize --trials N)"
    return (f"no trial{study} completed ({counts}), and a pruned trial keeps no model to "
            f"export: create the study again without pruning (`{again}"
            f"{' --grid' if grid else ''}`) and optimize it{more}")


def no_weights(error: Exception, number: int) -> str:
    """Why a worker stops on weights it cannot have (hpo.trial: a ModelError re-queues its
    trial), and the two ways out, in one line: a study keeps the config it was created with."""
    return (f"{error}. Every trial would fail the same way, so this worker stopped and trial "
            f"{number} is queued again: put the weights in place and run optimize again, or "
            "create the study again with `celebhpo study create STUDY_FILE --replace --set "
            "train.pretrained=none` (its config is stored: editing the file changes nothing)")


def budget_used(trials: list[FrozenTrial]) -> int:
    """Trials that count against `--trials`: see the module docstring."""
    rerun = {n for t in trials for n in retry_history(t)}
    return sum(1 for t in trials
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
               or (t.state == TrialState.FAIL and t.number not in rerun
                   and DUPLICATE_OF not in t.user_attrs))
