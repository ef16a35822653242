"""One MLflow run by its id, in plain values: metrics and tags from dicts, files in and out.

`TrialRun` (trial.py) is one. hpo and export use these methods instead of MLflow's entities
and artifact repositories; `other(run_id)` reaches another run of the same store (a retried
trial's earlier attempts, whose resume states it reads and deletes).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, RunTag
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from celebhpo.tracking.client import Tracker
from celebhpo.tracking.files import download

__all__ = ["RunHandle"]


class RunHandle:
    """The run `run_id` in `tracker`'s store; every call is one retried `Tracker.call`."""

    def __init__(self, tracker: Tracker, run_id: str) -> None:
        self.tracker = tracker
        self.run_id = run_id

    def other(self, run_id: str) -> RunHandle:
        """Another run of the same store."""
        return RunHandle(self.tracker, run_id)

    def log(self, metrics: Mapping[str, float] | None = None,
            tags: Mapping[str, Any] | None = None, *, step: int = 0) -> None:
        """`metrics` at `step` and `tags` (values as strings), in as few requests as fit."""
        now = int(time.time() * 1000)
        self.tracker.log_batch(
            self.run_id,
            metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])

    def log_file(self, path: str | Path, folder: str | None = None) -> None:
        """The file at `path` as an artifact of the run, in `folder` (None: at the top)."""
        self.tracker.call("log artifact", self.tracker.client.log_artifact, self.run_id,
                          str(path), folder)

    def tags(self) -> dict[str, str]:
        return dict(self.tracker.call("get run", self.tracker.client.get_run,
                                      self.run_id).data.tags)

    def download(self, path: str, dst: str | Path) -> Path:
        """The run's artifact `path`, downloaded into the folder `dst`."""
        return download(self.tracker, self.run_id, path, dst)

    def delete_files(self, folder: str) -> None:
        """The run's artifacts under `folder` (MLflow's client has no call for it)."""
        info = self.tracker.call("get run", self.tracker.client.get_run, self.run_id).info
        repo = get_artifact_repository(info.artifact_uri, tracking_uri=self.tracker.uri)
        self.tracker.call("delete artifacts", repo.delete_artifacts, folder)

    def delete_tags(self, *keys: str) -> None:
        for key in keys:
            self.tracker.call("delete tag", self.tracker.client.delete_tag, self.run_id, key)
