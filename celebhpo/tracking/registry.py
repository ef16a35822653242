"""A trial's checkpoint back out of MLflow, and an export into MLflow's model registry: a new
version per export, the alias (`best`) moved only to a version that beats it."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion

from celebhpo.errors import TrackingError, mask_url
from celebhpo.objectives import better
from celebhpo.tracking.client import CREATE_ID_TAG, Tracker
from celebhpo.tracking.files import download

__all__ = ["SCORE_TAG", "SPLIT_TAG", "Registered", "download_checkpoint", "global_uris",
           "register_model"]

SCORE_TAG = "celebhpo.test_mean_acc"  # a version's test mean accuracy at tuned thresholds
SPLIT_TAG = "celebhpo.test_split"  # ... and the split it was measured on (a digest)


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
    return download(tracker, run_id, "model.pt", dst)


@dataclass
class Registered:
    """What `register_model` did: the new version, and where the alias points now."""

    name: str
    version: str
    alias: str
    moved: bool  # whether the alias now points at `version`
    note: str  # why (for the one line export-best prints)

    def __str__(self) -> str:
        return f"{self.name} version {self.version} ({self.note})"


@contextlib.contextmanager
def global_uris(uri: str) -> Iterator[None]:
    """MLflow's model logging, and a registry on a database (it looks the logged model up),
    go through MLflow's global tracking/registry URIs: `uri` for this block."""
    import mlflow

    # set_*_uri also write MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI: put back exactly what was
    # there (pinning get_tracking_uri()'s answer instead would outlive a later change of them)
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = {k: os.environ.get(k) for k in keys}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def register_model(tracker: Tracker, name: str, run_id: str, model_uri: str, *,
                   score: float, split: str, model_id: str | None = None, alias: str = "best",
                   force: bool = False, tags: dict[str, str] | None = None) -> Registered:
    """Register the MLflow model at `model_uri` (logged on `run_id`) as a new version of
    `name`, tagged with its `score` (test mean accuracy at the tuned thresholds) on test
    split `split` (a digest of the data root and split sizes). The alias (not the deprecated
    stages) moves to it only if it beats the aliased version on the same split, or `force`;
    each move is recorded as the version tag `celebhpo.alias.<alias>`."""
    client = tracker.client
    _ensure_model(tracker, name)
    version = _create_version(tracker, name, run_id, model_uri, model_id, {
        **{k: mask_url(str(v)) for k, v in (tags or {}).items()},
        SCORE_TAG: repr(float(score)), SPLIT_TAG: split})
    current = _aliased(tracker, name, alias)
    moved, note = _should_move(current, score, split, force, alias)
    if moved:
        tracker.call("set alias", client.set_registered_model_alias, name, alias,
                     version.version)
        was = f"from version {current.version}" if current is not None else "first"
        when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        tracker.call("tag version", client.set_model_version_tag, name, version.version,
                     f"celebhpo.alias.{alias}", f"{when}: {was}; {note}")
    return Registered(name, str(version.version), alias, moved, note)


def _should_move(current: ModelVersion | None, score: float, split: str, force: bool,
                 alias: str) -> tuple[bool, str]:
    if current is None:
        return True, f"alias {alias}"
    if force:
        return True, f"alias {alias}, forced over version {current.version}"
    old_split = current.tags.get(SPLIT_TAG)
    old = current.tags.get(SCORE_TAG)
    if old_split != split or old is None:
        return False, (f"alias {alias} kept on version {current.version}: it was scored on "
                       "another test split, so the two cannot be compared; pass --force to "
                       "move it")
    if better(score, float(old), "maximize"):
        return True, (f"alias {alias}: test mean acc {score:.4f} beats version "
                      f"{current.version}'s {float(old):.4f}")
    return False, (f"alias {alias} kept on version {current.version}: its test mean acc "
                   f"{float(old):.4f} is not beaten by {score:.4f}; pass --force to move it")


def _aliased(tracker: Tracker, name: str, alias: str) -> ModelVersion | None:
    found = tracker.call("get model", tracker.client.get_registered_model, name)
    version = (found.aliases or {}).get(alias)
    if version is None:
        return None
    return tracker.call("get version", tracker.client.get_model_version, name, str(version))


def _ensure_model(tracker: Tracker, name: str) -> None:
    client = tracker.client
    found = tracker.call("search models", client.search_registered_models,
                          filter_string=f"name = '{name}'")
    if not found:
        try:
            tracker.call("create model", client.create_registered_model, name,
                          description="celebhpo export-best: 40 face-attribute classifier; "
                                      "input (B, S, S, 3) uint8 images, output (B, 40) "
                                      "probabilities")
        except TrackingError:
            # made meanwhile: by another export, or by our own first request, repeated by
            # MLflow's HTTP retries after its answer was lost
            if not tracker.call("search models", client.search_registered_models,
                                filter_string=f"name = '{name}'"):
                raise


def _create_version(tracker: Tracker, name: str, run_id: str, source: str,
                    model_id: str | None, tags: dict[str, str]) -> ModelVersion:
    """A new version of `name` from the MLflow model at `source`, made once (see Tracker.create_run):
    tagged with a client-made id that a retry looks for before creating again."""
    client = tracker.client
    key = uuid.uuid4().hex

    def find() -> list[ModelVersion]:
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        return sorted((v for v in found if v.tags.get(CREATE_ID_TAG) == key),
                      key=lambda v: int(v.version))

    def create() -> ModelVersion:
        with global_uris(tracker.uri):
            return client.create_model_version(name, source=source, run_id=run_id,
                                               tags={**tags, CREATE_ID_TAG: key},
                                               model_id=model_id)

    version = tracker.create_once("create model version", create, find)
    for copy in tracker.call("search model versions", find):
        if copy.version != version.version:
            tracker.call("delete model version", client.delete_model_version, name,
                          copy.version)
    return version
