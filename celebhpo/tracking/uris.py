"""Tracking URIs: which store, where its artifacts go, and whose credentials reach it.

A study stores its tracking URI without credentials (errors.without_credentials). A worker
adds its own: its --tracking-uri flag, or MLFLOW_TRACKING_URI when that names the same store
with a password, or the store's own variables (MLFLOW_TRACKING_TOKEN /
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD for a server, PGPASSWORD or ~/.pgpass
for PostgreSQL), which MLflow and libpq read themselves.
"""

from __future__ import annotations

import os
import re
import sys
import urllib.parse
from pathlib import Path

from celebhpo.errors import TrackingError, mask_url, without_credentials

__all__ = ["DEFAULT_TRACKING_URI", "artifact_location", "artifact_root", "is_http",
           "resolve_tracking_uri", "same_store", "study_tracking_uri", "ui_command",
           "with_own_credentials"]

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
ARTIFACTS_DIRNAME = "artifacts"  # beside the SQLite file: mlruns/mlflow.db -> mlruns/artifacts


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


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def same_store(a: str, b: str) -> bool:
    """Whether two resolved URIs name one store (credentials and user names aside)."""
    def key(uri: str) -> str:
        return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#\s]*@", r"\1", without_credentials(uri))
    return key(a) == key(b)


def with_own_credentials(uri: str) -> str:
    """`uri`, or MLFLOW_TRACKING_URI when `uri` has no credentials and that names the same
    store with this process's own (a study keeps its URI without them)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if not env or without_credentials(uri) != uri:
        return uri  # nothing to add, or credentials given explicitly
    try:
        own = resolve_tracking_uri(env)
    except TrackingError:
        return uri
    return own if own != uri and same_store(own, uri) else uri


def study_tracking_uri(stored: str, given: str | None = None) -> str:
    """The URI a worker uses for a study's store: `given` (its --tracking-uri), which must
    name the study's store and may carry the credentials the study does not keep; else the
    stored one (Tracker adds credentials from MLFLOW_TRACKING_URI)."""
    if not given:
        return stored
    uri = resolve_tracking_uri(given)
    if not same_store(uri, resolve_tracking_uri(stored)):
        raise TrackingError(
            f"--tracking-uri {mask_url(uri)} is not this study's tracking store "
            f"{mask_url(stored)}; pass that store's URI (with your credentials) or none"
        )
    return uri


def artifact_root(uri: str) -> str | None:
    """Where new experiments keep artifacts by default: beside the SQLite file,
    `<cwd>/mlruns/artifacts` for another database (the `mlflow ui` default), or None for a
    server (it decides, e.g. its --artifacts-destination)."""
    if is_http(uri) or uri.startswith("databricks"):
        return None
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / ARTIFACTS_DIRNAME).as_uri()
    return (Path.cwd() / "mlruns" / ARTIFACTS_DIRNAME).resolve().as_uri()


def artifact_location(uri: str, given: str | None = None) -> str | None:
    """Where a study's new experiment keeps its artifacts: `given` (a URI such as
    s3://bucket/path, or a folder made absolute), else beside a SQLite file, else None for a
    server (its --artifacts-destination decides). Any other database is refused without
    `given`: its default, this machine's working folder, is not where other workers write."""
    if given:
        if urllib.parse.urlsplit(given).scheme in ("", "file") or given.startswith("~"):
            path = given[len("file://"):] if given.startswith("file://") else given
            return Path(path).expanduser().resolve().as_uri()
        return given
    if is_http(uri) or uri.startswith("databricks") or uri.startswith("sqlite:///"):
        return artifact_root(uri)
    raise TrackingError(
        f"tracking URI {mask_url(uri)} is a database without an artifact location: its "
        f"artifacts would go to {artifact_root(uri)} on this machine only, where workers "
        "elsewhere cannot read them; pass --artifacts-destination URI (e.g. s3://bucket/path "
        "or a folder every worker mounts at the same path), or use an MLflow server "
        "(--tracking-uri http://host:5000) started with --artifacts-destination"
    )


def ui_command(tracking_uri: str | None, *, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The argv that opens the MLflow UI on a local store (binds to `host`, 127.0.0.1 by
    default, so the UI is not exposed to the network unless asked)."""
    uri = resolve_tracking_uri(tracking_uri)
    if is_http(uri):
        raise TrackingError(
            f"{mask_url(uri)} is already a tracking server: open it in a browser instead"
        )
    argv = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    root = artifact_root(uri)
    if root:
        argv += ["--default-artifact-root", root]
    return argv + ["--host", host, "--port", str(port)]
