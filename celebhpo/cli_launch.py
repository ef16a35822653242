"""`celebhpo launch`: workers on a scheduler (a SLURM job array, a Kubernetes indexed Job),
and the array's state. Parse, call one library function (hpo.slurm, hpo.k8s), print.

Registered on the main group by cli.py; the text of the results is formatted here, at the
edge, as each is a few lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from celebhpo.cli_options import Group, storage_option
from celebhpo.errors import without_credentials

if TYPE_CHECKING:
    from celebhpo.hpo.slurm import SlurmStatus
    from celebhpo.hpo.storage import StorageSpec

__all__ = ["launch"]

GRACE_HELP = ("Seconds between SIGTERM and the kill: one batch plus failing and re-queueing "
              "the trial (closing its MLflow run).")


def _study(f):
    return click.option("--study", "study", required=True, metavar="NAME",
                        help="The study the workers share (made with `study create`).")(f)


def _workers(f):
    return click.option("--workers", type=click.IntRange(min=1), required=True, metavar="N",
                        help="How many workers (array tasks, pods) to run at once.")(f)


def _trials(f):
    return click.option("--trials", type=click.IntRange(min=1), default=None, metavar="N",
                        help="Passed to every worker: the study's budget, shared by all "
                        "(a grid ends on its own).")(f)


@click.group(cls=Group)
def launch() -> None:
    """Run a study's workers on a scheduler: a SLURM job array or a Kubernetes Job."""


@launch.command("slurm")
@_study
@_workers
@click.option("--gpus-per-worker", type=click.IntRange(min=0), default=1, show_default=True,
              help="GPUs per array task (--gres=gpu:K; 0: none asked, the study's [train] "
              "device; 2 or more: one worker process per GPU, as optimize --devices).")
@click.option("--partition", default=None, metavar="P", help="SLURM partition.")
@click.option("--time", "time_limit", default=None, metavar="T",
              help="Time limit of each task, e.g. 4:00:00.")
@click.option("--cpus-per-worker", type=click.IntRange(min=1), default=None, metavar="C",
              help="--cpus-per-task, and OMP_NUM_THREADS for the worker.")
@_trials
@click.option("--grace", type=click.IntRange(min=0), default=60, show_default=True,
              metavar="SECONDS", help="SIGTERM this long before the time limit (sbatch "
              "--signal=B:TERM@SECONDS). " + GRACE_HELP)
@click.option("--env-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="KEY=VALUE lines (CELEBHPO_STORAGE, MLFLOW_TRACKING_URI, ...) that each "
              "task reads at start; must be readable by you only (chmod 600).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("slurm"),
              show_default=True, help="Where the script and the tasks' logs (logs/) go.")
@click.option("--setup", multiple=True, metavar="LINE", help="A shell line run before the "
              "worker, e.g. 'source ~/venv/bin/activate' (repeatable).")
@click.option("--sbatch", "sbatch_opts", multiple=True, metavar="OPT",
              help="Another sbatch option, e.g. --sbatch=--mem=32G (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print the script; submit and check nothing.")
@storage_option
@click.pass_context
def launch_slurm(ctx: click.Context, study: str, workers: int, gpus_per_worker: int,
                 partition: str | None, time_limit: str | None, cpus_per_worker: int | None,
                 trials: int | None, grace: int, env_file: Path | None, out: Path,
                 setup: tuple[str, ...], sbatch_opts: tuple[str, ...], dry_run: bool,
                 storage: StorageSpec) -> None:
    """Submit a SLURM job array: each task runs one `celebhpo optimize --study NAME` worker
    on its GPU(s). Credentials come from the environment or --env-file, never the script.
    Before submitting: the study must open and its MLflow store must answer.

    Example: celebhpo launch slurm --study seed-grid --workers 8 --partition gpu --time 8:00:00 --env-file ~/.celebhpo.env
    """
    from celebhpo.hpo.scheduler import launch_storage, read_env_file
    from celebhpo.hpo.slurm import SlurmJob, render_script, submit_array

    _no_password_in_argv(ctx, storage)
    job = SlurmJob(study=study, workers=workers, out=out, gpus_per_worker=gpus_per_worker,
                   partition=partition, time=time_limit, cpus_per_worker=cpus_per_worker,
                   env_file=env_file, grace_s=grace, trials=trials, setup=setup,
                   sbatch=sbatch_opts)
    env = read_env_file(env_file) if env_file else {}
    if dry_run:
        click.echo(render_script(job), nl=False)
        return
    done = submit_array(job, launch_storage(storage, env), env)
    click.echo(f"submitted job array {done.job_id}: {done.workers} workers on study "
               f"'{done.checked.study}' ({done.checked.trials} trials so far; storage "
               f"{done.checked.storage}; MLflow {done.checked.tracking})")
    click.echo(f"script {done.script_path}; logs {done.logs}/")
    click.echo(f"watch: celebhpo launch status --study {study}")


