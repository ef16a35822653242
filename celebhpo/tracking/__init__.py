"""MLflow: the client wrapper, the study's parent run, one child run per trial, the parent
run's summaries, the registry.

The only folder that imports mlflow. The rest of celebhpo uses only the names below: hpo a
study's tracker (`study_tracker`: MLflow, or `NullTracker` with tracking off) and its
trials' runs; export a `Tracker(uri)` for the store and the functions taking it first.
"""

from __future__ import annotations

from celebhpo.tracking.client import DEFAULT_TRACKING_URI, Tracker, resolve_tracking_uri, ui_command
from celebhpo.tracking.model import log_pytorch_model
from celebhpo.tracking.parent import BEST_TAG, mark_best, set_study_run_status, study_run_status
from celebhpo.tracking.port import NullTracker, NullTrialRun, StudyTracker, study_tracker
from celebhpo.tracking.registry import download_checkpoint, register_model
from celebhpo.tracking.run import RunHandle
from celebhpo.tracking.study import close_orphan_runs, create_study_run, supersede
from celebhpo.tracking.summary import refresh_parent
from celebhpo.tracking.trial import (
    RUN_ID_ATTR,
    TrialRun,
    f1_by_attribute,
    flatten_config,
    start_trial,
    trial_run_name,
)
from celebhpo.tracking.uris import artifact_location, same_store, study_tracking_uri

__all__ = [
    "BEST_TAG", "DEFAULT_TRACKING_URI", "RUN_ID_ATTR", "NullTracker", "NullTrialRun", "RunHandle", "StudyTracker",
    "Tracker", "TrialRun", "artifact_location", "close_orphan_runs",
    "create_study_run", "download_checkpoint", "f1_by_attribute", "flatten_config",
    "log_pytorch_model", "mark_best", "refresh_parent", "register_model", "resolve_tracking_uri", "same_store", "set_study_run_status",
    "start_trial", "study_run_status", "study_tracker", "study_tracking_uri", "supersede", "trial_run_name", "ui_command",
]
