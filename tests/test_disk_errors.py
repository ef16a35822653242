"""A full or unwritable disk (issue 22): one line naming the folder or file being written and
what to do, at once (no retries), never "download failed" or "export without --format"; a
resume state that cannot be saved is one warning per trial.

Real stores and real files on a small tmpfs of the test's own, mounted in its tmp folder:
full (filled to the last byte) or remounted read-only. A 0o555 folder would not do: the
tests run as root, which permissions do not bind (tests/test_bad_input.py drops that power
in a child process for its read-only cases).
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from celebhpo.config import load_study_file
from celebhpo.errors import CelebhpoError, TrackingError, disk_message, os_cause
from celebhpo.export.best import export_best
from celebhpo.export.formats import export_onnx
from celebhpo.hpo import create_study, load_study, optimize
from celebhpo.hpo.launch import WORKER_ENV
from celebhpo.tracking import RunHandle, Tracker
from tests.helpers import write_study

FULL = "No space left on device"
READ_ONLY = "Read-only file system"


# -- a small disk of the test's own ------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path) -> Iterator[Callable[..., Path]]:
    """`small_disk(name)`: a folder in tmp_path on a 1 MiB tmpfs of its own, unmounted after
    the test. Skips where this process may not mount (not root, no CAP_SYS_ADMIN)."""
    mounted: list[Path] = []

    def mount(name: str) -> Path:
        where = tmp_path / name
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"a full or read-only disk needs a small tmpfs, and mounting one "
                        f"failed here: {done.stderr.strip() or done.returncode}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill(disk: Path, leave: int = 0) -> None:
    """Fill `disk` to its last byte, or to its last `leave` bytes (whole pages)."""
    reserve = disk / ".reserve"
    reserve.write_bytes(b"\0" * leave)
    fd = os.open(disk / ".filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
    reserve.unlink()
    if leave:
        return
    probe = os.open(disk / ".probe", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError):  # not a page more fits
            os.write(probe, b"\0" * 4096)
    finally:
        os.close(probe)
        os.unlink(disk / ".probe")


def read_only(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True, capture_output=True)


BREAK = {"full": (fill, FULL, "free space on its disk or "), "read-only": (read_only, READ_ONLY, "")}


# -- the shared helpers --------------------------------------------------------------------------
def test_os_cause_finds_the_disk_error_down_the_chain():
    disk = OSError(errno.ENOSPC, FULL)
    try:
        try:
            raise disk
        except OSError:
            raise RuntimeError("wrapped") from None  # hidden, yet kept as __context__
    except RuntimeError as e:
        assert os_cause(e) is disk
    assert os_cause(OSError(errno.ENOENT, "No such file")) is None
    assert os_cause(ValueError("x")) is None
    copy = OSError(errno.ENOSPC, FULL, "/src/model.pt", None, "/dst/model.pt")
    assert disk_message(copy) == ("cannot write to /dst/model.pt: No space left on device; "
                                  "free space on its disk or choose another folder")
    assert disk_message(OSError(errno.EACCES, "Permission denied"), "/out", option="--out") == (
        "/out: Permission denied; fix its permissions or pass --out another folder")


# -- MLflow: an artifact folder that is full or read-only ---------------------------------------
@pytest.mark.parametrize("how", BREAK)
def test_logging_into_a_broken_artifact_folder_names_it_at_once(how, tmp_path, small_disk,
                                                                caplog):
    disk = small_disk("artifacts")
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")  # the database is elsewhere
    experiment = tracker.client.create_experiment("x", artifact_location=disk.as_uri())
    run = RunHandle(tracker, tracker.client.create_run(experiment).info.run_id)
    state = tmp_path / "state.pt"
    state.write_bytes(os.urandom(200_000))
    run.log_file(state, "resume")  # fits, and makes the run's folders
    folder = Path(tracker.client.get_run(run.run_id).info.artifact_uri.removeprefix("file://"))
    assert (folder / "resume" / "state.pt").is_file()
    breaks, reason, free = BREAK[how]
    breaks(disk)

    started = time.monotonic()
    with caplog.at_level(logging.WARNING), pytest.raises(TrackingError) as e:
        run.log_file(state, "resume")
    assert time.monotonic() - started < 0.9  # retries would wait 1 + 2 + 4 s
    assert "retrying" not in caplog.text
    assert str(e.value) == (f"MLflow log artifact: cannot write to {folder / 'resume'}: {reason}; "
                            f"{free}choose another folder")
    assert "sqlite" not in str(e.value)


# -- export-best: an --out that is full or read-only --------------------------------------------
def _study(tmp_path, synth_root, name: str, *, epochs: int = 1, artifacts: Path | None = None
           ) -> tuple[str, str]:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    cfg = load_study_file(write_study(tmp_path / f"{name}.toml", synth_root, name=name,
                                      space="lr = [0.01]", epochs=epochs))
    create_study(cfg, storage=storage, grid=True, tracking_uri=tracking,
                 artifacts=str(artifacts) if artifacts else None)
    return storage, tracking


@pytest.mark.parametrize("how", BREAK)
def test_export_best_to_a_broken_out_names_out(how, tmp_path, synth_root, small_disk):
    storage, _ = _study(tmp_path, synth_root, "exp")
    optimize(storage=storage, progress=False, echo=lambda _: None)
    disk = small_disk("disk")
    out = disk / "best"
    breaks, reason, free = BREAK[how]
    breaks(disk)

    with pytest.raises(CelebhpoError) as e:
        export_best(study_name="exp", storage=storage, out=out, progress=False)
    message = str(e.value)
    if how == "full":  # found when the checkpoint is copied in
        assert message == (f"cannot write to {out}: {FULL}; free space on its disk or pass "
                           "--out another folder")
    else:  # found before any work (check_writable)
        assert message == f"cannot write to {out}: {READ_ONLY}; pass --out a writable folder"
    assert "download" not in message.lower() and "without --format" not in message
    # nothing half-written
    assert [p.name for p in disk.iterdir()] == ([".filler"] if how == "full" else [])


def test_onnx_into_a_full_folder_is_a_disk_error_not_a_format_error(tmp_path, small_disk):
    pytest.importorskip("onnxruntime")
    disk = small_disk("disk")
    model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.Flatten(), nn.Linear(64 * 14 * 14, 40)).eval()
    example = torch.randn(2, 3, 16, 16)
    fill(disk)
    with pytest.raises(OSError) as e:  # the exporter's own error kind: callers name a folder
        export_onnx(model, example, example, disk / "model.onnx")
    assert e.value.errno == errno.ENOSPC
    assert Path(e.value.filename).parent == disk  # the temporary file beside model.onnx
    assert "without --format" not in disk_message(e.value)
    assert [p.name for p in disk.iterdir()] == [".filler"]


# -- a resume state that cannot be saved: one warning per trial --------------------------------
def test_a_resume_state_that_keeps_failing_is_one_warning_per_trial(tmp_path, synth_root,
                                                                    small_disk, monkeypatch):
    disk = small_disk("artifacts")
    storage, _ = _study(tmp_path, synth_root, "res", epochs=3, artifacts=disk)
    fill(disk, leave=4096)  # after study create (it logs nothing); one page: the trial's
    # config.json, logged as its run starts, fits, and nothing after it (states, results)
    monkeypatch.setenv(WORKER_ENV, "gpu0")  # as optimize --devices starts its workers
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(TrackingError) as e:  # a store that takes nothing stops the worker
        optimize(storage=storage, progress=False, echo=lines.append)
    took = time.monotonic() - started

    study, _ = load_study("res", storage)
    trial = study.trials[0]
    assert len(trial.intermediate_values) == 3  # trained on: the states cost only a retry
    folder = disk / trial.user_attrs["mlflow_run_id"] / "artifacts"
    warned = [line for line in lines if "resume state" in line]
    assert len(warned) == 1, lines  # epochs 1, 2 and 3 failed alike
    assert warned[0] == (
        "[gpu0] warning: trial 0: resume state of epoch 1 not saved (a retry would start "
        "earlier; later epochs try again without a word): MLflow log artifact: cannot write "
        f"to {folder / 'resume'}: {FULL}; free space on its disk or choose another folder")
    # the trial's results do not fit either: the worker stops on one line naming the folder
    assert str(e.value) == (f"MLflow log artifact: cannot write to {folder}: {FULL}; free "
                            "space on its disk or choose another folder")
    assert trial.state == optuna.trial.TrialState.FAIL
    assert took < 60  # no retries: 3 epochs of the tiny model and the study's bookkeeping
