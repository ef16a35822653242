"""Who owns a trial: claiming a queued trial, heartbeats, recognising trials of dead workers,
failing and re-queueing them. The ONLY module of celebhpo that touches Optuna internals
(`study._storage`, `trial._trial_id`, the cached storage's `_backend`, the RDB models for an
atomic claim); each use names the public API Optuna lacks. (outage.py subclasses Optuna's
heartbeat interface, which Optuna does not export, and asks the cache's `_backend` for the
PostgreSQL server's start time.) Every call here, the heartbeat thread's too, rides the
storage's retry policy (outage.py).

Claiming: every trial a worker runs is a WAITING trial (a grid point, a re-queued trial, or an
empty slot it queued for the sampler) that it moves to RUNNING; exactly one worker wins the
move on every storage (on SQL storages one conditional UPDATE: SQLite ignores SELECT ... FOR
UPDATE). The winner's owner record (owner.py: user attrs `host`, `pid`, `pid_start` — a
recycled pid is not the worker — and `pid_ns` — a container's pids are not ours) and, on
heartbeat storages, its first heartbeat are written in the same transaction on SQLite and
PostgreSQL; on a journal file right after the claim.

Rule for trials left RUNNING by a dead worker (kill -9, power loss):
- on a server database (PostgreSQL) the heartbeat decides, for every machine: a trial without
  a heartbeat for `grace_period` seconds is failed and re-queued by any worker;
- on SQLite and journal files (one machine) a RUNNING trial whose worker ran here and is gone
  (no such process, a zombie, or a different process under its pid) is failed and re-queued
  by the next celebhpo worker to look (a re-run `optimize` on SQLite, a surviving worker);
- everywhere, a RUNNING trial without a complete owner record whose `datetime_start` is more
  than `grace_period` seconds old is failed and re-queued: its worker died between claiming
  it and recording itself (a journal file's short window, or a claim made outside celebhpo).
Nothing else is touched: without heartbeats nothing can tell another machine's slow worker
from a dead one. A re-queued trial is re-run at most MAX_RETRY times. A worker that was only
slow (stopped past `grace_period`) has lost its trial to the re-run: `trial_taken_over` tells
it to drop the trial.

Failing a trial and queueing its re-run are two writes: a worker killed between them would
lose the point. So a trial meant to be re-run is marked (`RETRY_WANTED`, or no fail_reason:
failed by its stale heartbeat) before it is failed, and every worker's recovery re-queues a
marked FAIL trial that has no re-run yet (`requeue_orphans`). Two workers may then queue the
same re-run; the claim keeps the first (lowest number) and fails the other as a duplicate.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from celebhpo.hpo.owner import OWNER_KEYS, is_dead_local, is_local, is_owned, worker_identity
from celebhpo.hpo.retry import (
    DUPLICATE_OF,
    FAIL_REASON,
    MAX_RETRY,
    RETRY_WANTED,
    RequeueStale,
    first_rerun,
    requeue,
    requeue_orphans,
    rerun_of,
)

__all__ = ["DUPLICATE_OF", "MAX_RETRY", "OWNER_KEYS", "RETRY_WANTED", "RequeueStale",
           "TrialTakenOver", "claim_new_trial", "claim_waiting_trial", "fail_and_requeue",
           "heartbeat", "heartbeat_interval", "is_dead_local", "is_local", "is_owned",
           "own_running_trials", "recover_lost_trials", "requeue", "requeue_finished",
           "requeue_orphans", "trial_taken_over", "worker_identity"]


class TrialTakenOver(Exception):
    """This worker's trial was declared stale and re-queued elsewhere while it ran."""


