"""`celebhpo export-best`: the best trial -> checkpoint, model card, TorchScript/ONNX, registry.

The test split is used here and nowhere else in a study: the best COMPLETE trial (by the
study's own metric and direction) is chosen on validation, then evaluated once on test.
Everything is built in a temporary folder beside `out` and each exported format is checked
against the PyTorch model before anything is moved into `out`, so a failure leaves `out`
as it was.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from celebhpo.errors import CelebhpoError, CheckpointError, ConfigError, StudyError, mask_url

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    import torch

__all__ = ["ExportResult", "export_best", "export_onnx", "export_torchscript", "model_card"]

FORMATS = {"pt": "pt", "torch": "pt", "torchscript": "torchscript", "ts": "torchscript",
           "onnx": "onnx"}
FILES = {"pt": "model.pt", "torchscript": "model.ts", "onnx": "model.onnx"}
CARD_FILES = ("model_card.md", "model_card.json")
# float32 through a different runtime: well under what could flip a thresholded attribute
RTOL, ATOL = 1e-3, 1e-4


@dataclass
class ExportResult:
    out: Path
    study_name: str
    trial_number: int
    run_id: str
    metric: str
    value: float
    files: list[Path]
    val_metrics: dict[str, float]
    test_metrics: dict[str, dict[str, float]]  # {"tuned": {...}, "at_0.5": {...}}
    n_test: int
    registered: str | None = None  # "NAME version N (alias best)"
    checks: dict[str, float] = field(default_factory=dict)  # format -> max |diff| of logits

    def summary(self) -> str:
        tuned = self.test_metrics.get("tuned", {})
        lines = [
            f"best trial {self.trial_number} of study '{self.study_name}' "
            f"({self.metric} = {self.value:.4f}, MLflow run {self.run_id})",
            f"test split ({self.n_test} images, tuned thresholds): "
            + ", ".join(f"{k} {tuned[k]:.4f}" for k in ("mean_acc", "balanced_acc", "map",
                                                        "macro_f1") if k in tuned),
        ]
        for fmt, diff in self.checks.items():
            lines.append(f"{fmt}: same logits as PyTorch (max |diff| {diff:.1e})")
        lines += [f"wrote {p}" for p in self.files]
        if self.registered:
            lines.append(f"registered {self.registered}")
        return "\n".join(lines)


# -- the command -----------------------------------------------------------------------------
def export_best(
    *,
    study_name: str | None,
    storage: str,
    out: str | Path,
    formats: tuple[str, ...] | list[str] = ("pt",),
    register: str | None = None,
    tracking_uri: str | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> ExportResult:
    """Export the study's best COMPLETE trial into `out`: model.pt (the checkpoint with test
    metrics added), model_card.md/.json, and model.ts / model.onnx when asked. The checkpoint
    comes from the trial's MLflow run (user attr `mlflow_run_id`); `register` also registers
    the export in the MLflow Model Registry under that name with alias `best`."""

    from celebhpo.tracking.client import Tracker

    wanted = _parse_formats(formats)
    if "onnx" in wanted:
        _require_onnx()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CelebhpoError(f"--out {out} is a file; give a folder for the exported model")
    study, name = _open_study(study_name, storage)
    best = best_trial(study, name, storage)
    run_id = best.user_attrs.get("mlflow_run_id")
    if not run_id:
        raise StudyError(
            f"trial {best.number} of study '{name}' has no MLflow run (user attr "
            "mlflow_run_id); it was not tracked, so there is no checkpoint to export"
        )
    tracker = Tracker(tracking_uri or study.user_attrs.get("tracking_uri"))
    tracker.check()
    torch_device = _device(device)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        from celebhpo.training.checkpoint import (
            load_checkpoint,
            model_from_checkpoint,
            save_checkpoint,
        )

        ckpt_path = tracker.download_checkpoint(run_id, tmp / "download")
        payload = load_checkpoint(ckpt_path)
        model = model_from_checkpoint(payload).to(torch_device).eval()
        evaluation = _evaluate_on_test(model, payload, torch_device, progress)

        # the checkpoint, now carrying where it came from and its one test evaluation
        exported = dict(payload)
        exported["test_metrics"] = evaluation["metrics"]
        exported["export"] = {
            "study": name, "trial_number": best.number, "mlflow_run_id": run_id,
            "metric": _metric_name(study), "value": float(best.value),
            "params": dict(best.params), "n_test": evaluation["n_test"],
            "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        build = tmp / "build"
        build.mkdir()
        save_checkpoint(build / "model.pt", exported)
        written = ["model.pt"]

        checks: dict[str, float] = {}
        example, check = _examples(evaluation["batch"], payload)
        if "torchscript" in wanted:
            checks["torchscript"] = export_torchscript(model, example, check, build / "model.ts")
            written.append("model.ts")
        if "onnx" in wanted:
            checks["onnx"] = export_onnx(model, example, check, build / "model.onnx")
            written.append("model.onnx")

        card_md, card = model_card(
            payload=payload, study_name=name, storage=storage, trial=best,
            metric=_metric_name(study), direction=_direction(study), run_id=run_id,
            tracking_uri=tracker.uri, test_metrics=evaluation["metrics"],
            report=evaluation["report"], n_test=evaluation["n_test"], files=written,
            checks=checks,
        )
        (build / "model_card.md").write_text(card_md, encoding="utf-8")
        (build / "model_card.json").write_text(json.dumps(card, indent=2, default=_jsonable),
                                              encoding="utf-8")
        written += list(CARD_FILES)
        files = _publish(build, out, written)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    result = ExportResult(
        out=out, study_name=name, trial_number=best.number, run_id=run_id,
        metric=_metric_name(study), value=float(best.value), files=files,
        val_metrics=_floats(payload.get("metrics") or {}), test_metrics=evaluation["metrics"],
        n_test=evaluation["n_test"], checks=checks,
    )
    if register:
        version = tracker.register_model(register, run_id, out, files=[f.name for f in files])
        result.registered = f"{register} version {version} (alias best)"
    return result


# -- choosing the trial ----------------------------------------------------------------------
def _open_study(study_name: str | None, storage: str) -> tuple[optuna.Study, str]:
    try:
        from celebhpo.hpo.studies import load_study
    except ImportError:  # study.py not there: open it with Optuna directly
        load_study = None
    if load_study is not None:
        study, _ = load_study(study_name, storage)
        return study, study.study_name
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise StudyError(f'study "{study_name}" not found in {mask_url(storage)}; '
                         "see `celebhpo study list`") from None
    except ValueError as e:
        raise StudyError(f"{mask_url(storage)}: {mask_url(str(e))}; pass --study NAME") from None
    return study, study.study_name


def best_trial(study: optuna.Study, name: str, storage: str) -> optuna.trial.FrozenTrial:
    """The best COMPLETE trial by the study's direction (Optuna's own ranking)."""
    import optuna

    if len(study.directions) != 1:
        raise StudyError(f"study '{name}' has {len(study.directions)} objectives; export-best "
                         "needs a single-objective study")
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        counts: dict[str, int] = {}
        for t in study.get_trials(deepcopy=False):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        seen = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials"
        raise StudyError(
            f"study '{name}' in {mask_url(storage)} has no completed trial ({seen}); "
            f"run `celebhpo optimize --study {name}` first"
        )
    return study.best_trial


def _metric_name(study: optuna.Study) -> str:
    cfg = study.user_attrs.get("config") or {}
    return str((cfg.get("study") or {}).get("metric") or "value")


def _direction(study: optuna.Study) -> str:
    return study.direction.name.lower()


# -- the one test evaluation ---------------------------------------------------------------
def _evaluate_on_test(model: torch.nn.Module, payload: dict[str, Any], device: torch.device,
                      progress: bool) -> dict[str, Any]:
    import torch

    from celebhpo.config import StudyConfig
    from celebhpo.data import BatchLoader, load_data
    from celebhpo.training.loop import evaluate
    from celebhpo.training.metrics import compute_metrics, per_class_report

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
    result = evaluate(model, loader, torch.nn.BCEWithLogitsLoss())
    probs, targets = np.asarray(result.probs), np.asarray(result.targets)
    thresholds = np.asarray(payload["thresholds"], dtype=np.float64)
    metrics = {
        "loss": float(result.loss),
        "tuned": _floats(compute_metrics(probs, targets, thresholds=thresholds)),
        "at_0.5": _floats(compute_metrics(probs, targets, thresholds=0.5)),
    }
    report = per_class_report(probs, targets, attributes, thresholds)
    x, _ = next(iter(loader))  # (B, 3, S, S) normalized: real inputs for the format checks
    return {"metrics": metrics, "report": report, "n_test": len(test.labels),
            "batch": x[:8].detach().float().cpu()}


# -- formats -----------------------------------------------------------------------------
def _examples(batch: torch.Tensor | None, payload: dict[str, Any]
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(trace example, check inputs): a fixed random batch of 2 to trace/export with, and a
    batch of another size (real test images and noise) to compare the outputs on."""
    import torch

    size = int(payload["config"]["data"]["image_size"])
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, size, size, generator=gen)  # (2, 3, S, S)
    noise = torch.randn(3, 3, size, size, generator=gen)
    check = noise if batch is None else torch.cat([batch, noise])
    return example, check


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _same(fmt: str, expected: torch.Tensor, got: torch.Tensor) -> float:
    import torch

    if got.shape != expected.shape or not torch.allclose(got.float(), expected.float(),
                                                        rtol=RTOL, atol=ATOL):
        diff = _max_diff(expected, got) if got.shape == expected.shape else math.inf
        raise CheckpointError(
            f"the {fmt} export gives different outputs than the PyTorch model (shape "
            f"{tuple(got.shape)} vs {tuple(expected.shape)}, max |diff| {diff:.2e} > "
            f"{ATOL} + {RTOL}*|x|); not written. Export without --format {fmt}"
        )
    return _max_diff(expected, got)


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, check: torch.Tensor,
                       path: str | Path) -> float:
    """Trace `model` (eval, CPU) on `example`, save it to `path` only if the saved module gives
    the same logits as `model` on `check`. Returns the max |diff|."""
    import torch

    model = _cpu_copy(model)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        # torch marks jit deprecated; TorchScript is still what C++/mobile runtimes load
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
        traced.save(str(tmp))
        loaded = torch.jit.load(str(tmp), map_location="cpu").eval()
        try:
            diff = _same("torchscript", model(check), loaded(check))
        except CheckpointError:
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, path)
    return diff


