"""Helpers that tests import (conftest.py holds fixtures only): tiny study files, worker
processes, MLflow lookups, a real MLflow server, a TCP relay, CelebA layout writers and a
hand-made FitResult."""

from __future__ import annotations

import contextlib
import csv
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import click
import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient

from celebhpo.cli import cli
from celebhpo.data.layouts import ATTRIBUTES
from celebhpo.hpo import leaderboard, load_study
from celebhpo.training.loop import FitResult


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

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(study_name)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.role = 'trial'")
    return {int(r.data.tags["trial_number"]): r for r in runs}


def assert_grid_done_once(storage: str, name: str, tracking_uri: str, points: int) -> None:
    """Every grid point COMPLETE exactly once; nothing RUNNING or WAITING; one FINISHED
    MLflow child run per completed trial."""


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



# -- CelebA layouts ----
def kaggle_table(root: Path) -> tuple[list[str], np.ndarray, dict[str, int]]:
    """The synthetic folder's labels parsed independently: (ids, (N, 40) -1/1, id -> part)."""
    with open(root / "list_attr_celeba.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image_id", *ATTRIBUTES]
    ids = [r[0] for r in rows[1:]]
    values = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
    with open(root / "list_eval_partition.csv", newline="") as f:
        part = {r[0]: int(r[1]) for r in list(csv.reader(f))[1:]}
    return ids, values, part


def write_official(src: Path, dst: Path, *, flat: bool = False, zero_one: bool = False,
                   crlf: bool = False, shuffle_partition: bool = False) -> Path:
    """Rewrite the synthetic Kaggle folder as the official release (Anno/, Eval/) or, with
    `flat`, torchvision's folder; images are symlinked, not copied."""
    ids, values, part = kaggle_table(src)
    (dst / ("" if flat else "Anno")).mkdir(parents=True, exist_ok=True)
    (dst / ("" if flat else "Eval")).mkdir(parents=True, exist_ok=True)
    nl = "\r\n" if crlf else "\n"
    if zero_one:
        values = (values > 0).astype(int)
    lines = [str(len(ids)), " ".join(ATTRIBUTES) + " "]
    lines += [f"{i} " + "".join(f"{v:>3d}" for v in row) for i, row in zip(ids, values, strict=True)]
    attr = dst / ("list_attr_celeba.txt" if flat else "Anno/list_attr_celeba.txt")
    attr.write_bytes((nl.join(lines) + nl).encode())
    order = list(reversed(ids)) if shuffle_partition else ids
    part_file = dst / ("list_eval_partition.txt" if flat else "Eval/list_eval_partition.txt")
    part_file.write_bytes("".join(f"{i} {part[i]}{nl}" for i in order).encode())
    (dst / "img_align_celeba").symlink_to(src / "img_align_celeba" / "img_align_celeba")
    return dst



# -- a FitResult as training.fit makes it ----
ATTRS = ["Eyeglasses", "Male", "Smiling"]


def make_fit(tmp_path: Path, epochs: int = 2, checkpoint: bool = True) -> FitResult:
    """A FitResult as train.fit makes it (report columns as metrics.per_class_report's)."""
    history = [
        {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "val_mean_acc": 0.5 + 0.1 * e,
         "val_balanced_acc": 0.5, "val_map": 0.4, "lr": 1e-3, "epoch_seconds": 1.0,
         "images_per_s": 100.0}
        for e in range(1, epochs + 1)
    ]
    report = pd.DataFrame({
        "attribute": ATTRS,
        "precision": [0.9, 0.8, 0.7], "recall": [0.6, 0.5, 0.4], "f1": [0.7, 0.6, 0.5],
        "support": [10, 20, 30],
        "threshold_tuned": [0.3, 0.4, 0.6], "f1_tuned": [0.75, 0.65, 0.55],
    })
    ckpt = None
    if checkpoint:
        ckpt = tmp_path / "best.pt"
        ckpt.write_bytes(b"not really a checkpoint, only bytes to move around")
    return FitResult(history=history, best_epoch=epochs, best_metrics=dict(history[-1]),
                     report=report, thresholds=np.array([0.3, 0.4, 0.6]), checkpoint_path=ckpt,
                     stopped_early=False, device="cpu")


CONFIG = {
    "study": {"name": "s", "metric": "val_loss"},
    "data": {"root": "/data/celeba", "image_size": 32},
    "train": {"arch": "tiny", "lr": 1e-3, "dropout": 0.3, "num_features": 64},
    "space": {"lr": [1e-3, 1e-2], "dropout": {"low": 0.1, "high": 0.5, "log": False}},
}



# -- the command tree ----
def all_commands(group: click.Group = cli, prefix: tuple[str, ...] = ()):
    for name, cmd in group.commands.items():
        path = (*prefix, name)
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, path)
        else:
            yield path, cmd


COMMANDS = [" ".join(path) for path, _ in all_commands()]


# -- an exported model, untrained ----
def write_tiny_model(folder: Path, size: int = 16, threshold: float = 0.5) -> Path:
    """An export folder holding a seeded, untrained tiny model.pt (`size` px, squash, one
    threshold for every attribute): what predict and retrieve take, in a second."""
    import torch

    from celebhpo.data import IMAGENET_MEAN, IMAGENET_STD
    from celebhpo.training.checkpoint import Checkpoint
    from celebhpo.training.models import create_model

    torch.manual_seed(0)
    model = create_model("tiny", num_labels=40, num_features=16, dropout=0.0).eval()
    Checkpoint(
        arch="tiny", state_dict=model.state_dict(), attributes=list(ATTRIBUTES),
        config={"data": {"image_size": size, "crop": "squash"},
                "train": {"arch": "tiny", "num_features": 16, "dropout": 0.0}},
        mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), thresholds=[threshold] * 40,
        metrics={}, epoch=1,
    ).save(folder / "model.pt")
    return folder
