"""Run metadata the MLflow UI shows: Source, Created by, the git commit, the data set.

The data set is an MLflow dataset input: the CelebA root, its layout, the split sizes the
study uses and a digest of the label file (the same labels give the same digest, wherever
the folder is). Nothing here fails a trial: what cannot be read is left out with a warning.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag

from celebhpo.errors import TrackingError
from celebhpo.tracking.client import Tracker

__all__ = ["dataset_input", "git_commit", "log_dataset", "source_tags", "start_system_metrics",
           "stop_system_metrics"]

log = logging.getLogger(__name__)


def source_tags(command: str | None = None) -> dict[str, str]:
    """mlflow.source.name (the celebhpo command), .type, mlflow.user and, when the current
    folder is in a git repository, mlflow.source.git.commit."""
    name = command or " ".join(["celebhpo", *[a for a in sys.argv[1:2] if not a.startswith("-")]])
    tags = {"mlflow.source.name": name, "mlflow.source.type": "LOCAL"}
    with contextlib.suppress(KeyError, OSError):  # no user name for this uid (a container)
        tags["mlflow.user"] = getpass.getuser()
    commit = git_commit(Path.cwd())
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def git_commit(start: Path) -> str | None:
    """The commit HEAD points at in the git repository holding `start`, read from .git's
    files (no git process), or None."""
    for folder in (start, *start.parents):
        dot = folder / ".git"
        if dot.is_file():  # a worktree or submodule: "gitdir: PATH"
            text = dot.read_text(errors="replace").strip()
            dot = (folder / text.removeprefix("gitdir:").strip()).resolve()
        if dot.is_dir():
            return _head(dot)
    return None


def _head(git: Path) -> str | None:
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head or None
        ref = head[4:].strip()
        common = git / "commondir"
        roots = [git] + ([(git / common.read_text().strip()).resolve()]
                         if common.is_file() else [])
        for root in roots:
            if (root / ref).is_file():
                return (root / ref).read_text().strip()
            packed = root / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(f" {ref}"):
                        return line.split()[0]
    except OSError:
        pass
    return None  # a branch with no commit yet


@lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dataset_input(data: dict[str, Any], context: str = "train") -> DatasetInput | None:
    """The study's data set as an MLflow dataset input (None, with a warning, when its root
    cannot be read)."""
    from celebhpo.data.layouts import LAYOUTS, detect_layout  # late: celebhpo.data is heavy

    root = Path(str(data.get("root", "")))
    try:
        layout = detect_layout(root)
        labels = root / LAYOUTS[layout][0]
        stat = labels.stat()
        digest = _file_digest(str(labels), stat.st_size, stat.st_mtime_ns)
    except Exception as e:  # noqa: BLE001 - metadata never fails a trial
        log.warning("no MLflow dataset input for %s: %s", root, e)
        return None
    sizes = {k: data.get(k) for k in ("train_size", "val_size", "test_size", "image_size")}
    profile = {"layout": layout, "label_file": labels.name, "labels_sha256": digest,
               "label_file_bytes": stat.st_size, **sizes}
    dataset = Dataset(name=f"celeba:{root.name}", digest=digest[:16], source_type="local",
                      source=json.dumps({"uri": os.fspath(root)}),
                      profile=json.dumps(profile, default=str))
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])


def log_dataset(tracker: Tracker, run_id: str, data: dict[str, Any]) -> bool:
    """The study's data set (`data`, the config's [data]) as the run's dataset input, the
    same on the parent run and on every trial's run. False (and a warning) when its root
    cannot be read: the run goes on without one."""
    dataset = dataset_input(data or {})
    if dataset is None:
        return False
    try:
        tracker.call("log inputs", tracker.client.log_inputs, run_id, [dataset])
    except TrackingError:
        # MLflow's SQL store looks for the dataset row, then inserts it: workers starting
        # their first trials at once race on its unique key (BAD_REQUEST, IntegrityError);
        # a second try finds the row and only links it to this run
        tracker.call("log inputs", tracker.client.log_inputs, run_id, [dataset])
    return True


def start_system_metrics(uri: str, run_id: str, interval: float = 5.0) -> Any:
    """MLflow's system metrics (CPU, memory, disk, network; GPU with nvidia-ml-py) logged to
    the run every `interval` s from a background thread, until `stop_system_metrics`.
    Needs psutil: without it, a warning and None (a trial never fails for its metadata)."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval,
                                       samples_before_logging=1, tracking_uri=uri)
        monitor.start()
    except ImportError as e:
        log.warning("[study] system_metrics = true needs %s: pip install psutil "
                    "(and nvidia-ml-py for GPUs); no system metrics for this run", e.name)
        return None
    return monitor


def stop_system_metrics(monitor: Any) -> None:
    """Stop a monitor from `start_system_metrics` (its last samples are logged)."""
    try:
        monitor.finish()
    except Exception as e:  # noqa: BLE001 - metadata never fails a trial
        log.warning("system metrics monitor did not stop cleanly: %s", e)
