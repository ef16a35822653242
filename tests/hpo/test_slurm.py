"""`celebhpo launch slurm` on a real one-node SLURM cluster on localhost (tests/slurm_cluster.py),
a PostgreSQL study and a SQLite MLflow store: two array tasks share a grid; one task is
scancel'ed mid-trial and the other resumes its trial from the last finished epoch. Plus
what the script holds (no secret), how credentials are refused, and the launch-time check of
the MLflow store.

PostgreSQL: 127.0.0.1:5432, user postgres, trust auth; each test makes a throw-away database.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from celebhpo.cli import cli
from celebhpo.config import load_study_file
from celebhpo.hpo import create_study, load_study
from celebhpo.hpo.objective import RESUME_TAG
from tests.helpers import Relay, assert_grid_done_once, logs, mlflow_runs, write_study
from tests.slurm_cluster import FINAL, Unavailable, slurm_cluster, task_states

TS = optuna.trial.TrialState
GRID4 = "lr = [0.001, 0.003, 0.01, 0.03]"
SECRET = "pw-Zq8vX2"
TOKEN = "tok-9fK3mW7rL1"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> dict[str, str]:
    """The client environment of a one-node cluster started for this module, stopped after."""
    try:
        with slurm_cluster(tmp_path_factory.mktemp("slurm")) as env:
            yield env
    except Unavailable as e:
        pytest.skip(f"no SLURM cluster on this machine: {e}")


def _env_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def _worker_env(extra: dict[str, str]) -> dict[str, str]:
    """The submitting shell: the venv's celebhpo on PATH (sbatch --export=ALL passes it on),
    one torch thread per worker, no credentials of its own."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CELEBHPO_STORAGE", "MLFLOW_TRACKING_URI")}
    env.update(extra, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    return env


def _wait(what: str, check, limit: float, log_dir: Path):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    pytest.fail(f"no {what} within {limit:.0f} s:\n{logs(*sorted(log_dir.glob('*.out')))}")


# -- a real array ----------------------------------------------------------------------------
def test_an_array_shares_a_grid_and_recovers_a_cancelled_task(tmp_path, synth_root, pg_url,
                                                             slurm):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write_study(tmp_path / "s.toml", synth_root, name="sgrid", space=GRID4, epochs=5,
                       train_size=240, study_extra="heartbeat_interval = 1\ngrace_period = 10")
    # 32 px: epochs long enough (about half a second) to cancel a task between two
    path.write_text(path.read_text().replace("image_size = 16", "image_size = 32"))
    create_study(load_study_file(path), storage=pg_url, grid=True, tracking_uri=tracking_uri)
    env_file = _env_file(tmp_path / "celebhpo.env", f"# the workers' database\n"
                                                    f"CELEBHPO_STORAGE={pg_url}\n")
    env = _worker_env(slurm)
    out = subprocess.run(
        [sys.executable, "-m", "celebhpo", "launch", "slurm", "--study", "sgrid",
         "--workers", "2", "--gpus-per-worker", "0", "--cpus-per-worker", "1",
         "--env-file", str(env_file), "--out", str(tmp_path / "slurm")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    job = re.search(r"submitted job array (\d+): 2 workers", out.stdout).group(1)
    log_dir = tmp_path / "slurm" / "logs"
    client = MlflowClient(tracking_uri)

    def resumable_trial():  # a trial mid-run whose run holds epoch 1's resume state
        study, _ = load_study("sgrid", pg_url)
        for t in study.get_trials(deepcopy=False, states=(TS.RUNNING,)):
            run_id, pid = t.user_attrs.get("mlflow_run_id"), t.user_attrs.get("pid")
            if run_id and pid and int(client.get_run(run_id).data.tags.get(RESUME_TAG, 0)):
                return t
        return None

    victim = _wait("trial with a resume state", resumable_trial, 240, log_dir)
    environ = Path(f"/proc/{victim.user_attrs['pid']}/environ").read_bytes().split(b"\0")
    task = next(v.split(b"=", 1)[1].decode() for v in environ
                if v.startswith(b"SLURM_ARRAY_TASK_ID="))
    subprocess.run(["scancel", f"{job}_{task}"], env=env, check=True)
    states = _wait("end of the array", lambda: (s := task_states(job, env)) and
                   set(s.values()) <= FINAL and s, 300, log_dir)

    other = "1" if task == "0" else "0"
    assert states == {f"{job}_{task}": "CANCELLED", f"{job}_{other}": "COMPLETED"}, states
    victim_log = (log_dir / f"celebhpo-sgrid-{job}_{task}.out").read_text()
    assert "interrupted (SIGTERM)" in victim_log, victim_log
    assert "Traceback" not in victim_log, victim_log
    study, _ = load_study("sgrid", pg_url)
    stopped = study.trials[victim.number]
    assert stopped.state == TS.FAIL and stopped.user_attrs["fail_reason"].startswith("interrupt")
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state == TS.COMPLETE, [t.state for t in retry]
    assert retry[0].params == victim.params
    assert retry[0].user_attrs["pid"] != victim.user_attrs["pid"]  # the other task's worker
    assert retry[0].user_attrs["resumed_from_epoch"] >= 1
    assert_grid_done_once(pg_url, "sgrid", tracking_uri, 4)  # + one FINISHED run per point
    assert mlflow_runs(tracking_uri, "sgrid")[victim.number].info.status == "FAILED"

    status = subprocess.run([sys.executable, "-m", "celebhpo", "launch", "status", "--study",
                             "sgrid", "--env-file", str(env_file)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert re.search(rf"{job}_{task}\s+CANCELLED", status.stdout), status.stdout
    assert re.search(rf"{job}_{other}\s+COMPLETED", status.stdout), status.stdout
    assert "trials: 4 COMPLETE, 1 FAIL" in status.stdout, status.stdout


# -- the script ------------------------------------------------------------------------------
def _dry_run(args: list[str], env: dict[str, str]):
    return CliRunner().invoke(cli, ["launch", "slurm", "--study", "sgrid", "--workers", "3",
                                    "--dry-run", *args], env=env)


def test_the_script_holds_no_secret_and_asks_gpus_only_when_told(tmp_path):
    storage = f"postgresql+psycopg2://celebhpo:{SECRET}@db.example.com/celebhpo"
    env_file = _env_file(tmp_path / "c.env", f"CELEBHPO_STORAGE={storage}\n"
                                             f"MLFLOW_TRACKING_TOKEN={TOKEN}\n")
    env = {"CELEBHPO_STORAGE": storage, "MLFLOW_TRACKING_URI": f"https://{TOKEN}@mlflow.x",
           "MLFLOW_TRACKING_TOKEN": TOKEN}
    result = _dry_run(["--env-file", str(env_file), "--partition", "gpu", "--time", "2:00:00",
                       "--out", str(tmp_path / "s")], env)
    assert result.exit_code == 0, result.output
    script = result.output
    assert SECRET not in script and TOKEN not in script
    lines = script.splitlines()
    for line in ("#SBATCH --array=0-2", "#SBATCH --gres=gpu:1", "#SBATCH --requeue",
                 "#SBATCH --partition=gpu", "#SBATCH --time=2:00:00",
                 "#SBATCH --signal=B:TERM@60"):
        assert line in lines, script
    assert f"done < {env_file}" in lines  # the file is named, its values are not
    assert shlex.split(lines[-1]) == ["exec", "celebhpo", "optimize", "--study", "sgrid",
                                      "--device", "cuda"]
    assert not list(tmp_path.glob("s*/**/*")), "a dry run writes nothing"

    cpu = _dry_run(["--gpus-per-worker", "0"], env)
    assert cpu.exit_code == 0 and "--gres" not in cpu.output  # a CPU cluster schedules it
    assert shlex.split(cpu.output.splitlines()[-1])[-2:] == ["--study", "sgrid"]


def test_credentials_are_refused_where_others_can_read_them(tmp_path):
    open_file = _env_file(tmp_path / "c.env", "CELEBHPO_STORAGE=postgresql://u:p@h/d\n", 0o644)
    result = _dry_run(["--env-file", str(open_file)], {})
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: --env-file {open_file} is readable by others (mode 0644, owner uid "
        f"{os.getuid()}); it holds credentials: chmod 600 {open_file} as its owner")
    argv = _dry_run(["--storage", f"postgresql://u:{SECRET}@h/d"], {})
    assert argv.exit_code == 1 and "--storage holds a password" in argv.output
    assert SECRET not in argv.output
    bad = _env_file(tmp_path / "bad.env", "export CELEBHPO_STORAGE=x\n")
    result = _dry_run(["--env-file", str(bad)], {})
    assert result.exit_code == 1 and "line 1: expected KEY=VALUE" in result.output


def test_launch_says_in_one_line_that_the_tracking_server_is_down(
        tmp_path, synth_root, pg_url, tracking_server):
    with Relay(tracking_server) as relay:  # the study's store: a server, through a relay
        cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="down"))
        create_study(cfg, storage=pg_url, grid=True, tracking_uri=relay.url)
    # the relay is stopped: the server is unreachable for launch, as a dead one would be
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["launch", "slurm", "--study", "down", "--workers", "2",
                                      "--out", str(tmp_path / "s")],
                                env={"CELEBHPO_STORAGE": pg_url, "MLFLOW_TRACKING_URI": None})
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: MLflow tracking store {relay.url} "
                                                   "unreachable"), result.output
    assert "start the MLflow server" in lines[0]
    assert not (tmp_path / "s").exists()  # nothing written, nothing submitted
    assert time.monotonic() - started < 30


def test_the_task_reads_the_env_file_as_launch_does(tmp_path):
    """The script's loop (bash) and launch's reader agree on every value: taken literally,
    `$`, `&`, quotes and spaces included; comments and blank lines skipped."""
    from celebhpo.hpo.scheduler import read_env_file

    env_file = _env_file(tmp_path / "c.env", "# credentials\nCELEBHPO_STORAGE=postgresql://u:"
                         "p$w&x@h/d?sslmode=require&a=1\n\n  \nMLFLOW_TRACKING_TOKEN=a \"b\" 'c'\n")
    script = _dry_run(["--env-file", str(env_file)], {}).output
    loop = script[script.index("set -eo pipefail"):script.index("export CELEBHPO_WORKER")]
    shown = subprocess.run(["bash", "-c", loop + 'printf "%s\\n%s" "$CELEBHPO_STORAGE" '
                            '"$MLFLOW_TRACKING_TOKEN"'], capture_output=True, text=True,
                           env={"PATH": os.environ["PATH"]}, check=True).stdout
    values = read_env_file(env_file)
    assert shown.split("\n") == [values["CELEBHPO_STORAGE"], values["MLFLOW_TRACKING_TOKEN"]]
    assert values["MLFLOW_TRACKING_TOKEN"] == "a \"b\" 'c'"
