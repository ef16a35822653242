"""Using a trained model: predict attributes, evaluate on a CelebA folder, retrieve by expression.

Every path goes through the training-time preprocessing: `load_image(path, size, crop)` then
`normalize` with the checkpoint's mean/std; no flip; a sigmoid per attribute (never a softmax
across them); per-attribute thresholds tuned on validation unless told otherwise.

Retrieval caches each folder's predictions (per image: name, size, mtime; per model: a hash of
the checkpoint bytes) in `$CELEBHPO_CACHE_DIR` (default `~/.cache/celebhpo`), so a second
query over the same folder predicts only new or changed images.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from celebhpo.errors import CelebhpoError, CheckpointError, DataError
from celebhpo.inference.expr import Expression, parse_expression

__all__ = [
    "Expression", "FolderPredictions", "PredictionResult", "Predictor", "RetrievalResult",
    "cache_dir", "contact_sheet", "evaluate", "format_evaluation", "format_predictions",
    "format_retrieval", "list_images", "load_model", "parse_expression", "predict",
    "predict_folder", "rank", "resolve_thresholds", "retrieve",
]

BACKENDS = ("torch", "torchscript", "onnx")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
EXPORT_FILES = {"torch": "model.pt", "torchscript": "model.ts", "onnx": "model.onnx"}
CACHE_FORMAT = 1


# -- loading a model -------------------------------------------------------------------------
@dataclass
class Predictor:
    """A loaded model and what it needs to see images the way it was trained."""

    source: Path  # what the user gave: an export folder or a checkpoint file
    checkpoint_path: Path  # the checkpoint the metadata (and the torch weights) came from
    backend: str
    device: torch.device
    attributes: list[str]
    thresholds: np.ndarray  # (40,) tuned on validation
    image_size: int
    crop: str
    normalization: dict[str, list[float]]  # {"mean": [3], "std": [3]}
    arch: str
    metrics: dict[str, Any]
    forward: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)  # (B,3,S,S) -> (B,40)

    @cached_property
    def model_hash(self) -> str:
        """sha256 of the checkpoint bytes and the backend: the model's identity for caches."""
        h = hashlib.sha256(self.backend.encode())
        with open(self.checkpoint_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    def predict_uint8(self, batch: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 images -> (B, 40) float32 probabilities (sigmoid per attribute)."""
        from celebhpo.data import normalize

        batch = np.asarray(batch)
        s = self.image_size
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != (s, s, 3):
            raise CelebhpoError(
                f"expected a (B, {s}, {s}, 3) uint8 batch for {self.source}, "
                f"got {batch.dtype} {batch.shape}: load images with load_image(path, {s}, "
                f'"{self.crop}")'
            )
        if len(batch) == 0:
            return np.zeros((0, len(self.attributes)), dtype=np.float32)
        if not batch.flags.writeable:  # a read-only memmap: torch wants memory it may own
            batch = batch.copy()
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)  # (B,S,S,3) uint8
        x = normalize(x, self.normalization["mean"], self.normalization["std"])  # (B,3,S,S)
        with torch.inference_mode():
            logits = self.forward(x)  # (B, 40)
            return torch.sigmoid(logits.float()).cpu().numpy()


def load_model(path: str | Path, backend: str = "torch", device: str = "cpu") -> Predictor:
    """Load an export folder (model.pt [+ model.ts, model.onnx]) or a checkpoint file.

    The metadata (attributes, thresholds, size, crop, normalization) always comes from the
    checkpoint, loaded with `weights_only=True`; anything not ours raises CheckpointError.
    """
    from celebhpo.training.checkpoint import load_checkpoint

    path = Path(path)
    if backend not in BACKENDS:
        raise CelebhpoError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: give an export-best folder or a checkpoint")
    if path.is_dir():
        ckpt = path / EXPORT_FILES["torch"]
        if not ckpt.is_file():
            raise CheckpointError(
                f"{path} is not a celebhpo model folder: it has no model.pt "
                "(make one with `celebhpo export-best --out DIR`, or give a checkpoint file)"
            )
    else:
        ckpt = path
    payload = load_checkpoint(ckpt)
    meta = _metadata(payload, ckpt)
    dev = _device(device)

    if backend == "torch":
        forward = _torch_forward(payload, ckpt, dev)
    else:
        if not path.is_dir():
            raise CheckpointError(
                f"backend {backend} needs an export folder with {EXPORT_FILES[backend]}; {path} "
                f"is a file (export with `celebhpo export-best --format pt,{backend}`)"
            )
        artifact = path / EXPORT_FILES[backend]
        if not artifact.is_file():
            raise CheckpointError(
                f"{path} has no {EXPORT_FILES[backend]}: export with "
                f"`celebhpo export-best --format pt,{backend}`, or use --backend torch"
            )
        if backend == "torchscript":
            forward = _torchscript_forward(artifact, dev)
        else:
            forward = _onnx_forward(artifact, dev)
    return Predictor(source=path, checkpoint_path=ckpt, backend=backend, device=dev,
                     forward=forward, **meta)


def _device(name: str) -> torch.device:
    if name == "auto":
        from celebhpo.training.loop import resolve_device

        return resolve_device("auto")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise CelebhpoError(f"unknown device {name!r}: use cpu, cuda, cuda:N, mps or auto") from e


def _metadata(payload: dict[str, Any], ckpt: Path) -> dict[str, Any]:
    """What a Predictor needs from a checkpoint, checked so a bad one fails here, by name."""
    try:
        attributes = [str(a) for a in payload["attributes"]]
        data_cfg = (payload.get("config") or {}).get("data", {})
        image_size = int(payload.get("image_size") or data_cfg["image_size"])
        crop = str(payload.get("crop") or data_cfg.get("crop", "squash"))
        norm = payload["normalization"]
        mean = [float(v) for v in norm["mean"]]
        std = [float(v) for v in norm["std"]]
        thresholds = np.asarray(payload["thresholds"], dtype=np.float64).reshape(-1)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(
            f"{ckpt}: checkpoint metadata is incomplete ({type(e).__name__}: {e}); "
            "re-export the model with this version of celebhpo"
        ) from e
    if len(thresholds) != len(attributes) or len(mean) != 3 or len(std) != 3 or image_size < 1:
        raise CheckpointError(
            f"{ckpt}: inconsistent checkpoint ({len(attributes)} attributes, "
            f"{len(thresholds)} thresholds, mean {mean}, std {std}, size {image_size}); "
            "re-export the model"
        )
    return {"attributes": attributes, "thresholds": thresholds, "image_size": image_size,
            "crop": crop, "normalization": {"mean": mean, "std": std},
            "arch": str(payload.get("arch", "")), "metrics": dict(payload.get("metrics") or {})}


def _torch_forward(payload: dict[str, Any], ckpt: Path,
                   device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    from celebhpo.training.checkpoint import model_from_checkpoint

    try:
        model = model_from_checkpoint(payload)
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{ckpt}: weights do not fit the model ({e}); re-export it") from e
    model = model.to(device).eval()
    return model


def _torchscript_forward(artifact: Path,
                         device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        with warnings.catch_warnings():
            # torch marks jit.load deprecated; the user asked for this backend, so no noise
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(artifact), map_location=device)
    except (RuntimeError, ValueError, OSError) as e:
        raise CheckpointError(
            f"{artifact} is not a TorchScript model ({e}); re-export or use --backend torch"
        ) from e
    module.eval()
    return module


def _onnx_forward(artifact: Path, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise CelebhpoError(
            "backend onnx needs onnxruntime: pip install 'celebhpo[onnx]' (or use --backend torch)"
        ) from e
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    # onnxruntime's errors derive from Exception only; name the ones it raises on a bad file
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    ort_errors = tuple(getattr(ort_state, n) for n in (
        "Fail", "InvalidArgument", "NoSuchFile", "InvalidProtobuf", "InvalidGraph",
        "RuntimeException") if hasattr(ort_state, n))
    try:
        session = ort.InferenceSession(str(artifact), providers=providers)
    except (*ort_errors, RuntimeError, OSError) as e:
        raise CheckpointError(
            f"{artifact} is not a usable ONNX model ({type(e).__name__}); re-export it or use "
            "--backend torch"
        ) from e
    input_name = session.get_inputs()[0].name
    output = session.get_outputs()[0].name
    # an export may end in a sigmoid; then its outputs are probabilities, not logits
    outputs_probs = "prob" in output.lower()

    def forward(x: torch.Tensor) -> torch.Tensor:
        (y,) = session.run([output], {input_name: x.detach().cpu().numpy()})  # (B, 40)
        y = torch.from_numpy(np.asarray(y, dtype=np.float32))
        return torch.logit(y.clamp(1e-7, 1 - 1e-7)) if outputs_probs else y

    return forward


# -- predicting images -----------------------------------------------------------------------
@dataclass
class PredictionResult:
    images: list[str]  # paths of the images predicted, in order
    probs: np.ndarray  # (N, 40) float32
    thresholds: np.ndarray  # (40,) the thresholds `present` uses
    threshold_label: str  # "tuned", "0.5", "0.3"...
    attributes: list[str]
    skipped: list[tuple[str, str]]  # (name, reason) of images that could not be read

    @property
    def present(self) -> np.ndarray:
        """(N, 40) bool: probability above the attribute's threshold (metrics.predict's rule)."""
        return self.probs > self.thresholds[None, :]

    @property
    def frame(self) -> pd.DataFrame:
        """image, present (';'-joined names), then one probability column per attribute."""
        present = self.present
        df = pd.DataFrame(self.probs, columns=self.attributes)
        df.insert(0, "present", [";".join(a for a, p in zip(self.attributes, row, strict=True)
                                          if p) for row in present])
        df.insert(0, "image", self.images)
        return df


def resolve_thresholds(predictor: Predictor, threshold: str | float) -> tuple[np.ndarray, str]:
    """"tuned" -> the checkpoint's per-attribute thresholds; "0.5" / 0.3 -> that for all."""
    if isinstance(threshold, str) and threshold.strip().lower() == "tuned":
        return predictor.thresholds.copy(), "tuned"
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 < value < 1.0:
        raise CelebhpoError(
            f"threshold {threshold!r} is not valid: use tuned, 0.5, or a number between 0 and 1"
        )
    return np.full(len(predictor.attributes), value), f"{value:g}"


def list_images(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name (hidden files are skipped)."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                  and p.is_file())


def _expand(inputs: Iterable[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    paths: list[Path] = []
    missing: list[tuple[str, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths.extend(list_images(p))
        elif p.exists():
            paths.append(p)
        else:
            missing.append((str(p), "no such file"))
    return paths, missing


def _read(path: Path, predictor: Predictor) -> np.ndarray | str:
    """The image as the model sees it, (S, S, 3) uint8, or why it cannot be read."""
    from celebhpo.data import load_image

    try:
        return load_image(path, predictor.image_size, predictor.crop)
    except (CelebhpoError, OSError, ValueError, SyntaxError) as e:  # PIL raises all of these
        reason = str(e).replace("\n", " ") or type(e).__name__
        return reason.removeprefix(f"{path}: ")  # the caller names the file


def _predict_paths(predictor: Predictor, paths: Sequence[Path], batch_size: int,
                   progress: bool, desc: str = "predict",
                   ) -> tuple[list[int], np.ndarray, list[tuple[int, str]]]:
    """Predict `paths` in batches -> (indices kept, (N_kept, 40) probs, [(index, reason)])."""
    if batch_size < 1:
        raise CelebhpoError(f"batch_size must be at least 1, got {batch_size}")
    kept: list[int] = []
    bad: list[tuple[int, str]] = []
    chunks: list[np.ndarray] = []
    # a bar only when there is something to wait for
    bar = tqdm(total=len(paths), desc=desc, unit="img", file=sys.stderr, leave=False,
               disable=not progress or len(paths) <= batch_size, dynamic_ncols=True)
    with bar:
        for start in range(0, len(paths), batch_size):
            images: list[np.ndarray] = []
            for i in range(start, min(start + batch_size, len(paths))):
                got = _read(paths[i], predictor)
                if isinstance(got, str):
                    bad.append((i, got))
                else:
                    kept.append(i)
                    images.append(got)
            if images:
                chunks.append(predictor.predict_uint8(np.stack(images)))  # (b, 40)
            bar.update(min(batch_size, len(paths) - start))
    n_attr = len(predictor.attributes)
    probs = np.concatenate(chunks) if chunks else np.zeros((0, n_attr), dtype=np.float32)
    return kept, probs.astype(np.float32), bad


def predict(predictor: Predictor, inputs: Sequence[str | Path], threshold: str | float = "tuned",
            batch_size: int = 64, progress: bool = True) -> PredictionResult:
    """Predict every image in `inputs` (files, or folders of images).

    Unreadable images are skipped and listed in `.skipped` by name with the reason.
    """
    thresholds, label = resolve_thresholds(predictor, threshold)
    paths, skipped = _expand(inputs)
    if not paths and not skipped:
        raise DataError(
            "no images in " + ", ".join(str(p) for p in inputs)
            + f" (looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    kept, probs, bad = _predict_paths(predictor, paths, batch_size, progress)
    skipped += [(str(paths[i]), reason) for i, reason in bad]
    return PredictionResult(images=[str(paths[i]) for i in kept], probs=probs,
                            thresholds=thresholds, threshold_label=label,
                            attributes=list(predictor.attributes), skipped=skipped)


def format_predictions(result: PredictionResult, fmt: str = "table",
                       show_all: bool = False) -> str:
    """table: per image, the attributes present with probabilities (--all: all 40);
    json: a record per image with every probability; csv: one row per image."""
    if fmt == "csv":
        return result.frame.to_csv(index=False, float_format="%.4f").rstrip("\n")
    present = result.present
    if fmt == "json":
        records = [
            {"image": img,
             "present": [a for a, p in zip(result.attributes, present[n], strict=True) if p],
             "probabilities": {a: round(float(v), 6)
                               for a, v in zip(result.attributes, result.probs[n], strict=True)}}
            for n, img in enumerate(result.images)
        ]
        return json.dumps(records, indent=2)
    if fmt != "table":
        raise CelebhpoError(f"unknown format {fmt!r}: use table, json or csv")
    width = max((len(a) for a in result.attributes), default=10)
    blocks = []
    for n, img in enumerate(result.images):
        count = int(present[n].sum())
        lines = [f"{img}  ({count} of {len(result.attributes)} present, "
                 f"{result.threshold_label} thresholds)"]
        if show_all:
            lines.append(f"  {'attribute':<{width}}  prob   thresh  present")
            for j, a in enumerate(result.attributes):
                mark = "yes" if present[n, j] else ""
                lines.append(f"  {a:<{width}}  {result.probs[n, j]:.3f}  "
                             f"{result.thresholds[j]:.3f}   {mark}")
        else:
            order = np.argsort(-result.probs[n], kind="stable")
            shown = [j for j in order if present[n, j]]
            lines += [f"  {result.attributes[j]:<{width}}  {result.probs[n, j]:.3f}"
                      for j in shown]
            if not shown:
                lines.append("  (no attribute above its threshold)")
        blocks.append("\n".join(lines))
    if not blocks:
        blocks.append("(no image could be read)")
    return "\n\n".join(blocks)


# -- evaluating on a labelled folder ---------------------------------------------------------
def evaluate(model: Predictor | str | Path, data_root: str | Path, split: str = "test",
             out_dir: str | Path | None = None, *, layout: str = "auto", batch_size: int = 256,
             progress: bool = True) -> tuple[dict[str, Any], pd.DataFrame]:
    """Metrics (at the checkpoint's tuned thresholds and at 0.5) and the per-class report of
    `model` on one split of any CelebA-layout folder. Writes metrics.json and
    classification_report.csv/.json to `out_dir` when given."""
    from celebhpo.data import read_celeba
    from celebhpo.data.layouts import select_split
    from celebhpo.training.metrics import compute_metrics, per_class_report, report_to_dict

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
    kept, probs, bad = _predict_paths(predictor, paths, batch_size, progress, desc=f"eval {split}")
    if not kept:
        raise DataError(f"{data_root}: none of the {len(paths)} {split} images could be read "
                        f"(first: {paths[bad[0][0]].name}: {bad[0][1]})")
    columns = [ds.attributes.index(a) for a in predictor.attributes]
    targets = np.asarray(ds.labels)[rows[kept]][:, columns].astype(np.float32)  # (N, 40)

    tuned = compute_metrics(probs, targets, thresholds=predictor.thresholds)
    at_half = compute_metrics(probs, targets, thresholds=0.5)
    report = per_class_report(probs, targets, predictor.attributes, predictor.thresholds)
    metrics: dict[str, Any] = {
        "model": str(predictor.source),
        "data_root": str(data_root),
        "split": split,
        "n_images": len(kept),
        "skipped": [[paths[i].name, reason] for i, reason in bad],
        "tuned": {k: float(v) for k, v in tuned.items()},
        "at_0.5": {k: float(v) for k, v in at_half.items()},
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _write_text(out / "metrics.json", json.dumps(metrics, indent=2))
        _write_text(out / "classification_report.csv", report.to_csv(index=False))
        _write_text(out / "classification_report.json",
                    json.dumps(report_to_dict(report), indent=2, default=float))
        metrics["written"] = [str(out / n) for n in
                              ("metrics.json", "classification_report.csv",
                               "classification_report.json")]
    return metrics, report


def format_evaluation(metrics: dict[str, Any], report: pd.DataFrame) -> str:
    """Header, the metrics at tuned thresholds and at 0.5 side by side, then the report."""
    from celebhpo.report import format_table

    skipped = metrics.get("skipped", [])
    lines = [f"{metrics['split']} split of {metrics['data_root']}: {metrics['n_images']} images"
             + (f" ({len(skipped)} unreadable, skipped)" if skipped else "")]
    keys = list(metrics["tuned"])
    width = max(len(k) for k in keys)
    lines.append(f"{'metric':<{width}}  {'tuned':>7}  {'at 0.5':>7}")
    for k in keys:
        lines.append(f"{k:<{width}}  {metrics['tuned'][k]:>7.4f}  "
                     f"{metrics['at_0.5'].get(k, math.nan):>7.4f}")
    lines += ["", format_table(report, "table", "{:.3f}")]
    for name, reason in skipped[:10]:
        lines.append(f"skipped {name}: {reason}")
    for path in metrics.get("written", []):
        lines.append(f"wrote {path}")
    return "\n".join(lines)


# -- retrieval -------------------------------------------------------------------------------
@dataclass
class RetrievalResult:
    frame: pd.DataFrame  # image, score, then the probability of each attribute in the expression
    expression: str  # canonical form of --where
    n_images: int  # images in the folder that could be read
    n_matches: int  # images whose thresholded predictions satisfy it with score >= min_score
    n_predicted: int  # images run through the model in this call (the rest came from the cache)
    n_cached: int
    skipped: list[tuple[str, str]]
    cache_path: Path | None
    sheet: Path | None = None


def cache_dir() -> Path:
    """$CELEBHPO_CACHE_DIR, else $XDG_CACHE_HOME/celebhpo, else ~/.cache/celebhpo."""
    if os.environ.get("CELEBHPO_CACHE_DIR"):
        return Path(os.environ["CELEBHPO_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "celebhpo"


@dataclass
class FolderPredictions:
    names: list[str]  # readable images, sorted
    probs: np.ndarray  # (N, 40)
    skipped: list[tuple[str, str]]
    n_predicted: int
    n_cached: int
    cache_path: Path | None


def predict_folder(predictor: Predictor, image_dir: str | Path, batch_size: int = 64,
                   progress: bool = True, use_cache: bool = True) -> FolderPredictions:
    """Predictions for every image in `image_dir`, reusing the cache for unchanged files.

    The cache holds one entry per file (name, size, mtime in ns; unreadable files too, so
    they are not retried until they change) and is rewritten atomically after each call.
    """
    folder = Path(image_dir)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder of images")
    files = list_images(folder)
    if not files:
        raise DataError(f"{folder} has no images ({', '.join(IMAGE_SUFFIXES)}): nothing to search")
    stats = {p.name: p.stat() for p in files}
    n_attr = len(predictor.attributes)

    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    path = cache_dir() / "predictions" / f"{key}-{predictor.model_hash[:16]}.npz"
    old = _load_cache(path, predictor.model_hash, n_attr) if use_cache else {}

    entries: dict[str, tuple[int, int, np.ndarray | None, str]] = {}
    todo: list[Path] = []
    for p in files:
        st = stats[p.name]
        hit = old.get(p.name)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            entries[p.name] = hit
        else:
            todo.append(p)
    n_cached = len(entries)
    kept, probs, bad = _predict_paths(predictor, todo, batch_size, progress)
    for row, i in enumerate(kept):
        st = stats[todo[i].name]
        entries[todo[i].name] = (st.st_size, st.st_mtime_ns, probs[row], "")
    for i, reason in bad:
        st = stats[todo[i].name]
        entries[todo[i].name] = (st.st_size, st.st_mtime_ns, None, reason)
    if use_cache and (todo or set(old) != set(entries)):
        _save_cache(path, predictor.model_hash, entries, n_attr)

    names = [p.name for p in files if entries[p.name][2] is not None]
    table = (np.stack([entries[n][2] for n in names]) if names
             else np.zeros((0, n_attr), dtype=np.float32))
    skipped = [(p.name, entries[p.name][3]) for p in files if entries[p.name][2] is None]
    return FolderPredictions(names=names, probs=table.astype(np.float32), skipped=skipped,
                             n_predicted=len(todo), n_cached=n_cached,
                             cache_path=path if use_cache else None)


def _load_cache(path: Path, model_hash: str,
                n_attr: int) -> dict[str, tuple[int, int, np.ndarray | None, str]]:
    """The cached entries, or {} when there is no usable cache (it is only a cache)."""
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format"]) != CACHE_FORMAT or str(z["model"]) != model_hash:
                return {}
            names, sizes, mtimes = z["names"], z["sizes"], z["mtimes"]
            probs, ok, reasons = z["probs"], z["ok"], z["reasons"]
            if probs.shape != (len(names), n_attr):
                return {}
            return {str(n): (int(s), int(m), probs[i] if ok[i] else None, str(r))
                    for i, (n, s, m, r) in enumerate(zip(names, sizes, mtimes, reasons,
                                                         strict=True))}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        warnings.warn(f"ignoring unreadable prediction cache {path}: {e}", stacklevel=3)
        return {}


def _save_cache(path: Path, model_hash: str,
                entries: dict[str, tuple[int, int, np.ndarray | None, str]], n_attr: int) -> None:
    names = sorted(entries)
    zeros = np.zeros(n_attr, dtype=np.float32)
    arrays = {
        "format": np.array(CACHE_FORMAT),
        "model": np.array(model_hash),
        "names": np.array(names, dtype=str),
        "sizes": np.array([entries[n][0] for n in names], dtype=np.int64),
        "mtimes": np.array([entries[n][1] for n in names], dtype=np.int64),
        "probs": np.stack([entries[n][2] if entries[n][2] is not None else zeros
                           for n in names]).astype(np.float32).reshape(len(names), n_attr),
        "ok": np.array([entries[n][2] is not None for n in names], dtype=bool),
        "reasons": np.array([entries[n][3] for n in names], dtype=str),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)  # readers see the old cache or the new one, never half
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:
        # a read-only cache folder costs speed next time, not this answer
        warnings.warn(f"could not write the prediction cache {path}: {e}", stacklevel=3)


def retrieve(predictor: Predictor, image_dir: str | Path, where: str, top: int = 10,
             min_score: float = 0.0, sheet: str | Path | None = None, progress: bool = True,
             batch_size: int = 64) -> RetrievalResult:
    """The images in `image_dir` whose thresholded predictions satisfy `where`, ranked by the
    expression's probability (attributes taken as independent); `top` <= 0 keeps all."""
    expr = parse_expression(where, predictor.attributes)  # fail on a typo before predicting
    if not 0.0 <= min_score <= 1.0:
        raise CelebhpoError(f"min_score must be between 0 and 1, got {min_score}")
    folder = Path(image_dir)
    got = predict_folder(predictor, folder, batch_size=batch_size, progress=progress)
    frame, n_matches = rank(expr, got.names, got.probs, predictor.attributes,
                            predictor.thresholds, top=top, min_score=min_score)
    frame.insert(0, "image", [str(folder / n) for n in frame.pop("image")])
    result = RetrievalResult(frame=frame, expression=str(expr), n_images=len(got.names),
                             n_matches=n_matches, n_predicted=got.n_predicted,
                             n_cached=got.n_cached, skipped=got.skipped,
                             cache_path=got.cache_path)
    if sheet is not None:
        captions = [f"{s:.3f}  {Path(p).name}" for p, s in zip(frame["image"], frame["score"],
                                                            strict=True)]
        result.sheet = contact_sheet(list(frame["image"]), captions, sheet,
                                     title=f"{expr}  ({n_matches} of {len(got.names)} match)")
    return result


def rank(expr: Expression, names: list[str], probs: np.ndarray, attributes: list[str],
         thresholds: np.ndarray, top: int = 10,
         min_score: float = 0.0) -> tuple[pd.DataFrame, int]:
    """Filter by the expression on thresholded predictions, score, sort -> (frame, n_matches)."""
    score = expr.score(probs)  # (N,)
    # present = above threshold, the rule metrics.predict (and so evaluate) uses
    ok = expr.holds(probs > thresholds[None, :]) & (score >= min_score)
    idx = np.flatnonzero(ok)
    # best first; ties by name so the order is stable across runs
    idx = sorted(idx, key=lambda i: (-score[i], names[i]))
    n_matches = len(idx)
    if top > 0:
        idx = idx[:top]
    frame = pd.DataFrame({"image": [names[i] for i in idx],
                          "score": [float(score[i]) for i in idx]})
    for a in expr.attributes:
        frame[a] = [float(probs[i, attributes.index(a)]) for i in idx]
    return frame, n_matches


def format_retrieval(result: RetrievalResult, fmt: str = "table") -> str:
    from celebhpo.report import format_table

    if fmt in ("csv", "json"):
        return format_table(result.frame, fmt)
    if fmt != "table":
        raise CelebhpoError(f"unknown format {fmt!r}: use table, json or csv")
    head = f'{result.n_matches} of {result.n_images} images match "{result.expression}"'
    if result.n_matches > len(result.frame):
        head += f" (top {len(result.frame)} shown)"
    lines = [head]
    if len(result.frame):
        lines.append(format_table(result.frame, "table", "{:.3f}"))
    if result.skipped:
        lines.append(f"{len(result.skipped)} unreadable images skipped: "
                     + ", ".join(n for n, _ in result.skipped[:10])
                     + (" ..." if len(result.skipped) > 10 else ""))
    return "\n".join(lines)


# -- contact sheet ---------------------------------------------------------------------------
def contact_sheet(paths: Sequence[str | Path], captions: Sequence[str], out: str | Path,
                  title: str = "", cell: int = 128, columns: int = 0) -> Path:
    """A PNG grid of `paths` with a caption under each, written atomically to `out`."""
    from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

    out = Path(out)
    font = ImageFont.load_default()
    n = len(paths)
    cols = columns or max(1, min(6, math.ceil(math.sqrt(n))))
    rows = max(1, math.ceil(n / cols))
    caption_h, title_h, pad = 16, 22 if title else 0, 4
    width = cols * (cell + pad) + pad
    height = title_h + rows * (cell + caption_h + pad) + pad
    sheet = Image.new("RGB", (max(width, 240), height), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 5), title, fill="black", font=font)
    if n == 0:
        draw.text((pad, title_h + cell // 2), "no matches", fill="gray", font=font)
    for k, (p, text) in enumerate(zip(paths, captions, strict=True)):
        x = pad + (k % cols) * (cell + pad)
        y = title_h + pad + (k // cols) * (cell + caption_h + pad)
        try:
            with Image.open(p) as im:
                thumb = ImageOps.fit(im.convert("RGB"), (cell, cell))
        except (OSError, ValueError, UnidentifiedImageError):
            thumb = Image.new("RGB", (cell, cell), "lightgray")  # gone or broken since predicted
        sheet.paste(thumb, (x, y))
        # cut the caption to the cell's width so neighbours do not overlap
        while text and draw.textlength(text, font=font) > cell:
            text = text[:-1]
        draw.text((x, y + cell + 2), text, fill="black", font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            sheet.save(f, format="PNG")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _write_text(path: Path, text: str) -> None:
    """Write via a temporary name so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
