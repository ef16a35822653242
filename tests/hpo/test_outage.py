"""Workers that ride out their database (issue 22), on a real PostgreSQL: an outage shorter
than the retry bound is survived, a longer one ends the worker in one line, a study deleted
under a worker ends it in one line with its MLflow runs KILLED, and a storage Optuna cannot
read is not blamed on the server.

An outage here is what a worker sees of a server restart, made for the test's own database
only (the suite shares the server): every connection to it is cut (pg_terminate_backend) and
new ones are refused (ALLOW_CONNECTIONS false) for a few seconds. `benchmarks/soak.py
--restart-db N` restarts the real server.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator

import optuna
import pytest
from mlflow import MlflowClient

from celebhpo.config import load_study_file
from celebhpo.errors import StudyError
from celebhpo.hpo import create_study
from celebhpo.hpo.liveness import claim_new_trial, recover_lost_trials
from celebhpo.hpo.outage import RetryPolicy, StorageUnavailable, StudyDeleted
from celebhpo.hpo.storage import open_storage
from tests.helpers import assert_grid_done_once, logs, start, write_study
from tests.hpo.test_worker import running_trial, wait_for

TS = optuna.trial.TrialState
GRID4 = "lr = [0.003, 0.03]\ndropout = [0.1, 0.3]"


@contextlib.contextmanager
def cut_off(url: str) -> Iterator[None]:
    """While inside, the database of `url` refuses connections and its open ones are cut."""
    import psycopg2

    db = url.rsplit("/", 1)[1]

    def admin(*sql: str) -> None:
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for statement in sql:
                    cur.execute(statement)
        finally:
            conn.close()

    admin(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false',
          "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
          f"WHERE datname = '{db}' AND pid <> pg_backend_pid()")
    try:
        yield
    finally:
        admin(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')


def outage(url: str, seconds: float) -> None:
    with cut_off(url):
        time.sleep(seconds)


# -- the policy, in process ---------------------------------------------------------------------
def test_a_call_during_an_outage_waits_for_the_database_and_says_so(pg_url):
    lines: list[str] = []
    storage = open_storage(pg_url, policy=RetryPolicy(30, what="storage X", notify=lines.append))
    optuna.create_study(study_name="o", storage=storage)
    with cut_off(pg_url):
        # the call starts inside the outage, which lasts 3 s
        ended = threading.Event()
        result: list[object] = []

        def call() -> None:
            result.append(optuna.get_all_study_names(storage=storage))
            ended.set()

        thread = threading.Thread(target=call)
        thread.start()
        assert not ended.wait(3.0), "the call returned while the database refused it"
    thread.join(30)
    assert result == [["o"]]
    assert len(lines) == 2, lines
    assert lines[0].startswith("storage X unreachable (") and "retrying for up to 30 s" in lines[0]
    assert lines[1].startswith("storage X is back after ")


def test_an_outage_past_the_bound_is_one_error_naming_the_storage(pg_url):
    storage = open_storage(pg_url, policy=RetryPolicy(2, what="storage X"))
    optuna.create_study(study_name="o", storage=storage)
    with cut_off(pg_url):
        started = time.monotonic()
        with pytest.raises(StorageUnavailable) as e:
            optuna.get_all_study_names(storage=storage)
        took = time.monotonic() - started
    assert str(e.value).startswith("storage X unreachable for 2 s (")
    assert "\n" not in str(e.value)
    assert took < 10, took  # a hang guard, not a timing claim: the bound is 2 s


def test_an_error_that_waiting_cannot_mend_is_not_retried(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}",
                           policy=RetryPolicy(30, notify=pytest.fail))
    study = optuna.create_study(study_name="o", storage=storage)
    with pytest.raises(KeyError):  # a trial that does not exist: not an outage
        storage.get_trial(12345)
    assert study.study_name == "o"


def test_a_study_deleted_elsewhere_is_study_deleted_not_a_key_error(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    storage = open_storage(url)
    optuna.create_study(study_name="o", storage=storage)
    study = optuna.load_study(study_name="o", storage=storage)
    study.enqueue_trial({"x": 0.5})
    optuna.delete_study(study_name="o", storage=url)
    with pytest.raises(StudyDeleted, match="^study 'o' was deleted$"):
        study.ask()


def test_a_storage_optuna_cannot_read_is_not_blamed_on_the_server(tmp_path):
    path = tmp_path / "old.db"
    open_storage(f"sqlite:///{path}")
    with contextlib.closing(sqlite3.connect(path)) as db:  # an older Optuna's schema
        db.execute("UPDATE alembic_version SET version_num = 'v3.0.0.a'")
        db.commit()
    with pytest.raises(StudyError) as e:
        open_storage(f"sqlite:///{path}")
    assert "server is running" not in str(e.value)
    assert str(path) in str(e.value) and "optuna storage upgrade" in str(e.value)
    with pytest.raises(StudyError, match="check the URL and that the database server is running"):
        open_storage("postgresql+psycopg2://postgres@127.0.0.1:1/nowhere")


# -- real workers -------------------------------------------------------------------------------
@pytest.fixture
def tracking_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


def test_two_workers_ride_out_two_outages_and_finish_the_grid(tmp_path, synth_root, pg_url,
                                                              tracking_uri):
    """Two outages of 3 s, each while a trial trains, well under the 60 s bound: both
    workers finish the grid, every point COMPLETE once, nothing RUNNING, no traceback."""
    cfg = load_study_file(write_study(
        tmp_path / "s.toml", synth_root, name="ride", space=GRID4, epochs=4,
        study_extra="heartbeat_interval = 1\ngrace_period = 30"))
    create_study(cfg, storage=pg_url, grid=True, tracking_uri=tracking_uri)
    paths = [tmp_path / f"w{i}.log" for i in (0, 1)]
    procs = [start(["optimize", "--storage", pg_url, "--no-progress"], tmp_path, p)
             for p in paths]
    try:
        seen: set[int] = set()
        for _ in range(2):
            def fresh_trial():
                t = running_trial(pg_url, "ride")()
                return t if t is not None and t.number not in seen else None

            trial = wait_for("a trial mid-run", fresh_trial, procs, paths)
            seen.add(trial.number)
            outage(pg_url, 3.0)
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    text = logs(*paths)
    assert codes == [0, 0], text
    assert "Traceback" not in text, text
    assert "unreachable" in text and "is back after" in text, text
    assert_grid_done_once(pg_url, "ride", tracking_uri, points=4)


def test_a_study_deleted_mid_trial_ends_the_worker_in_one_line(tmp_path, synth_root, pg_url,
                                                               tracking_uri):
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="gone",
                                      space=GRID4, epochs=30))
    create_study(cfg, storage=pg_url, grid=True, tracking_uri=tracking_uri)
    log = tmp_path / "w.log"
    proc = start(["optimize", "--storage", pg_url, "--no-progress"], tmp_path, log)
    try:
        trial = wait_for("a trial mid-run", running_trial(pg_url, "gone"), [proc], [log])
        optuna.delete_study(study_name="gone", storage=pg_url)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 1, text
    assert "Traceback" not in text, text
    last = text.strip().splitlines()[-1]
    assert f"study 'gone' was deleted while this worker ran trial {trial.number}" in last, text
    assert "its MLflow runs are closed KILLED" in last
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("gone")
    runs = client.search_runs([exp.experiment_id])
    assert runs and not [r for r in runs if r.info.status == "RUNNING"], [
        (r.info.run_name, r.info.status) for r in runs]
    assert {r.info.status for r in runs} == {"KILLED"}


def test_after_an_outage_silent_trials_get_one_grace_period_before_they_count_as_dead(pg_url):
    """No heartbeat could be recorded during an outage: right after it, a trial whose last
    beat is older than grace_period is not failed yet; one grace period later it is."""
    lines: list[str] = []
    storage = open_storage(pg_url, heartbeat_interval=1, grace_period=2,
                           policy=RetryPolicy(30, notify=lines.append))
    study = optuna.create_study(study_name="settle", storage=storage)
    trial = claim_new_trial(study)  # claimed with its first heartbeat, then never beats again
    with cut_off(pg_url):
        ended = threading.Event()
        thread = threading.Thread(target=lambda: (study.get_trials(), ended.set()))
        thread.start()
        time.sleep(3.0)  # the outage outlasts grace_period (2 s)
    thread.join(30)
    assert ended.is_set() and "is back after" in lines[-1], lines
    recover_lost_trials(study, heartbeat=True, grace_period=2)
    assert study.get_trials()[trial.number].state == TS.RUNNING  # settling: not yet
    time.sleep(2.5)
    _, lost = recover_lost_trials(study, heartbeat=True, grace_period=2)
    assert [t.number for t in lost] == [trial.number]
    assert study.get_trials()[trial.number].state == TS.FAIL
