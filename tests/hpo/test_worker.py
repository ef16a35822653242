"""Several real `celebhpo optimize` processes on one study, and the faults they must survive:
a grid shared by two workers (journal file via --devices, PostgreSQL), kill -9 of a worker
on PostgreSQL (heartbeat) and on SQLite (re-run), SIGTERM.

PostgreSQL: 127.0.0.1:5432, user postgres, trust auth; each test makes a throw-away database.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from celebhpo.config import load_study_file
from celebhpo.hpo import create_study, load_study, optimize
from tests.helpers import assert_grid_done_once, logs, mlflow_runs, start, write_study

TS = optuna.trial.TrialState
GRID8 = "lr = [0.001, 0.003, 0.01, 0.03]\ndropout = [0.1, 0.3]"


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"


def wait_for(what: str, check: Callable[[], object], procs: list[subprocess.Popen],
             log_paths: list[Path], limit: float = 240.0) -> object:
    """Poll `check` until it returns something truthy; fail (with the workers' logs) if a
    worker exits first or nothing happens within `limit` seconds (a hang guard)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if any(p.poll() is not None for p in procs):
            pytest.fail(f"a worker exited before {what}:\n{logs(*log_paths)}")
        time.sleep(0.1)
    pytest.fail(f"no {what} within {limit:.0f} s:\n{logs(*log_paths)}")


def running_trial(storage: str, name: str) -> Callable[[], optuna.trial.FrozenTrial | None]:
    """A check for a trial in the middle of its run: RUNNING, worker and MLflow run known."""
    def check():
        study = optuna.load_study(study_name=name, storage=_storage(storage))
        for t in study.get_trials(deepcopy=False, states=(TS.RUNNING,)):
            if "mlflow_run_id" in t.user_attrs and "pid" in t.user_attrs:
                return t
        return None
    return check


@functools.cache
def _storage(storage: str):
    """One storage per URL for a test's polls: a new one per poll leaks PostgreSQL
    connections ("too many clients") and meets locks in its setup commit."""
    from celebhpo.hpo.storage import open_storage

    return open_storage(storage)


# -- many workers, one grid -------------------------------------------------------------------
@pytest.mark.slow  # long form: test_worker_faults.py runs --devices on a journal grid, with a kill
def test_devices_share_a_grid_on_a_journal_file(tmp_path, synth_root, tracking_uri):
    storage = str(tmp_path / "studies" / "grid.log")
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="jgrid",
                                      space=GRID8))
    create_study(cfg, storage=storage, grid=True, tracking_uri=tracking_uri)
    log = tmp_path / "devices.log"
    # --devices 0,1: two worker processes; on this CPU machine they see no CUDA device
    proc = start(["optimize", "--storage", storage, "--devices", "0,1", "--device", "cpu"],
                 tmp_path, log)  # "GPUs" on a CPU machine: --device cpu (default cuda)
    assert proc.wait(timeout=600) == 0, logs(log)
    text = log.read_text()
    assert "worker gpu0: pid" in text and "worker gpu1: pid" in text
    assert_grid_done_once(storage, "jgrid", tracking_uri, 8)


@pytest.mark.slow  # long form: test_outage.py runs two PG workers through a grid, with outages
def test_two_workers_share_a_grid_on_postgresql(tmp_path, synth_root, tracking_uri, pg_url):
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="pggrid",
                                      space=GRID8))
    create_study(cfg, storage=pg_url, grid=True, tracking_uri=tracking_uri)
    paths = [tmp_path / "w0.log", tmp_path / "w1.log"]
    procs = [start(["optimize", "--storage", pg_url], tmp_path, p) for p in paths]
    for proc in procs:
        assert proc.wait(timeout=600) == 0, logs(*paths)
    assert_grid_done_once(pg_url, "pggrid", tracking_uri, 8)


