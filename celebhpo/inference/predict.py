"""Predicting images: files or folders in, per-attribute probabilities and thresholds out.

`predict_paths` is the one batched loop over image files; evaluate and retrieve use it too:
images decoded in parallel processes while the model runs whole batches.
Unreadable images are skipped and named with the reason, never fatal one by one.
"""

from __future__ import annotations

import math
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from celebhpo.data import load_image
from celebhpo.errors import CelebhpoError, DataError
from celebhpo.inference.predictor import Predictor

__all__ = ["HALF", "IMAGE_SUFFIXES", "PredictionResult", "first_reasons", "list_images",
           "predict", "predict_paths", "resolve_thresholds"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
HALF = "0.5"  # the label of 0.5 for every attribute, beside "tuned"


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
    """(thresholds (40,), label): "tuned" -> the checkpoint's per-attribute thresholds (tuned
    on validation); "0.5" / 0.3 -> that for every attribute, labelled "0.5" / "0.3".

    predict, evaluate and retrieve (`--threshold`) all choose their thresholds here."""
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


def first_reasons(skipped: Sequence[tuple[str, str]], n: int = 3) -> str:
    """"name: reason; name: reason ..." for the first `n` skipped images."""
    more = f"; and {len(skipped) - n} more" if len(skipped) > n else ""
    return "; ".join(f"{name}: {reason}" for name, reason in skipped[:n]) + more


def list_images(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name (hidden files are skipped)."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                  and p.is_file())


def _expand(inputs: Iterable[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The image files of `inputs` (folders listed), each once: a file given again, or with
    its folder, is predicted once, where it first came (by resolved path)."""
    paths: list[Path] = []
    seen: set[Path] = set()
    missing: list[tuple[str, str]] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            missing.append((str(p), "no such file"))
        for f in list_images(p) if p.is_dir() else [p] if p.exists() else []:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                paths.append(f)
    return paths, missing


def _read(path: str | Path, size: int, crop: str) -> np.ndarray | str:
    """The image as the model sees it, (S, S, 3) uint8, or why it cannot be read."""
    try:
        return load_image(path, size, crop)
    except (CelebhpoError, OSError, ValueError, SyntaxError) as e:  # PIL raises all of these
        reason = str(e).replace("\n", " ") or type(e).__name__
        return reason.removeprefix(f"{path}: ")  # the caller names the file


def _read_batch(job: tuple[list[str], int, str]) -> list[np.ndarray | str]:
    """Worker: decode one batch of paths (only PIL and numpy run here, never torch)."""
    paths, size, crop = job
    return [_read(p, size, crop) for p in paths]


def _decoded_batches(paths: Sequence[Path], size: int, crop: str, batch_size: int,
                     workers: int) -> Iterator[list[np.ndarray | str]]:
    """The decoded images of `paths`, batch by batch in order: in a pool of forked decode
    processes (at most 2 batches per worker in flight, so memory stays bounded) while the
    caller runs the model; in this process when there is one worker or one batch."""
    jobs = [([str(p) for p in paths[a:a + batch_size]], size, crop)
            for a in range(0, len(paths), batch_size)]
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    if workers <= 1:
        yield from map(_read_batch, jobs)
        return
    # fork, like the decode cache: workers share the parent's imports and touch only PIL
    with get_context("fork").Pool(workers) as pool:
        pending: deque = deque()
        for job in jobs:
            pending.append(pool.apply_async(_read_batch, (job,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def predict_paths(predictor: Predictor, paths: Sequence[Path], batch_size: int,
                  progress: bool, desc: str = "predict", workers: int = 0,
                  ) -> tuple[list[int], np.ndarray, list[tuple[int, str]]]:
    """Predict `paths` in batches -> (indices kept, (N_kept, 40) probs, [(index, reason)]).

    The one inference path of predict, evaluate and retrieve: images are decoded in parallel
    (`workers` processes, 0 = every core) while the model runs whole batches under
    inference_mode (channels_last for the torch backend)."""
    if batch_size < 1:
        raise CelebhpoError(f"batch_size must be at least 1, got {batch_size}")
    kept: list[int] = []
    bad: list[tuple[int, str]] = []
    chunks: list[np.ndarray] = []
    # a bar only when there is something to wait for
    bar = tqdm(total=len(paths), desc=desc, unit="img", file=sys.stderr, leave=False,
               disable=not progress or len(paths) <= batch_size, dynamic_ncols=True)
    decoded = _decoded_batches(paths, predictor.image_size, predictor.crop, batch_size, workers)
    with bar:
        for b, got in enumerate(decoded):
            images: list[np.ndarray] = []
            for i, img in enumerate(got, start=b * batch_size):
                if isinstance(img, str):
                    bad.append((i, img))
                else:
                    kept.append(i)
                    images.append(img)
            if images:
                chunks.append(predictor.predict_uint8(np.stack(images)))  # (b, 40)
            bar.update(len(got))
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
    kept, probs, bad = predict_paths(predictor, paths, batch_size, progress)
    skipped += [(str(paths[i]), reason) for i, reason in bad]
    if not kept:
        raise DataError(f"none of the {len(skipped)} input images could be read: "
                        + first_reasons(skipped) + "; check the files (or the paths)")
    return PredictionResult(images=[str(paths[i]) for i in kept], probs=probs,
                            thresholds=thresholds, threshold_label=label,
                            attributes=list(predictor.attributes), skipped=skipped)
