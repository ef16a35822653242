"""A trial's checkpoint back out of MLflow, and an export into MLflow's model registry."""

from __future__ import annotations

from pathlib import Path

from celebhpo.errors import TrackingError, mask_url
from celebhpo.tracking.client import Tracker

__all__ = ["download_checkpoint", "register_model"]


def download_checkpoint(tracker: Tracker, run_id: str, dst_dir: str | Path) -> Path:
    """The run's `model.pt`, downloaded into `dst_dir` (works against a server too)."""
    dst = Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    names = {f.path for f in tracker.call("list artifacts", tracker.client.list_artifacts,
                                           run_id)}
    if "model.pt" not in names:
        raise TrackingError(
            f"MLflow run {run_id} in {tracker.masked_uri} has no model.pt artifact; with "
            "[study] checkpoints = 'best' only trials that were best when they ended keep one"
        )
    path = tracker.call("download artifact", tracker.client.download_artifacts, run_id,
                         "model.pt", str(dst))
    return Path(path)


def register_model(tracker: Tracker, name: str, run_id: str, folder: str | Path,
                   files: list[str], tags: dict[str, str] | None = None) -> str:
    """Log `folder`/`files` (an export) to the run under `export/`, register them as a new
    version of model `name` and point its alias `best` at it (aliases, not the
    deprecated stages). Returns the version."""
    client = tracker.client
    for f in files:
        tracker.call("log artifact", client.log_artifact, run_id, str(Path(folder) / f),
                      "export")
    found = tracker.call("search models", client.search_registered_models,
                          filter_string=f"name = '{name}'")
    if not found:
        tracker.call("create model", client.create_registered_model, name,
                      description="celebhpo export-best: 40 face-attribute classifier")
    version = tracker.call(
        "create model version", client.create_model_version, name,
        source=f"runs:/{run_id}/export", run_id=run_id,
        tags={k: mask_url(str(v)) for k, v in (tags or {}).items()},
    )
    tracker.call("set alias", client.set_registered_model_alias, name, "best",
                  version.version)
    return str(version.version)
