"""MLflow: the client wrapper, the study's parent run, one child run per trial, the parent
run's summaries, the registry.

The rest of celebhpo uses only the names below: a `Tracker(uri)` for the store, and the
study-level operations as functions taking that tracker first.
"""

from __future__ import annotations

from celebhpo.tracking.client import DEFAULT_TRACKING_URI, Tracker, resolve_tracking_uri, ui_command
from celebhpo.tracking.parent import BEST_TAG, mark_best, set_study_run_status, study_run_status
from celebhpo.tracking.registry import download_checkpoint, register_model
from celebhpo.tracking.study import close_orphan_runs, create_study_run, supersede
from celebhpo.tracking.summary import refresh_parent
from celebhpo.tracking.trial import (
    TrialRun,
    f1_by_attribute,
    flatten_config,
    start_trial,
    trial_run_name,
)
from celebhpo.tracking.uris import artifact_location, same_store, study_tracking_uri

__all__ = [
    "BEST_TAG", "DEFAULT_TRACKING_URI", "Tracker", "TrialRun", "artifact_location", "close_orphan_runs",
    "create_study_run", "download_checkpoint", "f1_by_attribute", "flatten_config",
    "mark_best", "refresh_parent", "register_model", "resolve_tracking_uri", "same_store", "set_study_run_status",
    "start_trial", "study_run_status", "study_tracking_uri", "supersede", "trial_run_name", "ui_command",
]
