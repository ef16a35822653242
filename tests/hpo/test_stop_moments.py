"""Ctrl-C/SIGTERM at moments of a real `celebhpo optimize` worker's life, on SQLite and on
PostgreSQL (pg_url): before its first claim, 0-2 s after a claim, mid-epoch, during validation,
during the image cache's build. Each try must end with exit code 128 + the signal, no
"Traceback" or "Exception ignored" in its output, nothing RUNNING in the study and no MLflow
run RUNNING (the worker re-queued its own trial: the next one has nothing to recover). A few
tries per storage; the long form (`slow`) runs 30 and prints where they landed (pytest -s).

A moment is found from outside, then a random offset waited: the signal handler installed
(/proc/PID/status SigCgt), the claimed trial in the storage, the progress bars (a ResNet-18
step at 64 px outlasts tqdm's refresh interval: the bar shows each batch as it ends). SIGINT
goes to the process group as a terminal's Ctrl-C does (the decoding pool gets it too).
"""

from __future__ import annotations

import functools
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import optuna
import psutil
import pytest

from celebhpo.config import load_study_file
from celebhpo.hpo import create_study
from tests.helpers import assert_grid_done_once, logs, mlflow_runs, start, write_study

TS = optuna.trial.TrialState
MOMENTS = ("before_claim", "after_claim", "mid_epoch", "validation", "cache_build")
SHORT = {"sqlite": [("before_claim", signal.SIGINT), ("cache_build", signal.SIGINT),
                   ("mid_epoch", signal.SIGTERM)],
         "postgresql": [("after_claim", signal.SIGTERM), ("validation", signal.SIGINT)]}
LONG_TRIES = 30
BAR = re.compile(r"epoch (\d+)/\d+:\s+(\d+)%\|[^|]*\| (\d+)/(\d+)")


@dataclass
class Try:
    moment: str
    signum: int
    offset: float  # seconds after the moment's marker


def plan(n: int, seed: int) -> list[Try]:
    """`n` tries: every moment in turn, each with both signals, at random offsets."""
    rng = random.Random(seed)
    tries = []
    for i in range(n):
        moment = MOMENTS[i % len(MOMENTS)]
        signum = (signal.SIGTERM, signal.SIGINT)[i % 2]  # five moments: each gets both
        tries.append(Try(moment, signum, rng.uniform(*_OFFSETS[moment])))
    return tries


# seconds after the marker: up to the claim, 0-2 s, epoch 1's training (~1.2 s after its first
# batch), its validation (15 batches of 2), the cache build (3 chunks)
_OFFSETS = {"before_claim": (0.0, 0.3), "after_claim": (0.0, 2.0), "mid_epoch": (0.0, 0.9),
            "validation": (0.0, 0.1), "cache_build": (0.0, 0.05)}


# -- the study ------------------------------------------------------------------------------
@pytest.fixture
def stage(tmp_path, synth_root):
    """(folder, study file) of a random-sampler study that never runs out of trials."""
    study = tmp_path / "stop.toml"
    study.write_text(f"""
[study]
name = "stop"
sampler = "random"
seed = 0

[data]
root = "{synth_root}"
cache_dir = "{tmp_path / 'cache'}"
train_size = 96
val_size = 30
test_size = 30
image_size = 64

[train]
arch = "resnet18"
pretrained = "none"
epochs = 2
batch_size = 16
eval_batch_size = 2
num_features = 16
device = "cpu"

[space]
lr = {{ low = 0.001, high = 0.03, log = true }}
""")
    return tmp_path, study


def run_tries(folder: Path, study_file: Path, storage: str, tries: list[Try]) -> list[str]:
    """Create the study, run each try; returns where each signal landed."""
    tracking = f"sqlite:///{folder / 'mlflow.db'}"
    create_study(load_study_file(study_file), storage=storage, tracking_uri=tracking)
    landed = []
    for i, t in enumerate(tries):
        if t.moment == "cache_build":
            shutil.rmtree(folder / "cache", ignore_errors=True)
        log = folder / f"try{i:02d}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "celebhpo", "optimize", "--storage", storage,
             "--tracking-uri", tracking, "--trials", "1000", "--progress"],
            cwd=folder, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        try:
            _wait_for(t.moment, proc, log, storage)
            time.sleep(t.offset)
            if t.signum == signal.SIGINT:
                os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole group
            else:
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=120)  # a hang guard
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        said = f"try {i} {t}: exit {code}\n{logs(log)}"
        text = log.read_text()
        assert code == 128 + t.signum, said
        assert "Traceback" not in text and "Exception ignored" not in text, said
        assert f"interrupted ({signal.Signals(t.signum).name})" in text, said
        _assert_nothing_running(storage, tracking, folder, said)
        landed.append(_landed(text, proc.pid, storage))
    return landed