def export_onnx(model: torch.nn.Module, example: torch.Tensor, check: torch.Tensor,
                path: str | Path) -> float:
    """Export `model` to ONNX (input `images` (B,3,S,S), output `logits` (B,40), dynamic batch)
    and keep it only if onnxruntime gives the same logits as `model` on `check`."""
    import torch

    onnx, ort = _require_onnx()
    model = _cpu_copy(model)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # the TorchScript-based exporter: the newer one needs onnxscript, not a dependency
            torch.onnx.export(model, (example,), str(tmp), input_names=["images"],
                              output_names=["logits"], opset_version=17, dynamo=False,
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        onnx.checker.check_model(str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        (got,) = session.run(["logits"], {"images": check.numpy()})  # (B, 40)
        with torch.no_grad():
            diff = _same("onnx", model(check), torch.from_numpy(np.asarray(got)))
    except CheckpointError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as e:  # torch.onnx/onnx raise many kinds; the user needs one line
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"ONNX export failed ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); export without "
                              "--format onnx") from e
    os.replace(tmp, path)
    return diff


def _require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise CelebhpoError(f"--format onnx needs onnx and onnxruntime ({e.name} is missing): "
                            "pip install 'celebhpo[onnx]'") from None
    return onnx, onnxruntime


def _cpu_copy(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).to("cpu").float().eval()


def _parse_formats(formats: tuple[str, ...] | list[str]) -> list[str]:
    out = ["pt"]  # model.pt always: the card, predict and the other formats rely on it
    for f in formats:
        key = FORMATS.get(str(f).strip().lower())
        if key is None:
            raise ConfigError(f"--format {f!r} is not one of pt, torchscript, onnx")
        if key not in out:
            out.append(key)
    return out


def _device(name: str) -> torch.device:
    import torch

    if name in ("", "auto"):
        from celebhpo.training.loop import resolve_device

        return resolve_device("auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise CelebhpoError(f"unknown device {name!r}: use cpu, cuda, cuda:N, mps or auto") from None


def _publish(build: Path, out: Path, names: list[str]) -> list[Path]:
    """Move the checked files into `out`. A new folder is one rename; an existing one gets
    each file replaced atomically, and a stale model.ts/model.onnx from an earlier export
    (of maybe another model) removed, so the folder never mixes two models."""
    if not out.exists():
        os.replace(build, out)
        return [out / n for n in names]
    for stale in set(FILES.values()) - set(names):
        (out / stale).unlink(missing_ok=True)
    for n in names:
        os.replace(build / n, out / n)
    return [out / n for n in names]


# -- the model card ------------------------------------------------------------------------
def model_card(*, payload: dict[str, Any], study_name: str, storage: str,
               trial: optuna.trial.FrozenTrial, metric: str, direction: str, run_id: str,
               tracking_uri: str, test_metrics: dict[str, Any], report: pd.DataFrame,
               n_test: int, files: list[str], checks: dict[str, float]
               ) -> tuple[str, dict[str, Any]]:
    """(markdown, JSON-able dict) describing the exported model. Every URL's password is
    masked: the card is meant to be shared."""
    cfg = payload.get("config") or {}
    data = cfg.get("data") or {}
    train = cfg.get("train") or {}
    norm = payload.get("normalization") or {}
    attributes = [str(a) for a in payload.get("attributes", [])]
    thresholds = [float(t) for t in payload.get("thresholds", [])]
    val = _floats(payload.get("metrics") or {})
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
        "val_metrics": val,
        "test_metrics": test_metrics,
        "n_test": n_test,
        "normalization": norm,
        "thresholds": dict(zip(attributes, thresholds, strict=False)),
        "per_attribute": _records(report),
        "files": files,
        "format_checks": {k: {"max_abs_diff": v, "rtol": RTOL, "atol": ATOL}
                          for k, v in checks.items()},
    }
    card = json.loads(mask_url(json.dumps(card, default=_jsonable)))

    size = data.get("image_size", "S")
    tuned, half = test_metrics.get("tuned", {}), test_metrics.get("at_0.5", {})
    keys = [k for k in tuned if k in half]
    lines = [
        f"# {card['architecture']} - best trial {trial.number} of study `{study_name}`",
        "",
        f"Multi-label classifier of {len(attributes)} face attributes, chosen by "
        f"`{metric}` ({direction}) = {float(trial.value):.4f} on validation; evaluated once "
        f"on the test split ({n_test} images) at export.",
        "",
        "## Model",
        f"- architecture: `{card['architecture']}`, pretrained: `{train.get('pretrained')}`",
        "- searched params: " + (", ".join(f"`{k}={v}`" for k, v in trial.params.items())
                                 or "none"),
        f"- head: Linear -> ReLU -> Dropout({train.get('dropout')}) -> Linear; "
        f"num_features = {train.get('num_features')}; logits out, sigmoid per attribute",
        f"- trained: {train.get('epochs')} epochs max, best epoch {payload.get('epoch')}, "
        f"optimizer {train.get('optimizer')}, lr {train.get('lr')}, batch {train.get('batch_size')}",
        f"- MLflow run `{run_id}` in `{tracking_uri}`; study in `{storage}`",
        "",
        "## Data and preprocessing",
        f"- CelebA folder `{data.get('root')}` ({data.get('layout')} layout); sizes "
        f"train/val/test = {data.get('train_size')}/{data.get('val_size')}/"
        f"{data.get('test_size')} (0 = whole split)",
        f"- images: RGB, crop `{data.get('crop')}`, resized to {size}x{size}, "
        "scaled to [0, 1], then normalized",
        f"- normalization: mean {norm.get('mean')}, std {norm.get('std')}",
        "",
        "## Metrics",
        "| metric | validation (best epoch) | test, tuned thresholds | test, 0.5 |",
        "|---|---|---|---|",
    ]
    for k in keys:
        lines.append(f"| {k} | {_fmt(val.get(f'val_{k}', val.get(k)))} | {_fmt(tuned[k])} | "
                     f"{_fmt(half[k])} |")
    if "loss" in test_metrics:
        lines.append(f"| loss (unweighted BCE on test) | {_fmt(val.get('val_loss'))} | "
                     f"{_fmt(test_metrics['loss'])} | |")
    lines += ["", "## Per attribute (test split)",
              "Thresholds were tuned per attribute on validation; F1 and friends at that "
              "threshold and at 0.5.", "", _markdown_table(report), "",
              "## How to load",
              "```bash",
              "celebhpo predict DIR face.jpg            # DIR = this folder",
              "celebhpo evaluate DIR data/celeba --split test",
              "```",
              "```python",
              "from celebhpo.inference.predictor import load_model, predict",
              "model = load_model('DIR')                # or backend='torchscript' / 'onnx'",
              "result = predict(model, ['face.jpg'])",
              "",
              "import torch                             # without celebhpo",
              "from celebhpo.training.checkpoint import load_checkpoint, model_from_checkpoint",
              "ckpt = load_checkpoint('DIR/model.pt')    # torch.load(weights_only=True)",
              "net = model_from_checkpoint(ckpt)        # eval mode",
              "```",
              f"Inputs: float32 (B, 3, {size}, {size}), preprocessed as above. Outputs: logits "
              f"(B, {len(attributes)}); `sigmoid(logits) >= thresholds` gives the attributes "
              "present (thresholds in model_card.json, in attribute order).",
              ]
    if "model.ts" in files:
        lines.append("TorchScript: `torch.jit.load('DIR/model.ts')`.")
    if "model.onnx" in files:
        lines.append("ONNX: `onnxruntime.InferenceSession('DIR/model.onnx')`, input `images`, "
                     "output `logits`, any batch size.")
    for fmt, diff in checks.items():
        lines.append(f"- {fmt} checked against PyTorch: max |diff| of logits {diff:.1e}")
    lines += ["", f"Files: {', '.join(files)}.", ""]
    return mask_url("\n".join(lines)), card


def _records(report: pd.DataFrame) -> list[dict[str, Any]]:
    frame = report if "attribute" in report.columns else report.rename_axis("attribute")
    frame = frame.reset_index() if "attribute" not in report.columns else frame
    return json.loads(frame.to_json(orient="records"))


def _markdown_table(report: pd.DataFrame) -> str:
    frame = report if "attribute" in report.columns else report.rename_axis(
        "attribute").reset_index()
    cols = list(frame.columns)
    rows = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for rec in frame.itertuples(index=False):
        rows.append("| " + " | ".join(_fmt(v) for v in rec) + " |")
    return "\n".join(rows)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float | np.floating):
        return f"{float(value):.4f}"
    return str(value)


def _floats(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items()
            if isinstance(v, int | float | np.number) and not isinstance(v, bool)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
