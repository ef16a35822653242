"""When the study's database goes away for a while, or for good.

Every call a worker makes to its Optuna storage goes through ONE `RetryPolicy`, held by the
`ResilientStorage` that wraps the storage `open_storage` opens:

- A transient error (a dropped connection, "the database system is shutting down" or
  "starting up", a server restarting, "database is locked") is retried with backoff
  (0.5, 1, 2, 2, ... s: a worker is back at most 2 s after its database) until `limit_s` seconds (60 by default, `optimize
  --storage-retry`) have passed since the first failure; then `StorageUnavailable`. One line
  says the storage is unreachable, one that it is back. The heartbeat thread and the atomic
  claim (liveness.py) ride on the same policy.
- Before that, SQLAlchemy's `pool_pre_ping` (open_storage) checks a pooled connection
  before each use: after a server restart the dead connections are replaced quietly.
- A KeyError ("Record does not exist.") from a storage whose study is gone, or was replaced
  by one of the same name, becomes `StudyDeleted`.

What is retried is one whole Optuna storage call, which is one transaction: a call that
failed was rolled back, so running it again is safe. The one exception is a commit that
landed while its answer was lost: a retried state change then finds the trial finished
already (taken as done when it holds the state asked for), and a retried `create_new_trial`
may leave one extra empty trial, which a worker then runs like any queued one.

Keep `limit_s` below the study's `grace_period` (120 s by default): heartbeats stop during an
outage, and a trial whose heartbeat is older than that is failed and re-queued by any worker
when the database is back.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat  # Optuna does not export it
from optuna.trial import TrialState

from celebhpo.errors import StudyError, mask_url
from celebhpo.stopping import StopRequest

__all__ = ["DEFAULT_RETRY_S", "ResilientStorage", "RetryPolicy", "StorageUnavailable",
           "StudyDeleted", "driver_message", "is_transient"]

T = TypeVar("T")
DEFAULT_RETRY_S = 60.0

# errors a wait cannot mend, though their drivers raise them as OperationalError
_PERMANENT = ("password authentication failed", "does not exist", "no pg_hba.conf entry",
              "permission denied", "no such table", "no such column", "unable to open database",
              "authentication failed", "role ")


class StorageUnavailable(StudyError):
    """The storage stayed unreachable for the whole retry bound; `detail`: what the driver
    said last."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class StudyDeleted(StudyError):
    """The study this worker runs was deleted (or replaced) under it."""


def is_transient(error: BaseException) -> bool:
    """Whether `error` (or what it wraps: Optuna raises StorageInternalError from
    SQLAlchemy's) is a lost or refused connection, a server going down or coming up, or a
    locked database: what waiting can mend."""
    import sqlalchemy.exc  # optuna's RDB storage imports it anyway

    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, sqlalchemy.exc.DBAPIError) and (
                e.connection_invalidated
                or isinstance(e, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError)):
            text = str(e).lower()
            return not any(marker in text for marker in _PERMANENT)
        e = e.__cause__ or e.__context__
    return False


def driver_message(error: BaseException) -> str:
    """The first line of what the database driver said (not Optuna's wrapper's), masked."""
    e: BaseException = error
    while e.__cause__ is not None:  # the driver's words, not Optuna's wrapper's
        e = e.__cause__
    text = str(getattr(e, "orig", None) or e).strip()
    return mask_url(text.splitlines()[0] if text else type(e).__name__)


