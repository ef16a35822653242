"""Evaluating a model on labelled CelebA images, scored one way (`score`): metrics at the
checkpoint's tuned thresholds and at 0.5, and the per-class report.

- `evaluate`: any CelebA-layout folder's split, image files through the Predictor
  (`celebhpo evaluate`);
- `evaluate_test_split`: the study's own test subset, decoded like training did, with the
  unweighted test loss: export-best's one look at the test split.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from celebhpo._io import atomic_write
from celebhpo.config import StudyConfig
from celebhpo.data import BatchLoader, load_data, read_celeba, select_split
from celebhpo.errors import CheckpointError, DataError, StudyError, mask_url
from celebhpo.inference.predict import predict_paths
from celebhpo.inference.predictor import Predictor, load_model
from celebhpo.report import report_to_dict
from celebhpo.training.loop import evaluate as evaluate_batches
from celebhpo.training.metrics import compute_metrics, per_class_report

__all__ = ["SplitEvaluation", "evaluate", "evaluate_test_split", "score"]

EVALUATION_FILES = ("metrics.json", "classification_report.csv", "classification_report.json")


def score(probs: np.ndarray, targets: np.ndarray, attributes: list[str],
          thresholds: np.ndarray) -> tuple[dict[str, dict[str, float]], pd.DataFrame]:
    """({"tuned": metrics, "at_0.5": metrics}, per-class report at `thresholds`)."""
    tuned = compute_metrics(probs, targets, thresholds=thresholds)
    at_half = compute_metrics(probs, targets, thresholds=0.5)
    report = per_class_report(probs, targets, attributes, thresholds)
    return ({"tuned": {k: float(v) for k, v in tuned.items()},
             "at_0.5": {k: float(v) for k, v in at_half.items()}}, report)


# -- a CelebA folder -------------------------------------------------------------------------
def evaluate(model: Predictor | str | Path, data_root: str | Path, split: str = "test",
             out_dir: str | Path | None = None, *, layout: str = "auto", batch_size: int = 256,
             progress: bool = True) -> tuple[dict[str, Any], pd.DataFrame]:
    """Metrics (at the checkpoint's tuned thresholds and at 0.5) and the per-class report of
    `model` on one split of any CelebA-layout folder. Writes metrics.json and
    classification_report.csv/.json to `out_dir` when given."""
    predictor = model if isinstance(model, Predictor) else load_model(model)
    data_root = Path(data_root)
    ds = read_celeba(data_root, layout=layout)
    missing = [a for a in predictor.attributes if a not in ds.attributes]
    if missing:
        raise DataError(
            f"{data_root}: the label file lacks attributes the model predicts: "
            f"{', '.join(missing[:5])}; evaluate needs all {len(predictor.attributes)}"
        )
    rows = np.asarray(select_split(ds, split))
    if len(rows) == 0:
        raise DataError(f"{data_root}: the {split} split has no images; check the partition file")
    paths = [Path(ds.image_dir) / ds.ids[i] for i in rows]
    kept, probs, bad = predict_paths(predictor, paths, batch_size, progress, desc=f"eval {split}")
    if not kept:
        raise DataError(f"{data_root}: none of the {len(paths)} {split} images could be read "
                        f"(first: {paths[bad[0][0]].name}: {bad[0][1]})")
    columns = [ds.attributes.index(a) for a in predictor.attributes]
    targets = np.asarray(ds.labels)[rows[kept]][:, columns].astype(np.float32)  # (N, 40)

    scores, report = score(probs, targets, predictor.attributes, predictor.thresholds)
    metrics: dict[str, Any] = {
        "model": str(predictor.source),
        "data_root": str(data_root),
        "split": split,
        "n_images": len(kept),
        "skipped": [[paths[i].name, reason] for i, reason in bad],
        **scores,
    }
    if out_dir is not None:
        metrics["written"] = _write(Path(out_dir), metrics, report)
    return metrics, report


def _write(out: Path, metrics: dict[str, Any], report: pd.DataFrame) -> list[str]:
    """metrics.json and classification_report.csv/.json in `out`; their paths."""
    texts = (json.dumps(metrics, indent=2), report.to_csv(index=False),
             json.dumps(report_to_dict(report), indent=2, default=float))
    out.mkdir(parents=True, exist_ok=True)
    for name, text in zip(EVALUATION_FILES, texts, strict=True):
        atomic_write(out / name, text if text.endswith("\n") else text + "\n")
    return [str(out / n) for n in EVALUATION_FILES]


# -- the study's test split, at export -------------------------------------------------------
@dataclass
class SplitEvaluation:
    """What export-best learns from its one look at the test split."""

    metrics: dict[str, Any]  # {"loss": unweighted BCE, "tuned": {...}, "at_0.5": {...}}
    report: pd.DataFrame  # per-class, at the checkpoint's thresholds
    n_test: int
    batch: torch.Tensor  # (<=8, 3, S, S) normalized test images: real inputs to check formats


def evaluate_test_split(model: torch.nn.Module, payload: dict[str, Any], device: torch.device,
                        progress: bool = True) -> SplitEvaluation:
    """`model` (built from checkpoint `payload`) on the test subset its study config selects,
    decoded and normalized exactly as in training."""
    cfg = StudyConfig.from_dict(copy.deepcopy(payload["config"]), source="checkpoint config")
    attributes = [str(a) for a in payload["attributes"]]
    data = load_data(cfg.data, splits=("test",), progress=progress)
    test = data.splits["test"]
    if len(test.labels) == 0:
        raise StudyError(f"{mask_url(str(data.root))}: the test split has no images; "
                         "export-best evaluates the model on it")
    if list(data.attributes) != attributes:
        missing = [a for a in attributes if a not in data.attributes]
        raise CheckpointError(
            f"{data.root}: its attributes differ from the checkpoint's "
            f"({', '.join(missing[:5]) or 'order differs'}); export from the study's data"
        )
    norm = payload["normalization"]
    loader = BatchLoader(test.images, test.labels, cfg.train.eval_batch_size, shuffle=False,
                         flip=False, mean=tuple(norm["mean"]), std=tuple(norm["std"]),
                         device=device)
    # unweighted BCE: the training loss's class weights came from the train split
    result = evaluate_batches(model, loader, torch.nn.BCEWithLogitsLoss())
    thresholds = np.asarray(payload["thresholds"], dtype=np.float64)
    scores, report = score(np.asarray(result.probs), np.asarray(result.targets), attributes,
                           thresholds)
    x, _ = next(iter(loader))  # (B, 3, S, S)
    return SplitEvaluation(metrics={"loss": float(result.loss), **scores}, report=report,
                          n_test=len(test.labels), batch=x[:8].detach().float().cpu())
