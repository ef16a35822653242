"""Faults a long study meets, each provoked for real: kill -9 in the middle of a cache build
and of a checkpoint write, the MLflow server dying between two trials, passwords in URLs
that reach the command line's output, and where `celebhpo ui` binds.

(kill -9 of a worker on SQLite/PostgreSQL, SIGTERM and NaN trials: tests/hpo/test_worker.py and
tests/hpo/test_studies.py.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from celebhpo.config import DataConfig, load_study_file
from celebhpo.data import load_data
from celebhpo.errors import TrackingError
from celebhpo.hpo import create_study, load_study, optimize
from celebhpo.report import format_trial_line
from celebhpo.tracking.client import Tracker
from celebhpo.training.checkpoint import Checkpoint
from tests.helpers import Relay, free_port, mlflow_runs, write_study

TS = optuna.trial.TrialState
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _python(code: str, *args: str, **popen) -> subprocess.Popen:
    """`python -c CODE ARGS` in a session of its own (kill -9 reaches its helpers too)."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=ENV,
                            start_new_session=True, **popen)


def _kill9(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _wait(what: str, check, proc: subprocess.Popen, limit: float = 60.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"the subprocess exited (code {proc.returncode}) before {what}")
        time.sleep(0.01)
    _kill9(proc)
    pytest.fail(f"no {what} within {limit:.0f} s")


# -- kill -9 during the image cache build --------------------------------------------------------
# Decoding 240 faces at 32 px takes well under a second; a 10 ms nap per image (in the decoding
# helpers too: they are forked after the patch) makes the build last long enough to be killed
# in the middle, while its temp array is half written.
SLOW_BUILD = """
import json, sys, time
import celebhpo.data.cache as cache
real = cache.load_image
def slow(*args, **kwargs):
    time.sleep(0.01)
    return real(*args, **kwargs)
cache.load_image = slow
from celebhpo.config import DataConfig
from celebhpo.data import load_data
load_data(DataConfig(**json.loads(sys.argv[1])), splits=("train",), progress=False)
"""


def test_kill9_during_the_cache_build_never_leaves_a_usable_partial_cache(synth_root, tmp_path):
    cache = tmp_path / "cache"
    fields = {"root": str(synth_root), "image_size": 32, "train_size": 240,
              "cache_dir": str(cache)}
    proc = _python(SLOW_BUILD, json.dumps(fields))
    temp = _wait("the cache's temp file", lambda: list(cache.glob("*.tmp-*.npy")), proc)
    time.sleep(0.3)  # some chunks written, most not
    assert proc.poll() is None, "the build ended before it could be killed"
    _kill9(proc)
    assert not [p for p in cache.glob("*.npy") if ".tmp-" not in p.name], "killed too late"
    assert [p.exists() for p in temp] == [True]  # the killed build's leftover

    data = load_data(DataConfig(**fields), splits=("train",), progress=False)
    clean = load_data(DataConfig(**{**fields, "cache_dir": str(tmp_path / "clean")}),
                      splits=("train",), progress=False)
    train = data["train"].images
    assert train.shape == (240, 32, 32, 3)
    np.testing.assert_array_equal(train, clean["train"].images)
    assert data["train"].ids == clean["train"].ids
    assert not list(cache.glob("*.tmp-*")), "the leftover is cleaned up by the rebuild"
    # and the rebuilt cache is the one the next load reuses
    again = load_data(DataConfig(**fields), splits=("train",), progress=False)
    assert again["train"].images.filename == train.filename


# -- kill -9 during a checkpoint write -----------------------------------------------------------
# 8M floats (32 MB) per save: long enough that a random kill often lands inside a write. The
# weights hold the save's number, so a loaded file shows which save it is and that it is whole.
SAVE_FOREVER = """
import sys, torch
from celebhpo.training.checkpoint import Checkpoint
path = sys.argv[1]
for i in range(1, 1_000_000):
    Checkpoint(
        arch="tiny", state_dict={"w": torch.full((8_000_000,), float(i))}, config={},
        attributes=["Smiling"], thresholds=[0.5], mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2],
        metrics={"val_loss": 1.0 / i}, epoch=i,
    ).save(path)
    print(i, flush=True)
"""


def test_kill9_during_a_checkpoint_write_keeps_a_whole_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    rng = random.Random(os.getpid())
    for _ in range(2):  # the second round starts over the first one's leftovers
        proc = _python(SAVE_FOREVER, str(path), stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline().strip()
        assert first == "1", f"the saver did not finish a save (exit {proc.wait()})"
        time.sleep(rng.uniform(0.0, 0.4))
        _kill9(proc)
        last = int(([first] + proc.stdout.read().split())[-1])
        proc.stdout.close()

        ckpt = Checkpoint.load(path)  # never partial: whole, and ours
        epoch = ckpt.epoch
        assert epoch in (last, last + 1), (epoch, last)  # the last finished save, or the next
        w = ckpt.state_dict["w"]
        assert w.shape == (8_000_000,) and bool((w == float(epoch)).all())

    # a killed write leaves at most a hidden temp file that nothing takes for a checkpoint
    others = [p.name for p in tmp_path.iterdir() if p.name != "model.pt"]
    assert all(n.startswith(".model.pt.tmp-") for n in others), others
    assert [p.name for p in tmp_path.glob("*.pt")] == ["model.pt"]
    dataclasses.replace(Checkpoint.load(path), epoch=10**6).save(path)
    assert Checkpoint.load(path).epoch == 10**6


# -- the MLflow server goes away between two trials ---------------------------------------------
def test_tracking_server_gone_mid_study_fails_the_trial_and_stops_the_worker(
        synth_root, tmp_path, tracking_server, monkeypatch):
    """hpo.worker: the tracking store down after its retries is a setup error: the trial
    FAILs with the reason, is re-queued, and the worker stops with a TrackingError; nothing
    is left RUNNING, and once the server is back the study resumes and ends consistent."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = load_study_file(write_study(tmp_path / "s.toml", synth_root, name="gone",
                                      space="lr = [0.003, 0.03]"))
    # MLflow's own HTTP retries would take minutes, Tracker's default backoff 7 s per call
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setitem(Tracker.__init__.__kwdefaults__, "backoff", 0.05)
    relay = Relay(tracking_server).start()  # the server, as the worker reaches it
    base = relay.url
    create_study(cfg, storage=storage, grid=True, tracking_uri=base)
    lines: list[str] = []

    def echo(line: str) -> None:
        lines.append(line)
        if line.startswith("trial 0 COMPLETE"):
            relay.stop()  # the first trial is logged; then the server is gone

    with pytest.raises(TrackingError) as info:
        optimize(storage=storage, progress=False, echo=echo,
                 on_trial=lambda t: echo(format_trial_line(t)))
    message = str(info.value)
    assert message.startswith(f"MLflow create run failed on {base} after 4 attempts")
    assert "\n" not in message

    study, _ = load_study("gone", storage)
    trials = study.get_trials()
    assert not study.get_trials(states=(TS.RUNNING,))
    assert [t.state for t in trials[:2]] == [TS.COMPLETE, TS.FAIL]
    failed = trials[1]
    assert failed.user_attrs["fail_reason"] == message
    requeued = [t for t in trials if t.system_attrs.get("failed_trial") == failed.number]
    assert len(requeued) == 1 and requeued[0].state == TS.WAITING
    assert requeued[0].params == failed.params
    assert any(line.startswith("trial 1 FAIL (MLflow create run failed") for line in lines)
    assert any("warning: parent run summary not refreshed" in line for line in lines)

    relay.start()  # the server is back on the same address: the study resumes
    try:
        summary = optimize(storage=storage, progress=False, echo=lines.append)
        runs = mlflow_runs(base, "gone")
    finally:
        relay.stop()
    assert summary.counts == {"COMPLETE": 2, "FAIL": 1} and summary.ran == [requeued[0].number]
    study, _ = load_study("gone", storage)
    done = study.get_trials(states=(TS.COMPLETE,))
    assert sorted(t.params["lr"] for t in done) == [0.003, 0.03]
    assert {runs[t.number].info.status for t in done} == {"FINISHED"}
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]
    assert failed.number not in runs  # it never got a run: the server was gone


# -- passwords never reach the command line's output ---------------------------------------------
def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "celebhpo", *args], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out + err


def _one_line_error(code: int, out: str) -> str:
    assert code != 0, out
    assert "s3cret" not in out and "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    # besides the error, only the retry notes (the tracker's, the storage's) may be printed
    assert len(errors) == 1 and lines[-1] == errors[0], out
    assert all("; retrying " in line for line in lines[:-1]), out
    return errors[0]


def test_passwords_in_urls_never_reach_cli_errors(synth_root, tmp_path):
    dead_pg = "postgresql+psycopg2://postgres:s3cret@127.0.0.1:1/x"
    dead_http = f"http://u:s3cret@127.0.0.1:{free_port()}"
    study_file = write_study(tmp_path / "s.toml", synth_root, name="masked")
    procs = [  # at once: each spends seconds starting up, one ~7 s in the tracker's backoff
        _cli("optimize", "--storage", dead_pg, "--storage-retry", "1", cwd=tmp_path),
        _cli("study", "create", str(study_file), "--grid", "--storage", dead_pg,
             "--tracking-uri", dead_http, cwd=tmp_path),
        # a storage that works and a tracking server that does not
        _cli("study", "create", str(study_file), "--grid", "--storage",
             f"sqlite:///{tmp_path / 'ok.db'}", "--tracking-uri", dead_http, cwd=tmp_path),
    ]
    optimize_line, create_line, tracking_line = (_one_line_error(*_finish(p)) for p in procs)
    assert "cannot open storage" in optimize_line and "postgres:***@127.0.0.1:1" in optimize_line
    assert "no answer for 1 s" in optimize_line
    assert "postgres:***@127.0.0.1:1" in create_line
    assert "u:***@127.0.0.1" in tracking_line and "unreachable" in tracking_line


def test_a_password_in_the_storage_url_stays_out_of_progress_and_mlflow(
        synth_root, tmp_path, pg_url):
    from celebhpo.cli import cli

    # trust auth ignores the password, so the study really runs with it in the URL
    storage = pg_url.replace("postgres@", "postgres:s3cret@")
    tracking = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    study_file = write_study(tmp_path / "s.toml", synth_root, name="pgpass", space="lr = [0.01]")
    runner = CliRunner()  # in-process: stdout and stderr (progress bars) as a terminal shows them
    created = runner.invoke(cli, ["study", "create", str(study_file), "--grid", "--storage",
                                  storage, "--tracking-uri", tracking])
    assert created.exit_code == 0, created.output
    ran = runner.invoke(cli, ["optimize", "--storage", storage, "--progress"])
    assert ran.exit_code == 0, ran.output
    # the progress bar and lines were there to be read
    assert "t000 epoch 1/1" in ran.output and "trial 0 COMPLETE" in ran.output
    assert "postgres:***@127.0.0.1" in created.output
    assert "s3cret" not in created.output + ran.output

    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name("pgpass")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2  # the parent and the trial
    stored = json.dumps([[r.data.params, r.data.tags, r.info.run_name] for r in runs])
    assert "s3cret" not in stored


# -- `celebhpo ui` binds to this machine unless told otherwise -------------------------------------
def test_ui_binds_to_localhost_by_default(tmp_path, monkeypatch):
    started: list[list[str]] = []
    monkeypatch.setattr(subprocess, "call", lambda argv: started.append(argv) or 0)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # a store to open (ui refuses a folder without one)
    from celebhpo.cli import cli

    result = CliRunner().invoke(cli, ["ui", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    argv = started[-1]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert "--host 127.0.0.1" in result.output  # the command it runs is shown
    result = CliRunner().invoke(cli, ["ui", "--tracking-uri", uri, "--host", "0.0.0.0"])
    assert result.exit_code == 0 and started[-1][started[-1].index("--host") + 1] == "0.0.0.0"
    help_text = CliRunner().invoke(cli, ["ui", "--help"]).output
    assert "[default: 127.0.0.1]" in help_text
