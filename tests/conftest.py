"""Fixtures and helpers shared by the test modules: tiny synthetic CelebA data made by the
project, tiny study files, throw-away PostgreSQL databases, worker processes, a real MLflow
server. Helpers are imported with `from tests.conftest import ...`."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 synthetic faces (seed 0) in CelebA's Kaggle layout: 240 train, 30 val, 30 test.

    Treat it as read-only: it is shared by the whole session. Copy it to change it."""
    from celebhpo.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("synth") / "celeba", n=300, seed=0, progress=False)


# -- studies ------------------------------------------------------------------------------------
def write_study(path: Path, root: Path, *, name: str = "t", sampler: str = "grid",
                space: str = "lr = [0.003, 0.03]", pruner: str = "none", epochs: int = 1,
                study_extra: str = "", train_size: int = 96) -> Path:
    """A tiny study file: the test arch on 16 px faces, a few dozen images, CPU."""
    path.write_text(f"""
[study]
name = "{name}"
sampler = "{sampler}"
pruner = "{pruner}"
seed = 0
{study_extra}

[data]
root = "{root}"
train_size = {train_size}
val_size = 30
test_size = 30
image_size = 16

[train]
arch = "tiny"
pretrained = "none"
epochs = {epochs}
batch_size = 32
eval_batch_size = 64
num_features = 16
device = "cpu"

[space]
{space}
""")
    return path


def mlflow_runs(tracking_uri: str, study_name: str) -> dict[int, object]:
    """Trial number -> MLflow run of the study's child runs."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(study_name)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.role = 'trial'")
    return {int(r.data.tags["trial_number"]): r for r in runs}


def assert_grid_done_once(storage: str, name: str, tracking_uri: str, points: int) -> None:
    """Every grid point COMPLETE exactly once; nothing RUNNING or WAITING; one FINISHED
    MLflow child run per completed trial."""
    import optuna

    from celebhpo.study import leaderboard, load_study

    ts = optuna.trial.TrialState
    study, cfg = load_study(name, storage)
    trials = study.get_trials()
    complete = [t for t in trials if t.state == ts.COMPLETE]
    keys = [tuple(sorted(t.params.items())) for t in complete]
    assert len(keys) == len(set(keys)) == points, [t.params for t in trials]
    expected = {tuple(sorted(zip(cfg.grid(), v, strict=True)))
                for v in itertools.product(*cfg.grid().values())}
    assert set(keys) == expected
    assert not [t for t in trials if t.state in (ts.RUNNING, ts.WAITING)]
    runs = mlflow_runs(tracking_uri, name)
    for t in complete:
        assert runs[t.number].info.status == "FINISHED"
        assert runs[t.number].info.run_id == t.user_attrs["mlflow_run_id"]
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]
    board = leaderboard(study)
    assert list(board["state"][:points]) == ["COMPLETE"] * points


# -- PostgreSQL ---------------------------------------------------------------------------------
@pytest.fixture
def pg_url():
    """A throw-away database on 127.0.0.1:5432 (user postgres, trust auth), dropped after."""
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres",
                                connect_timeout=3)
    except psycopg2.OperationalError as e:
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432 as user postgres: {e}")
    conn.autocommit = True
    name = f"celebhpo_test_{uuid.uuid4().hex[:12]}"
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


# -- processes ----------------------------------------------------------------------------------
def start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """`python -m celebhpo ARGS`, output to `log`; one torch thread, as CI shares cores."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "celebhpo", *args], cwd=cwd, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def logs(*paths: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in paths if p.exists())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(root: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real `mlflow server` on 127.0.0.1 (SQLite store and artifacts under `root`), in a
    session of its own; yields (base URL, process) once /health answers, stops it after."""
    port = free_port()
    log_path = root / "server.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.25)
        yield base, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its workers
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory) -> Iterator[str]:
    """One real MLflow server for the whole session (it takes seconds to start): its base URL.

    Never stop it: to make it unreachable for a client, put a Relay in between and stop that."""
    with mlflow_server(tmp_path_factory.mktemp("server")) as (base, _):
        yield base


class Relay:
    """A TCP relay 127.0.0.1:port -> a local server: what its clients see of the server.

    stop() refuses new connections and cuts every open one, as a server that died would;
    start() serves again on the same port, as a server that came back would."""

    def __init__(self, target: str) -> None:
        self.target = int(target.rsplit(":", 1)[1])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Relay:
        self._listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() (Linux)
            self._listener.close()
            self._listener = None
        with self._lock:
            socks, self._socks = self._socks, set()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
