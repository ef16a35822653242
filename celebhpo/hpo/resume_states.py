"""A retried trial's resume states on its tracked runs (see hpo.objective): its own run's,
uploaded after each epoch, and its earlier attempts', found, loaded and at the end deleted.

An epoch's state is copied (its live tensors: a CPU snapshot) as the epoch ends, then
written and uploaded by a thread of its own while the next epoch trains: the file first,
then the tag `resume_epoch`, so the tag never names a state that is not there. One upload
at a time: the next state, `wait`, `discard` and leaving the `with` block join it, so when
the trial ends, by any path (finished, pruned, failed, a stop request), its last state is
in MLflow or its warning said; nothing is left running. A state the process loses with it
(kill -9, a second Ctrl-C) costs what it did before: the retry resumes from the state
before, the one the tag still names. The last epoch's state (`last_epoch`) is not uploaded:
the trial's result follows it within seconds and the states are then deleted, so it would
only spare a worker that dies in those seconds one epoch, at the cost of a state's write,
upload and delete in every finished trial.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch

from celebhpo._io import describe_os_error
from celebhpo.config import StudyConfig
from celebhpo.data import DataBundle
from celebhpo.errors import CheckpointError, TrackingError, disk_message, os_cause
from celebhpo.hpo.retry import retry_history
from celebhpo.tracking import RUN_ID_ATTR, NullTrialRun, TrialRun
from celebhpo.training.checkpoint import load_resume_state, save_resume_state
from celebhpo.training.resume import check_state, data_shape

__all__ = ["RESUME_DIR", "RESUME_FILE", "RESUME_TAG", "ResumeStates"]

log = logging.getLogger(__name__)

RESUME_DIR = "resume"  # the artifact folder of a trial's run that holds its resume state
RESUME_FILE = "state.pt"
RESUME_TAG = "resume_epoch"  # tag of a trial's run: the epoch its resume/state.pt holds


class ResumeStates:
    """The trial's resume states: its own run's, uploaded after each epoch (fit's
    `on_state`) in the background (module docstring), and its earlier attempts' (a
    retry's), found and at the end deleted. A retry's run is tagged `retry_of` whether or
    not it `keep`s states ([study] resume). Its lines for people go to `echo` (the
    worker's, which adds its `[gpuK]` label), or without one to this module's log. Use it
    as a context manager: leaving the block joins the upload in flight."""

    def __init__(self, run: TrialRun | NullTrialRun, trial: optuna.Trial, folder: Path, *,
                 keep: bool, echo: Callable[[str], None] | None = None,
                 last_epoch: int | None = None) -> None:
        self.run, self.trial, self.folder, self.keep = run, trial, folder, keep
        self.last_epoch = last_epoch  # the trial's last epoch: its state is not uploaded
        self.echo = echo
        self.uploaded = False
        self.warned = False
        self._upload: threading.Thread | None = None
        self._failure: BaseException | None = None  # an upload's unexpected error
        self.earlier = self._earlier_runs()  # (run id, its resume epoch or 0), newest first
        if self.earlier:
            run.log(tags={"retry_of": self.earlier[0][0]})

    def __enter__(self) -> ResumeStates:
        return self

    def __exit__(self, *exc: object) -> None:
        self.wait(raise_failure=exc[0] is None)

    def __call__(self, state: dict[str, Any]) -> None:
        """Upload the state of the epoch just finished: snapshot now, write and upload in
        the background (module docstring). A failure costs only a longer retry, never the
        trial: one warning per trial, though each later epoch tries again (space freed
        meanwhile is used)."""
        if self.last_epoch is not None and state["epoch"] >= self.last_epoch:
            return  # the result follows at once (module docstring)
        self.wait()
        snapshot = {**state, "model": _cpu_copy(state["model"]),
                    "optimizer": _cpu_copy(state["optimizer"])}
        self._upload = threading.Thread(target=self._save, args=(snapshot,),
                                        name=f"resume-state-t{self.trial.number}")
        self._upload.start()

    def wait(self, *, raise_failure: bool = True) -> None:
        """Join the upload in flight, if any; raise what it raised unexpectedly (the errors
        an upload may meet are warnings, see __call__) unless not `raise_failure`."""
        if self._upload is not None:
            self._upload.join()
            self._upload = None
        failure, self._failure = self._failure, None
        if failure is not None and raise_failure:
            raise failure

    def _save(self, state: dict[str, Any]) -> None:
        path = self.folder / RESUME_FILE
        try:
            save_resume_state(path, state, durable=False)
            self.run.log_file(path, RESUME_DIR)
            self.uploaded = True
            self.run.log(tags={RESUME_TAG: state["epoch"]})
        except (TrackingError, CheckpointError, OSError) as e:
            if not self.warned:
                self._say(f"warning: trial {self.trial.number}: resume state of epoch "
                          f"{state['epoch']} not saved (a retry would start earlier; later "
                          f"epochs try again without a word): {_one_line(e)}")
            self.warned = True
        except BaseException as e:  # noqa: BLE001 - raised in the trial's thread at the join
            self._failure = e

    def find(self, tcfg: StudyConfig, data: DataBundle) -> dict[str, Any] | None:
        """The latest earlier attempt's state that loads and fits this run, else None."""
        for run_id, epoch in sorted(self.earlier, key=lambda r: -r[1]):  # stable: newest first
            if not epoch:
                continue
            try:
                path = self.run.other(run_id).download(f"{RESUME_DIR}/{RESUME_FILE}",
                                                       self.folder / run_id)
                state = load_resume_state(path)
                check_state(state, tcfg.to_dict(), data_shape(data))
            except (TrackingError, CheckpointError, OSError) as e:
                self._say(f"warning: trial {self.trial.number}: resume state of MLflow run "
                          f"{run_id} skipped: {_one_line(e)}")
                continue
            self._say(f"trial {self.trial.number} resumed from epoch {state['epoch']} of "
                      f"MLflow run {run_id}")
            self.run.log(tags={"resumed_from_run": run_id,
                               "resumed_from_epoch": state["epoch"]})
            return state
        return None

    def discard(self) -> None:
        """Delete the resume states of this run and the earlier attempts' (best effort),
        once the upload in flight is done (it would bring this run's back)."""
        self.wait()
        runs = [r for r, epoch in self.earlier if epoch]
        if self.uploaded:
            runs.insert(0, self.run.run_id)
        for run_id in runs:
            try:
                run = self.run.other(run_id)
                run.delete_files(RESUME_DIR)
                run.delete_tags(RESUME_TAG)
            except Exception as e:  # noqa: BLE001 - a leftover state never fails a trial
                self._say(f"warning: trial {self.trial.number}: resume state of MLflow run "
                          f"{run_id} not deleted: {_one_line(e)}")

    def _say(self, line: str) -> None:
        if self.echo is not None:
            self.echo(line)
        else:
            log.warning("%s", line.removeprefix("warning: "))

    def forget(self) -> None:
        """Untag the run's resume: `find`'s state did not load after all."""
        self.run.delete_tags("resumed_from_run", "resumed_from_epoch")

    def _earlier_runs(self) -> list[tuple[str, int]]:
        trials = {t.number: t for t in self.trial.study.get_trials(deepcopy=False)}
        me = trials.get(self.trial.number)
        history = retry_history(me) if me is not None else []
        out = []
        for number in reversed(history):
            run_id = trials[number].user_attrs.get(RUN_ID_ATTR) if number in trials else None
            if run_id:
                out.append((run_id, int(self.run.other(run_id).tags().get(RESUME_TAG, 0))))
        return out


def _cpu_copy(value: Any) -> Any:
    """`value` (a state_dict: nested dicts and lists of tensors and plain values) with every
    tensor copied to the CPU, so training can change the live ones meanwhile."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_cpu_copy(v) for v in value)
    return value


def _one_line(e: BaseException) -> str:
    """An error as one line; an OSError with the file it names, and for a full or unwritable
    disk what to do (errors.disk_message)."""
    if not isinstance(e, OSError):
        return " ".join(str(e).split())
    return disk_message(e) if os_cause(e) is e else describe_os_error(e)
