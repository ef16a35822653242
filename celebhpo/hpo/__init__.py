"""Optuna: the search space, storages, who owns a trial, studies, results, one trial, the
worker loop and `--devices`.

hpo knows nothing of pixels: a trial is `training.fit` with callbacks. The rest of celebhpo
uses only the names below.
"""

from __future__ import annotations

from celebhpo.hpo.launch import launch_workers
from celebhpo.hpo.results import (
    best_trial,
    leaderboard,
    metric_name,
    metric_names,
    pareto_board,
    pareto_front,
    require_best_trial,
)
from celebhpo.hpo.storage import (
    DEFAULT_STORAGE,
    StorageSpec,
    as_spec,
    open_storage,
    parse_storage,
)
from celebhpo.hpo.studies import (
    CreateResult,
    StudyRecord,
    create_study,
    list_studies,
    load_study,
    open_study,
)
from celebhpo.hpo.trial import FinishedTrial
from celebhpo.hpo.worker import OptimizeSummary, optimize

__all__ = [
    "DEFAULT_STORAGE", "CreateResult", "FinishedTrial", "OptimizeSummary", "best_trial", "create_study",
    "launch_workers", "leaderboard", "list_studies", "load_study", "metric_name", "metric_names",
    "open_storage", "optimize", "pareto_board", "pareto_front", "parse_storage", "require_best_trial",
    "StorageSpec", "StudyRecord", "as_spec", "open_study",
]
