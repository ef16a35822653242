"""The model card of an export: a JSON-able dict (model_card.json) and its markdown
(model_card.md). Every URL's password is masked: the card is meant to be shared.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import optuna
import pandas as pd

from celebhpo._io import to_jsonable
from celebhpo.errors import mask_url
from celebhpo.export.formats import ATOL, RTOL
from celebhpo.inference import EXPORT_FILES

__all__ = ["CARD_FILES", "model_card", "numbers"]

CARD_FILES = ("model_card.md", "model_card.json")


def model_card(*, payload: dict[str, Any], study_name: str, storage: str,
               trial: optuna.trial.FrozenTrial, metric: str, direction: str, run_id: str,
               tracking_uri: str, test_metrics: dict[str, Any], report: pd.DataFrame,
               n_test: int, files: list[str], checks: dict[str, float]
               ) -> tuple[str, dict[str, Any]]:
    """(markdown, JSON-able dict) describing the exported model; `report` is the per-class
    report on test (metrics.per_class_report), `checks` each format's max |diff| of logits."""
    cfg = payload.get("config") or {}
    data = cfg.get("data") or {}
    train = cfg.get("train") or {}
    attributes = [str(a) for a in payload.get("attributes", [])]
    thresholds = [float(t) for t in payload.get("thresholds", [])]
    card: dict[str, Any] = {
        "format": "celebhpo-model-card",
        "study": study_name,
        "storage": storage,
        "trial_number": trial.number,
        "objective": {"metric": metric, "direction": direction, "value": float(trial.value)},
        "mlflow": {"tracking_uri": tracking_uri, "run_id": run_id},
        "architecture": payload.get("arch") or train.get("arch"),
        "params": dict(trial.params),
        "train": train,
        "data": {k: data.get(k) for k in ("root", "layout", "image_size", "crop", "train_size",
                                          "val_size", "test_size", "subset", "subset_seed")},
        "best_epoch": payload.get("epoch"),
        "val_metrics": numbers(payload.get("metrics") or {}),
        "test_metrics": test_metrics,
        "n_test": n_test,
        "normalization": payload.get("normalization") or {},
        "thresholds": dict(zip(attributes, thresholds, strict=False)),
        "per_attribute": json.loads(report.to_json(orient="records")),
        "files": files,
        "format_checks": {k: {"max_abs_diff": v, "rtol": RTOL, "atol": ATOL}
                          for k, v in checks.items()},
    }
    markdown = _markdown(card, payload, trial, report)
    return mask_url(markdown), json.loads(mask_url(json.dumps(card, default=to_jsonable)))


def _markdown(card: dict[str, Any], payload: dict[str, Any], trial: optuna.trial.FrozenTrial,
              report: pd.DataFrame) -> str:
    """The card for people: what the model is, its data, its metrics, how to load it."""
    data = (payload.get("config") or {}).get("data") or {}
    train, norm, files = card["train"], card["normalization"], card["files"]
    metric, direction = card["objective"]["metric"], card["objective"]["direction"]
    size, n_attr = data.get("image_size", "S"), len(payload.get("attributes", []))
    lines = [
        f"# {card['architecture']} - best trial {trial.number} of study `{card['study']}`",
        "",
        f"Multi-label classifier of {n_attr} face attributes, chosen by "
        f"`{metric}` ({direction}) = {float(trial.value):.4f} on validation; evaluated once "
        f"on the test split ({card['n_test']} images) at export.",
        "",
        "## Model",
        f"- architecture: `{card['architecture']}`, pretrained: `{train.get('pretrained')}`",
        "- searched params: " + (", ".join(f"`{k}={v}`" for k, v in trial.params.items())
                                 or "none"),
        f"- head: Linear -> ReLU -> Dropout({train.get('dropout')}) -> Linear; "
        f"num_features = {train.get('num_features')}; logits out, sigmoid per attribute",
        f"- trained: {train.get('epochs')} epochs max, best epoch {payload.get('epoch')}, "
        f"optimizer {train.get('optimizer')}, lr {train.get('lr')}, batch {train.get('batch_size')}",
        f"- MLflow run `{card['mlflow']['run_id']}` in `{card['mlflow']['tracking_uri']}`; "
        f"study in `{card['storage']}`",
        "",
        "## Data and preprocessing",
        f"- CelebA folder `{data.get('root')}` ({data.get('layout')} layout); sizes "
        f"train/val/test = {data.get('train_size')}/{data.get('val_size')}/"
        f"{data.get('test_size')} (0 = whole split)",
        f"- images: RGB, crop `{data.get('crop')}`, resized to {size}x{size}, "
        "scaled to [0, 1], then normalized",
        f"- normalization: mean {norm.get('mean')}, std {norm.get('std')}",
        "",
        *_metrics_table(card["val_metrics"], card["test_metrics"]),
        "", "## Per attribute (test split)",
        "Thresholds were tuned per attribute on validation; F1 and friends at that "
        "threshold and at 0.5.", "", _markdown_table(report), "",
        *_how_to_load(size, n_attr, files),
    ]
    lines += [f"- {fmt} checked against PyTorch: max |diff| of logits {v['max_abs_diff']:.1e}"
              for fmt, v in card["format_checks"].items()]
    lines += ["", f"Files: {', '.join(files)}.", ""]
    return "\n".join(lines)