# -- who runs a trial ------------------------------------------------------------------------
def own_running_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The RUNNING trials this process runs (by pid and host)."""
    me = worker_identity()
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("pid") == me["pid"] and t.user_attrs.get("host") == me["host"]]


# -- claiming a trial and keeping it ---------------------------------------------------------
def claim_waiting_trial(study: optuna.Study) -> optuna.Trial | None:
    """Take one WAITING trial (a grid point or a re-queued trial) for this worker, or None.

    `study.ask()` would create a fresh trial when the queue has just been emptied by another
    worker, and a fresh trial of a grid study duplicates a grid point. This does what
    `Study._pop_waiting_trial_id` does minus the create, plus the owner record (`_claim`).
    """
    # Optuna has no public "pop a WAITING trial or nothing" (Study.ask always creates one), no
    # public storage of a study, and FrozenTrial shows no trial id to build a Trial from
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if not _claim(study, frozen._trial_id):
            continue
        first = first_rerun(study, frozen)
        if first is None:
            return _trial(study, frozen._trial_id)
        study._storage.set_trial_user_attr(frozen._trial_id, DUPLICATE_OF, first)
        study._storage.set_trial_user_attr(
            frozen._trial_id, FAIL_REASON, f"a second re-run of trial "
            f"{rerun_of(frozen)} (trial {first} re-runs it)")
        study.tell(frozen.number, state=TrialState.FAIL)
    return None


def claim_new_trial(study: optuna.Study) -> optuna.Trial | None:
    """A fresh trial for the sampler, claimed like a queued one: an empty WAITING trial is
    added and claimed. None when another worker claimed it first (it runs it; look again)."""
    template = optuna.trial.create_trial(state=TrialState.WAITING)
    # Study.add_trial does not say which trial id it made
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    return _trial(study, trial_id) if _claim(study, trial_id) else None


def _trial(study: optuna.Study, trial_id: int) -> optuna.Trial:
    # what Study.ask does first: samplers read the study's trials through a per-thread
    # cache that only ask() clears, and a stale cache hides every trial since
    study._thread_local.cached_all_trials = None
    return optuna.Trial(study, trial_id)


def _claim(study: optuna.Study, trial_id: int) -> bool:
    """WAITING -> RUNNING for this worker with its owner record (and first heartbeat): one
    transaction on SQL storages; the state change then the record on a journal file, whose
    replay lets exactly one worker's RUNNING through."""
    owner = worker_identity()
    backend = getattr(study._storage, "_backend", study._storage)
    if isinstance(backend, optuna.storages.RDBStorage):
        # the storage's retry policy (outage.py) covers this transaction like its own calls
        policy = getattr(study._storage, "policy", None)
        if policy is None:
            return _claim_rdb(backend, trial_id, owner)
        return policy.call(_claim_rdb, backend, trial_id, owner)
    try:
        if not study._storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
            return False
    except UpdateFinishedTrialError:
        return False
    for key, value in owner.items():
        study._storage.set_trial_user_attr(trial_id, key, value)
    return True


def _claim_rdb(rdb: optuna.storages.RDBStorage, trial_id: int, owner: dict[str, Any]) -> bool:
    # RDBStorage.set_trial_state_values reads the state with SELECT ... FOR UPDATE, which
    # SQLite ignores: two workers could both read WAITING and both win. A conditional UPDATE
    # is atomic on every SQL database; Optuna has no public claim-with-attributes.
    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(rdb.scoped_session) as session:
        won = session.execute(
            sqlalchemy.update(models.TrialModel)
            .where(models.TrialModel.trial_id == trial_id,
                   models.TrialModel.state == TrialState.WAITING)
            .values(state=TrialState.RUNNING, datetime_start=datetime.now())
            .execution_options(synchronize_session=False)
        ).rowcount == 1
        if won:
            for key, value in owner.items():
                rdb._set_trial_attr_without_commit(
                    session, models.TrialUserAttributeModel, trial_id, key, value)
            if rdb.heartbeat_interval:
                session.add(models.TrialHeartbeatModel(trial_id=trial_id))
    return won


def trial_taken_over(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether this worker's RUNNING `trial` has been finished by someone else (declared
    stale and re-queued while this worker was stopped or cut off)."""
    # Optuna reads one trial only by its storage id
    return study._storage.get_trial(trial._trial_id).state != TrialState.RUNNING


def _heartbeat_storage(study: optuna.Study) -> Any:
    """The study's storage when it records heartbeats, else None."""
    # Optuna records heartbeats only inside Study.optimize (storages/_heartbeat.py is
    # private) and gives no public access to a study's storage
    storage = study._storage
    interval = getattr(storage, "get_heartbeat_interval", None)
    return storage if interval is not None and interval() else None


def heartbeat_interval(study: optuna.Study) -> int | None:
    """Seconds between heartbeats of the study's storage; None without heartbeats."""
    storage = _heartbeat_storage(study)
    return None if storage is None else storage.get_heartbeat_interval()


