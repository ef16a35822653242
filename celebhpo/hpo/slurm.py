"""`celebhpo launch slurm`: a SLURM job array whose every task runs one `celebhpo optimize`
worker on the study, and `launch status`: the array's tasks next to the study's trials.

Plain `sbatch`, no library: the script is the product (`--dry-run` prints it for users who
keep their own), and sbatch's `--parsable` answer is all we read back. submitit would pickle
a Python call into its own script and signal scheme; simple-slurm only spells the same
`#SBATCH` lines.

The script holds no credential: each task reads them from its environment (sbatch
`--export=ALL` passes the submitting shell's, CELEBHPO_STORAGE included) and from the env
file, read at task start so a requeued task sees the current one. `--requeue`: a task
preempted or lost with its node is queued again and simply joins the study again; its
trial, failed and re-queued by the worker on SIGTERM (or by the heartbeat recovery after a
kill), resumes from its last finished epoch on whichever worker takes it. `--signal
B:TERM@grace` stops the worker that many seconds before the time limit, at its next safe
point; the batch shell `exec`s the worker, so SIGTERM from scancel, a preemption or the
limit reaches it directly.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from celebhpo._io import atomic_write
from celebhpo.errors import StudyError, mask_url
from celebhpo.hpo.launch import STORAGE_ENV, WORKER_ENV
from celebhpo.hpo.results import STATE_ORDER, state_counts
from celebhpo.hpo.scheduler import GPU_LIST, Preflight, preflight, worker_argv
from celebhpo.hpo.storage import StorageSpec
from celebhpo.hpo.studies import load_study

__all__ = ["RunningTrial", "SlurmJob", "SlurmLaunch", "SlurmStatus", "SlurmTask",
           "array_status", "job_name", "render_script", "submit_array"]

DEFAULT_GRACE_S = 60  # one batch plus failing and re-queueing the trial (README)


@dataclass(frozen=True)
class SlurmJob:
    """What the array asks for; `out` holds the script and the tasks' logs (logs/)."""

    study: str
    workers: int
    out: Path
    gpus_per_worker: int = 1
    partition: str | None = None
    time: str | None = None
    cpus_per_worker: int | None = None
    env_file: Path | None = None
    grace_s: int = DEFAULT_GRACE_S
    trials: int | None = None
    setup: tuple[str, ...] = ()  # shell lines before the worker, e.g. activating a venv
    sbatch: tuple[str, ...] = ()  # more sbatch options, e.g. --mem=32G, --account=abc

    @property
    def logs(self) -> Path:
        return self.out.resolve() / "logs"

    @property
    def script_path(self) -> Path:
        return self.out / f"{job_name(self.study)}.sbatch"


@dataclass(frozen=True)
class SlurmLaunch:
    job_id: str
    script_path: Path
    logs: Path
    workers: int
    checked: Preflight


def job_name(study: str) -> str:
    """The array's job name, by which `launch status` finds it."""
    return "celebhpo-" + re.sub(r"[^A-Za-z0-9_.-]", "_", study)


def render_script(job: SlurmJob) -> str:
    """The sbatch script: N array tasks, each `exec celebhpo optimize --study NAME ...`."""
    if job.workers < 1:
        raise StudyError(f"--workers {job.workers}: give 1 or more")
    if job.grace_s < 0:
        raise StudyError(f"--grace {job.grace_s}: give seconds >= 0")
    q = shlex.quote
    head = [
        "#!/bin/bash",
        f"# celebhpo workers for study {job.study!r}: {job.workers} array tasks, each one",
        "# `celebhpo optimize`. No credentials in here: each task takes them from its",
        "# environment (sbatch --export=ALL passes the submitting shell's) and the env file.",
        f"# Submit with: mkdir -p {q(str(job.logs))} && sbatch THIS_FILE",
    ]
    opts = [f"--job-name={job_name(job.study)}", f"--array=0-{job.workers - 1}",
            "--ntasks=1", "--requeue", "--open-mode=append", "--export=ALL",
            f"--signal=B:TERM@{job.grace_s}", f"--output={q(str(job.logs / '%x-%A_%a.out'))}"]
    opts += [f"--cpus-per-task={job.cpus_per_worker}"] if job.cpus_per_worker else []
    # no --gres on a CPU-only cluster: it would never schedule (gpus_per_worker = 0)
    opts += [f"--gres=gpu:{job.gpus_per_worker}"] if job.gpus_per_worker > 0 else []
    opts += [f"--partition={job.partition}"] if job.partition else []
    opts += [f"--time={job.time}"] if job.time else []
    opts += list(job.sbatch)
    body = ["set -eo pipefail"]
    if job.env_file is not None:  # KEY=VALUE lines, taken literally (scheduler.py)
        body += ["while IFS= read -r line || [ -n \"$line\" ]; do",
                 "  case \"$line\" in '#'*) continue ;; esac",
                 "  [ -z \"${line//[[:space:]]/}\" ] && continue",
                 "  export \"$line\"",
                 f"done < {q(str(job.env_file.resolve()))}"]
    body += [f'export {WORKER_ENV}="slurm${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"']
    body += [f"export OMP_NUM_THREADS={job.cpus_per_worker}"] if job.cpus_per_worker else []
    body += list(job.setup)
    argv = worker_argv(job.study, gpus=job.gpus_per_worker, trials=job.trials)
    body += ["exec " + " ".join(a if a == GPU_LIST else q(a) for a in argv)]
    return "\n".join([*head, *(f"#SBATCH {o}" for o in opts), *body]) + "\n"


