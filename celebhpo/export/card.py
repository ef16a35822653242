"""The model card of an export: a JSON-able dict (model_card.json) and its markdown
(model_card.md). Every URL's password is masked: the card is meant to be shared.

Every number says its split (val, test) and its thresholds: "tuned" (the checkpoint's, tuned
on validation), "0.5", or "baseline" (each attribute's majority class in the train split);
loss and mAP need no threshold. Validation and test are scored by the same code at export.

Beyond mean accuracy: mean_acc_reliable (shown as mean_acc_reliable12: over the 12 attributes
whose labels a published re-annotation found trustworthy, celebhpo.data.quality) beside the
mean over all; each attribute's agreement band and agreement beside its accuracy in the
per-attribute table, with the source; and, when the study sliced
(`[study] slices`), each split's subgroups at the tuned thresholds: n and mean accuracy per
group, the worst group, and the attributes with the largest gaps between groups.
"""

from __future__ import annotations

import json
import math
from typing import Any

import optuna
from optuna.trial import TrialState

from celebhpo._io import to_jsonable
from celebhpo.data.quality import agreement, agreement_band, shown_name
from celebhpo.errors import mask_url
from celebhpo.export.card_sections import (
    attribute_table,
    choice_lines,
    fmt_value,
    label_quality_card,
    measured_lines,
    quality_lines,
    slice_tables,
)
from celebhpo.export.formats import ATOL, RTOL
from celebhpo.hpo.results import metric_names, pareto_front
from celebhpo.inference import EXPORT_FILES, SplitEvaluation
from celebhpo.inference.evaluate import slice_summary
from celebhpo.objectives import MEASURED, better
from celebhpo.training.checkpoint import Checkpoint

__all__ = ["CARD_FILES", "model_card", "split_metrics", "why_chosen"]

CARD_FILES = ("model_card.md", "model_card.json")
SPLITS = ("val", "test")
COLUMNS = ("tuned", "0.5", "baseline")  # the three ways each split is scored
THRESHOLD_FREE = ("loss", "map")
RULE = "an attribute is present when sigmoid(logit) > its threshold"


def split_metrics(evaluations: dict[str, SplitEvaluation]) -> dict[str, dict[str, Any]]:
    """split -> {"n_images", "loss" (unweighted BCE), "tuned", "0.5", "baseline"}."""
    return {s: {"n_images": ev.n_images, **ev.metrics} for s, ev in evaluations.items()}


def why_chosen(study: optuna.Study, trial: optuna.trial.FrozenTrial, *, by_user: bool
               ) -> dict[str, Any]:
    """Why `trial` is the one exported: `by` "user" (export-best --trial N) or "best"; its
    value of each of the study's metrics (`objectives`); its `rank` of `of` COMPLETE trials
    by the first metric (1 + the trials strictly better); in a study of several metrics the
    Pareto `front` (trial numbers) and whether it is `on_front` (None with one metric)."""
    names = metric_names(study)
    directions = [d.name.lower() for d in study.directions]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = [t.number for t in pareto_front(study)] if len(names) > 1 else None
    return {
        "by": "user" if by_user else "best",
        "objectives": [{"metric": m, "direction": d, "value": float(v)}
                       for m, d, v in zip(names, directions, trial.values, strict=True)],
        "rank": 1 + sum(better(t.values[0], trial.values[0], directions[0]) for t in complete),
        "of": len(complete), "rank_metric": names[0],
        "front": front, "on_front": None if front is None else trial.number in front,
    }


