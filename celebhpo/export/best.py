"""`celebhpo export-best`: the best trial -> checkpoint, model card, TorchScript/ONNX, registry.

The test split is used here and nowhere else in a study: the best COMPLETE trial (by the
study's own metric and direction) is chosen on validation, then evaluated once on validation
and test alike (same code, same thresholds, same unweighted loss) for the model card.
Everything is built in a temporary folder beside `out` and each exported format is checked
against the PyTorch model before anything is moved into `out`, so a failure leaves `out`
as it was.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import torch

from celebhpo._io import _concerns, check_writable, output_errors, to_jsonable
from celebhpo.errors import CelebhpoError, StudyError, disk_message, os_cause
from celebhpo.export.card import CARD_FILES, model_card, split_metrics, why_chosen
from celebhpo.export.formats import (
    check_inputs,
    export_onnx,
    export_torchscript,
    parse_formats,
    require_onnx,
)
from celebhpo.export.mlflow_model import log_mlflow_model
from celebhpo.hpo import (
    StorageSpec,
    StudyRecord,
    as_spec,
    metric_name,
    metric_names,
    open_study,
    require_best_trial,
)
from celebhpo.hpo.warm import trained_elsewhere
from celebhpo.inference import EXPORT_FILES, SplitEvaluation
from celebhpo.inference.evaluate import evaluate_splits
from celebhpo.tracking import RUN_ID_ATTR, RunHandle, Tracker, download_checkpoint, register_model
from celebhpo.tracking.trial_files import headline_test_metrics
from celebhpo.training.checkpoint import Checkpoint
from celebhpo.training.devices import resolve_device

__all__ = ["ExportResult", "export_best"]


@dataclass
class ExportResult:
    out: Path
    study_name: str
    trial_number: int
    run_id: str
    metric: str
    value: float
    files: list[Path]
    # split ("val", "test") -> {"n_images", "loss", "tuned": {...}, "0.5": {...}, "baseline"}
    metrics: dict[str, dict[str, Any]]
    registered: str | None = None  # "NAME version N (alias best)"
    checks: dict[str, float] = field(default_factory=dict)  # format -> max |diff| of logits


def export_best(
    *,
    study_name: str | None,
    storage: StorageSpec | str,
    out: str | Path,
    formats: tuple[str, ...] | list[str] = ("pt",),
    register: str | None = None,
    force: bool = False,
    tracking_uri: str | None = None,
    device: str = "cpu",
    progress: bool = True,
    trial: int | None = None,
) -> ExportResult:
    """Export the study's best COMPLETE trial (that meets its constraints), or trial number
    `trial`, into `out` (a study of several metrics needs `trial`: one of its front): model.pt (the checkpoint with its
    validation and test metrics added), model_card.md/.json, and model.ts / model.onnx when
    asked. The checkpoint comes from the trial's MLflow run (user attr `mlflow_run_id`);
    The trial's run gets the model as an MLflow model, the test metrics (`test/...`) and the
    tag `celebhpo.exported`; `register` registers that MLflow model under that name, and its
    alias `best` moves to it only if it beats the aliased version's test mean accuracy on the
    same test split (or `force`)."""
    wanted = parse_formats(formats)
    if "onnx" in wanted:
        require_onnx()
    out = Path(out)
    check_writable(out, "--out", folder=True)  # before the study is even opened
    spec = as_spec(storage)
    chosen = _choose(study_name, spec, trial)
    tracker = Tracker(tracking_uri or chosen.record.tracking_uri)
    tracker.check()
    torch_device = resolve_device(device, key="--device")

    # download, evaluate on val and test, build and check, publish: in a folder beside `out`
    with output_errors(out, "--out", folder=True), _disk_errors(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            files, evaluations, checks, model, ckpt = _export_via(
                tmp, out, wanted, chosen, tracker, spec.url, torch_device, progress)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    result = ExportResult(
        out=out, study_name=chosen.study.study_name, trial_number=chosen.trial.number,
        run_id=chosen.run_id, metric=metric_name(chosen.study), value=chosen.value,
        files=files, metrics=split_metrics(evaluations), checks=checks,
    )
    info = _write_back(tracker, result, model, ckpt)
    if register:
        result.registered = str(register_model(
            tracker, register, chosen.run_id, info.model_uri, model_id=info.model_id,
            score=float(result.metrics["test"]["tuned"]["mean_acc"]), split=split_key(ckpt),
            force=force, tags={"study": result.study_name,
                               "trial_number": str(result.trial_number)}))
    return result


@contextlib.contextmanager
def _disk_errors(out: Path) -> Iterator[None]:
    """A full or unwritable disk met while writing into `out` (or the temporary folder
    beside it), however it was wrapped on the way (the download, an exporter): one line
    naming `out`. A write that names no file is taken for one there: everything this block
    writes goes there. Other errors (an image that cannot be read) pass unchanged."""
    try:
        yield
    except Exception as e:
        err = os_cause(e)
        if err is None or not (err.filename is None and err.filename2 is None
                               or _concerns(err, out, True)):
            raise
        raise CelebhpoError(disk_message(err, out, option="--out")) from e


def _write_back(tracker: Tracker, result: ExportResult, model: torch.nn.Module,
                ckpt: Checkpoint) -> Any:
    """The exported trial's run gets the model as an MLflow model (`model`), the headline
    test metrics (`test/...`: a trial's metrics stay few, the curves first), the whole test
    table as `test_metrics.json`, and the tag `celebhpo.exported` = the export folder."""
    info = log_mlflow_model(tracker, result.run_id, model, ckpt.decode_size, ckpt.mean,
                            ckpt.std)
    RunHandle(tracker, result.run_id).log(metrics=headline_test_metrics(result.metrics["test"]),
                                          tags={"celebhpo.exported": result.out.resolve()})
    tracker.call("log artifact", tracker.client.log_dict, result.run_id, {
        f"test/{k}": v for k, v in _leaves(result.metrics["test"]).items()}, "test_metrics.json")
    return info


def _leaves(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """{"tuned": {"mean_acc": 0.9}, "loss": 0.2} -> {"tuned/mean_acc": 0.9, "loss": 0.2}."""
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}/"))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def split_key(ckpt: Checkpoint) -> str:
    """Which test split a model was scored on: a digest of the data root and split sizes."""
    data = ckpt.section("data")
    keys = {k: data.get(k) for k in ("root", "train_size", "val_size", "test_size")}
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class _Chosen:
    """The trial to export and where it is."""

    study: optuna.Study
    trial: optuna.trial.FrozenTrial
    run_id: str  # its MLflow run, which holds its checkpoint
    record: StudyRecord  # what its study stores beside Optuna
    by_user: bool = False  # export-best --trial N

    @property
    def value(self) -> float:
        """The trial's value of the study's (epoch) metric, also in a study of several."""
        return float(self.trial.values[self._index])

    @property
    def direction(self) -> str:
        return self.study.directions[self._index].name.lower()

    @property
    def _index(self) -> int:
        names = metric_names(self.study)
        metric = metric_name(self.study)
        return names.index(metric) if metric in names else 0


def _choose(study_name: str | None, spec: StorageSpec, number: int | None) -> _Chosen:
    study, cfg, record = open_study(study_name, spec)
    if cfg.study.tracking == "off":
        raise StudyError(
            f"study '{study.study_name}' runs with tracking off ([study] tracking = \"off\"): "
            "export-best takes the trial's checkpoint from its MLflow run; create the study "
            "with tracking on to export its best model"
        )
    best = require_best_trial(study, spec.url, number)
    if not (run_id := best.user_attrs.get(RUN_ID_ATTR)):  # a warm start's copy, or untracked
        raise StudyError(trained_elsewhere(study, best) or (
            f"trial {best.number} of study '{study.study_name}' has no MLflow run (user attr "
            "mlflow_run_id); it ran untracked (optimize --no-tracking), so there is no "
            "checkpoint to export"))
    if best.user_attrs.get("checkpoint_logged") is False:
        kept = [t.number for t in study.get_trials(deepcopy=False)
                if t.user_attrs.get("checkpoint_logged")]
        raise StudyError(
            f"trial {best.number} of study '{study.study_name}' kept no checkpoint ([study] "
            "checkpoints = 'best' keeps one only for a trial that was the best so far when it "
            "ended, or the closest to constraints no trial met); trials that kept one: "
            f"{', '.join(map(str, kept)) or 'none'}; to keep every trial's, run a study "
            "with --set study.checkpoints=all")
    return _Chosen(study, best, run_id, record, by_user=number is not None)


def _export_via(tmp: Path, out: Path, wanted: list[str], chosen: _Chosen, tracker: Tracker,
                storage: str, device: torch.device, progress: bool,
                ) -> tuple[list[Path], dict[str, SplitEvaluation], dict[str, float],
                           torch.nn.Module, Checkpoint]:
    """Download, evaluate, build and check in `tmp`, then publish into `out` ->
    (files, evaluations, format checks, model, checkpoint)."""
    ckpt = Checkpoint.load(download_checkpoint(tracker, chosen.run_id, tmp / "download"))
    model = ckpt.model().to(device).eval()
    evaluations = evaluate_splits(model, ckpt, device, ("val", "test"), progress)
    names = _model_files(wanted)
    checks = _build(tmp / "build", model, ckpt, evaluations, names, chosen)
    card_md, card = model_card(
        ckpt=ckpt, study_name=chosen.study.study_name, storage=storage,
        trial=chosen.trial, metric=metric_name(chosen.study),
        direction=chosen.direction, run_id=chosen.run_id,
        tracking_uri=tracker.uri, evaluations=evaluations, files=names, checks=checks,
        choice=why_chosen(chosen.study, chosen.trial, by_user=chosen.by_user),
    )
    (tmp / "build" / "model_card.md").write_text(card_md, encoding="utf-8")
    (tmp / "build" / "model_card.json").write_text(
        json.dumps(card, indent=2, default=to_jsonable), encoding="utf-8")
    files = _publish(tmp / "build", out, names + list(CARD_FILES))
    return files, evaluations, checks, model, ckpt


def _model_files(wanted: list[str]) -> list[str]:
    """The model files of an export of `wanted` formats: model.pt, then .ts, then .onnx."""
    return [name for backend, name in EXPORT_FILES.items()
            if backend == "torch" or backend in wanted]


def _build(build: Path, model: torch.nn.Module, ckpt: Checkpoint,
           evaluations: dict[str, SplitEvaluation], names: list[str],
           chosen: _Chosen) -> dict[str, float]:
    """`names` in `build`: model.pt (the checkpoint, now carrying where it came from and its
    evaluation at export: `val_metrics`, `test_metrics`) and the other formats, each checked
    against `model`; returns format -> max |diff| of logits."""
    origin = {
        "study": chosen.study.study_name, "trial_number": chosen.trial.number,
        "mlflow_run_id": chosen.run_id, "metric": metric_name(chosen.study),
        "value": chosen.value, "params": dict(chosen.trial.params),
        "n_val": evaluations["val"].n_images, "n_test": evaluations["test"].n_images,
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    build.mkdir()
    exported = replace(ckpt, val_metrics=evaluations["val"].metrics,
                       test_metrics=evaluations["test"].metrics, export=origin)
    exported.save(build / EXPORT_FILES["torch"])
    checks: dict[str, float] = {}
    example, check = check_inputs(evaluations["test"].batch, ckpt.decode_size)
    exporters = {"torchscript": export_torchscript, "onnx": export_onnx}
    for fmt, export in exporters.items():
        if EXPORT_FILES[fmt] in names:
            checks[fmt] = export(model, example, check, build / EXPORT_FILES[fmt])
    return checks


def _publish(build: Path, out: Path, names: list[str]) -> list[Path]:
    """Move the checked files into `out`. A new folder is one rename; an existing one gets
    each file replaced atomically, and a stale model.ts/model.onnx from an earlier export
    (of maybe another model) removed, so the folder never mixes two models."""
    if not out.exists():
        os.replace(build, out)
        return [out / n for n in names]
    for stale in set(EXPORT_FILES.values()) - set(names):
        (out / stale).unlink(missing_ok=True)
    for n in names:
        os.replace(build / n, out / n)
    return [out / n for n in names]
