"""Re-running a trial whose worker is gone: the WAITING copy that re-runs it, the marks that
let any worker finish a re-queue a dead worker started, and the rule that keeps one re-run
when two were queued (liveness.py says when a trial has lost its worker).

Public Optuna API only.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = ["DUPLICATE_OF", "FAIL_REASON", "MAX_RETRY", "RETRY_HISTORY", "RETRY_WANTED",
           "RequeueStale", "first_rerun", "requeue", "requeue_orphans", "rerun_of",
           "retry_history"]

MAX_RETRY = 2  # a trial whose worker dies is re-run at most this many times
RETRY_WANTED = "retry_wanted"  # user attr: this FAIL is to be re-run (set before the FAIL)
DUPLICATE_OF = "duplicate_of"  # user attr of a re-run queued twice: the one that runs
# user attr: why a FAIL trial failed (masked); none on a trial failed by its stale heartbeat
FAIL_REASON = "fail_reason"
# system attr of a re-run (Optuna's RetryFailedTrialCallback's name, which its helpers read):
# the numbers of the attempts it re-runs, oldest first
RETRY_HISTORY = "retry_history"


def retry_history(trial: FrozenTrial) -> list[int]:
    """The numbers of the earlier attempts `trial` re-runs, oldest first ([]: a first try)."""
    return list(trial.system_attrs.get(RETRY_HISTORY, []))


def rerun_of(trial: FrozenTrial) -> int | None:
    """The attempt `trial` re-runs (the last of its history), or None."""
    history = retry_history(trial)
    return history[-1] if history else None


def requeue(study: optuna.Study, trial: FrozenTrial, max_retry: int | None = None) -> int | None:
    """Queue a WAITING copy of a failed `trial`: same params, grid point and system attrs
    with its retry history, like Optuna's RetryHeartbeatStaleTrialCallback. Its user attrs
    are not copied (celebhpo's describe one attempt: worker, MLflow run, results); the copy
    gets `retry_of`. Returns the retry's position in the history, or None when `max_retry`
    is used up."""
    history = [*retry_history(trial), trial.number]
    system_attrs = {"failed_trial": trial.number, **trial.system_attrs, RETRY_HISTORY: history}
    if max_retry is not None and len(history) > max_retry:
        return None
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={"retry_of": trial.number},
            system_attrs=system_attrs,
        )
    )
    return len(history)


class RequeueStale:
    """The storage's heartbeat-stale callback: RetryHeartbeatStaleTrialCallback's semantics
    (same `failed_trial`/`retry_history` system attrs, so Optuna's helpers read them), but
    the retry does not inherit the dead attempt's user attrs (see `requeue`)."""

    def __init__(self, max_retry: int | None) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        requeue(study, trial, self.max_retry)


def requeue_orphans(study: optuna.Study, trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Queue the re-run of every FAIL trial meant to be re-run (RETRY_WANTED, or failed by
    its heartbeat: no fail_reason) that has none: its worker died between the two writes.
    Returns those trials."""
    rerun = {rerun_of(t) for t in trials} - {None}
    out = []
    for t in trials:
        wanted = t.user_attrs.get(RETRY_WANTED) or FAIL_REASON not in t.user_attrs
        if (t.state == TrialState.FAIL and wanted and t.number not in rerun
                and requeue(study, t, MAX_RETRY) is not None):
            out.append(t)
    return out


def first_rerun(study: optuna.Study, frozen: FrozenTrial) -> int | None:
    """When `frozen` re-runs a trial that an earlier (lower-numbered) trial re-runs too: that
    trial's number, else None."""
    of = rerun_of(frozen)
    if of is None:
        return None
    earlier = [t.number for t in study.get_trials(deepcopy=False)
               if t.number < frozen.number and rerun_of(t) == of]
    return min(earlier) if earlier else None
