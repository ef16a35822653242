"""`celebhpo train`: one configuration from a study file, outside any study."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from celebhpo.config import StudyConfig, load_study_file
from celebhpo.data import load_data
from celebhpo.training.loop import FitResult, fit
from celebhpo.training.progress import EpochProgress

__all__ = ["TrainResult", "train_one_config"]


@dataclass
class TrainResult:
    """What `celebhpo train` did: the configuration it trained, fit's result, and the images
    it could not read (name, reason); report.format_training shows it."""

    config: StudyConfig
    fit: FitResult
    skipped: list[tuple[str, str]] = field(default_factory=list)


def train_one_config(
    study_file: str | Path,
    overrides: list[str],
    *,
    data_root: str | None = None,
    device: str | None = None,
    checkpoint: Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train the study file's configuration (searched keys at their first value). The best
    epoch's checkpoint goes to `checkpoint`."""
    cfg = load_study_file(study_file, overrides, data_root).fixed()
    if device:
        cfg.train.device = device
    data = load_data(cfg.data, splits=("train", "val"), progress=progress)
    bar = EpochProgress(cfg.train.epochs, label=cfg.train.arch, enabled=progress)
    try:
        result = fit(cfg, data, callbacks=[bar], checkpoint_path=checkpoint)
    finally:
        bar.close()
    return TrainResult(config=cfg, fit=result, skipped=list(data.skipped))