@launch.command("status")
@_study
@click.option("--job", "job_id", default=None, metavar="JOBID",
              help="The array's job id (default: every array named for the study).")
@click.option("--env-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The env file given to launch slurm (its CELEBHPO_STORAGE).")
@storage_option
def launch_status(study: str, job_id: str | None, env_file: Path | None,
                  storage: StorageSpec) -> None:
    """The SLURM array's tasks (squeue; sacct once they left it) next to the study's trials.

    Example: celebhpo launch status --study seed-grid --env-file ~/.celebhpo.env
    """
    from celebhpo.hpo.scheduler import launch_storage, read_env_file
    from celebhpo.hpo.slurm import array_status

    env = read_env_file(env_file) if env_file else {}
    click.echo(_format_status(array_status(study, launch_storage(storage, env), job_id)))


@launch.command("k8s")
@_study
@_workers
@click.option("--image", required=True, metavar="IMAGE",
              help="The worker image (the repository's Dockerfile builds it).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("k8s"),
              show_default=True, help="Where the manifest goes.")
@click.option("--secret", default="celebhpo", show_default=True, metavar="NAME",
              help="The Secret whose keys CELEBHPO_STORAGE, MLFLOW_TRACKING_URI, ... the "
              "pods read (secretKeyRef).")
@click.option("--grace", type=click.IntRange(min=0), default=60, show_default=True,
              metavar="SECONDS", help="terminationGracePeriodSeconds. " + GRACE_HELP)
@click.option("--namespace", default=None, metavar="NS")
@_trials
@click.option("--volume", "volumes", multiple=True, metavar="CLAIM:/PATH",
              help="Mount a PersistentVolumeClaim, e.g. the data at the study's [data] root "
              "(repeatable).")
def launch_k8s(study: str, workers: int, image: str, out: Path, secret: str, grace: int,
               namespace: str | None, trials: int | None, volumes: tuple[str, ...]) -> None:
    """Write an indexed Kubernetes Job: N pods, one GPU each, each running the same
    `celebhpo optimize --study NAME` as a SLURM task, credentials from a Secret.

    Example: celebhpo launch k8s --study seed-grid --workers 8 --image registry.example.com/celebhpo:0.1 --volume celeba:/data/celeba
    """
    from celebhpo.hpo.k8s import K8sJob, write_manifests

    done = write_manifests(K8sJob(study=study, workers=workers, image=image, secret=secret,
                                  grace_s=grace, namespace=namespace, trials=trials,
                                  volumes=volumes), out)
    click.echo(f"wrote {done.path}: an indexed Job of {done.workers} workers, one GPU each")
    click.echo(f"then: kubectl create secret generic {secret} --from-env-file=celebhpo.env; "
               f"kubectl apply -f {done.path}")


def _no_password_in_argv(ctx: click.Context, storage: StorageSpec) -> None:
    if (ctx.get_parameter_source("storage") == ParameterSource.COMMANDLINE
            and without_credentials(storage.url) != storage.url):
        raise click.UsageError("--storage holds a password, which `ps` shows to every user "
                               "of this machine: set CELEBHPO_STORAGE in the environment or "
                               "the --env-file instead")


def _format_status(status: SlurmStatus) -> str:
    lines = [f"SLURM array {status.job_name}:"]
    if not status.tasks:
        lines.append("  no tasks found (none submitted, or gone from squeue and no sacct)")
    width = max([len(t.task) for t in status.tasks] + [4])
    lines += [f"  {t.task:<{width}}  {t.state:<11} {t.elapsed:>10}  {t.node or '-':<12} "
              f"{t.reason}" for t in status.tasks]
    counts = ", ".join(f"{n} {s}" for s, n in status.trial_counts.items() if n) or "none"
    lines.append(f"trials: {counts}")
    for t in status.running:
        params = " ".join(f"{k}={v}" for k, v in t.params.items())
        lines.append(f"  trial {t.number} running on {t.host} pid {t.pid}, "
                     f"{t.epochs} epochs reported, {params}")
    return "\n".join(lines)
