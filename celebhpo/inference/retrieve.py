"""Retrieval: the images of a folder whose predictions satisfy a `--where` expression, ranked.

Each folder's predictions are cached (per image: name, size, mtime; per model: a hash of the
checkpoint bytes) in `$CELEBHPO_CACHE_DIR` (default `~/.cache/celebhpo`), so a second query
over the same folder predicts only new or changed images.
"""

from __future__ import annotations

import hashlib
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from celebhpo._io import atomic_open, check_writable, output_errors
from celebhpo.data import user_cache_dir
from celebhpo.errors import CelebhpoError, DataError
from celebhpo.inference.empty import EmptyAnswer, explain_empty
from celebhpo.inference.expr import Expression, parse_expression
from celebhpo.inference.predict import (
    IMAGE_SUFFIXES,
    first_reasons,
    list_images,
    predict_paths,
    resolve_thresholds,
)
from celebhpo.inference.predictor import Predictor
from celebhpo.inference.sheet import contact_sheet

__all__ = ["FolderPredictions", "RetrievalResult", "cache_dir", "predict_folder", "rank",
           "retrieve"]

CACHE_FORMAT = 3  # 2: images decoded upright (EXIF) and 16-bit scaled; 3: tiny images refused
# one file's cache entry: size, mtime in ns, (40,) probabilities or None, why unreadable
Entry = tuple[int, int, np.ndarray | None, str]


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
    threshold_label: str = "tuned"  # the thresholds "present" used: "tuned", "0.5", "0.3"...
    sheet: Path | None = None
    empty: EmptyAnswer | None = None  # set when nothing matched: why, and the closest faces


@dataclass
class FolderPredictions:
    names: list[str]  # readable images, sorted
    probs: np.ndarray  # (N, 40)
    skipped: list[tuple[str, str]]
    n_predicted: int
    n_cached: int
    cache_path: Path | None


def retrieve(predictor: Predictor, image_dir: str | Path, where: str, top: int = 10,
             min_score: float = 0.0, sheet: str | Path | None = None, progress: bool = True,
             batch_size: int = 64, threshold: str | float = "tuned") -> RetrievalResult:
    """The images in `image_dir` whose predictions, thresholded at `threshold` (the
    checkpoint's tuned thresholds, 0.5 or a number), satisfy `where`, ranked by the
    expression's probability (attributes taken as independent); `top` <= 0 keeps all."""
    # fail on a typo or a bad number before predicting
    expr = parse_expression(where, predictor.attributes)
    thresholds, label = resolve_thresholds(predictor, threshold)
    if not 0.0 <= min_score <= 1.0:
        raise CelebhpoError(f"min_score must be between 0 and 1, got {min_score}")
    if sheet is not None:
        check_writable(sheet, "--sheet")
    folder = Path(image_dir)
    got = predict_folder(predictor, folder, batch_size=batch_size, progress=progress)
    if not got.names:
        raise DataError(f"none of the {len(got.skipped)} images in {folder} could be read: "
                        f"{first_reasons(got.skipped)}; check the files")
    frame, n_matches = rank(expr, got.names, got.probs, predictor.attributes, thresholds,
                            top=top, min_score=min_score)
    frame.insert(0, "image", [str(folder / n) for n in frame.pop("image")])
    result = RetrievalResult(frame=frame, expression=str(expr), n_images=len(got.names),
                             n_matches=n_matches, n_predicted=got.n_predicted,
                             n_cached=got.n_cached, skipped=got.skipped,
                             cache_path=got.cache_path, threshold_label=label)
    if n_matches == 0:
        result.empty = explain_empty(expr, [str(folder / n) for n in got.names], got.probs,
                                     predictor.attributes, thresholds, min_score=min_score)
    if sheet is not None:
        with output_errors(sheet, "--sheet"):
            result.sheet = _sheet(result, sheet)
    return result


def _sheet(result: RetrievalResult, out: str | Path) -> Path:
    """The contact sheet of the matches, or of the closest faces when nothing matched."""
    shown = result.frame
    title = (f"{result.expression}  ({result.n_matches} of {result.n_images} match, "
             f"{result.threshold_label} thresholds)")
    if result.empty is not None and len(result.empty.closest):
        shown, title = result.empty.closest, f"no match for {result.expression}; the closest:"
    captions = [f"{s:.3f}  {Path(p).name}" for p, s in zip(shown["image"], shown["score"],
                                                        strict=True)]
    return contact_sheet(list(shown["image"]), captions, out, title=title)


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


# -- the per-folder prediction cache ---------------------------------------------------------
def cache_dir() -> Path:
    """$CELEBHPO_CACHE_DIR, else $XDG_CACHE_HOME/celebhpo, else ~/.cache/celebhpo."""
    return user_cache_dir()


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

    entries: dict[str, Entry] = {}
    todo: list[Path] = []
    for p in files:
        st = stats[p.name]
        hit = old.get(p.name)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            entries[p.name] = hit
        else:
            todo.append(p)
    n_cached = len(entries)
    kept, probs, bad = predict_paths(predictor, todo, batch_size, progress)
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


def _load_cache(path: Path, model_hash: str, n_attr: int) -> dict[str, Entry]:
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


def _save_cache(path: Path, model_hash: str, entries: dict[str, Entry], n_attr: int) -> None:
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
        with atomic_open(path, "wb") as f:
            np.savez(f, **arrays)
    except OSError as e:
        # a read-only cache folder costs speed next time, not this answer
        warnings.warn(f"could not write the prediction cache {path}: {e}", stacklevel=3)
