"""Workers that never hang and never lose a trial (issue 14), with real `celebhpo optimize`
processes: kill -9 of one `--devices` worker, a worker killed between its claim and its owner
record, a worker stopped past the grace period whose trial was taken over, Ctrl-C, and three
workers on one SQLite study.

PostgreSQL: 127.0.0.1:5432, user postgres, trust auth; each test makes a throw-away database.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from celebhpo.config import load_study_file
from celebhpo.errors import StudyError
from celebhpo.hpo import create_study, load_study, optimize
from tests.helpers import assert_grid_done_once, logs, mlflow_runs, start, write_study
from tests.hpo.test_worker import _storage, running_trial, wait_for

TS = optuna.trial.TrialState
GRID4 = "lr = [0.003, 0.03]\ndropout = [0.1, 0.3]"


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"


def _stop_all(launcher: subprocess.Popen, log: Path) -> None:
    """End a hung `--devices` launcher and the workers it started (their pids are in its
    log; only processes whose parent is the launcher are touched): a hung launcher must not
    outlive its test."""
    if launcher.poll() is not None:
        return
    for pid in re.findall(r"worker gpu\d+: pid (\d+)", log.read_text()):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == launcher.pid:
                os.kill(int(pid), signal.SIGKILL)
    launcher.kill()
    launcher.wait(timeout=60)


# -- case 1: a --devices worker killed -------------------------------------------------------
def test_devices_kill9_of_one_worker_does_not_hang_the_other(tmp_path, synth_root, tracking_uri):
    """The killed worker is reaped at once (no zombie for the survivor to wait on), the
    survivor re-runs its trial and finishes the grid, the launcher reports the kill. The
    victim is the last worker started: the launcher used to wait for the others first."""
    storage = str(tmp_path / "studies" / "grid.log")
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="devkill",
                                      space=GRID4, epochs=3))
    create_study(cfg, storage=storage, grid=True, tracking_uri=tracking_uri)
    log = tmp_path / "devices.log"
    launcher = start(["optimize", "--storage", storage, "--devices", "0,1", "--device", "cpu"],
                     tmp_path, log)
    try:
        def last_workers_trial():
            pids = [int(p) for p in re.findall(r"worker gpu1: pid (\d+)", log.read_text())]
            study = optuna.load_study(study_name="devkill", storage=_storage(storage))
            return next((t for t in study.get_trials(deepcopy=False, states=(TS.RUNNING,))
                         if "mlflow_run_id" in t.user_attrs
                         and t.user_attrs.get("pid") in pids), None)

        victim = wait_for("a trial of worker gpu1 mid-run", last_workers_trial, [launcher], [log])
        os.kill(victim.user_attrs["pid"], signal.SIGKILL)
        try:
            code = launcher.wait(timeout=300)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the surviving worker hung after kill -9 of its peer:\n{logs(log)}")
    finally:
        _stop_all(launcher, log)
    assert code == 128 + signal.SIGKILL, logs(log)
    assert "killed by signal 9" in log.read_text()
    study, _ = load_study("devkill", storage)
    lost = study.trials[victim.number]
    assert lost.state == TS.FAIL and "died while running it" in lost.user_attrs["fail_reason"]
    assert_grid_done_once(storage, "devkill", tracking_uri, 4)


# -- case 2: killed between the claim and the owner record ----------------------------------
# what a worker that dies right after its claim leaves: Optuna's own pop of a queued trial
# (WAITING -> RUNNING, the claim celebhpo used to make before recording its owner), then death
CLAIM_THEN_DIE = """
import os, signal, sys
import optuna
from celebhpo.hpo.storage import open_storage
study = optuna.load_study(study_name=sys.argv[2], storage=open_storage(sys.argv[1]))
study.ask()
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_trial_claimed_by_a_worker_that_died_before_recording_itself_is_rerun(
        kind, request, tmp_path, synth_root, tracking_uri):
    storage = (f"sqlite:///{tmp_path / 'optuna.db'}" if kind == "sqlite"
               else request.getfixturevalue("pg_url"))
    name = f"orphan_{kind}"
    cfg = load_study_file(write_study(
        tmp_path / "s.toml", synth_root, name=name, space="lr = [0.003, 0.03]",
        study_extra="heartbeat_interval = 1\ngrace_period = 2"))
    create_study(cfg, storage=storage, grid=True, tracking_uri=tracking_uri)
    died = subprocess.run([sys.executable, "-c", CLAIM_THEN_DIE, storage, name],
                          capture_output=True, text=True, timeout=120)
    assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
    study, _ = load_study(name, storage)
    assert study.trials[0].state == TS.RUNNING and "pid" not in study.trials[0].user_attrs

    lines: list[str] = []
    # the timeout only bounds a regression (a worker waiting for the orphan forever)
    summary = optimize(storage=storage, timeout=120, progress=False, echo=lines.append)
    study, _ = load_study(name, storage)
    orphan = study.trials[0]
    assert orphan.state == TS.FAIL, "\n".join(lines)
    assert "no owner after 2 s" in orphan.user_attrs["fail_reason"]
    rerun = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert len(rerun) == 1 and rerun[0].state == TS.COMPLETE
    assert rerun[0].params == orphan.params
    assert summary.stopped == "the grid is exhausted"
    assert "trial(s) 0 lost their worker" in "\n".join(lines)
    assert_grid_done_once(storage, name, tracking_uri, 2)


