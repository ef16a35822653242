"""Evaluating a model on labelled CelebA images, scored one way (`score`): metrics at the
chosen thresholds (the checkpoint's tuned ones unless told otherwise) and at 0.5 (each with
mean_acc_reliable: training.metrics), the per-class report, and the subgroup slices
(training.slices; the checkpoint's `[study] slices` unless told otherwise) at the chosen
thresholds.

- `evaluate`: any CelebA-layout folder's split, image files through the Predictor
  (`celebhpo evaluate`): by default the subset of it the model's study used (`[data]
  test_size`, `subset`, `subset_seed`: the images the model card scored), or the whole
  split (`whole_split`, `--all`); `metrics["selection"]` says which; every attribute of the
  model, or those `attributes` picks (`--attributes reliable`: data.quality.select_attributes);
- `evaluate_splits`: the study's own validation and test subsets, decoded like training did,
  with the unweighted loss and the majority-class baseline: export-best's evaluation.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from celebhpo._io import atomic_write, check_writable, output_errors, report_to_dict
from celebhpo.config import StudyConfig
from celebhpo.data import BatchLoader, SplitData, load_data, read_celeba, select_split
from celebhpo.data.quality import select_attributes
from celebhpo.errors import CheckpointError, DataError
from celebhpo.inference.predict import HALF, predict_paths, resolve_thresholds
from celebhpo.inference.predictor import Predictor, load_model
from celebhpo.training.checkpoint import Checkpoint
from celebhpo.training.loop import evaluate as evaluate_batches
from celebhpo.training.metrics import compute_metrics, per_class_report
from celebhpo.training.slices import SliceResult, resolve_slices, slice_metrics, worst_group_acc

__all__ = ["Evaluation", "SplitEvaluation", "baseline_metrics", "evaluate", "evaluate_splits",
           "majority_classes", "score", "score_split", "slice_summary"]

EVALUATION_FILES = ("metrics.json", "classification_report.csv", "classification_report.json")
SLICES_FILE = "slices.csv"


def score(probs: np.ndarray, targets: np.ndarray, attributes: list[str],
          thresholds: np.ndarray, label: str = "tuned",
          ) -> tuple[dict[str, dict[str, float]], pd.DataFrame]:
    """({label: metrics at `thresholds`, "0.5": metrics at 0.5}, per-class report).

    The report's plain columns are at 0.5 and its `*_tuned` columns at `thresholds`; when
    those are not the tuned ones the columns say which they are (`f1_at_0.3`)."""
    chosen = compute_metrics(probs, targets, thresholds=thresholds, attributes=attributes)
    at_half = compute_metrics(probs, targets, thresholds=0.5, attributes=attributes)
    report = per_class_report(probs, targets, attributes, thresholds)
    if label != "tuned":
        report = report.rename(columns={c: c.removesuffix("_tuned") + f"_at_{label}"
                                        for c in report.columns if c.endswith("_tuned")})
    return {label: _floats(chosen), HALF: _floats(at_half)}, report


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


# -- a CelebA folder -------------------------------------------------------------------------
@dataclass
class Evaluation:
    """What `evaluate` found on one split of a CelebA folder; report.format_evaluation shows it."""

    # model, data_root, split, n_images, skipped, threshold (the label of the chosen
    # thresholds), {label: metrics}, "0.5": metrics; slices and written when there are any
    metrics: dict[str, Any]
    report: pd.DataFrame  # per class, at 0.5 and at the chosen thresholds


def evaluate(model: Predictor | str | Path, data_root: str | Path, split: str = "test",
             out_dir: str | Path | None = None, *, threshold: str | float = "tuned",
             layout: str = "auto", batch_size: int = 256, progress: bool = True,
             slices: Sequence[str] | None = None, whole_split: bool = False,
             attributes: str | None = None) -> Evaluation:
    """Metrics (at `threshold`: the checkpoint's tuned thresholds, 0.5 or a number; and at 0.5)
    and the per-class report of `model` on one split of any CelebA-layout folder. Writes
    metrics.json, classification_report.csv/.json (and slices.csv) to `out_dir` when given.
    The images: the study's subset of the split (module docstring), or all with `whole_split`.

    `metrics["threshold"]` names the chosen thresholds and is the key of their metrics
    (`metrics["tuned"]`, `metrics["0.3"]`); `metrics["0.5"]` holds those at 0.5. `slices`
    (attribute names; None: the checkpoint's `[study] slices`; [] = off) adds
    `worst_group_acc` to both and `metrics["slices"]` (groups, worst group, largest gaps).
    `attributes` (a band or names, comma-separated): score only those (`metrics["scored"]`);
    the slices group by their attributes' true labels whether scored or not."""
    if out_dir is not None:
        check_writable(out_dir, "--out", folder=True)  # before the work, not after it
    predictor = model if isinstance(model, Predictor) else load_model(model)
    thresholds, label = resolve_thresholds(predictor, threshold)  # a bad value fails first
    names = list(slices) if slices is not None else list(predictor.slices)
    resolve_slices(names, predictor.attributes,  # a bad name fails before any image is read
                   key="--slices" if slices is not None else "the checkpoint's [study] slices")
    scored = (list(predictor.attributes) if attributes is None
              else select_attributes(attributes, predictor.attributes))
    ds = read_celeba(Path(data_root), layout=layout)
    rows, selection = _select(ds, split, predictor, whole_split)
    paths = [Path(ds.image_dir) / ds.ids[i] for i in rows]
    kept, probs, bad = predict_paths(predictor, paths, batch_size, progress, desc=f"eval {split}")
    if not kept:
        raise DataError(f"{data_root}: none of the {len(paths)} {split} images could be read "
                        f"(first: {paths[bad[0][0]].name}: {bad[0][1]})")
    picked = scored + [s for s in names if s not in scored]  # slices may group by others
    cols = [predictor.attributes.index(a) for a in picked]
    probs, thresholds, k = probs[:, cols], thresholds[cols], len(scored)
    targets = np.asarray(ds.labels)[rows[kept]][:, [ds.attributes.index(a) for a in picked]
                                                ].astype(np.float32)  # (N, len(picked))
    scores, report = score(probs[:, :k], targets[:, :k], scored, thresholds[:k], label)
    metrics: dict[str, Any] = {
        "model": str(predictor.source), "data_root": str(data_root), "split": split,
        "selection": selection, "n_images": len(kept),
        "skipped": [[paths[i].name, reason] for i, reason in bad], "threshold": label,
        **({} if attributes is None else {"scored": {
            "asked": attributes, "attributes": scored, "of": len(predictor.attributes)}}),
        **scores}
    sliced = _add_slices(metrics, label, probs, targets, picked, names, thresholds)
    if out_dir is not None:
        with output_errors(out_dir, "--out", folder=True):
            metrics["written"] = _write(Path(out_dir), metrics, report, sliced)
    return Evaluation(metrics=metrics, report=report)


def _select(ds: Any, split: str, predictor: Predictor, whole_split: bool
            ) -> tuple[np.ndarray, str]:
    """(row indices, what they are in words): the split's subset that the model's study
    took (its checkpoint's [data] size, subset, subset_seed for `split`), or all of it."""
    missing = [a for a in predictor.attributes if a not in ds.attributes]
    if missing:
        raise DataError(f"{ds.root}: the label file lacks attributes the model predicts: "
                        f"{', '.join(missing[:5])}; evaluate needs all {len(predictor.attributes)}")
    everything = np.asarray(select_split(ds, split))
    if len(everything) == 0:
        raise DataError(f"{ds.root}: the {split} split has no images; check the partition file")
    data = Checkpoint.load(predictor.checkpoint_path).section("data")
    size = int(data.get(f"{split}_size") or 0)
    if whole_split or size in (0, len(everything)):
        return everything, "the whole split" + (" (--all)" if whole_split else ", as the model's "
                                                "study took it" if f"{split}_size" in data else "")
    if size > len(everything):
        raise DataError(f"{ds.root}: the model's study scored {size} {split} images, but this "
                        f"folder's {split} split has {len(everything)}; pass --all to score "
                        "them all")
    subset, seed = str(data.get("subset", "first")), int(data.get("subset_seed") or 0)
    rows = np.asarray(select_split(ds, split, size, subset, seed))
    how = "the first" if subset == "first" else f"a random (seed {seed})"
    return rows, (f"the study's {split} subset: {how} {size} of {len(everything)}, as in the "
                  f"model card; --all scores all {len(everything)}")


def _add_slices(metrics: dict[str, Any], label: str, probs: np.ndarray, targets: np.ndarray,
                attributes: list[str], names: list[str], thresholds: np.ndarray
                ) -> SliceResult | None:
    """The slice metrics at the chosen thresholds (None when `names` is empty); adds
    worst_group_acc to the chosen and the 0.5 metrics, and metrics["slices"]."""
    if not names:
        return None
    sliced = slice_metrics(probs, targets, attributes, names, thresholds)
    metrics[label]["worst_group_acc"] = sliced.worst_group_acc
    metrics[HALF]["worst_group_acc"] = worst_group_acc(
        probs, targets, resolve_slices(names, attributes), 0.5)
    metrics["slices"] = slice_summary(sliced)
    return sliced


def slice_summary(result: SliceResult, top: int = 5) -> dict[str, Any]:
    """JSON-able: the slice attributes, the worst group and its accuracy, every group (n, mean
    accuracy; None where a group is empty) and the `top` attributes with the largest gaps."""
    def plain(v: Any) -> Any:
        v = v.item() if isinstance(v, np.generic) else v
        return None if isinstance(v, float) and not math.isfinite(v) else v

    gaps = result.attributes.sort_values("gap", ascending=False).head(top)
    return {
        "slices": list(result.slices), "worst_group": result.worst_group,
        "worst_group_acc": plain(result.worst_group_acc),
        "groups": [{"group": g, "n": int(n), "mean_acc": plain(a)} for g, n, a in zip(
            result.groups["group"], result.groups["n"], result.groups["mean_acc"], strict=True)],
        "largest_gaps": [{k: plain(r[k]) for k in ("attribute", "gap", "worst_group",
                                                   "worst_group_acc")}
                         for r in gaps.to_dict(orient="records")],
    }


def _write(out: Path, metrics: dict[str, Any], report: pd.DataFrame,
           sliced: SliceResult | None) -> list[str]:
    """metrics.json, classification_report.csv/.json (and slices.csv) in `out`; their paths."""
    texts = [json.dumps(metrics, indent=2), report.to_csv(index=False),
             json.dumps(report_to_dict(report), indent=2, default=float)]
    names = list(EVALUATION_FILES)
    if sliced is not None:
        texts.append(sliced.long().to_csv(index=False))
        names.append(SLICES_FILE)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in zip(names, texts, strict=True):
        atomic_write(out / name, text if text.endswith("\n") else text + "\n")
    return [str(out / n) for n in names]


# -- the study's own splits, at export -------------------------------------------------------
def majority_classes(train_labels: np.ndarray) -> np.ndarray:
    """(A,) 0/1: each attribute's majority class in the train labels (ties: absent)."""
    return (np.asarray(train_labels, dtype=np.float64).mean(0) > 0.5).astype(np.int64)


def baseline_metrics(majority: np.ndarray, targets: np.ndarray,
                     attributes: Sequence[str] | None = None) -> dict[str, float]:
    """The metrics of always answering `majority` (a constant predictor one could ship)."""
    constant = np.broadcast_to(np.asarray(majority, dtype=np.float64), np.shape(targets))
    return _floats(compute_metrics(constant, targets, thresholds=0.5, attributes=attributes))


@dataclass
class SplitEvaluation:
    """What export-best learns from one look at one of the study's splits."""

    split: str  # "val" or "test"
    # {"loss": unweighted BCE, "tuned": {...}, "0.5": {...}, "baseline": {...}}
    metrics: dict[str, Any]
    # per-class at 0.5 and the checkpoint's thresholds, + majority_class, accuracy_baseline
    report: pd.DataFrame
    n_images: int
    batch: torch.Tensor  # (<=8, 3, S, S) normalized images: real inputs to check formats
    slices: SliceResult | None = None  # at the checkpoint's thresholds; None: [study] slices off


def evaluate_splits(model: torch.nn.Module, ckpt: Checkpoint, device: torch.device,
                    splits: tuple[str, ...] = ("val", "test"),
                    progress: bool = True) -> dict[str, SplitEvaluation]:
    """`model` (built from checkpoint `ckpt`) on the subsets its study config selects,
    decoded and normalized exactly as in training, each scored at the checkpoint's thresholds,
    at 0.5 and against the train split's majority classes."""
    cfg = StudyConfig.from_dict(copy.deepcopy(ckpt.config), source="checkpoint config")
    attributes = [str(a) for a in ckpt.attributes]
    data = load_data(cfg.data, splits=splits, progress=progress)
    if list(data.attributes) != attributes:
        missing = [a for a in attributes if a not in data.attributes]
        raise CheckpointError(
            f"{data.root}: its attributes differ from the checkpoint's "
            f"({', '.join(missing[:5]) or 'order differs'}); export from the study's data"
        )
    # labels only: the train images are never decoded for a constant predictor
    ds = read_celeba(cfg.data.root, cfg.data.layout)
    train = select_split(ds, "train", cfg.data.split_size("train"), cfg.data.subset,
                         cfg.data.subset_seed)
    majority = majority_classes(ds.labels[train])
    thresholds = np.asarray(ckpt.thresholds, dtype=np.float64)
    return {s: _evaluate_one(model, data.splits[s], cfg, ckpt.normalization, device,
                             attributes, thresholds, majority) for s in splits}


def _evaluate_one(model: torch.nn.Module, split: SplitData, cfg: StudyConfig,
                  norm: dict[str, Any], device: torch.device, attributes: list[str],
                  thresholds: np.ndarray, majority: np.ndarray) -> SplitEvaluation:
    loader = BatchLoader(split.images, split.labels, cfg.train.eval_batch_size, shuffle=False,
                         flip=False, mean=tuple(norm["mean"]), std=tuple(norm["std"]),
                         device=device)
    # plain BCE, mean over images and attributes: the same on every split, whatever class
    # weighting training used (its weights came from the train split)
    result = evaluate_batches(model, loader, torch.nn.BCEWithLogitsLoss())
    x, _ = next(iter(loader))  # (B, 3, S, S)
    return score_split(split.name, np.asarray(result.probs), np.asarray(result.targets),
                       attributes, thresholds, majority, loss=float(result.loss),
                       batch=x[:8].detach().float().cpu(), slices=cfg.study.slices)


def score_split(split: str, probs: np.ndarray, targets: np.ndarray, attributes: list[str],
                thresholds: np.ndarray, majority: np.ndarray, loss: float,
                batch: torch.Tensor, slices: Sequence[str] = ()) -> SplitEvaluation:
    """One split's (N, 40) probabilities scored at `thresholds` ("tuned"), at 0.5 and against
    the constant `majority` ("baseline"); the report gains majority_class and
    accuracy_baseline columns. With `slices` (attribute names), also the slice metrics at
    `thresholds`, and worst_group_acc in each scoring's metrics."""
    scores, report = score(probs, targets, attributes, thresholds)
    report["majority_class"] = majority
    report["accuracy_baseline"] = ((np.asarray(targets) > 0.5) == majority[None, :]).mean(0)
    metrics = {"loss": loss, **scores,
               "baseline": baseline_metrics(majority, targets, attributes)}
    sliced = None
    if slices:
        idx = resolve_slices(slices, attributes)
        sliced = slice_metrics(probs, targets, attributes, slices, thresholds)
        constant = np.broadcast_to(np.asarray(majority, dtype=np.float64), np.shape(targets))
        metrics["tuned"]["worst_group_acc"] = sliced.worst_group_acc
        metrics[HALF]["worst_group_acc"] = worst_group_acc(probs, targets, idx, 0.5)
        metrics["baseline"]["worst_group_acc"] = worst_group_acc(constant, targets, idx, 0.5)
    return SplitEvaluation(split=split, metrics=metrics, report=report,
                           n_images=len(probs), batch=batch, slices=sliced)

