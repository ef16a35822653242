"""Optuna storages and who owns a trial in them: which storage a URL means, opening it,
claiming queued trials, heartbeats, recognising and re-queueing trials of dead workers.

- `sqlite:///studies/celebhpo.db` (the default): one process at a time.
- a path ending in `.log` / `.journal`, or `journal:///abs/path`: a journal file that
  several processes on one machine may share (`JournalFileBackend`, file locks).
- `postgresql+psycopg2://user:pass@host/db` (any non-SQLite RDB URL): many machines. Opened
  with heartbeats once the study's config is known, so the trial of a worker that died is
  failed after `grace_period` seconds and re-queued (`RetryHeartbeatStaleTrialCallback`).

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

Every message masks the URL's password.
"""

from __future__ import annotations

import os
import socket
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celebhpo.errors import StudyError, mask_url

if TYPE_CHECKING:
    import optuna

__all__ = ["DEFAULT_STORAGE", "StorageSpec", "claim_waiting_trial", "heartbeat", "is_dead_local",
           "is_local", "open_storage", "optuna_quiet", "parse_storage", "requeue",
           "worker_identity"]

DEFAULT_STORAGE = "sqlite:///studies/celebhpo.db"
JOURNAL_SUFFIXES = (".log", ".journal")
MAX_RETRY = 2  # a trial whose worker dies is re-run at most this many times

@dataclass(frozen=True)
class StorageSpec:
    """What a storage URL means. `target` is the SQLAlchemy URL or the journal file path."""

    url: str
    kind: str  # "sqlite" | "journal" | "rdb"
    target: str

    @property
    def masked(self) -> str:
        return mask_url(self.url)

    @property
    def multiprocess(self) -> bool:
        """Whether several worker processes may share it."""
        return self.kind != "sqlite"

    @property
    def heartbeat(self) -> bool:
        """Whether dead workers are detected by heartbeat (a server-backed RDB)."""
        return self.kind == "rdb"


def parse_storage(url: str) -> StorageSpec:
    """Classify a storage URL; raises StudyError for one we cannot use."""
    text = str(url).strip()
    if not text:
        raise StudyError(f"empty storage URL; use e.g. {DEFAULT_STORAGE}")
    if text.startswith("journal://"):
        path = text[len("journal://"):]
        if not path.startswith("/"):
            raise StudyError(
                f"storage {mask_url(text)}: a journal URL needs an absolute path "
                "(journal:///abs/path/study.log), or give the path itself"
            )
        return StorageSpec(text, "journal", path)
    if "://" not in text:
        if text.endswith(JOURNAL_SUFFIXES):
            return StorageSpec(text, "journal", str(Path(text).expanduser().resolve()))
        raise StudyError(
            f"storage {text!r}: not a URL; use sqlite:///{text} (one process), a journal file "
            "ending in .log (several processes) or postgresql+psycopg2://user:pass@host/db"
        )
    if text.startswith("sqlite:"):
        return StorageSpec(text, "sqlite", text)
    return StorageSpec(text, "rdb", text)


def open_storage(
    url: str,
    *,
    create: bool = True,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int = MAX_RETRY,
) -> optuna.storages.BaseStorage:
    """The Optuna storage for `url`. With `create=False` a SQLite or journal file that does
    not exist is an error rather than a new empty storage. Heartbeat settings apply to server
    RDBs only (the study's `[study] heartbeat_interval/grace_period`; None before it is known).
    """
    import optuna

    spec = parse_storage(url)
    local = _local_file(spec)
    if local is not None and not create and not local.exists():
        raise StudyError(
            f"no study storage at {local}; create a study first (celebhpo study create "
            f"STUDY_FILE --storage {spec.masked}) or pass the right --storage"
        )
    if spec.kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(spec.target)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as e:
            raise StudyError(f"cannot open journal storage {path}: {e.strerror or e}") from None

    kwargs: dict[str, Any] = {}
    if local is not None:
        # SQLite creates the file but not the folder that holds it
        local.parent.mkdir(parents=True, exist_ok=True)
    elif spec.kind == "rdb" and heartbeat_interval is not None:
        kwargs = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period,
            "heartbeat_stale_trial_callback": _RequeueStale(max_retry),
        }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return optuna.storages.RDBStorage(spec.target, **kwargs)
        except ImportError:
            raise StudyError(
                f"storage {spec.masked}: its database driver is not installed; for PostgreSQL "
                "run: pip install 'celebhpo[postgres]'"
            ) from None
        except Exception as e:  # noqa: BLE001 - sqlalchemy/driver errors share no base we import
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise StudyError(
                f"cannot open storage {spec.masked}: {mask_url(first)}; check the URL and that "
                "the database server is running"
            ) from None


@contextmanager
def optuna_quiet() -> Iterator[None]:
    """Optuna logs each study creation and finished trial at INFO; celebhpo prints its own
    lines. Restores the previous verbosity."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _local_file(spec: StorageSpec) -> Path | None:
    """The file behind a SQLite or journal storage (None for a server or in-memory SQLite)."""
    if spec.kind == "journal":
        return Path(spec.target)
    if spec.kind == "sqlite" and spec.target.startswith("sqlite:///"):
        path = spec.target[len("sqlite:///"):]
        return Path(path).expanduser() if path and path != ":memory:" else None
    return None


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial,
            max_retry: int | None = None) -> int | None:
    """Queue a WAITING copy of a failed `trial`: same params, grid point and system attrs
    with its retry history, like Optuna's RetryHeartbeatStaleTrialCallback. Its user attrs
    are not copied (celebhpo's describe one attempt: worker, MLflow run, results); the copy
    gets `retry_of`. Returns the retry's position in the history, or None when `max_retry`
    is used up."""
    import optuna

    system_attrs = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
    history = [*system_attrs["retry_history"], trial.number]
    system_attrs["retry_history"] = history
    if max_retry is not None and len(history) > max_retry:
        return None
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={"retry_of": trial.number},
            system_attrs=system_attrs,
        )
    )
    return len(history)


class _RequeueStale:
    """The storage's heartbeat-stale callback: RetryHeartbeatStaleTrialCallback's semantics
    (same `failed_trial`/`retry_history` system attrs, so Optuna's helpers read them), but
    the retry does not inherit the dead attempt's user attrs (see `requeue`)."""

    def __init__(self, max_retry: int | None) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        requeue(study, trial, self.max_retry)


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


# -- claiming and running a trial -------------------------------------------------------------
def claim_waiting_trial(study: optuna.Study) -> optuna.Trial | None:
    """Take one WAITING trial (a grid point or a re-queued trial) for this worker, or None.

    `study.ask()` would create a fresh trial when the queue has just been emptied by another
    worker, and a fresh trial of a grid study duplicates a grid point. Optuna has no public
    "pop or nothing", so this does what `Study._pop_waiting_trial_id` does minus the create:
    the storage's WAITING -> RUNNING transition is atomic, exactly one worker wins it.
    """
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError

    storage = study._storage
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(frozen._trial_id,
                                              state=optuna.trial.TrialState.RUNNING):
                return optuna.Trial(study, frozen._trial_id)
        except UpdateFinishedTrialError:
            continue
    return None


@contextmanager
def heartbeat(storage: Any, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat every `heartbeat_interval` seconds while the block runs
    (server RDB storages with heartbeats; a no-op for the others)."""
    interval = getattr(storage, "heartbeat_interval", None)
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    storage.record_heartbeat(trial_id)
    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
