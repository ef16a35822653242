"""Files between this machine and an MLflow store: which local folder a failed write was
writing (a full or unwritable disk names the folder, not the store), and a download that
says why it failed. `tracker` is a client.Tracker (not imported: client imports this)."""

from __future__ import annotations

import inspect
import os
import shutil
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

from celebhpo.tracking.uris import artifact_root

__all__ = ["download", "written"]


def written(tracker: Any, err: OSError, fn: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> str | None:
    """What a call that failed with `err` was writing, when that says more than the file
    `err` names (None: that file): the folder the call writes to (`_folder`) when `err`
    names no file (a failed write() names none) or one inside it (a staging file)."""
    named = err.filename2 if err.filename2 is not None else err.filename
    folder = _folder(tracker, fn, args, kwargs)
    if named is None or folder is None:
        return folder
    inside = os.path.abspath(os.fsdecode(named)).startswith(
        os.path.abspath(folder).rstrip(os.sep) + os.sep)
    return folder if inside else None

def _folder(tracker: Any, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> str | None:
    """The local folder a call to the store writes to: its `dst_path` (a download), else
    its run's artifact folder (and `artifact_path` in it), else the store's default
    artifact folder; None when that is not on this machine."""
    try:
        given = inspect.signature(fn).bind_partial(*args, **kwargs).arguments
    except (TypeError, ValueError):  # no signature, or not a call of this shape
        given = {}
    if given.get("dst_path"):
        return str(given["dst_path"])
    uri = artifact_root(tracker.uri)
    if isinstance(given.get("run_id"), str):
        try:
            uri = tracker.client.get_run(given["run_id"]).info.artifact_uri
        except Exception:  # noqa: BLE001 - the store's default folder names it well enough
            pass
        else:
            if given.get("artifact_path"):
                uri = f"{uri.rstrip('/')}/{given['artifact_path']}"
    return _local_folder(uri) if uri else None

def download(tracker: Any, run_id: str, path: str, dst: str | Path) -> Path:
    """The run's artifact file `path`, copied into the folder `dst` (made if need be).
    Not through MlflowClient.download_artifacts: it reports any failure, a full `dst`
    included, as "Failed to download artifacts ... ensure that the path is correct" and
    drops the cause; here a full or unwritable `dst` is one line naming it."""
    info = tracker.call("get run", tracker.client.get_run, run_id).info
    repo = get_artifact_repository(info.artifact_uri, tracking_uri=tracker.uri)
    # a local store hands back its own file; another downloads into a temporary folder
    src = Path(tracker.call("download artifact", repo.download_artifacts, path))
    scratch = None if isinstance(repo, LocalArtifactRepository) else src.parents[
        len(Path(path).parts) - 1]
    target = Path(dst) / src.name
    try:
        tracker.call("download artifact", _copy_into, src, target)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def _copy_into(src: Path, target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    except OSError as e:
        if e.filename is None:  # a failed write() (disk full) names no file
            e.filename = str(target)
        raise


def _local_folder(uri: str) -> str | None:
    """The folder an artifact URI names on this machine (file:// or a plain path), or None."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme == "file":
        return urllib.request.url2pathname(urllib.parse.unquote(parts.path))
    return uri if not parts.scheme else None