def submit_array(job: SlurmJob, storage: StorageSpec, env: dict[str, str]) -> SlurmLaunch:
    """Check the study and its MLflow store, write the script and `sbatch` it. `env`: the env
    file's variables (its CELEBHPO_STORAGE already chose `storage`); the storage reaches the
    tasks through sbatch's environment when it did not come from the file."""
    script = render_script(job)
    checked = preflight(job.study, storage, env)
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise StudyError("sbatch not found on PATH: run launch slurm on a SLURM login node, "
                         "or print the script with --dry-run and submit it there")
    job.logs.mkdir(parents=True, exist_ok=True)
    atomic_write(job.script_path, script)
    sub_env = dict(os.environ) if STORAGE_ENV in env else {**os.environ, STORAGE_ENV: storage.url}
    result = subprocess.run([sbatch, "--parsable", str(job.script_path)], env=sub_env,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        said = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise StudyError(f"sbatch refused {job.script_path}: "
                         f"{mask_url(said[-1] if said else f'exit {result.returncode}')}")
    job_id = result.stdout.strip().split(";")[0]
    return SlurmLaunch(job_id, job.script_path, job.logs, job.workers, checked)


# -- status ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SlurmTask:
    task: str  # JOBID_TASKID
    state: str  # PENDING, RUNNING, COMPLETED, CANCELLED, ...
    elapsed: str
    node: str
    reason: str  # why pending, or the exit code from sacct


@dataclass(frozen=True)
class RunningTrial:
    number: int
    host: str
    pid: int | None
    epochs: int  # epochs reported so far
    params: dict


@dataclass
class SlurmStatus:
    job_name: str
    tasks: list[SlurmTask] = field(default_factory=list)
    trial_counts: dict[str, int] = field(default_factory=dict)
    running: list[RunningTrial] = field(default_factory=list)


def array_status(study: str, storage: StorageSpec, job_id: str | None = None) -> SlurmStatus:
    """The array's tasks (squeue, which keeps finished ones for MinJobAge; else sacct) and
    the study's trials: counts by state and who runs what (host and pid)."""
    name = job_name(study)
    which = [f"--jobs={job_id}"] if job_id else [f"--name={name}"]
    rows = _query(["squeue", *which, "--states=all", "--array", "--noheader",
                   "--format=%i|%T|%M|%N|%r"])
    if not rows:  # gone from the controller's memory: accounting, where there is one
        rows = _query(["sacct", *which, "-X", "--parsable2", "--noheader",
                       "--format=JobID,State,Elapsed,NodeList,ExitCode"], quiet=True)
    status = SlurmStatus(name, [SlurmTask(*(r + [""] * 5)[:5]) for r in rows])
    optuna_study, _ = load_study(study, storage)
    trials = optuna_study.get_trials(deepcopy=False)
    counts = state_counts(trials)
    status.trial_counts = {s: counts[s] for s in sorted(counts, key=lambda s: STATE_ORDER.get(s, 9))}
    status.running = [
        RunningTrial(t.number, str(t.user_attrs.get("host", "?")), t.user_attrs.get("pid"),
                     len(t.intermediate_values), dict(t.params))
        for t in trials if t.state.name == "RUNNING"]
    return status


def _query(argv: list[str], quiet: bool = False) -> list[list[str]]:
    exe = shutil.which(argv[0])
    if exe is None:
        if quiet:
            return []
        raise StudyError(f"{argv[0]} not found on PATH: run launch status on a SLURM login node")
    result = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        if quiet:
            return []
        raise StudyError(f"{argv[0]} failed: {result.stderr.strip() or result.returncode}")
    return [line.split("|") for line in result.stdout.splitlines() if line.strip()]
