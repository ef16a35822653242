"""Optuna storages: which storage a URL means, and opening it.

- `sqlite:///studies/celebhpo.db` (the default): one process at a time.
- a path ending in `.log` / `.journal`, or `journal:///abs/path`: a journal file that
  several processes on one machine may share (`JournalFileBackend`, file locks).
- `postgresql+psycopg2://user:pass@host/db` (any non-SQLite RDB URL): many machines. Opened
  with heartbeats once the study's config is known, so the trial of a worker that died is
  failed after `grace_period` seconds and re-queued (`RetryHeartbeatStaleTrialCallback`).

Who owns a trial in them, and what happens to a dead worker's trial: liveness.py.

A URL is parsed once, where it enters (the CLI's --storage, or a library function given a
string: `as_spec`), into a `StorageSpec` that everything below takes. Every message masks
the URL's password.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage

from celebhpo.errors import StudyError, mask_url
from celebhpo.hpo.liveness import MAX_RETRY, RequeueStale
from celebhpo.hpo.outage import (
    ResilientStorage,
    RetryPolicy,
    StorageUnavailable,
    driver_message,
    is_transient,
)

__all__ = ["DEFAULT_STORAGE", "StorageSpec", "as_spec", "open_storage", "optuna_quiet",
           "parse_storage"]

DEFAULT_STORAGE = "sqlite:///studies/celebhpo.db"
JOURNAL_SUFFIXES = (".log", ".journal")


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


def as_spec(storage: StorageSpec | str) -> StorageSpec:
    """`storage` as a spec: how a library function given a URL parses it, once, on entry."""
    return storage if isinstance(storage, StorageSpec) else parse_storage(storage)


def open_storage(
    storage: StorageSpec | str,
    *,
    create: bool = True,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int = MAX_RETRY,
    policy: RetryPolicy | None = None,
    wait: bool = False,
) -> optuna.storages.BaseStorage:
    """The Optuna storage `storage` names, every call of it retried through `policy` (a
    lost database: outage.py; 60 s by default). With `create=False` a SQLite or journal file
    that does not exist is an error rather than a new empty storage. Heartbeat settings apply
    to server RDBs only (the study's `[study] heartbeat_interval/grace_period`; None before
    it is known). `wait` (a worker): a server that is down now is waited for like a lost one;
    else it is a one-line error at once (a command someone is watching)."""
    spec = as_spec(storage)
    policy = policy or RetryPolicy(what=f"storage {spec.masked}")
    local = _local_file(spec)
    if local is not None and not create and not local.exists():
        raise StudyError(
            f"no study storage at {local}; create a study first (celebhpo study create "
            f"STUDY_FILE --storage {spec.masked}) or pass the right --storage"
        )
    if spec.kind == "journal":
        path = Path(spec.target)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return ResilientStorage(JournalStorage(JournalFileBackend(str(path))), policy)
        except OSError as e:
            raise StudyError(f"cannot open journal storage {path}: {e.strerror or e}") from None

    if local is not None:
        # SQLite creates the file but not the folder that holds it
        local.parent.mkdir(parents=True, exist_ok=True)
    kwargs = _rdb_kwargs(spec, heartbeat_interval, grace_period, max_retry)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            rdb = (policy.call if wait else _now)(optuna.storages.RDBStorage, spec.target,
                                                  **kwargs)
        except ImportError:
            raise StudyError(
                f"storage {spec.masked}: its database driver is not installed; for PostgreSQL "
                "run: pip install 'celebhpo[postgres]'"
            ) from None
        except StorageUnavailable as e:  # `wait`: no answer within the retry bound
            raise StudyError(f"cannot open storage {spec.masked}: no answer for "
                             f"{policy.limit_s:g} s ({e.detail}); check the URL and that the "
                             "database server is running") from None
        except Exception as e:  # noqa: BLE001 - sqlalchemy/driver errors share no base we import
            first = driver_message(e).split(". Please execute")[0]  # Optuna's remedy: ours
            raise StudyError(f"cannot open storage {spec.masked}: {first}; "
                             f"{_remedy(e, spec)}") from None
    # Optuna's own wrapping (a cache of finished trials), then the retries around it
    return ResilientStorage(optuna.storages.get_storage(rdb), policy)


def _rdb_kwargs(spec: StorageSpec, heartbeat_interval: int | None, grace_period: int | None,
                max_retry: int) -> dict[str, Any]:
    """RDBStorage's arguments for a server database: heartbeats once known, and a pooled
    connection checked before use (after a server restart the dead ones are replaced
    quietly instead of failing the next call)."""
    if spec.kind != "rdb":
        return {}
    kwargs: dict[str, Any] = {"engine_kwargs": {"pool_pre_ping": True}}
    if spec.target.startswith("postgresql"):
        kwargs["engine_kwargs"]["connect_args"] = {"connect_timeout": 10}
    if heartbeat_interval is not None:
        kwargs.update(heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                      heartbeat_stale_trial_callback=RequeueStale(max_retry))
    return kwargs


def _remedy(error: Exception, spec: StorageSpec) -> str:
    """What to do about a storage that would not open: a server that did not answer, one
    that refused us (user, password, database name), or tables Optuna cannot read."""
    import sqlalchemy.exc

    if is_transient(error):
        return "check the URL and that the database server is running"
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, sqlalchemy.exc.DBAPIError):
        cause = cause.__cause__
    if isinstance(cause, sqlalchemy.exc.OperationalError) and "no such" not in str(cause):
        return "check the user, password and database name in the URL"
    return (f"its tables were not written by this Optuna ({optuna.__version__}): if another "
            f"Optuna made them, run `optuna storage upgrade --storage {spec.masked}`; else "
            "point --storage at a celebhpo study database")


def _now(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


@contextmanager
def optuna_quiet() -> Iterator[None]:
    """Optuna logs each study creation and finished trial at INFO; celebhpo prints its own
    lines. Restores the previous verbosity."""
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