# -- faults -----------------------------------------------------------------------------------
def test_kill9_on_postgresql_the_survivor_reruns_the_trial(
        tmp_path, synth_root, tracking_uri, pg_url):
    cfg = load_study_file(write_study(
        tmp_path / "s.toml", synth_root, name="pgkill", space="lr = [0.001, 0.003, 0.01]",
        epochs=3, study_extra="heartbeat_interval = 1\ngrace_period = 3"))
    create_study(cfg, storage=pg_url, grid=True, tracking_uri=tracking_uri)
    paths = [tmp_path / "w0.log", tmp_path / "w1.log"]
    procs = [start(["optimize", "--storage", pg_url, "--study", "pgkill"], tmp_path, p)
             for p in paths]
    victim = wait_for("a trial mid-run", running_trial(pg_url, "pgkill"), procs, paths)
    os.kill(victim.user_attrs["pid"], signal.SIGKILL)
    survivor = next(p for p in procs if p.pid != victim.user_attrs["pid"])
    assert survivor.wait(timeout=600) == 0, logs(*paths)
    for p in procs:
        p.wait(timeout=60)

    study, _ = load_study("pgkill", pg_url)
    lost = study.trials[victim.number]
    assert lost.state == TS.FAIL  # not left RUNNING
    rerun = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(rerun) == 1 and rerun[0].state == TS.COMPLETE
    assert rerun[0].params == lost.params
    assert rerun[0].user_attrs["pid"] == survivor.pid
    assert_grid_done_once(pg_url, "pgkill", tracking_uri, 3)
    runs = mlflow_runs(tracking_uri, "pgkill")
    assert runs[victim.number].info.status == "FAILED"
    assert "lost their worker" in logs(*paths)


def test_sigterm_fails_the_running_trial_then_resumes(tmp_path, synth_root, tracking_uri):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="term",
                                      space="lr = [0.003, 0.03]", epochs=3))
    create_study(cfg, storage=storage, grid=True, tracking_uri=tracking_uri)
    log = tmp_path / "w.log"
    proc = start(["optimize", "--storage", storage], tmp_path, log)
    victim = wait_for("a trial mid-run", running_trial(storage, "term"), [proc], [log])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, logs(log)  # 128 + SIGTERM, like a shell
    text = log.read_text()
    assert "interrupted (SIGTERM)" in text, logs(log)
    assert "Traceback" not in text and "Exception ignored" not in text, logs(log)

    study, _ = load_study("term", storage)
    assert not study.get_trials(states=(TS.RUNNING,))
    stopped = study.trials[victim.number]
    assert stopped.state == TS.FAIL
    assert stopped.user_attrs["fail_reason"].startswith("interrupted")
    runs = mlflow_runs(tracking_uri, "term")
    assert runs[victim.number].info.status == "FAILED"
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]

    summary = optimize(storage=storage, progress=False, echo=lambda _: None)  # resume
    assert summary.counts == {"COMPLETE": 2, "FAIL": 1}
    assert_grid_done_once(storage, "term", tracking_uri, 2)


def test_kill9_on_sqlite_is_recovered_by_the_next_run(tmp_path, synth_root, tracking_uri):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = load_study_file(write_study(
        tmp_path / "s.toml", synth_root, name="sqlkill", sampler="random", epochs=3,
        space="lr = { low = 0.001, high = 0.03, log = true }"))
    create_study(cfg, storage=storage, tracking_uri=tracking_uri)
    log = tmp_path / "w.log"
    proc = start(["optimize", "--storage", storage, "--trials", "3"], tmp_path, log)
    victim = wait_for("a trial mid-run", running_trial(storage, "sqlkill"), [proc], [log])
    proc.kill()
    proc.wait(timeout=60)
    study, _ = load_study("sqlkill", storage)
    assert study.trials[victim.number].state == TS.RUNNING  # what kill -9 leaves behind

    lines: list[str] = []
    summary = optimize(storage=storage, n_trials=3, progress=False, echo=lines.append)
    study, _ = load_study("sqlkill", storage)
    lost = study.trials[victim.number]
    assert lost.state == TS.FAIL and "died while running it" in lost.user_attrs["fail_reason"]
    # the killed trial does not eat the budget: 3 trials ran to the end, its re-run included
    assert summary.counts == {"COMPLETE": 3, "FAIL": 1}
    rerun = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert rerun and rerun[0].params == lost.params and rerun[0].state == TS.COMPLETE
    runs = mlflow_runs(tracking_uri, "sqlkill")
    assert runs[victim.number].info.status == "FAILED"
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]
