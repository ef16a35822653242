"""Who owns a trial: claiming a queued trial, heartbeats, recognising trials of dead workers,
failing and re-queueing them. The ONLY module of celebhpo that touches Optuna internals
(`study._storage`, `trial._trial_id`, the cached storage's `_backend`); each use names the
public API Optuna lacks.

Rule for trials left RUNNING by a dead worker (kill -9, power loss):
- on a server database (PostgreSQL) the heartbeat decides, for every machine: a trial without
  a heartbeat for `grace_period` seconds is failed and re-queued by any worker;
- on SQLite and journal files (one machine) every trial records the `host`, `pid`,
  `pid_start` (process start time: a recycled pid is not the worker) and `pid_ns` (pid
  namespace: a container's pids are not ours) of its worker; a RUNNING trial whose worker
  ran here and is gone is failed and re-queued by the next celebhpo worker to look (a re-run
  `optimize` on SQLite, a surviving worker on a journal file).
Nothing else is touched: without heartbeats nothing can tell another machine's slow worker
from a dead one. A re-queued trial is re-run at most MAX_RETRY times.
"""

from __future__ import annotations

import os
import socket
import threading
import warnings
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

__all__ = ["MAX_RETRY", "RequeueStale", "claim_waiting_trial", "fail_and_requeue", "heartbeat",
           "heartbeat_interval", "is_dead_local", "is_local", "own_running_trials",
           "recover_lost_trials", "requeue", "requeue_finished", "worker_identity"]

MAX_RETRY = 2  # a trial whose worker dies is re-run at most this many times


# -- who runs a trial ------------------------------------------------------------------------
def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), or None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    return int(stat.rsplit(")", 1)[1].split()[19])


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def worker_identity() -> dict[str, Any]:
    """`host`, `pid`, `pid_start`, `pid_ns` of this process, stored as trial user attrs."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": _process_start(pid),
            "pid_ns": _pid_namespace()}


def is_local(attrs: dict[str, Any]) -> bool:
    """Whether trial user attrs name a worker of this machine (host name and pid namespace)."""
    return (attrs.get("host") == socket.gethostname() and isinstance(attrs.get("pid"), int)
            and attrs.get("pid_ns") == _pid_namespace())


def is_dead_local(attrs: dict[str, Any]) -> bool:
    """Whether the worker described by trial user attrs ran on this machine and is gone."""
    if not is_local(attrs):
        return False
    pid = attrs["pid"]
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # someone else's live process holds that pid now
    start = attrs.get("pid_start")
    return start is not None and _process_start(pid) not in (None, start)


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
    `Study._pop_waiting_trial_id` does minus the create: the storage's WAITING -> RUNNING
    transition is atomic, exactly one worker wins it.
    """
    # Optuna has no public "pop a WAITING trial or nothing" (Study.ask always creates one), no
    # public storage of a study, and FrozenTrial shows no trial id to build a Trial from
    storage = study._storage
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, frozen._trial_id)
        except UpdateFinishedTrialError:
            continue
    return None


def _heartbeat_storage(study: optuna.Study) -> Any:
    """The RDBStorage under Optuna's cache wrapper when it has heartbeats, else None."""
    # Optuna records heartbeats only inside Study.optimize (storages/_heartbeat.py is
    # private) and gives no public access to a study's storage or to the one it caches
    storage = getattr(study._storage, "_backend", study._storage)
    return storage if getattr(storage, "heartbeat_interval", None) else None


def heartbeat_interval(study: optuna.Study) -> int | None:
    """Seconds between heartbeats of the study's storage; None without heartbeats."""
    storage = _heartbeat_storage(study)
    return None if storage is None else storage.heartbeat_interval


