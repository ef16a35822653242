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
) -> optuna.storages.BaseStorage:
    """The Optuna storage `storage` names. With `create=False` a SQLite or journal file that
    does not exist is an error rather than a new empty storage. Heartbeat settings apply to
    server RDBs only (the study's `[study] heartbeat_interval/grace_period`; None before it is
    known)."""
    spec = as_spec(storage)
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
            "heartbeat_stale_trial_callback": RequeueStale(max_retry),
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