def _metrics_table(val: dict[str, float], test_metrics: dict[str, Any]) -> list[str]:
    """Validation at the best epoch beside test at the tuned thresholds and at 0.5."""
    tuned, half = test_metrics.get("tuned", {}), test_metrics.get("at_0.5", {})
    lines = ["## Metrics",
             "| metric | validation (best epoch) | test, tuned thresholds | test, 0.5 |",
             "|---|---|---|---|"]
    lines += [f"| {k} | {_fmt(val.get(f'val_{k}', val.get(k)))} | {_fmt(tuned[k])} | "
              f"{_fmt(half[k])} |" for k in tuned if k in half]
    if "loss" in test_metrics:
        lines.append(f"| loss (unweighted BCE on test) | {_fmt(val.get('val_loss'))} | "
                     f"{_fmt(test_metrics['loss'])} | |")
    return lines


def _how_to_load(size: Any, n_attr: int, files: list[str]) -> list[str]:
    lines = ["## How to load",
             "```bash",
             "celebhpo predict DIR face.jpg            # DIR = this folder",
             "celebhpo evaluate DIR data/celeba --split test",
             "```",
             "```python",
             "from celebhpo.inference import load_model, predict",
             "model = load_model('DIR')                # or backend='torchscript' / 'onnx'",
             "result = predict(model, ['face.jpg'])",
             "",
             "import torch                             # without celebhpo",
             "from celebhpo.training.checkpoint import load_checkpoint, model_from_checkpoint",
             "ckpt = load_checkpoint('DIR/model.pt')    # torch.load(weights_only=True)",
             "net = model_from_checkpoint(ckpt)        # eval mode",
             "```",
             f"Inputs: float32 (B, 3, {size}, {size}), preprocessed as above. Outputs: logits "
             f"(B, {n_attr}); `sigmoid(logits) >= thresholds` gives the attributes "
             "present (thresholds in model_card.json, in attribute order)."]
    if EXPORT_FILES["torchscript"] in files:
        lines.append("TorchScript: `torch.jit.load('DIR/model.ts')`.")
    if EXPORT_FILES["onnx"] in files:
        lines.append("ONNX: `onnxruntime.InferenceSession('DIR/model.onnx')`, input `images`, "
                     "output `logits`, any batch size.")
    return lines


def _markdown_table(report: pd.DataFrame) -> str:
    cols = list(report.columns)
    rows = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    rows += ["| " + " | ".join(_fmt(v) for v in rec) + " |"
             for rec in report.itertuples(index=False)]
    return "\n".join(rows)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float | np.floating):
        return f"{float(value):.4f}"
    return str(value)


def numbers(d: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of `d` as floats (booleans are not numbers here)."""
    return {k: float(v) for k, v in d.items()
            if isinstance(v, int | float | np.number) and not isinstance(v, bool)}