# -- case 3: a stopped worker wakes up after its trial was taken over -----------------------
def _epoch_done(storage: str, name: str):
    def check():
        study = optuna.load_study(study_name=name, storage=_storage(storage))
        for t in study.get_trials(deepcopy=False, states=(TS.RUNNING,)):
            if "mlflow_run_id" in t.user_attrs and t.intermediate_values:
                return t
        return None
    return check


def _run_snapshot(tracking: str, run_id: str) -> tuple:
    client = MlflowClient(tracking)
    run = client.get_run(run_id)
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val_loss"))
    return run.info.status, run.info.end_time, history, sorted(run.data.metrics)


def test_a_worker_whose_trial_was_taken_over_drops_it_and_goes_on(
        tmp_path, synth_root, pg_url, tracking_server):
    """SIGSTOP a worker past grace_period; another fails and re-runs its trial and closes its
    MLflow run FAILED; SIGCONT: the first says so once, writes nothing more into that run,
    and runs the next trial (it used to die with UpdateFinishedTrialError)."""
    cfg = load_study_file(write_study(
        tmp_path / "s.toml", synth_root, name="pgstop", space="lr = [0.001, 0.003, 0.03]",
        epochs=4, study_extra="heartbeat_interval = 1\ngrace_period = 3"))
    create_study(cfg, storage=pg_url, grid=True, tracking_uri=tracking_server)
    paths = [tmp_path / "a.log", tmp_path / "b.log"]
    args = ["optimize", "--storage", pg_url, "--study", "pgstop"]
    a = start(args, tmp_path, paths[0])
    victim = wait_for("an epoch of a trial", _epoch_done(pg_url, "pgstop"), [a], paths[:1])
    os.kill(a.pid, signal.SIGSTOP)
    b = None
    try:
        b = start(args, tmp_path, paths[1])

        def taken_over():
            try:  # the stopped worker may hold a row lock the storage's own setup commit meets
                study = optuna.load_study(study_name="pgstop", storage=_storage(pg_url))
            except StudyError:
                return False  # look again at the next poll
            runs = mlflow_runs(tracking_server, "pgstop")
            return (study.trials[victim.number].state == TS.FAIL
                    and runs[victim.number].info.status == "FAILED")

        wait_for("the stopped worker's trial failed by the other", taken_over, [b], paths[1:])
        closed = _run_snapshot(tracking_server, victim.user_attrs["mlflow_run_id"])
    finally:
        os.kill(a.pid, signal.SIGCONT)
        if b is None:
            a.kill()
    assert a.wait(timeout=300) == 0, logs(*paths)
    assert b.wait(timeout=300) == 0, logs(*paths)
    text = paths[0].read_text()
    assert text.count(f"trial {victim.number} was taken over by another worker: dropping it") == 1
    assert "Traceback" not in text and "UpdateFinishedTrialError" not in text
    # nothing more written into the run the other worker closed, but for the one epoch whose
    # write had begun (checked, maybe sent) when the worker was stopped: no check can stop a
    # write already on its way (the run's status and end stay as the other worker left them)
    after = _run_snapshot(tracking_server, victim.user_attrs["mlflow_run_id"])
    assert after[:2] == closed[:2] and after[3] == closed[3]
    extra = after[2][len(closed[2]):]
    assert after[2][:len(closed[2])] == closed[2] and len(extra) <= 1, (closed, after)
    assert not extra or extra[0][0] == closed[2][-1][0] + 1
    study, _ = load_study("pgstop", pg_url)
    assert study.trials[victim.number].state == TS.FAIL
    assert_grid_done_once(pg_url, "pgstop", tracking_server, 3)
    # the woken worker went on to a queued trial after dropping its own
    assert [t for t in study.trials if t.state == TS.COMPLETE and t.user_attrs["pid"] == a.pid]