def model_card(*, ckpt: Checkpoint, study_name: str, storage: str,
               trial: optuna.trial.FrozenTrial, metric: str, direction: str, run_id: str,
               tracking_uri: str, evaluations: dict[str, SplitEvaluation], files: list[str],
               checks: dict[str, float], choice: dict[str, Any] | None = None
               ) -> tuple[str, dict[str, Any]]:
    """(markdown, JSON-able dict) describing the exported model; `evaluations` are its
    validation and test evaluations (inference.evaluate_splits), `checks` each format's
    max |diff| of logits, `choice` why it was chosen (`why_chosen`; None: the best by
    `metric`, the study's only one)."""
    data, train = ckpt.section("data"), ckpt.section("train")
    attributes = [str(a) for a in ckpt.attributes]
    thresholds = [float(t) for t in ckpt.thresholds]
    tuned_for = train.get("threshold_metric")
    card: dict[str, Any] = {
        "format": "celebhpo-model-card",
        "study": study_name,
        "storage": storage,
        "trial_number": trial.number,
        **_why_fields(trial, metric, direction, choice),
        "mlflow": {"tracking_uri": tracking_uri, "run_id": run_id},
        "architecture": ckpt.arch or train.get("arch"),
        "params": dict(trial.params),
        "train": train,
        "data": {k: data.get(k) for k in ("root", "layout", "image_size", "crop", "train_size",
                                          "val_size", "test_size", "subset", "subset_seed")},
        "best_epoch": ckpt.epoch,
        # measured when the trial ended (hpo.objective): size, GFLOPs, latency on its device
        "measured": {k: trial.user_attrs[k] for k in (*MEASURED, "device")
                     if trial.user_attrs.get(k) is not None},
        "constraints": {k: {"violation": float(v), "met": v <= 0}
                        for k, v in trial.constraints.items()},
        "rule": RULE,
        "definitions": {
            "tuned": "per-attribute thresholds (`thresholds`) tuned on validation"
                     + (f" for {tuned_for}" if tuned_for else ""),
            "0.5": "0.5 for every attribute",
            "baseline": "each attribute's majority class in the train split's labels, "
                        "a constant predictor",
            "loss": "BCEWithLogits, unweighted, mean over images and attributes",
        },
        "metrics": split_metrics(evaluations),
        "thresholds": dict(zip(attributes, thresholds, strict=False)),
        "per_attribute": _per_attribute(evaluations),
        "label_quality": label_quality_card(attributes),
        "slices": {s: slice_summary(ev.slices) for s, ev in evaluations.items()
                   if ev.slices is not None},
        "reports": {s: json.loads(ev.report.to_json(orient="records"))
                    for s, ev in evaluations.items()},
        "normalization": ckpt.normalization,
        "files": files,
        "format_checks": {k: {"max_abs_diff": v, "rtol": RTOL, "atol": ATOL}
                          for k, v in checks.items()},
    }
    markdown = _markdown(card, ckpt, trial)
    return mask_url(markdown), json.loads(mask_url(json.dumps(card, default=to_jsonable)))


def _per_attribute(evaluations: dict[str, SplitEvaluation]) -> list[dict[str, Any]]:
    """One record per attribute: its label agreement band and agreement (data.quality), its
    threshold, accuracy per split at tuned / 0.5 / baseline, the test positive rate and the
    train majority class."""
    val, test = (evaluations[s].report.set_index("attribute") for s in SPLITS)
    rows = []
    for attr in test.index:
        row: dict[str, Any] = {"attribute": str(attr), "labels": agreement_band(str(attr)),
                               "agreement": agreement(str(attr)),
                               "threshold": float(test.at[attr, "threshold"])}
        for split, rep in (("val", val), ("test", test)):
            row[f"{split}_acc_tuned"] = float(rep.at[attr, "accuracy_tuned"])
            row[f"{split}_acc_0.5"] = float(rep.at[attr, "accuracy"])
            row[f"{split}_acc_baseline"] = float(rep.at[attr, "accuracy_baseline"])
        row["test_positive_rate"] = float(test.at[attr, "positive_rate"])
        row["train_majority_class"] = int(test.at[attr, "majority_class"])
        rows.append(row)
    return rows


def _why_fields(trial: optuna.trial.FrozenTrial, metric: str, direction: str,
                choice: dict[str, Any] | None) -> dict[str, Any]:
    """`objective`: the metric that picked the trial's best epoch (with one metric, the
    trial); `objectives`: every metric of the study with this trial's values; `chosen`: who
    chose it, its rank, the front (why_chosen)."""
    objective = {"metric": metric, "direction": direction,
                 "value": _metric_value(trial, metric)}
    return {"objective": objective,
            "objectives": choice["objectives"] if choice else [objective],
            "chosen": {k: v for k, v in (choice or {"by": "best"}).items()
                       if k != "objectives"}}


def _metric_value(trial: optuna.trial.FrozenTrial, metric: str) -> float:
    """The trial's value of `metric`; in a study of several metrics, its user attr."""
    if len(trial.values) == 1:
        return float(trial.values[0])
    return float(trial.user_attrs.get(metric, math.nan))


