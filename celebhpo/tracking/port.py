"""The tracker hpo talks to: one study's experiment and parent run in MLflow, or nothing.

`study_tracker(...)` chooses once (STYLE 15, like Optuna's heartbeat thread or its null
version): a `StudyTracker` over an MLflow store, or a `NullTracker` whose every call does
nothing, for a study that runs with tracking off (`[study] tracking = "off"`, or
`--no-tracking`). Both have the same methods, and a trial's run from either
(`TrialRun` / `NullTrialRun`) has the same methods too, so hpo never asks which it has.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from celebhpo.errors import TrackingError
from celebhpo.tracking.client import Tracker
from celebhpo.tracking.parent import set_study_run_status
from celebhpo.tracking.study import (
    close_orphan_runs,
    create_study_run,
    kill_runs,
    link_warm_start,
    supersede,
)
from celebhpo.tracking.summary import refresh_parent
from celebhpo.tracking.trial import RUN_ID_ATTR, TrialRun, f1_by_attribute, start_trial

__all__ = ["NullTracker", "NullTrialRun", "StudyTracker", "study_tracker"]



def study_tracker(uri: str | None, *, experiment_id: str | None = None,
                  parent_run_id: str | None = None, enabled: bool = True, grid: bool = False,
                  config: dict[str, Any] | None = None) -> StudyTracker | NullTracker:
    """The study's tracker: MLflow at `uri` (its experiment and parent run, once made), or,
    when not `enabled`, one that does nothing. `grid` and `config` are the study's (its
    record): the parent's status and summaries need them."""
    if not enabled:
        return NullTracker()
    return StudyTracker(Tracker(uri), experiment_id, parent_run_id, grid=grid, config=config)


class StudyTracker:
    """A study's experiment and parent run in the MLflow store of `tracker`."""

    def __init__(self, tracker: Tracker, experiment_id: str | None = None,
                 parent_run_id: str | None = None, *, grid: bool = False,
                 config: dict[str, Any] | None = None) -> None:
        self.tracker = tracker
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.grid = grid
        self.config = config or {}

    def __repr__(self) -> str:
        return f"StudyTracker({self.tracker.masked_uri!r}, {self.experiment_id})"

    def describe(self) -> str:
        return f"MLflow experiment {self.experiment_id} at {self.tracker.masked_uri}"

    def check(self) -> None:
        """Fail fast, before any training, when the store cannot be reached."""
        self.tracker.check()

    def create_study_run(self, name: str, config: dict[str, Any], *, study_key: str,
                         storage: str, artifacts: str | None) -> tuple[str | None, str | None]:
        """The study's experiment and parent run (study.create_study_run), kept here too."""
        self.experiment_id, self.parent_run_id = create_study_run(
            self.tracker, name, config, study_key=study_key, storage=storage,
            artifacts=artifacts)
        return self.experiment_id, self.parent_run_id

    def supersede(self, parent_run_id: str) -> None:
        supersede(self.tracker, parent_run_id)

    def link_warm_start(self, **link: Any) -> None:
        """The parent run names the study it was warm-started from (study.link_warm_start)."""
        link_warm_start(self.tracker, str(self.parent_run_id), **link)

    def start_trial(self, trial: optuna.Trial, params: dict[str, Any], config: dict[str, Any],
                    tags: dict[str, Any]) -> TrialRun:
        """The trial's child run (trial.start_trial), its id stored as the trial's user attr
        `mlflow_run_id`."""
        run = start_trial(self.tracker, str(self.experiment_id), str(self.parent_run_id),
                          trial.number, params, config, tags=tags)
        trial.set_user_attr(RUN_ID_ATTR, run.run_id)
        return run

    def close_orphan_runs(self, trial_states: dict[int, str]) -> list[str]:
        return close_orphan_runs(self.tracker, str(self.parent_run_id), trial_states)

    def kill_study_runs(self) -> list[str]:
        """The study was deleted: its parent and RUNNING trial runs end KILLED."""
        return kill_runs(self.tracker, str(self.parent_run_id),
                         "the study was deleted from its Optuna storage while this ran")

    def refresh_parent(self, study: optuna.Study, leaderboard: pd.DataFrame) -> None:
        refresh_parent(self.tracker, str(self.parent_run_id), study, leaderboard,
                       grid=self.grid, config=self.config)

    def set_study_run_status(self, study: optuna.Study, done: bool = False,
                             given_up: list[tuple[int, dict[str, Any], int]] | None = None
                             ) -> None:
        set_study_run_status(self.tracker, str(self.parent_run_id), study, done,
                             grid=self.grid, given_up=given_up)


class NullTracker:
    """Tracking off: every call does nothing (`describe` says so)."""

    def __repr__(self) -> str:
        return "NullTracker()"

    def describe(self) -> str:
        return "tracking off"

    def check(self) -> None:
        pass

    def create_study_run(self, name: str, config: dict[str, Any], *, study_key: str,
                         storage: str, artifacts: str | None) -> tuple[str | None, str | None]:
        return None, None

    def supersede(self, parent_run_id: str) -> None:
        pass

    def link_warm_start(self, **link: Any) -> None:
        pass

    def start_trial(self, trial: optuna.Trial, params: dict[str, Any], config: dict[str, Any],
                    tags: dict[str, Any]) -> NullTrialRun:
        return NullTrialRun(trial.number)

    def close_orphan_runs(self, trial_states: dict[int, str]) -> list[str]:
        return []

    def kill_study_runs(self) -> list[str]:
        return []

    def refresh_parent(self, study: optuna.Study, leaderboard: pd.DataFrame) -> None:
        pass

    def set_study_run_status(self, study: optuna.Study, done: bool = False,
                             given_up: list[tuple[int, dict[str, Any], int]] | None = None
                             ) -> None:
        pass


class NullTrialRun:
    """A trial's run with tracking off: TrialRun's methods, doing nothing. Its result still
    yields the trial's `f1_by_attribute` (a trial user attr, not a tracking record)."""

    run_id = None

    def __init__(self, trial_number: int) -> None:
        self.trial_number = trial_number

    def __repr__(self) -> str:
        return f"NullTrialRun(t{self.trial_number:03d})"

    def other(self, run_id: str) -> NullTrialRun:
        return self

    def log_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        pass

    def log_config(self, config: dict[str, Any]) -> None:
        pass

    def log_result(self, result: Any, config: dict[str, Any], log_checkpoint: bool = True
                   ) -> dict[str, Any]:
        return {"f1_by_attribute": f1_by_attribute(result.report)}

    def log(self, metrics: Mapping[str, float] | None = None,
            tags: Mapping[str, Any] | None = None, *, step: int = 0) -> None:
        pass

    def log_file(self, path: str | Path, folder: str | None = None) -> None:
        pass

    def tags(self) -> dict[str, str]:
        return {}

    def download(self, path: str, dst: str | Path) -> Path:
        raise TrackingError(f"{path}: tracking is off, so no run keeps files")

    def delete_files(self, folder: str) -> None:
        pass

    def delete_tags(self, *keys: str) -> None:
        pass

    def end(self, state: str, reason: str | None = None, pruned_at: int | None = None, *,
            quiet: bool = True) -> bool:
        return True
