"""`celebhpo launch k8s`: an indexed Kubernetes Job whose every pod runs one `celebhpo
optimize` worker on the study, on one GPU, with the same command as a SLURM task.

- `completionMode: Indexed`, `parallelism = completions = N`: N workers at once; the Job is
  complete when every index's worker has exited 0 (the grid is done, or --trials reached).
- One GPU per pod: `resources.limits["nvidia.com/gpu"] = 1` (the device plugin's resource).
- Credentials come from a Secret by reference (`secretKeyRef`), never as values: its keys
  are the variables' names, so the env file of `launch slurm --env-file` makes it
  (`kubectl create secret generic NAME --from-env-file=FILE`). CELEBHPO_STORAGE is
  required; the tracking variables are optional (a study keeps its tracking URI, without
  credentials).
- `terminationGracePeriodSeconds` (--grace, 60 s by default): a pod deleted, evicted or
  preempted gets SIGTERM; its worker stops at the next batch, fails and re-queues its trial
  and closes its MLflow run, all within the grace, before the kubelet's SIGKILL.
- A pod failed by a disruption (preemption, eviction, node drain) does not count against
  the index's retries (`podFailurePolicy` Ignore on DisruptionTarget): the index gets a new
  pod, which joins the study again, as SLURM's --requeue does; its trial resumes from the
  last finished epoch on whichever worker takes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from celebhpo._io import atomic_write
from celebhpo.errors import StudyError
from celebhpo.hpo.launch import STORAGE_ENV, WORKER_ENV
from celebhpo.hpo.scheduler import CREDENTIAL_VARS, worker_argv

__all__ = ["DEFAULT_GRACE_S", "K8sJob", "K8sManifests", "k8s_name", "render_job",
           "write_manifests"]

DEFAULT_GRACE_S = 60  # one batch plus failing and re-queueing the trial (README)
GPU_RESOURCE = "nvidia.com/gpu"
RETRIES_PER_INDEX = 3  # crashes of one worker index before it is given up


@dataclass(frozen=True)
class K8sJob:
    study: str
    workers: int
    image: str
    secret: str = "celebhpo"
    grace_s: int = DEFAULT_GRACE_S
    namespace: str | None = None
    trials: int | None = None
    volumes: tuple[str, ...] = ()  # CLAIM:/mount/path, e.g. the data at the study's root


@dataclass(frozen=True)
class K8sManifests:
    path: Path
    job: dict[str, Any]
    workers: int


def k8s_name(study: str) -> str:
    """The Job's name: DNS-1123, short enough for the pods' names and labels built on it."""
    slug = re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", study.lower())).strip("-")
    if not slug:
        raise StudyError(f"study name {study!r} gives no Kubernetes name (letters or digits)")
    return ("celebhpo-" + slug)[:52].rstrip("-")


def render_job(job: K8sJob) -> dict[str, Any]:
    """The indexed Job as a dict, ready for YAML."""
    if job.workers < 1:
        raise StudyError(f"--workers {job.workers}: give 1 or more")
    if job.grace_s < 0:
        raise StudyError(f"--grace {job.grace_s}: give seconds >= 0")
    name = k8s_name(job.study)
    labels = {"app.kubernetes.io/name": "celebhpo", "app.kubernetes.io/instance": name}
    meta: dict[str, Any] = {"name": name, "labels": labels,
                            "annotations": {"celebhpo/study": job.study}}
    if job.namespace:
        meta["namespace"] = job.namespace
    mounts, volumes = _volumes(job.volumes)
    container = {
        "name": "worker",
        "image": job.image,
        "command": worker_argv(job.study, gpus=1, trials=job.trials),
        "env": _env(job.secret),
        "resources": {"limits": {GPU_RESOURCE: 1}},
        **({"volumeMounts": mounts} if mounts else {}),
    }
    pod = {"restartPolicy": "Never", "terminationGracePeriodSeconds": job.grace_s,
           "containers": [container], **({"volumes": volumes} if volumes else {})}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "completionMode": "Indexed",
            "completions": job.workers,
            "parallelism": job.workers,
            "backoffLimitPerIndex": RETRIES_PER_INDEX,
            "podFailurePolicy": {"rules": [
                {"action": "Ignore",
                 "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod},  # no YAML alias
        },
    }


def write_manifests(job: K8sJob, out: Path) -> K8sManifests:
    """Write the Job to OUT/<name>-job.yaml (no secret value is in it)."""
    manifest = render_job(job)
    path = out / f"{manifest['metadata']['name']}-job.yaml"
    header = (f"# celebhpo workers for study {job.study!r}: kubectl apply -f {path.name}\n"
              f"# credentials: kubectl create secret generic {job.secret} "
              "--from-env-file=celebhpo.env\n")
    atomic_write(path, header + yaml.safe_dump(manifest, sort_keys=False))
    return K8sManifests(path, manifest, job.workers)


def _env(secret: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": var, "valueFrom": {"secretKeyRef": {
            "name": secret, "key": var, **({} if var == STORAGE_ENV else {"optional": True})}}}
        for var in CREDENTIAL_VARS]
    env.append({"name": WORKER_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    env.append({"name": "PYTHONUNBUFFERED", "value": "1"})  # lines reach `kubectl logs` now
    return env


def _volumes(specs: tuple[str, ...]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    mounts, volumes = [], []
    for i, spec in enumerate(specs):
        claim, _, path = spec.partition(":")
        if not claim or not path.startswith("/"):
            raise StudyError(f"--volume {spec!r}: give CLAIM:/mount/path, e.g. "
                             "celeba-data:/data/celeba (the study's [data] root)")
        mounts.append({"name": f"vol{i}", "mountPath": path})
        volumes.append({"name": f"vol{i}", "persistentVolumeClaim": {"claimName": claim}})
    return mounts, volumes
