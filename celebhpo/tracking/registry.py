"""A trial's checkpoint back out of MLflow, and an export into MLflow's model registry."""

from __future__ import annotations

import uuid
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion

from celebhpo.errors import TrackingError, mask_url
from celebhpo.tracking.client import CREATE_ID_TAG, Tracker

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
        try:
            tracker.call("create model", client.create_registered_model, name,
                          description="celebhpo export-best: 40 face-attribute classifier")
        except TrackingError:
            # made meanwhile: by another export, or by our own first request, repeated by
            # MLflow's HTTP retries after its answer was lost
            if not tracker.call("search models", client.search_registered_models,
                                filter_string=f"name = '{name}'"):
                raise
    version = _create_version(tracker, name, run_id,
                              {k: mask_url(str(v)) for k, v in (tags or {}).items()})
    tracker.call("set alias", client.set_registered_model_alias, name, "best",
                  version.version)
    return str(version.version)


def _create_version(tracker: Tracker, name: str, run_id: str,
                    tags: dict[str, str]) -> ModelVersion:
    """A new version of `name` from the run's export/, made once (see Tracker.create_run):
    tagged with a client-made id that a retry looks for before creating again."""
    client = tracker.client
    key = uuid.uuid4().hex

    def find() -> list[ModelVersion]:
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        return sorted((v for v in found if v.tags.get(CREATE_ID_TAG) == key),
                      key=lambda v: int(v.version))

    version = tracker.create_once("create model version", lambda: client.create_model_version(
        name, source=f"runs:/{run_id}/export", run_id=run_id,
        tags={**tags, CREATE_ID_TAG: key}), find)
    for copy in tracker.call("search model versions", find):
        if copy.version != version.version:
            tracker.call("delete model version", client.delete_model_version, name,
                          copy.version)
    return version
