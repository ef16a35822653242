"""The exported model as an MLflow model on the trial's run: images in, probabilities out.

`mlflow.pytorch.load_model(...)` and `mlflow.pyfunc.load_model(...)` return a model that
takes (B, S, S, 3) uint8 images, S the study's image size, as
`celebhpo.inference.Predictor.predict_uint8` does, and gives (B, 40) probabilities equal to
predict's. It is a torch.export program: loading it needs torch and MLflow, not celebhpo.

Its signature fixes S, 3 and uint8 (B is free), and its MLmodel metadata says so in words.
Input of another shape or dtype is refused before the model runs: by pyfunc's signature check
(an MlflowException ending "Shape of input (2, 64, 64, 3) does not match expected shape
(-1, 32, 32, 3).", after MLflow's print of the input) or, loaded with the PyTorch flavor, by
the program's guard (AssertionError "Guard failed: images.size()[1] == 32").
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
    metadata = {"input": f"images: (B, {size}, {size}, 3) uint8 RGB, {size} = the study's "
                         "image size, as celebhpo's decode cache holds them",
                "output": "(B, 40) float32 probabilities, one per CelebA attribute "
                          "(celebhpo.data.ATTRIBUTES order)"}
    return log_pytorch_model(tracker, run_id, wrapped, example, output, metadata=metadata)
