"""Who owns a trial, with real processes: claims raced by several processes on every storage
kind, and a killed worker that its parent has not reaped yet (a zombie).

PostgreSQL: 127.0.0.1:5432, user postgres, trust auth (the `pg_url` fixture).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from celebhpo.hpo.liveness import is_dead_local
from celebhpo.hpo.storage import open_storage

TS = optuna.trial.TrialState

# a worker's claim loop: wait for the start signal (a file), then claim queued trials until
# none is left; print "pid trial_number ..." of what it won
CLAIMER = """
import os, sys, time
import optuna
from celebhpo.hpo.liveness import claim_waiting_trial
from celebhpo.hpo.storage import open_storage
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name="race", storage=open_storage(sys.argv[1]))
open(sys.argv[2] + f".ready-{os.getpid()}", "w").close()
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
won = []
while (trial := claim_waiting_trial(study)) is not None:
    won.append(trial.number)
print(os.getpid(), *won)
"""


@pytest.fixture(params=["sqlite", "journal", "postgresql"])
def storage_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'optuna.db'}"
    if request.param == "journal":
        return str(tmp_path / "optuna.log")
    return request.getfixturevalue("pg_url")


def test_three_processes_claim_each_queued_trial_once_with_its_owner(storage_url, tmp_path):
    """Three processes race over 60 queued trials (SQLite used to let two win one trial: its
    SELECT ... FOR UPDATE is a no-op); each trial is won once, and the winner's owner record
    is on it the moment it is RUNNING."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="race", storage=open_storage(storage_url))
    for _ in range(60):
        study.add_trial(optuna.trial.create_trial(state=TS.WAITING))
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, storage_url, str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    # every process has imported celebhpo and loaded the study before the start signal
    deadline = time.monotonic() + 240
    while len(list(tmp_path.glob("go.ready-*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]

    claims = {}  # trial number -> pids of the processes that won it
    for out, _ in outputs:
        pid, *numbers = (int(x) for x in out.split())
        for n in numbers:
            claims.setdefault(n, []).append(pid)
    twice = {n: pids for n, pids in claims.items() if len(pids) > 1}
    assert not twice, f"trials won by more than one process: {twice}"
    assert sorted(claims) == list(range(60))
    trials = optuna.load_study(study_name="race", storage=open_storage(storage_url)).trials
    assert all(t.state == TS.RUNNING for t in trials)
    assert {t.number: t.user_attrs.get("pid") for t in trials} == {
        n: pids[0] for n, pids in claims.items()}
    assert len(collections.Counter(pids[0] for pids in claims.values())) >= 2  # a real race


def test_a_killed_worker_not_yet_reaped_counts_as_dead(tmp_path):
    """kill -9 leaves a zombie until the parent waits for it; `kill(pid, 0)` still succeeds
    on a zombie, which once made survivors wait for its trial forever."""
    code = ("import json, sys, time\n"
            "from celebhpo.hpo.liveness import worker_identity\n"
            "print(json.dumps(worker_identity()), flush=True)\n"
            "time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        attrs = json.loads(child.stdout.readline())
        assert attrs["pid"] == child.pid
        assert not is_dead_local(attrs)  # alive
        os.kill(child.pid, signal.SIGKILL)
        stat = Path(f"/proc/{child.pid}/stat")
        deadline = time.monotonic() + 30
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the killed child never became a zombie"
            time.sleep(0.01)
        assert is_dead_local(attrs)  # a zombie: dead, though its pid answers kill(pid, 0)
    finally:
        child.kill()
        child.wait()
    assert is_dead_local(attrs)  # reaped
