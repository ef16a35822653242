"""Re-running a trial whose worker is gone: the WAITING copy that re-runs it, the marks that
let any worker finish a re-queue a dead worker started, and the rule that keeps one re-run
when two were queued (liveness.py says when a trial has lost its worker), and the points
given up after their retry limit.

A point is given up when a FAIL attempt meant to be re-run (RETRY_WANTED, or failed by its
stale heartbeat: no fail_reason) has used up MAX_RETRY re-runs and has none: `given_up`
derives them from the trials (no mark is stored), so the worker's summary, `study show` and
the parent run's tag agree, and a point re-queued on purpose (`optimize --retry-given-up`:
`requeue` without a limit) stops being given up at once.

Public Optuna API only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from celebhpo.hpo.record import StudyRecord

__all__ = ["DUPLICATE_OF", "FAIL_REASON", "HEARTBEAT_STOPPED", "MAX_RETRY", "RETRY_HISTORY",
           "RETRY_WANTED", "GivenUp", "RequeueStale", "first_rerun", "given_up", "requeue",
           "requeue_given_up", "requeue_orphans", "rerun_of", "retry_history", "wants_rerun"]

MAX_RETRY = 2  # a trial whose worker dies is re-run at most this many times
RETRY_WANTED = "retry_wanted"  # user attr: this FAIL is to be re-run (set before the FAIL)
DUPLICATE_OF = "duplicate_of"  # user attr of a re-run queued twice: the one that runs
# user attr: why a FAIL trial failed (masked); none on a trial failed by its stale heartbeat
FAIL_REASON = "fail_reason"
# system attr of a re-run (Optuna's RetryFailedTrialCallback's name, which its helpers read):
# the numbers of the attempts it re-runs, oldest first
RETRY_HISTORY = "retry_history"
# why a given-up attempt failed when it has no fail_reason
HEARTBEAT_STOPPED = "its worker's heartbeat stopped"


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


def wants_rerun(trial: FrozenTrial) -> bool:
    """Whether `trial` is a FAIL meant to be re-run: RETRY_WANTED, or failed by its stale
    heartbeat (no fail_reason)."""
    return trial.state == TrialState.FAIL and bool(
        trial.user_attrs.get(RETRY_WANTED) or FAIL_REASON not in trial.user_attrs)


def requeue_orphans(study: optuna.Study, trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Queue the re-run of every FAIL trial meant to be re-run (`wants_rerun`) that has
    none: its worker died between the two writes. Returns those trials."""
    rerun = {rerun_of(t) for t in trials} - {None}
    return [t for t in trials if wants_rerun(t) and t.number not in rerun
            and requeue(study, t, MAX_RETRY) is not None]


def given_up(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The last attempts of the points given up: FAIL trials meant to be re-run
    (`wants_rerun`) whose MAX_RETRY re-runs are used up (`requeue` would queue none) and
    that have no re-run, by trial number."""
    rerun = {rerun_of(t) for t in trials} - {None}
    return [t for t in trials if wants_rerun(t) and t.number not in rerun
            and len(retry_history(t)) >= MAX_RETRY]


@dataclass(frozen=True)
class GivenUp:
    """A point given up after its retry limit, as data (report.py words it)."""

    trial: int  # its last attempt, the one `study show` marks
    params: dict[str, Any]
    attempts: int  # the first try and its re-runs
    reason: str  # why the last attempt failed (HEARTBEAT_STOPPED without a fail_reason)
    grid: bool = False  # a grid point (else a sampled trial's params)

    @classmethod
    def of(cls, trial: FrozenTrial, grid: bool = False) -> GivenUp:
        return cls(trial.number, dict(trial.params), len(retry_history(trial)) + 1,
                   str(trial.user_attrs.get(FAIL_REASON) or HEARTBEAT_STOPPED), grid)


def requeue_given_up(study: optuna.Study) -> list[GivenUp]:
    """`optimize --retry-given-up`, once before any worker starts: queue each given-up point
    once more, on purpose (`requeue` without a limit; failing past its limit again, it is
    given up again). Returns them."""
    record = StudyRecord.of(study)
    gone = given_up(study.get_trials(deepcopy=False))
    for t in gone:
        requeue(study, t)
    return [GivenUp.of(t, bool(record and record.grid)) for t in gone]


def first_rerun(study: optuna.Study, frozen: FrozenTrial) -> int | None:
    """When `frozen` re-runs a trial that an earlier (lower-numbered) trial re-runs too: that
    trial's number, else None."""
    of = rerun_of(frozen)
    if of is None:
        return None
    earlier = [t.number for t in study.get_trials(deepcopy=False)
               if t.number < frozen.number and rerun_of(t) == of]
    return min(earlier) if earlier else None
