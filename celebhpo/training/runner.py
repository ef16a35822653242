"""`celebhpo train`: one configuration from a study file, outside any study."""

from __future__ import annotations

from pathlib import Path

from celebhpo.config import load_study_file
from celebhpo.data import load_data
from celebhpo.report import format_metrics
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
    lines = [
        f"{cfg.train.arch}  lr={cfg.train.lr:g}  dropout={cfg.train.dropout:g}  "
        f"features={cfg.train.num_features}  on {result.device}",
        "epoch  train_loss  val_loss  val_mean_acc  val_map  images/s",
    ]
    for h in result.history:
        lines.append(
            f"{h['epoch']:>5}  {h['train_loss']:>10.4f}  {h['val_loss']:>8.4f}  "
            f"{h['val_mean_acc']:>12.4f}  {h['val_map']:>7.4f}  {h['images_per_s']:>8.0f}"
        )
    lines.append(f"best epoch {result.best_epoch}:")
    lines.append(format_metrics(result.best_metrics))
    if data.skipped:
        lines.append(f"skipped {len(data.skipped)} unreadable images: "
                     + ", ".join(n for n, _ in data.skipped[:5]))
    if result.checkpoint_path:
        lines.append(f"checkpoint: {result.checkpoint_path}")
    return "\n".join(lines)
