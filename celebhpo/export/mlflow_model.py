"""The exported model as an MLflow model on the trial's run: images in, probabilities out.

`mlflow.pytorch.load_model(...)` and `mlflow.pyfunc.load_model(...)` return a module that
takes (B, S, S, 3) uint8 images, as `celebhpo.inference.Predictor.predict_uint8` does, and
gives (B, 40) probabilities equal to predict's. Loading it needs celebhpo installed (the
module is pickled by MLflow's PyTorch flavor).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from celebhpo.data import normalize
from celebhpo.tracking import Tracker, log_pytorch_model

__all__ = ["ImageAttributes", "log_mlflow_model"]


class ImageAttributes(torch.nn.Module):
    """(B, S, S, 3) uint8 images -> (B, 40) float32 probabilities (sigmoid per attribute)."""

    def __init__(self, model: torch.nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize(images, self.mean, self.std)
        return torch.sigmoid(self.model(x).float())


def log_mlflow_model(tracker: Tracker, run_id: str, model: torch.nn.Module, size: int,
                     mean: list[float], std: list[float]) -> Any:
    """Log `model` (wrapped in ImageAttributes, on the CPU; it takes `size` x `size` images,
    normalized by `mean`/`std`) to run `run_id` as the MLflow model `model`, in the run's
    experiment, with a signature and an input example of two seeded-noise images.
    Returns MLflow's ModelInfo (`model_uri`, `model_id`)."""
    wrapped = ImageAttributes(copy.deepcopy(model).cpu().eval(), mean, std)
    example = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    with torch.no_grad():
        output = wrapped(torch.from_numpy(example)).numpy()
    return log_pytorch_model(tracker, run_id, wrapped, example, output)
