"""`celebhpo ui`: refuse a folder with no store, and print the URL that lands on a study's runs.

MLflow 3's experiment page opens on its GenAI overview (traces, latency, tokens); the runs
table is behind a toggle. `#/experiments/<id>/runs?workflowType=machine_learning` lands on it.

A port already in use is refused before MLflow starts: MLflow itself logs `[Errno 98]
Address already in use` and exits 0.
"""

from __future__ import annotations

import errno
import shlex
import socket
from pathlib import Path

from mlflow.entities import ViewType

from celebhpo.errors import TrackingError, mask_url
from celebhpo.tracking.client import Tracker
from celebhpo.tracking.uris import resolve_tracking_uri, ui_command

__all__ = ["require_free_port", "require_store", "runs_url", "ui_launch"]


def runs_url(host: str, port: int, experiment_id: str | None = None) -> str:
    """The UI's address; with `experiment_id`, the one that lands on that experiment's runs
    table. A wildcard bind address (0.0.0.0, ::) is given as 127.0.0.1, what a browser on this
    machine opens."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    base = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    if experiment_id is None:
        return base
    return f"{base}#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def require_store(uri: str) -> None:
    """A SQLite store must exist: `mlflow ui` would silently create an empty one."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise TrackingError(
                f"no MLflow store at {path} (nothing has been tracked from here); run a study "
                "first, or point at its store with --tracking-uri sqlite:///PATH/mlflow.db")


def _bind_error(host: str, port: int) -> OSError | None:
    """The error binding `host`:`port` gives, as the UI's server (uvicorn) binds: IPv6 when
    the host has a colon, SO_REUSEADDR (a closed connection's TIME_WAIT is no obstacle)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as e:  # socket.gaierror included: a host name that does not resolve
        return e
    return None


def require_free_port(host: str, port: int) -> None:
    """The UI's port must be free on `host`; else a TrackingError with the fix (`--port`, and
    a free one when a near one is)."""
    error = _bind_error(host, port)
    if error is None:
        return
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if error.errno == errno.EADDRINUSE:
        free = next((p for p in range(port + 1, min(port + 50, 65536))
                     if _bind_error(host, p) is None), None)
        hint = f", e.g. --port {free}" if free else ""
        raise TrackingError(f"port {port} is already in use on {host} (another MLflow UI?); "
                            f"choose a free one with --port{hint}")
    if error.errno == errno.EACCES:
        raise TrackingError(f"no permission to listen on {where} (ports below 1024 need "
                            "root); choose another with --port")
    reason = error.strerror or str(error)
    raise TrackingError(f"cannot listen on {where}: {reason}; check --host and --port")


def study_urls(uri: str, host: str, port: int, study: str | None) -> list[tuple[str, str]]:
    """(experiment name, runs-table URL) for `study`, or for every celebhpo study in the
    store (newest first) when None. An unknown `study` is a TrackingError naming those."""
    tracker = Tracker(uri, retries=0)
    client = tracker.client
    experiments = tracker.call("search experiments", client.search_experiments,
                               view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                               order_by=["creation_time DESC"])
    studies = [e for e in experiments if "celebhpo.study" in e.tags]
    if study is not None:
        match = [e for e in experiments if e.name == study]
        if not match:
            known = ", ".join(e.name for e in studies) or "none"
            raise TrackingError(f"no experiment for study '{study}' in {mask_url(uri)} "
                                f"(studies there: {known}); check --study or --tracking-uri")
        studies = match
    return [(e.name, runs_url(host, port, e.experiment_id)) for e in studies]


def ui_launch(tracking_uri: str | None, *, host: str, port: int,
              study: str | None = None) -> tuple[list[str], list[str]]:
    """(argv of `mlflow ui`, the lines to print first: the command, then where to look).
    Refuses a tracking server, a missing store, an unknown study and a port in use, in that
    order (`require_free_port`), each a TrackingError."""
    uri = resolve_tracking_uri(tracking_uri)
    argv = ui_command(uri, host=host, port=port)  # refuses a tracking server first
    require_store(uri)
    lines = [mask_url(shlex.join(argv))]
    urls = study_urls(uri, host, port, study)
    require_free_port(host, port)
    if len(urls) == 1:
        lines.append(f"open {urls[0][1]}")
    elif urls:
        lines.append("open a study's runs:")
        lines += [f"  {name}: {url}" for name, url in urls]
    else:
        lines.append(f"open {runs_url(host, port)}")
    return argv, lines