class _HeartbeatThread:
    """Records the trial's heartbeat every `interval` seconds while the `with` block runs.
    An error that outlasts the storage's retries (outage.py), or any other, ends the thread
    quietly and goes to `on_error` (StopRequest.abort: the main thread's)."""

    def __init__(self, storage: Any, trial_id: int, interval: float,
                 on_error: Callable[[BaseException], None]) -> None:
        self._storage, self._trial_id, self._interval = storage, trial_id, interval
        self._on_error = on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}",
                                        daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception as e:  # noqa: BLE001 - whatever it is, the main thread decides
                if not self._stop.is_set():
                    self._on_error(e)
                return

    def __enter__(self) -> None:
        self._storage.record_heartbeat(self._trial_id)
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def heartbeat(study: optuna.Study, trial: optuna.Trial,
              on_error: Callable[[BaseException], None] = lambda _: None
              ) -> AbstractContextManager[None]:
    """`with heartbeat(study, trial):` keeps the trial alive on server RDB storages with
    heartbeats; a do-nothing context for the others (chosen once, like Optuna's
    `get_heartbeat_thread`). `on_error` gets what ended the heartbeat thread early."""
    storage = _heartbeat_storage(study)
    if storage is None:
        return nullcontext()
    # a Trial shows its number, not the id its storage knows it by
    return _HeartbeatThread(storage, trial._trial_id, storage.get_heartbeat_interval(),
                            on_error)


# -- failing and re-queueing -------------------------------------------------------------------
def requeue_finished(study: optuna.Study, trial: optuna.Trial | FrozenTrial,
                     max_retry: int | None = None) -> int | None:
    """`requeue` a trial that was just told FAIL, read back as the storage now holds it."""
    # Optuna reads one trial only by its storage id (study.trials copies every trial)
    return requeue(study, study._storage.get_trial(trial._trial_id), max_retry)


def fail_and_requeue(study: optuna.Study, frozen: FrozenTrial, reason: str) -> bool:
    """FAIL a RUNNING trial with `reason` and queue its re-run; False when another worker
    finished it first (then that worker re-queues it)."""
    try:
        # a user attr can be set publicly only through the Trial its own worker holds
        study._storage.set_trial_user_attr(frozen._trial_id, FAIL_REASON, reason)
        study._storage.set_trial_user_attr(frozen._trial_id, RETRY_WANTED, True)
        study.tell(frozen.number, state=TrialState.FAIL)
    except (UpdateFinishedTrialError, ValueError):
        return False
    requeue_finished(study, frozen, MAX_RETRY)
    return True


def recover_lost_trials(study: optuna.Study, *, heartbeat: bool, grace_period: float
                        ) -> tuple[list[FrozenTrial], list[FrozenTrial]]:
    """Fail and re-queue RUNNING trials whose worker is gone: by heartbeat on a server RDB
    (`heartbeat`), else by a dead local pid; everywhere, a trial left without an owner record
    for `grace_period` seconds; but by heartbeat not within a grace period of an outage (outage.py:
    ResilientStorage.settling; no heartbeat could be recorded during it).
    Returns (the study's trials afterwards, the trials that lost their worker)."""
    trials = study.get_trials(deepcopy=False)
    orphans = requeue_orphans(study, trials)
    if orphans:
        trials = study.get_trials(deepcopy=False)
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if not running:
        return trials, orphans
    settling = getattr(study._storage, "settling", None)  # outage.py: just after an outage
    if heartbeat and not (settling and settling(grace_period)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    now = datetime.now()
    failed_here = set()
    for t in running:
        if not is_owned(t.user_attrs):
            started = t.datetime_start
            if started is None or (now - started).total_seconds() <= grace_period:
                continue  # its worker may be recording itself right now
            reason = (f"its worker stopped between claiming it and recording itself (no owner "
                      f"after {grace_period:g} s)")
        elif not heartbeat and is_dead_local(t.user_attrs):
            reason = (f"worker pid {t.user_attrs['pid']} on {t.user_attrs['host']} died while "
                      "running it")
        else:
            continue
        if fail_and_requeue(study, t, reason):
            failed_here.add(t.number)
    trials = study.get_trials(deepcopy=False)
    # a heartbeat-failed trial has no fail_reason (a trial that failed on its own has)
    numbers = {t.number for t in running}
    lost = [t for t in trials if t.number in failed_here or (
        t.number in numbers and t.state == TrialState.FAIL
        and FAIL_REASON not in t.user_attrs)]
    return trials, orphans + lost