# -- case 4: Ctrl-C ----------------------------------------------------------------------------
def test_ctrl_c_on_optimize_exits_130_without_a_traceback(tmp_path, synth_root, tracking_uri):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="ctrlc",
                                      space="lr = [0.003, 0.03]", epochs=3))
    create_study(cfg, storage=storage, grid=True, tracking_uri=tracking_uri)
    log = tmp_path / "w.log"
    proc = start(["optimize", "--storage", storage], tmp_path, log)
    victim = wait_for("a trial mid-run", running_trial(storage, "ctrlc"), [proc], [log])
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, logs(log)
    text = log.read_text()
    assert "interrupted" in text
    assert "Traceback" not in text and "Aborted!" not in text
    study, _ = load_study("ctrlc", storage)
    assert study.trials[victim.number].state == TS.FAIL
    assert [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]


# a Ctrl-C that lands while the image cache's decoding pool forks: Python runs the handler
# inside an at-fork hook (where an exception raised by a handler used to be dropped, "Exception
# ignored in ..."); the request it records stops the build between chunks
SIGINT_IN_A_FORK = """
import os, signal, sys
sent = []
def interrupt_once():
    if not sent:
        sent.append(True)
        print("SIGINT sent inside a fork", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGINT)
os.register_at_fork(after_in_parent=interrupt_once)
from celebhpo.cli import cli
cli(sys.argv[1:], prog_name="celebhpo")
"""


def test_ctrl_c_dropped_inside_a_fork_still_stops_the_worker(tmp_path, synth_root, tracking_uri):
    root = shutil.copytree(synth_root, tmp_path / "celeba",  # no cache yet: the pool runs
                           ignore=shutil.ignore_patterns(".celebhpo-cache"))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = load_study_file(write_study(tmp_path / "s.toml", root, name="forkint",
                                      space="lr = [0.003, 0.03]", epochs=2))
    create_study(cfg, storage=storage, grid=True, tracking_uri=tracking_uri)
    log = tmp_path / "w.log"
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, "-c", SIGINT_IN_A_FORK, "optimize", "--storage",
                               storage], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    if "SIGINT sent inside a fork" not in log.read_text():
        pytest.skip("the image cache was built without a worker pool (one CPU): no fork")
    assert proc.returncode == 130, logs(log)  # it used to run the whole grid and exit 0
    assert "Traceback" not in log.read_text() and "Exception ignored" not in log.read_text()
    study, _ = load_study("forkint", storage)
    assert not study.get_trials(states=(TS.RUNNING, TS.COMPLETE)), logs(log)
    assert study.trials[0].user_attrs["fail_reason"].startswith("interrupted")


# -- case 5: three workers on one SQLite study ----------------------------------------------
def test_three_workers_share_a_sqlite_grid(tmp_path, synth_root, tracking_uri):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="sql3",
                                      space="lr = [0.001, 0.003, 0.01]\ndropout = [0.1, 0.3]"))
    create_study(cfg, storage=storage, grid=True, tracking_uri=tracking_uri)
    paths = [tmp_path / f"w{i}.log" for i in range(3)]
    procs = [start(["optimize", "--storage", storage], tmp_path, p) for p in paths]
    for proc in procs:
        assert proc.wait(timeout=600) == 0, logs(*paths)
    text = logs(*paths)
    assert "Traceback" not in text and "UpdateFinishedTrialError" not in text
    assert_grid_done_once(storage, "sql3", tracking_uri, 6)
    study, _ = load_study("sql3", storage)
    assert len(study.trials) == 6  # nothing failed, nothing re-run


def test_devices_without_that_gpu_fail_in_one_line_before_claiming(tmp_path, synth_root,
                                                                   tracking_uri):
    """G3: `--devices` workers train on "cuda"; a GPU that is not there is one line per
    worker, not a silent run on the CPU, and no trial is claimed."""
    storage = str(tmp_path / "grid.log")
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="nogpu",
                                      space="lr = [0.01]"))
    create_study(cfg, storage=storage, grid=True, tracking_uri=tracking_uri)
    done = subprocess.run([sys.executable, "-m", "celebhpo", "optimize", "--storage", storage,
                           "--devices", "99"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    said = done.stdout + done.stderr
    assert done.returncode != 0, said
    assert "--device" in said and "no CUDA GPU is visible" in said, said
    assert "Traceback" not in said
    study, _ = load_study("nogpu", storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.WAITING]
