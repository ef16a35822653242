"""MLflow: the client wrapper, the study's parent run, one child run per trial, the registry.

The rest of celebhpo uses only the names below.
"""

from __future__ import annotations

from celebhpo.tracking.client import (
    DEFAULT_TRACKING_URI,
    Tracker,
    TrialRun,
    f1_by_attribute,
    flatten_config,
    resolve_tracking_uri,
    trial_run_name,
    ui_command,
)

__all__ = [
    "DEFAULT_TRACKING_URI", "Tracker", "TrialRun", "close_orphan_runs", "create_study_run",
    "download_checkpoint", "f1_by_attribute", "flatten_config", "refresh_parent",
    "register_model", "resolve_tracking_uri", "start_trial", "trial_run_name", "ui_command",
]


# The study-level operations as functions of a Tracker (their signatures are the contract
# hpo/ and export/ code against; their bodies move out of Tracker).
def create_study_run(tracker, study_name, config, *, fresh=False):
    return tracker.create_study_run(study_name, config, fresh=fresh)


def start_trial(tracker, experiment_id, parent_run_id, trial_number, params, config, tags=None):
    return tracker.start_trial(experiment_id, parent_run_id, trial_number, params, config,
                               tags=tags)


def close_orphan_runs(tracker, parent_run_id, trial_states):
    return tracker.close_orphan_runs(parent_run_id, trial_states)


def refresh_parent(tracker, parent_run_id, study, leaderboard=None):
    return tracker.refresh_parent(parent_run_id, study, leaderboard)


def download_checkpoint(tracker, run_id, dst_dir):
    return tracker.download_checkpoint(run_id, dst_dir)


def register_model(tracker, name, run_id, folder, files):
    return tracker.register_model(name, run_id, folder, files=files)
