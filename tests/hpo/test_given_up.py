"""A grid point given up after its retry limit (issue 22): derived from the trials
(retry.given_up), named in the worker's last lines with exit code 1, marked by `study show`,
tagged on the MLflow parent run, and queued once more by `optimize --retry-given-up`. And
`optimize` draws no progress bars with --no-progress or when its output is not a terminal.

A point's attempts whose workers died are made as test_retry.py makes them, with Optuna's own
calls (the states dead workers leave behind); then real `optimize` commands run on a SQLite
study with a SQLite MLflow store in tmp_path.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import sys
import termios
import threading
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from optuna.trial import FrozenTrial

from celebhpo.cli import cli
from celebhpo.hpo import OptimizeSummary, load_study
from celebhpo.hpo.liveness import claim_waiting_trial
from celebhpo.hpo.record import StudyRecord
from celebhpo.hpo.retry import (
    FAIL_REASON,
    HEARTBEAT_STOPPED,
    MAX_RETRY,
    RETRY_HISTORY,
    RETRY_WANTED,
    GivenUp,
    given_up,
    requeue,
    retry_history,
)
from celebhpo.report import format_optimize_summary
from celebhpo.tracking.parent import GIVEN_UP_TAG
from tests.helpers import assert_grid_done_once, write_study

TS = optuna.trial.TrialState
GRID = "lr = [0.003, 0.03]\ndropout = [0.1]"
DIED = "worker pid 1 on here died while running it"


def _failed_rerun(study: optuna.Study, prev: FrozenTrial, reason: str | None) -> FrozenTrial:
    """A re-run of `prev` (as `requeue` queues it) whose worker died: failed by celebhpo with
    `reason` and RETRY_WANTED, or (reason None) by its stale heartbeat, with no reason."""
    user_attrs = {"retry_of": prev.number}
    if reason is not None:
        user_attrs |= {FAIL_REASON: reason, RETRY_WANTED: True}
    study.add_trial(optuna.trial.create_trial(
        state=TS.FAIL, params=prev.params, distributions=prev.distributions,
        user_attrs=user_attrs, system_attrs={"failed_trial": prev.number, **prev.system_attrs,
                                             RETRY_HISTORY: [*retry_history(prev), prev.number]}))
    return study.get_trials()[-1]


def _give_up_first_point(study: optuna.Study) -> FrozenTrial:
    """The grid's first point tried 1 + MAX_RETRY times, each attempt's worker dead; the last
    failed by its heartbeat. Returns that last attempt."""
    trial = claim_waiting_trial(study)
    trial.set_user_attr(FAIL_REASON, DIED)
    trial.set_user_attr(RETRY_WANTED, True)
    study.tell(trial, state=TS.FAIL)
    last = study.get_trials()[trial.number]
    for n in range(MAX_RETRY):
        last = _failed_rerun(study, last, DIED if n < MAX_RETRY - 1 else None)
    return last


def _create(tmp_path: Path, synth_root: Path, name: str, space: str = GRID
            ) -> tuple[str, str]:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study_file = write_study(tmp_path / "s.toml", synth_root, name=name, space=space)
    created = CliRunner().invoke(cli, ["study", "create", str(study_file), "--grid",
                                       "--storage", storage, "--tracking-uri", uri])
    assert created.exit_code == 0, created.output
    return storage, uri


# -- the rule ----------------------------------------------------------------------------------
def test_given_up_is_derived_from_the_trials(tmp_path, synth_root):
    storage, _ = _create(tmp_path, synth_root, "rule")
    study, _ = load_study("rule", storage)
    first = claim_waiting_trial(study)
    first.set_user_attr(FAIL_REASON, DIED)
    first.set_user_attr(RETRY_WANTED, True)
    study.tell(first, state=TS.FAIL)
    assert given_up(study.get_trials()) == []  # its re-run is still to be queued
    last = study.get_trials()[first.number]
    for _ in range(MAX_RETRY):
        last = _failed_rerun(study, last, DIED)
    # a trial that failed on its own (no RETRY_WANTED) is never re-run, nor given up
    own = claim_waiting_trial(study)
    own.set_user_attr(FAIL_REASON, "training loss became NaN/inf at epoch 1")
    study.tell(own, state=TS.FAIL)
    assert [t.number for t in given_up(study.get_trials())] == [last.number]
    assert GivenUp.of(last, grid=True) == GivenUp(last.number, dict(last.params),
                                                  MAX_RETRY + 1, DIED, True)

    requeue(study, last)  # --retry-given-up: queued once more, no longer given up
    assert given_up(study.get_trials()) == []
    again = _failed_rerun(study, last, None)  # ... and its worker died too: given up again
    assert [t.number for t in given_up(study.get_trials())] == [again.number]
    assert GivenUp.of(again).attempts == MAX_RETRY + 2
    assert GivenUp.of(again).reason == HEARTBEAT_STOPPED


def test_the_summary_names_a_grid_point_or_a_sampled_trials_params():
    summary = OptimizeSummary(study_name="s", counts={"COMPLETE": 1, "FAIL": 3}, ran=[1],
                              best_trial=None, best_value=None, stopped="the grid is exhausted",
                              given_up=[GivenUp(3, {"lr": 0.003, "dropout": 0.1}, 3, DIED, True),
                                        GivenUp(7, {"lr": 0.01}, 4, HEARTBEAT_STOPPED)])
    lines = format_optimize_summary(summary).splitlines()
    assert lines[-2:] == [
        "grid point {lr=0.003, dropout=0.1} was given up after 3 attempts (trial 3; see study "
        "show; optimize --retry-given-up runs it once more)",
        "trial 7's params {lr=0.01} were given up after 4 attempts (trial 7; see study show; "
        "optimize --retry-given-up runs it once more)"]


# -- a real study, through the command line ------------------------------------------------------
def test_a_given_up_point_is_named_marked_tagged_and_run_again_on_request(tmp_path, synth_root):
    storage, uri = _create(tmp_path, synth_root, "gaveup")
    study, _ = load_study("gaveup", storage)
    last = _give_up_first_point(study)
    point = "{" + ", ".join(f"{k}={v}" for k, v in last.params.items()) + "}"
    args = ["optimize", "--study", "gaveup", "--storage", storage, "--tracking-uri", uri]

    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert "this worker ran 1; stopped: the grid is exhausted" in lines[-3]
    assert lines[-2].startswith("best: trial 1 ")
    assert lines[-1] == (f"grid point {point} was given up after {MAX_RETRY + 1} attempts "
                         f"(trial {last.number}; see study show; optimize --retry-given-up "
                         "runs it once more)")

    shown = CliRunner().invoke(cli, ["study", "show", "gaveup", "--storage", storage,
                                     "--format", "csv"])
    assert shown.exit_code == 0, shown.output
    row = next(r for r in shown.stdout.splitlines() if r.startswith(f"{last.number},FAIL,"))
    assert row.endswith(f",given up after {MAX_RETRY + 1} attempts: {HEARTBEAT_STOPPED}")

    client = MlflowClient(uri)
    parent = StudyRecord.of(load_study("gaveup", storage)[0]).parent_run_id
    assert client.get_run(parent).data.tags[GIVEN_UP_TAG] == (
        f"trial {last.number} {point} after {MAX_RETRY + 1} attempts")

    again = CliRunner().invoke(cli, [*args, "--retry-given-up"])
    assert again.exit_code == 0, again.output
    lines = again.stdout.splitlines()
    assert lines[0] == (f"grid point {point} (given up after {MAX_RETRY + 1} attempts) is "
                        "queued once more")
    assert "given up" not in "\n".join(lines[1:])
    trials = load_study("gaveup", storage)[0].get_trials()
    rerun = trials[-1]
    assert rerun.state == TS.COMPLETE and rerun.params == last.params
    assert retry_history(rerun) == [*retry_history(last), last.number]
    assert_grid_done_once(storage, "gaveup", uri, points=2)
    assert GIVEN_UP_TAG not in client.get_run(parent).data.tags  # removed: none given up
    shown = CliRunner().invoke(cli, ["study", "show", "gaveup", "--storage", storage,
                                     "--format", "csv"])
    assert "given up" not in shown.stdout

    nothing = CliRunner().invoke(cli, [*args, "--retry-given-up"])
    assert nothing.exit_code == 0, nothing.output
    assert nothing.stdout.splitlines()[0] == "no point was given up: nothing to queue again"


# -- progress bars -------------------------------------------------------------------------------
BAR = re.compile(r"\d+%\||epoch \d+/\d+")  # tqdm's `100%|` and the trial bar's label


def _on_a_terminal(args: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """`celebhpo ARGS` in this process (a subprocess pays seconds of imports) with its
    stdout and stderr on a real pseudo-terminal: (exit code, what the terminal got)."""
    master, slave = pty.openpty()
    # a terminal 100 columns wide (a fresh pty has none: tqdm would draw nothing)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    out = bytearray()

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's side was closed
                return
            if not data:
                return
            out.extend(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    code = 0
    try:
        with open(slave, "w", encoding="utf-8", buffering=1) as term, monkeypatch.context() as m:
            m.setattr(sys, "stdout", term)
            m.setattr(sys, "stderr", term)
            try:
                cli.main(args, prog_name="celebhpo", standalone_mode=False)
            except SystemExit as e:
                code = int(e.code or 0)
        reader.join(timeout=60)
    finally:
        os.close(master)
    return code, out.decode(errors="replace")


def test_no_progress_bars_with_no_progress_or_without_a_terminal(tmp_path, synth_root,
                                                                  monkeypatch):
    storage, uri = _create(tmp_path, synth_root, "bars", space="lr = [0.003, 0.03, 0.01]")
    args = ["optimize", "--study", "bars", "--storage", storage, "--tracking-uri", uri]
    code, out = _on_a_terminal([*args, "--trials", "1"], monkeypatch)
    assert code == 0 and BAR.search(out), out  # on a terminal, by default: bars
    code, out = _on_a_terminal([*args, "--trials", "2", "--no-progress"], monkeypatch)
    assert code == 0 and "trial 1 COMPLETE" in out, out
    assert not BAR.search(out), out
    result = CliRunner().invoke(cli, [*args, "--trials", "3"])  # output captured: no terminal
    assert result.exit_code == 0 and "trial 2 COMPLETE" in result.output, result.output
    assert not BAR.search(result.output), result.output
