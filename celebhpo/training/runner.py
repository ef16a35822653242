"""`celebhpo train`: one configuration from a study file, outside any study."""

from __future__ import annotations

from pathlib import Path

from celebhpo.config import load_study_file
from celebhpo.data import load_data
from celebhpo.report import format_training
from celebhpo.training.loop import fit
from celebhpo.training.progress import EpochProgress


def train_one_config(
    study_file: str | Path,
    overrides: list[str],
    *,
    data_root: str | None = None,
    device: str | None = None,
    checkpoint: Path | None = None,
    progress: bool = True,
) -> str:
    """Train the study file's configuration (searched keys at their first value); return a
    summary for people. The best epoch's checkpoint goes to `checkpoint`."""
    cfg = load_study_file(study_file, overrides, data_root).fixed()
    if device:
        cfg.train.device = device
    data = load_data(cfg.data, splits=("train", "val"), progress=progress)
    bar = EpochProgress(cfg.train.epochs, label=cfg.train.arch, enabled=progress)
    try:
        result = fit(cfg, data, callbacks=[bar], checkpoint_path=checkpoint)
    finally:
        bar.close()
    return format_training(cfg, result, data.skipped)