def _assert_nothing_running(storage: str, tracking: str, folder: Path, said: str) -> None:
    study = optuna.load_study(study_name="stop", storage=_storage(storage))
    assert not study.get_trials(deepcopy=False, states=(TS.RUNNING,)), said
    for t in study.get_trials(deepcopy=False, states=(TS.FAIL,)):
        assert t.user_attrs["fail_reason"].startswith("interrupted by SIG"), said
    assert not [r for r in mlflow_runs(tracking, "stop").values()
                if r.info.status == "RUNNING"], said
    assert not list((folder / "cache").glob("*.tmp-*")), said  # a stopped build cleans up


# -- where a worker is ------------------------------------------------------------------------
def _wait_for(moment: str, proc: subprocess.Popen, log: Path, storage: str) -> None:
    """Return once the worker reaches the marker of `moment`; fail if it exits first or takes
    more than two minutes (a hang guard)."""
    checks = {
        "before_claim": lambda: _catches_sigterm(proc.pid),
        "after_claim": lambda: _claimed(storage, proc.pid),
        "mid_epoch": lambda: BAR.search(log.read_text()),
        "validation": lambda: _first_epoch_trained(log.read_text()),
        "cache_build": lambda: "decoding images" in log.read_text(),
    }
    deadline = time.monotonic() + 120
    while not checks[moment]():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the worker never reached {moment} (exit {proc.poll()}):\n{logs(log)}")
        time.sleep(0.01)


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM: the optimize command installs its own
    before it imports the library (seconds), so a signal then lands in those imports."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)", status, re.M).group(1), 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def _claimed(storage: str, pid: int | None, name: str = "stop") -> bool:
    """Whether worker `pid` (None: any) has claimed a trial."""
    study = optuna.load_study(study_name=name, storage=_storage(storage))
    return any(pid in (None, t.user_attrs.get("pid"))
               for t in study.get_trials(deepcopy=False, states=(TS.RUNNING,)))


def _first_epoch_trained(text: str) -> bool:
    return any(m.group(1) == "1" and m.group(3) == m.group(4) for m in BAR.finditer(text))


def _landed(text: str, pid: int, storage: str) -> str:
    """Where the signal found the worker, from its last progress bar and its trial."""
    text = text[: text.index("interrupted (")]
    parts = [p for p in re.split(r"[\r\n]", text) if "decoding images" in p or BAR.search(p)]
    last = parts[-1] if parts else ""
    study = optuna.load_study(study_name="stop", storage=_storage(storage))
    if not any(t.user_attrs.get("pid") == pid for t in study.get_trials(deepcopy=False)):
        return "before the claim"
    if "decoding images" in last:
        return "cache build" if "100%" not in last else "trial setup"
    bar = BAR.search(last)
    if bar is None:
        return "trial setup"
    if bar.group(3) != bar.group(4):
        return f"epoch {bar.group(1)} training"
    return f"epoch {bar.group(1)} validation" if "loss" not in last else "between epochs"


@functools.cache
def _storage(url: str):
    """One storage per URL for a test's polls (a new one per poll leaks connections)."""
    from celebhpo.hpo.storage import open_storage

    return open_storage(url)


def _report(name: str, tries: list[Try], landed: list[str]) -> None:
    print(f"\n{name}: {len(tries)} tries, exit codes {Counter(128 + t.signum for t in tries)}")
    for moment in MOMENTS:
        hits = Counter(w for t, w in zip(tries, landed, strict=True) if t.moment == moment)
        print(f"  {moment:<13} landed: {dict(hits)}")