class _HeartbeatThread:
    """Records the trial's heartbeat every `interval` seconds while the `with` block runs."""

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self._storage, self._trial_id, self._interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}",
                                        daemon=True)

    def _beat(self) -> None:
        while True:
            self._storage.record_heartbeat(self._trial_id)
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> None:
        self._storage.record_heartbeat(self._trial_id)
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def heartbeat(study: optuna.Study, trial: optuna.Trial) -> AbstractContextManager[None]:
    """`with heartbeat(study, trial):` keeps the trial alive on server RDB storages with
    heartbeats; a do-nothing context for the others (chosen once, like Optuna's
    `get_heartbeat_thread`)."""
    storage = _heartbeat_storage(study)
    if storage is None:
        return nullcontext()
    # a Trial shows its number, not the id its storage knows it by
    return _HeartbeatThread(storage, trial._trial_id, storage.heartbeat_interval)


# -- failing and re-queueing -------------------------------------------------------------------
def requeue(study: optuna.Study, trial: FrozenTrial, max_retry: int | None = None) -> int | None:
    """Queue a WAITING copy of a failed `trial`: same params, grid point and system attrs
    with its retry history, like Optuna's RetryHeartbeatStaleTrialCallback. Its user attrs
    are not copied (celebhpo's describe one attempt: worker, MLflow run, results); the copy
    gets `retry_of`. Returns the retry's position in the history, or None when `max_retry`
    is used up."""
    system_attrs = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
    history = [*system_attrs["retry_history"], trial.number]
    system_attrs["retry_history"] = history
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


def requeue_finished(study: optuna.Study, trial: optuna.Trial | FrozenTrial,
                     max_retry: int | None = None) -> int | None:
    """`requeue` a trial that was just told FAIL, read back as the storage now holds it."""
    # Optuna reads one trial only by its storage id (study.trials copies every trial)
    return requeue(study, study._storage.get_trial(trial._trial_id), max_retry)


class RequeueStale:
    """The storage's heartbeat-stale callback: RetryHeartbeatStaleTrialCallback's semantics
    (same `failed_trial`/`retry_history` system attrs, so Optuna's helpers read them), but
    the retry does not inherit the dead attempt's user attrs (see `requeue`)."""

    def __init__(self, max_retry: int | None) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        requeue(study, trial, self.max_retry)


def fail_and_requeue(study: optuna.Study, frozen: FrozenTrial, reason: str) -> bool:
    """FAIL a RUNNING trial with `reason` and queue its re-run; False when another worker
    finished it first (then that worker re-queues it)."""
    try:
        # a user attr can be set publicly only through the Trial its own worker holds
        study._storage.set_trial_user_attr(frozen._trial_id, "fail_reason", reason)
        study.tell(frozen.number, state=TrialState.FAIL)
    except (UpdateFinishedTrialError, ValueError):
        return False
    requeue_finished(study, frozen, MAX_RETRY)
    return True


def recover_lost_trials(study: optuna.Study, *, heartbeat: bool
                        ) -> tuple[list[FrozenTrial], list[FrozenTrial]]:
    """Fail and re-queue RUNNING trials whose worker is gone: by heartbeat on a server RDB
    (`heartbeat`), else by a dead local pid. Returns (the study's trials afterwards, the trials
    that lost their worker)."""
    trials = study.get_trials(deepcopy=False)
    running = {t.number for t in trials if t.state == TrialState.RUNNING}
    if not running:
        return trials, []
    if heartbeat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    dead = [] if heartbeat else [
        t for t in trials if t.state == TrialState.RUNNING and is_dead_local(t.user_attrs)]
    failed_here = {t.number for t in dead if fail_and_requeue(
        study, t, f"worker pid {t.user_attrs['pid']} on {t.user_attrs['host']} died while "
                  "running it")}
    trials = study.get_trials(deepcopy=False)
    # a heartbeat-failed trial has no fail_reason (a trial that failed on its own has)
    lost = [t for t in trials if t.number in failed_here or (
        t.number in running and t.state == TrialState.FAIL
        and "fail_reason" not in t.user_attrs)]
    return trials, lost
