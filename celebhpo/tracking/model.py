"""A PyTorch module as an MLflow model on a run, in that run's own experiment and store.

`mlflow.pytorch.log_model(run_id=...)` alone makes its LoggedModel in the process's *active*
experiment: with none set, MLflow's Default experiment (id 0), whose artifacts land in the
current folder's `mlruns/0/models/`. So the LoggedModel is made here first, in the run's
experiment, and `log_model` fills it (`model_id`): the run page lists it, its files go under
the experiment's artifact location, and a registered version points there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from celebhpo.tracking.client import Tracker
from celebhpo.tracking.registry import global_uris

__all__ = ["log_pytorch_model"]


def log_pytorch_model(tracker: Tracker, run_id: str, module: Any, example: np.ndarray,
                      output: np.ndarray, *, name: str = "model",
                      metadata: dict[str, str] | None = None) -> Any:
    """Log the torch `module` to run `run_id` as the MLflow model `name`, with the signature
    of `example` -> `output`, `example` as its input example and `metadata` in its MLmodel
    file. It is saved as a torch.export program ("pt2": MLflow refuses to load a pickled one
    unless told to), in which the input shapes the signature fixes are fixed too. Returns MLflow's ModelInfo (`model_uri`, `model_id`)."""
    # late: MLflow's PyTorch flavor imports torch (~1.5 s), which only an export needs
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    client = tracker.client
    run = tracker.call("get run", client.get_run, run_id)
    logged = tracker.call("create logged model", client.create_logged_model,
                          run.info.experiment_id, name=name, source_run_id=run_id,
                          params=dict(run.data.params))
    signature = infer_signature(example, output)
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"]
    with global_uris(tracker.uri):  # MLflow's model logging reads the global URIs
        return tracker.call("log model", mlflow.pytorch.log_model, module, name=name,
                            model_id=logged.model_id, run_id=run_id, signature=signature,
                            input_example=example, pip_requirements=requirements,
                            serialization_format="pt2", metadata=metadata)
