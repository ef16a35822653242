"""What the SLURM and Kubernetes launchers share: the worker's command, where its credentials
come from, and the checks made before anything is submitted.

Both schedulers run the same `celebhpo optimize --study NAME ...` that a user runs by hand
(`worker_argv`). Credentials never travel in argv or in a script or manifest: a worker
finds them in its environment, filled from the submitting shell, from an env file that only
its owner can read (`read_env_file`), or from a Kubernetes Secret. An env file holds
`KEY=VALUE` lines, the value taken literally (no quotes, no `$` expansion), blank lines and
`#` comments skipped: the format `docker --env-file` and `kubectl create secret generic
--from-env-file` read, so one file serves both schedulers.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from celebhpo.errors import StudyError, TrackingError, mask_url
from celebhpo.hpo.launch import STORAGE_ENV
from celebhpo.hpo.outage import RetryPolicy
from celebhpo.hpo.storage import StorageSpec, parse_storage
from celebhpo.hpo.studies import open_study
from celebhpo.tracking import Tracker, study_tracking_uri

__all__ = ["CREDENTIAL_VARS", "Preflight", "launch_storage", "preflight", "read_env_file",
           "worker_argv"]

# what a worker may need to reach its stores; passed by name only, never by value
CREDENTIAL_VARS = (STORAGE_ENV, "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN",
                   "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PGPASSWORD")
GPU_LIST = '"$CUDA_VISIBLE_DEVICES"'  # the GPUs SLURM gave the task, expanded by its shell
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PREFLIGHT_RETRY_S = 10.0  # how long launch waits for the study's database before one line


def worker_argv(study: str, *, gpus: int = 1, trials: int | None = None) -> list[str]:
    """The worker's command: one `celebhpo optimize` on the study. One GPU: `--device cuda`
    (a missing GPU is an error, not a silent CPU run); several: `--devices` over the GPUs the
    scheduler gave (one worker process per GPU, launch.py); none: the study's [train] device.
    """
    if gpus < 0:
        raise StudyError(f"--gpus-per-worker {gpus}: give 0 or more")
    argv = ["celebhpo", "optimize", "--study", study]
    argv += ["--trials", str(trials)] if trials is not None else []
    if gpus == 1:
        argv += ["--device", "cuda"]
    elif gpus > 1:
        argv += ["--devices", GPU_LIST]
    return argv


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of an env file that only its owner may read (mode 0600 or 0400, owned by
    this user): a file others can read would hand them the database password."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise StudyError(f"--env-file {path}: no such file") from None
    if info.st_mode & 0o077 or info.st_uid != os.getuid():
        raise StudyError(
            f"--env-file {path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o}, "
            f"owner uid {info.st_uid}); it holds credentials: chmod 600 {path} as its owner")
    text = path.read_text(encoding="utf-8")
    if "\r" in text:  # the task's shell would keep the \r in every value
        raise StudyError(f"--env-file {path} has Windows line ends; convert it: dos2unix {path}")
    values: dict[str, str] = {}
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip() or line.startswith("#"):  # as the task's shell skips them
            continue
        key, eq, value = line.partition("=")
        if not eq or not _KEY.fullmatch(key):
            raise StudyError(f"--env-file {path}, line {n}: expected KEY=VALUE with KEY a "
                             "variable name (letters, digits, _), e.g. CELEBHPO_STORAGE=...")
        values[key] = value
    return values


def launch_storage(storage: StorageSpec, env: Mapping[str, str]) -> StorageSpec:
    """The storage the workers will open: the env file's CELEBHPO_STORAGE, else `storage`
    (--storage or CELEBHPO_STORAGE); it must be a database server every node reaches."""
    spec = parse_storage(env[STORAGE_ENV]) if env.get(STORAGE_ENV) else storage
    if spec.kind != "rdb":
        raise StudyError(
            f"storage {spec.masked} is {spec.kind}, which workers on other machines cannot "
            "share; set CELEBHPO_STORAGE=postgresql+psycopg2://user:pass@host/db in the "
            "environment or the --env-file")
    return spec


@dataclass(frozen=True)
class Preflight:
    """What launch checked before submitting: the study, its storage and tracking store."""

    study: str
    storage: str  # masked
    tracking: str  # the masked tracking URI the workers use, or "off"
    trials: int  # trials the study holds now


def preflight(study: str, storage: StorageSpec, env: Mapping[str, str]) -> Preflight:
    """Open the study as a worker would (with the env file's variables in the environment)
    and check that its MLflow store answers: one line now beats N workers failing later."""
    with _environ(env):
        policy = RetryPolicy(PREFLIGHT_RETRY_S, what=f"storage {storage.masked}")
        optuna_study, cfg, record = open_study(study, storage, policy=policy)
        tracking = "off"
        if cfg.study.tracking != "off":
            uri = study_tracking_uri(record.tracking_uri)
            tracker = Tracker(uri, retries=1, backoff=0.5, timeout=5.0)
            try:
                tracker.check()
            except TrackingError as e:
                raise TrackingError(
                    f"{str(e).split('; start the server')[0]}; the workers could not log "
                    "their trials: start the MLflow server (see README, Many workers) or "
                    "fix MLFLOW_TRACKING_URI") from None
            tracking = tracker.masked_uri
        return Preflight(optuna_study.study_name, storage.masked, mask_url(tracking),
                         len(optuna_study.get_trials(deepcopy=False)))


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """`values` in os.environ for the block (Tracker and libpq read credentials there)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
