"""The MLflow store: which URI, where artifacts go, whether it answers, and one retried call.

Only `MlflowClient` with explicit run ids is used: no fluent "active run" can leak from one
trial into the next. Every call to the store goes through `Tracker.call`, which retries with
backoff and then raises one `TrackingError` line with the URI's password masked. The study,
trial, summary and registry modules beside this one do their work through a Tracker.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from celebhpo.errors import TrackingError, mask_url

__all__ = ["DEFAULT_TRACKING_URI", "Tracker", "artifact_root", "resolve_tracking_uri",
           "ui_command"]

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
ARTIFACTS_DIRNAME = "artifacts"  # beside the SQLite file: mlruns/mlflow.db -> mlruns/artifacts
MAX_TAG_CHARS = 500  # an error tag is for people; the full traceback lives in the worker's log
_BATCH = 100  # MLflow's limit of params/tags per log_batch call
# MLflow error codes that will not get better by asking again
_FINAL_CODES = {
    "INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
    "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED", "INVALID_STATE", "NOT_FOUND",
}


# -- URIs ----------------------------------------------------------------------------------
def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use: `uri` (the --tracking-uri flag) > MLFLOW_TRACKING_URI >
    `sqlite:///mlruns/mlflow.db` under the current directory.

    SQLite paths are made absolute (resolved against the cwd at call time), so the URI stored
    with a study means the same file for every worker, wherever it was started.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            raise TrackingError(
                f"tracking URI {uri!r}: an in-memory or empty SQLite path cannot be shared; "
                "give a file, e.g. sqlite:///mlruns/mlflow.db"
            )
        return "sqlite:///" + str(Path(path).expanduser().resolve())
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        raise TrackingError(
            f"tracking URI {mask_url(uri)!r}: MLflow 3 no longer supports a plain folder as "
            "the tracking store; use sqlite:///mlruns/mlflow.db or a server (http://host:5000)"
        )
    return uri


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def artifact_root(uri: str) -> str | None:
    """Where new experiments keep artifacts: beside the SQLite file, `<cwd>/mlruns/artifacts`
    for another database, or None for a server (it decides, e.g. its --artifacts-destination).
    """
    if _is_http(uri) or uri.startswith("databricks"):
        return None
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / ARTIFACTS_DIRNAME).as_uri()
    return (Path.cwd() / "mlruns" / ARTIFACTS_DIRNAME).resolve().as_uri()


def ui_command(tracking_uri: str | None, *, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The argv that opens the MLflow UI on a local store (binds to `host`, 127.0.0.1 by
    default, so the UI is not exposed to the network unless asked)."""
    uri = resolve_tracking_uri(tracking_uri)
    if _is_http(uri):
        raise TrackingError(
            f"{mask_url(uri)} is already a tracking server: open it in a browser instead"
        )
    argv = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    root = artifact_root(uri)
    if root:
        argv += ["--default-artifact-root", root]
    return argv + ["--host", host, "--port", str(port)]


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
        self.uri = resolve_tracking_uri(uri)
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
            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)`, retried with exponential backoff on errors that may pass
        (network, a locked database); then one TrackingError line."""
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except TrackingError:
                raise
            except MlflowException as e:
                if e.error_code in _FINAL_CODES:
                    raise TrackingError(
                        f"MLflow {what} on {self.masked_uri}: {one_line(e.message)}"
                    ) from None
                error: Exception = e
            except Exception as e:  # noqa: BLE001 - network/sqlalchemy errors share no base
                error = e
            if attempt < self.retries:
                log.warning("MLflow %s failed (%s); retrying in %.1f s", what,
                            one_line(str(error), 200), delay)
                time.sleep(delay)
                delay *= 2
        raise TrackingError(
            f"MLflow {what} failed on {self.masked_uri} after {self.retries + 1} attempts: "
            f"{one_line(str(error), 300)}"
        ) from None

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
            if _is_http(self.uri):
                self.call("connect", _probe_http, self.uri, self.timeout)
            elif "://" in self.uri and not self.uri.startswith("databricks"):
                self.call("connect", _probe_database, self.uri, self.timeout)
            self.call("connect", self.client.search_experiments, max_results=1)
        except TrackingError as e:
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