class RetryPolicy:
    """Retries transient storage errors for up to `limit_s` seconds (backoff from `first`
    doubling to `cap`), then raises StorageUnavailable. `notify` gets one line when the
    storage goes away and one when it is back. Its waits end at once on a request to `stop`
    (Ctrl-C, SIGTERM, another thread's abort), which is raised there. Shared by threads."""

    def __init__(self, limit_s: float = DEFAULT_RETRY_S, *, what: str = "storage",
                 notify: Callable[[str], None] | None = None,
                 stop: StopRequest | None = None,
                 first: float = 0.5, cap: float = 2.0) -> None:
        if limit_s < 0:
            raise StudyError(f"--storage-retry {limit_s:g}: give a number of seconds >= 0")
        self.limit_s, self.what = float(limit_s), what
        self.notify = notify or (lambda _: None)
        self.stop = stop
        self.first, self.cap = first, cap
        self._local = threading.local()
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._back_at: float | None = None  # when the last outage ended (monotonic)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)`, retried while it fails transiently and the bound lasts.
        A call made inside another (a method built on others) is not retried on its own."""
        if getattr(self._local, "inside", False):
            return fn(*args, **kwargs)
        self._local.inside = True
        try:
            return self._retry(fn, args, kwargs)
        finally:
            self._local.inside = False

    def _retry(self, fn: Callable[..., T], args: tuple, kwargs: dict[str, Any]) -> T:
        started: float | None = None
        delay = self.first
        while True:
            try:
                out = fn(*args, **kwargs)
            except Exception as e:
                if not is_transient(e):
                    raise
                now = time.monotonic()
                started = now if started is None else started
                self._went_down(e, now)
                if now - started + delay > self.limit_s:
                    detail = driver_message(e)
                    raise StorageUnavailable(f"{self.what} unreachable for {self.limit_s:g} s "
                                             f"({detail})", detail) from None
                if self.stop is None:
                    time.sleep(delay)
                elif self.stop.wait(delay):
                    self.stop.check()  # raises the request
                delay = min(delay * 2, self.cap)
                continue
            if started is not None:
                self._came_back()
            return out

    def _went_down(self, error: BaseException, now: float) -> None:
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = now
        self.notify(f"{self.what} unreachable ({driver_message(error)}); retrying for up to "
                    f"{self.limit_s:g} s")

    def settling(self, seconds: float) -> bool:
        """Whether the storage is unreachable now or came back less than `seconds` ago:
        nobody's heartbeat could be recorded meanwhile (liveness.py then waits before it
        takes a silent trial for dead)."""
        with self._lock:
            return self._down_since is not None or (
                self._back_at is not None and time.monotonic() - self._back_at < seconds)

    def _came_back(self) -> None:
        with self._lock:
            since, self._down_since = self._down_since, None
            self._back_at = time.monotonic()
        if since is not None:
            self.notify(f"{self.what} is back after {time.monotonic() - since:.1f} s")


class ResilientStorage(BaseStorage, BaseHeartbeat):
    """An Optuna storage whose every call goes through `policy` (see the module docstring)
    and turns the KeyError of a vanished study into StudyDeleted. Wraps the storage as
    Optuna would use it (an RDB storage inside Optuna's cache: `optuna.storages.get_storage`),
    so what it adds is only the retry. Attributes it does not define are the inner storage's
    (liveness.py reaches the RDB storage under the cache for the atomic claim)."""

    def __init__(self, inner: BaseStorage, policy: RetryPolicy) -> None:
        self.inner, self.policy = inner, policy
        self._studies: dict[str, int] = {}  # name -> id of the studies this process opened

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not yet set (unpickling, copying)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"ResilientStorage({self.inner!r}, {self.policy.limit_s:g} s)"

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.policy.call(getattr(self.inner, name), *args, **kwargs)
        except KeyError:
            gone = self._vanished()
            if gone:
                raise StudyDeleted(gone) from None
            raise

    def _vanished(self) -> str:
        """'study X was deleted' when a study this process opened is gone or replaced."""
        for name, study_id in self._studies.items():
            try:
                now = self.policy.call(self.inner.get_study_id_from_name, name)
            except KeyError:
                return f"study {name!r} was deleted"
            if now != study_id:
                return f"study {name!r} was deleted (and created again)"
        return ""

    # -- the calls that name a study: remembered, to recognise it gone ------------------------
    def get_study_id_from_name(self, study_name: str) -> int:
        study_id = self._call("get_study_id_from_name", study_name)
        self._studies[study_name] = study_id
        return study_id

    def create_new_study(self, directions: Any, study_name: str | None = None) -> int:
        study_id = self._call("create_new_study", directions, study_name)
        self._studies[self.inner.get_study_name_from_id(study_id)] = study_id
        return study_id

    def delete_study(self, study_id: int) -> None:
        self._studies = {n: i for n, i in self._studies.items() if i != study_id}
        self._call("delete_study", study_id)

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Any = None) -> bool:
        attempts = 0

        def attempt() -> bool:
            nonlocal attempts
            attempts += 1
            try:
                return self.inner.set_trial_state_values(trial_id, state=state, values=values)
            except UpdateFinishedTrialError:
                # a retry after a commit whose answer was lost: done if it holds our state
                if attempts > 1 and self.inner.get_trial(trial_id).state == state:
                    return True
                raise

        try:
            return self.policy.call(attempt)
        except KeyError:
            gone = self._vanished()
            if gone:
                raise StudyDeleted(gone) from None
            raise

    def settling(self, grace_period: float) -> bool:
        """Whether heartbeats may be old through no fault of their workers: this process saw
        the storage come back less than `grace_period` s ago, or the PostgreSQL server
        behind it started that recently (a restart every worker lived through, even one
        that started after it). liveness.py then takes no silent trial for dead yet."""
        return self.policy.settling(grace_period) or self.policy.call(
            _started_within, getattr(self.inner, "_backend", None), grace_period)

    # -- heartbeats: those of the inner storage, or none ---------------------------------------
    def get_heartbeat_interval(self) -> int | None:
        inner = self.inner
        return inner.get_heartbeat_interval() if isinstance(inner, BaseHeartbeat) else None


def _started_within(rdb: Any, seconds: float) -> bool:
    """Whether the PostgreSQL server of an Optuna RDB storage started less than `seconds`
    ago (heartbeats are the server's time too); False for any other storage."""
    import sqlalchemy

    engine = getattr(rdb, "engine", None)
    if engine is None or engine.dialect.name != "postgresql":
        return False
    with engine.connect() as conn:
        age = conn.execute(sqlalchemy.text(
            "SELECT EXTRACT(EPOCH FROM now() - pg_postmaster_start_time())")).scalar()
    return age is not None and float(age) < seconds


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: ResilientStorage, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    return method


# every other method of Optuna's storage interface: the inner storage's, through the policy
for _name, _value in [*vars(BaseStorage).items(), *vars(BaseHeartbeat).items()]:
    if (callable(_value) and not _name.startswith("__") and _name not in vars(ResilientStorage)
            and _name not in ("get_failed_trial_callback",)):
        setattr(ResilientStorage, _name, _delegate(_name))
abc.update_abstractmethods(ResilientStorage)
assert not ResilientStorage.__abstractmethods__, ResilientStorage.__abstractmethods__
del _name, _value
