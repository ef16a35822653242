"""The MLflow store: which URI, where artifacts go, whether it answers, and one retried call.

Only `MlflowClient` with explicit run ids is used: no fluent "active run" can leak from one
trial into the next. Every call to the store goes through `Tracker.call`, which retries with
backoff and then raises one `TrackingError` line with the URI's password masked; a full or
unwritable disk is not retried, and its line names the file or folder written. The study,
trial, summary and registry modules beside this one do their work through a Tracker.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy
from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException

from celebhpo.errors import TrackingAuthError, TrackingError, disk_message, mask_url, os_cause
from celebhpo.tracking.files import written
from celebhpo.tracking.uris import (
    DEFAULT_TRACKING_URI,
    artifact_root,
    is_http,
    resolve_tracking_uri,
    ui_command,
    with_own_credentials,
)

__all__ = ["CREATE_ID_TAG", "DEFAULT_TRACKING_URI", "Tracker", "artifact_root",
           "resolve_tracking_uri", "ui_command"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# A client-made id on everything celebhpo creates, so a retried create finds its own
# earlier attempt instead of making a second run (or model version)
CREATE_ID_TAG = "celebhpo.create_id"
MAX_TAG_CHARS = 500  # an error tag is for people; the full traceback lives in the worker's log
_BATCH = 100  # MLflow's limit of params/tags per log_batch call
# MLflow error codes that will not get better by asking again
_FINAL_CODES = {
    "INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
    "BAD_REQUEST", "INVALID_STATE", "NOT_FOUND",
}
# ... and those that mean this process lacks the credentials (a study keeps none)
_AUTH_CODES = {"UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED", "PERMISSION_DENIED"}


def one_line(text: str, limit: int = MAX_TAG_CHARS) -> str:
    """`text` masked, on one line, cut to `limit` characters: fit for a tag or a log line."""
    text = " ".join(mask_url(str(text)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the tracker -----------------------------------------------------------------------------
class Tracker:
    """One tracking store. `retries`/`backoff` govern how long a flaky store is retried
    (backoff, 2*backoff, 4*backoff, ... seconds) before a TrackingError.

    Against a server, MLflow's HTTP client also retries connection errors on its own
    (MLFLOW_HTTP_REQUEST_MAX_RETRIES, default 7 with backoff factor 2: minutes); set that
    variable lower to fail faster.
    """

    def __init__(self, uri: str | None = None, *, retries: int = 3, backoff: float = 1.0,
                 timeout: float = 10.0) -> None:
        # a study keeps its URI without credentials: this process may have its own
        self.uri = with_own_credentials(resolve_tracking_uri(uri))
        self.masked_uri = mask_url(self.uri)
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self._client: MlflowClient | None = None

    def __repr__(self) -> str:
        return f"Tracker({self.masked_uri!r})"

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            if self.uri.startswith("sqlite:///"):
                # SQLite cannot create the folder that holds its file
                Path(self.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            if is_http(self.uri) and self.masked_uri != self.uri:
                # MLflow prints "View run NAME at: URL" when a run ends, password and all
                os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)`, retried with exponential backoff on errors that may pass
        (network, a locked database); then one TrackingError line. A disk that is full or
        refuses writes (errors.os_cause) is not retried: one line naming what is written."""
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except TrackingError:
                raise
            except Exception as e:  # noqa: BLE001 - network/sqlalchemy errors share no base
                self._raise_final(what, e, fn, args, kwargs)
                error: Exception = e
            if attempt < self.retries:
                log.warning("MLflow %s failed (%s); retrying in %.1f s", what,
                            one_line(str(error), 200), delay)
                time.sleep(delay)
                delay *= 2
        raise TrackingError(
            f"MLflow {what} failed on {self.masked_uri} after {self.retries + 1} attempts: "
            f"{one_line(str(error), 300)}"
        ) from None

    def _raise_final(self, what: str, e: Exception, fn: Callable[..., Any],
                     args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise the one line for an error that asking again will not cure: a disk that is
        full or refuses writes, missing credentials, a final MLflow error code."""
        if (err := os_cause(e)) is not None:
            raise TrackingError(
                f"MLflow {what}: {disk_message(err, written(self, err, fn, args, kwargs))}"
            ) from err  # kept in the chain: a caller may name its own folder (os_cause)
        if not isinstance(e, MlflowException):
            return
        if e.error_code in _AUTH_CODES:
            raise TrackingAuthError(
                f"MLflow {what} on {self.masked_uri}: the store refused this "
                f"process's credentials ({one_line(e.message, 200)}); give them with "
                "--tracking-uri, MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN"
            ) from None
        if e.error_code in _FINAL_CODES:
            raise TrackingError(
                f"MLflow {what} on {self.masked_uri}: {one_line(e.message)}"
            ) from None

    def create_once(self, what: str, create: Callable[[], T], find: Callable[[], list[T]]) -> T:
        """`create()`, retried like `call`; but a retry first asks `find()` for what an earlier
        attempt made (its answer lost on the way back) and returns that instead."""
        attempts = 0

        def attempt() -> T:
            nonlocal attempts
            attempts += 1
            if attempts > 1 and (found := find()):
                return found[0]
            return create()

        return self.call(what, attempt)

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str], *,
                   key: str | None = None, key_tag: str = CREATE_ID_TAG) -> Run:
        """A new run tagged `key_tag` = `key` (a fresh id by default), made once: a retry
        finds its earlier attempt, and a copy made by MLflow's own HTTP retries (which repeat
        a POST whose answer was lost) is deleted, keeping the run MLflow answered with."""
        key = key or uuid.uuid4().hex
        query = f"tags.`{key_tag}` = '{key}'"

        def find() -> list[Run]:
            return self.client.search_runs([experiment_id], filter_string=query,
                                           run_view_type=ViewType.ACTIVE_ONLY,
                                           order_by=["attributes.start_time ASC"],
                                           max_results=10)

        run = self.create_once("create run", lambda: self.client.create_run(
            experiment_id, run_name=run_name, tags={**tags, key_tag: key}), find)
        for copy in self.call("search runs", find):
            if copy.info.run_id != run.info.run_id:
                log.warning("deleted run %s, a copy of run %s made by a repeated request",
                            copy.info.run_id, run.info.run_id)
                self.call("delete run", self.client.delete_run, copy.info.run_id)
        return run

    def log_batch(self, run_id: str, *, metrics: Iterable = (), params: Iterable = (),
                  tags: Iterable = ()) -> None:
        metrics, params, tags = list(metrics), list(params), list(tags)
        while metrics or params or tags:
            self.call("log", self.client.log_batch, run_id, metrics=metrics[:_BATCH * 10],
                       params=params[:_BATCH], tags=tags[:_BATCH])
            metrics, params, tags = metrics[_BATCH * 10:], params[_BATCH:], tags[_BATCH:]

    def check(self) -> None:
        """Fail fast, before any training, when the store cannot be reached."""
        try:
            if is_http(self.uri):
                self.call("connect", _probe_http, self.uri, self.timeout)
            elif "://" in self.uri and not self.uri.startswith("databricks"):
                self.call("connect", _probe_database, self.uri, self.timeout)
            self.call("connect", self.client.search_experiments, max_results=1)
        except TrackingAuthError:
            raise
        except TrackingError as e:
            if os_cause(e) is not None:
                raise  # it names the folder and what to do: no server to start
            raise TrackingError(
                f"MLflow tracking store {self.masked_uri} unreachable: {_after_colon(e)}; "
                "start the server or pass --tracking-uri"
            ) from None


# -- probes: one plain request with a short timeout, before MLflow's own long retries ------
def _probe_http(uri: str, timeout: float) -> None:
    # A plain GET with a short timeout: MLflow's own client would retry for minutes.
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health",
                                   "", ""))
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return  # something answered: the server is there (a proxy may not know /health)


def _probe_database(uri: str, timeout: float) -> None:
    # One plain connection first: MLflow's store retries a dead database for ~100 s.
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(path, timeout=timeout)) as db:
            db.execute("select 1")
        return
    connect_args = ({"connect_timeout": max(1, int(timeout))}
                    if uri.startswith("postgresql") else {})
    engine = sqlalchemy.create_engine(uri, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
    finally:
        engine.dispose()


def _after_colon(error: TrackingError) -> str:
    text = str(error)
    return text.split(": ", 1)[1] if ": " in text else text