def _markdown(card: dict[str, Any], ckpt: Checkpoint, trial: optuna.trial.FrozenTrial) -> str:
    """The card for people: what the model is, its data, its metrics, how to load it."""
    data = ckpt.section("data")
    train, norm, files = card["train"], card["normalization"], card["files"]
    metric, direction = card["objective"]["metric"], card["objective"]["direction"]
    size, n_attr = data.get("image_size", "S"), len(ckpt.attributes)
    n = {s: card["metrics"][s]["n_images"] for s in SPLITS}
    by_user = card["chosen"]["by"] == "user"
    why = (f"chosen by the user (`export-best --trial {trial.number}`)" if by_user else
           f"chosen by `{metric}` ({direction}) = {card['objective']['value']:.4f} on "
           "validation at its best epoch")
    lines = [
        f"# {card['architecture']} - " + (f"trial {trial.number} of study `{card['study']}`, "
                                          "chosen by the user" if by_user else
                                          f"best trial {trial.number} of study `{card['study']}`"),
        "",
        f"Multi-label classifier of {n_attr} face attributes, {why}; evaluated at export on "
        f"validation ({n['val']} images) and test ({n['test']} images) alike.",
        "",
        *choice_lines(card),
        "## Model",
        f"- architecture: `{card['architecture']}`, pretrained: `{train.get('pretrained')}`",
        "- searched params: " + (", ".join(f"`{k}={v}`" for k, v in trial.params.items())
                                 or "none"),
        f"- head: Linear -> ReLU -> Dropout({train.get('dropout')}) -> Linear; "
        f"num_features = {train.get('num_features')}; logits out, sigmoid per attribute",
        f"- trained: {train.get('epochs')} epochs max, best epoch {ckpt.epoch}, "
        f"optimizer {train.get('optimizer')}, lr {train.get('lr')}, batch {train.get('batch_size')}"
        f", class weighting {train.get('class_weighting')}",
        f"- MLflow run `{card['mlflow']['run_id']}` in `{card['mlflow']['tracking_uri']}`; "
        f"study in `{card['storage']}`",
        *measured_lines(card),
        "",
        "## Data and preprocessing",
        f"- CelebA folder `{data.get('root')}` ({data.get('layout')} layout); sizes "
        f"train/val/test = {data.get('train_size')}/{data.get('val_size')}/"
        f"{data.get('test_size')} (0 = whole split)",
        f"- images: RGB, crop `{data.get('crop')}`, resized to {size}x{size}, "
        "scaled to [0, 1], then normalized",
        f"- normalization: mean {norm.get('mean')}, std {norm.get('std')}",
        "",
        *_metrics_tables(card), "", *quality_lines(card), "", *slice_tables(card),
        *attribute_table(card), "",
        *_how_to_load(size, n_attr, files),
    ]
    lines += [f"- {fmt} checked against PyTorch: max |diff| of logits {v['max_abs_diff']:.1e}"
              for fmt, v in card["format_checks"].items()]
    lines += ["", f"Files: {', '.join(files)}.", ""]
    return "\n".join(lines)


def _metrics_tables(card: dict[str, Any]) -> list[str]:
    """Validation beside test, each at the tuned thresholds, at 0.5 and for the baseline;
    then the numbers that need no threshold."""
    m, d = card["metrics"], card["definitions"]
    lines = ["## Metrics",
             f"Thresholds: **tuned** = {d['tuned']}; **0.5** = {d['0.5']}; {RULE}. "
             f"**baseline** = {d['baseline']}.", "",
             "| metric | " + " | ".join(f"{s}, {c}" for s in SPLITS for c in COLUMNS) + " |",
             "|---" * (1 + len(SPLITS) * len(COLUMNS)) + "|"]
    keys = [k for k in m["test"]["tuned"] if k not in THRESHOLD_FREE]
    lines += ["| " + " | ".join([shown_name(k), *(fmt_value(m[s][c].get(k)) for s in SPLITS
                                                  for c in COLUMNS)]) + " |" for k in keys]
    lines += ["", "| no threshold | " + " | ".join(SPLITS) + " |", "|---|---|---|",
              "| loss (BCE, unweighted) | " + " | ".join(fmt_value(m[s]["loss"]) for s in SPLITS)
              + " |",
              "| map | " + " | ".join(fmt_value(m[s]["tuned"]["map"]) for s in SPLITS) + " |"]
    return lines


def _how_to_load(size: Any, n_attr: int, files: list[str]) -> list[str]:
    lines = ["## How to load",
             "```bash",
             "celebhpo predict DIR face.jpg            # DIR = this folder",
             "celebhpo evaluate DIR data/celeba --split test   # this card's test images; --all: all",
             "```",
             "```python",
             "from celebhpo.inference import load_model, predict",
             "model = load_model('DIR')                # or backend='torchscript' / 'onnx'",
             "result = predict(model, ['face.jpg'])   # threshold='tuned' | '0.5' | 0.3",
             "",
             "import torch                             # without celebhpo",
             "from celebhpo.training.checkpoint import Checkpoint",
             "ckpt = Checkpoint.load('DIR/model.pt')    # torch.load(weights_only=True)",
             "net = ckpt.model()                       # eval mode",
             "```",
             f"Inputs: float32 (B, 3, {size}, {size}), preprocessed as above. Outputs: logits "
             f"(B, {n_attr}); `sigmoid(logits) > thresholds` gives the attributes "
             "present (thresholds in model_card.json, in attribute order)."]
    if EXPORT_FILES["torchscript"] in files:
        lines.append("TorchScript: `torch.jit.load('DIR/model.ts')`.")
    if EXPORT_FILES["onnx"] in files:
        lines.append("ONNX: `onnxruntime.InferenceSession('DIR/model.onnx')`, input `images`, "
                     "output `logits`, any batch size.")
    return lines