# -- the tests ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_signals_at_moments(kind, stage, request):
    folder, study = stage
    tries = [Try(m, s, sum(_OFFSETS[m]) / 2) for m, s in SHORT[kind]]
    run_tries(folder, study, _url(kind, folder, request), tries)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_signals_at_30_random_moments(kind, stage, request):
    folder, study = stage
    tries = plan(LONG_TRIES, seed=21)
    _report(kind, tries, run_tries(folder, study, _url(kind, folder, request), tries))


def _url(kind: str, folder: Path, request: pytest.FixtureRequest) -> str:
    if kind == "postgresql":
        return request.getfixturevalue("pg_url")  # skips when PostgreSQL is not reachable
    return f"sqlite:///{folder / 'optuna.db'}"


def test_a_second_signal_exits_at_once_and_the_next_worker_recovers(tmp_path, synth_root):
    """Both signals during the cache build: the worker exits at once, its decoding processes
    with it (an orphan would hold the cache's lock), and the next worker re-runs the trial."""
    root = shutil.copytree(synth_root, tmp_path / "celeba",  # no cache yet: the pool runs
                           ignore=shutil.ignore_patterns(".celebhpo-cache"))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    create_study(load_study_file(write_study(tmp_path / "s.toml", root, name="twice",
                                             space="lr = [0.003, 0.03]", train_size=240)),
                 storage=storage, grid=True, tracking_uri=tracking)
    args = ["optimize", "--storage", storage, "--tracking-uri", tracking, "--progress"]
    log = tmp_path / "w.log"
    proc = start(args, tmp_path, log)
    _wait_for("cache_build", proc, log, storage)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)  # a different signal: two pending SIGTERMs would be one
    code = proc.wait(timeout=120)
    text = log.read_text()
    # the second handled signal's code (Python runs pending handlers lowest number first)
    assert code in (130, 143) and "again: exiting now" in text, logs(log)
    assert "Traceback" not in text and "Exception ignored" not in text, logs(log)
    deadline = time.monotonic() + 30
    while orphans := [p for p in psutil.process_iter(["cmdline"])
                      if storage in " ".join(p.info["cmdline"] or [])]:
        assert time.monotonic() < deadline, f"left behind: {orphans}"
        time.sleep(0.1)

    victim = next(t for t in optuna.load_study(study_name="twice", storage=_storage(storage))
                  .get_trials(deepcopy=False) if t.user_attrs.get("pid") == proc.pid)
    rerun = start(args, tmp_path, tmp_path / "next.log")
    assert rerun.wait(timeout=300) == 0, logs(tmp_path / "next.log")  # a hang guard too
    study = optuna.load_study(study_name="twice", storage=_storage(storage))
    assert study.trials[victim.number].state == TS.FAIL
    assert mlflow_runs(tracking, "twice")[victim.number].info.status == "FAILED"
    assert_grid_done_once(storage, "twice", tracking, 2)


def test_devices_pass_a_ctrl_c_on_and_exit_130(tmp_path, synth_root):
    """The launcher passes its first signal on as SIGTERM: each worker fails and re-queues its
    own trial and exits 143; the launcher exits 128 + the signal it got."""
    storage = str(tmp_path / "grid.log")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    create_study(load_study_file(write_study(
        tmp_path / "s.toml", synth_root, name="devstop", epochs=3,
        space="lr = [0.001, 0.003, 0.01, 0.03]")), storage=storage, grid=True,
        tracking_uri=tracking)
    log = tmp_path / "devices.log"
    launcher = start(["optimize", "--storage", storage, "--tracking-uri", tracking,
                      "--devices", "0,1", "--device", "cpu"], tmp_path, log)
    deadline = time.monotonic() + 120
    while not _claimed(storage, None, "devstop"):
        if launcher.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no trial mid-run:\n{logs(log)}")
        time.sleep(0.01)
    launcher.send_signal(signal.SIGINT)
    assert launcher.wait(timeout=120) == 130, logs(log)
    text = log.read_text()
    assert "Traceback" not in text and "Exception ignored" not in text, logs(log)
    assert "interrupted (SIGTERM)" in text, logs(log)
    study = optuna.load_study(study_name="devstop", storage=_storage(storage))
    assert not study.get_trials(deepcopy=False, states=(TS.RUNNING,)), logs(log)
    assert not [r for r in mlflow_runs(tracking, "devstop").values()
                if r.info.status == "RUNNING"], logs(log)
