"""Decode once: all selected images as one uint8 (N, S, S, 3) .npy, memory-mapped.

A cache file is keyed by a hash of the image paths, their sizes and mtimes, the crop and the
size, so it is rebuilt exactly when one of those changes. It is built in parallel into a
temporary file that is renamed into place only when complete (with its sidecar .json, holding
which images were kept and which were skipped, renamed first): a killed build never leaves a
usable partial cache. A per-key lock file stops two workers on one machine from building the
same cache at once; the second one waits and then reuses the first one's result.

A worker asked to stop (celebhpo.stopping) answers between chunks of the build, and while it
waits for another worker's build: the pool is ended, the temporary file removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import signal
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from celebhpo._io import atomic_write
from celebhpo.data.images import CROPS, load_image
from celebhpo.errors import DataError
from celebhpo.stopping import StopRequest

CACHE_VERSION = 2  # bump when load_image's output changes for the same inputs (2: EXIF, 16-bit)
_CHUNK = 64  # images per work unit: large enough to amortize IPC, small for a smooth bar
_POLL = 0.1  # seconds between looks at a stop request while waiting for the pool or a lock
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class DecodedImages:
    array: np.ndarray  # (N_kept, S, S, 3) uint8, memory-mapped read-only
    kept: np.ndarray  # (N_kept,) int64 indices into the `paths` given
    bad: list[tuple[str, str]]  # (file name, reason) of skipped images
    path: Path | None = None  # the .npy file
    reused: bool = False  # True when an existing cache was used


def cache_key(paths: Sequence[str | Path], size: int, crop: str) -> str:
    """sha256 over the paths, their sizes and mtimes (ns), the crop, the size and the format."""
    h = hashlib.sha256(f"celebhpo-cache v{CACHE_VERSION} {size} {crop} {len(paths)}\n".encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{os.path.abspath(p)}\0missing\n".encode())
    return h.hexdigest()


def decode_images(paths: Sequence[str | Path], size: int, crop: str, cache_dir: str | Path,
                  on_bad: str = "skip", workers: int = 0, progress: bool = True,
                  stop: StopRequest | None = None) -> DecodedImages:
    """Decode `paths` into a cached uint8 array, or reuse the cache when nothing changed.

    on_bad="skip": missing or corrupt images are left out and listed in `.bad` (name, reason);
    `.kept` maps rows of `.array` back to `paths`. on_bad="fail": the first one raises DataError
    naming the image. workers=0 uses every core. `stop`: raise Interrupted between chunks
    of the build (and while waiting for another process's build) once a stop is requested.
    """
    if on_bad not in ("skip", "fail"):
        raise DataError(f"unknown on_bad_image {on_bad!r}; use skip or fail")
    if crop not in CROPS:
        raise DataError(f"unknown crop {crop!r}; use squash or center")
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{cache_dir}: cannot create the image cache folder ({e.strerror}); "
                        "set data.cache_dir to a writable folder") from e
    key = cache_key(paths, size, crop)
    stem = f"images-{size}px-{crop}-{key[:20]}"
    npy, meta = cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"

    with _lock(cache_dir / f"{stem}.lock", stop):
        found = _open(npy, meta, key, on_bad)
        if found is not None:
            return found
        _remove_temps(cache_dir, stem)
        _clean_stale(cache_dir, stem)
        _build(paths, size, crop, npy, meta, key, on_bad, workers, progress, stop)
        found = _open(npy, meta, key, on_bad)
    if found is None:  # only if someone deleted the files under us
        raise DataError(f"{npy}: the image cache vanished right after it was written; run again")
    found.reused = False
    return found


def _open(npy: Path, meta: Path, key: str, on_bad: str) -> DecodedImages | None:
    """The finished cache for `key`, or None when there is none (or it is unusable)."""
    if not (npy.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        array = np.load(npy, mmap_mode="r")
    except (OSError, ValueError):
        return None
    kept = np.asarray(info.get("kept", []), dtype=np.int64)
    if info.get("key") != key or array.shape[0] != len(kept) or array.dtype != np.uint8:
        return None
    bad = [(str(n), str(r)) for n, r in info.get("bad", [])]
    if bad and on_bad == "fail":
        name, reason = bad[0]
        raise DataError(f"{info['bad_paths'][0]}: {reason}; fix or remove the image, or set "
                        f"data.on_bad_image = \"skip\" ({len(bad)} unreadable)")
    return DecodedImages(array=array, kept=kept, bad=bad, path=npy, reused=True)


def _build(paths: Sequence[str | Path], size: int, crop: str, npy: Path, meta: Path, key: str,
           on_bad: str, workers: int, progress: bool, stop: StopRequest | None
           ) -> tuple[np.ndarray, list]:
    n = len(paths)
    pid = os.getpid()
    tmp = npy.with_name(f"{npy.stem}.tmp-{pid}.npy")  # workers open it by this name
    str_paths = [str(p) for p in paths]
    bad_idx: dict[int, str] = {}
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        del out  # workers open it themselves; the header is on disk
        chunks = [(tmp, size, crop, start, str_paths[start:start + _CHUNK])
                  for start in range(0, n, _CHUNK)]
        workers = workers or os.cpu_count() or 1
        workers = max(1, min(workers, len(chunks)))
        bar = _bar(n, progress)
        results = _run(chunks, workers, stop or StopRequest())
        try:
            for done, bad in results:
                bar.update(done)
                for i, reason in bad:
                    if on_bad == "fail":
                        raise DataError(f"{str_paths[i]}: {reason}; fix or remove the image, or "
                                        'set data.on_bad_image = "skip"')
                    bad_idx[i] = reason
        finally:
            results.close()  # on a failure: stops the pool now, not at garbage collection
            bar.close()
        kept = np.array([i for i in range(n) if i not in bad_idx], dtype=np.int64)
        if bad_idx:
            _compact(tmp, kept, (size, size, 3))
        bad_sorted = sorted(bad_idx.items())
        # sidecar first: a .json without its .npy is ignored; an .npy is never without its .json
        atomic_write(meta, json.dumps({
            "key": key, "size": size, "crop": crop, "n_paths": n, "kept": kept.tolist(),
            "bad": [[Path(str_paths[i]).name, r] for i, r in bad_sorted],
            "bad_paths": [str_paths[i] for i, _ in bad_sorted],
        }))
        os.replace(tmp, npy)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return kept, bad_sorted


def _run(chunks: list, workers: int, stop: StopRequest
         ) -> Generator[tuple[int, list[tuple[int, str]]]]:
    """Each chunk's (count, bad images), in any order; Interrupted between chunks once `stop`
    holds a request (leaving the generator ends the pool)."""
    if workers == 1:
        for chunk in chunks:
            stop.check()
            yield _decode_chunk(chunk)
        return
    # fork: workers share the parent's imports; they touch only PIL, numpy and their own
    # memmap. An executor, not a multiprocessing.Pool: a Pool whose worker was killed (Ctrl-C
    # reaches the whole process group) can hang for good in terminate()
    pool = ProcessPoolExecutor(workers, mp_context=get_context("fork"),
                               initializer=_die_with_parent, initargs=(os.getpid(),))
    try:
        pending = {pool.submit(_decode_chunk, chunk) for chunk in chunks}
        while pending:
            stop.check()
            done, pending = wait(pending, timeout=_POLL, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    except BrokenProcessPool:
        stop.wait(1.0)  # killed by the signal that asked this process to stop?
        stop.check()
        raise DataError("a process decoding the image cache died (killed, or out of memory); "
                        "run again") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # running chunks end; queued ones never start


def _die_with_parent(parent: int) -> None:
    """Pool initializer: a decoding process ends with the process that started it, even one
    that ended at once (kill -9, a second Ctrl-C): an orphan would hold the cache's lock (it
    shares the lock file's descriptor) and the next worker would wait for it for good."""
    with contextlib.suppress(OSError, AttributeError):  # prctl is Linux's
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it was gone before prctl
        os._exit(1)


def _decode_chunk(job: tuple[Path, int, str, int, list[str]]) -> tuple[int, list[tuple[int, str]]]:
    """Worker: decode one chunk into the temp memmap -> (count, [(index, reason)])."""
    tmp, size, crop, start, paths = job
    out = np.load(tmp, mmap_mode="r+")  # (N, S, S, 3)
    bad: list[tuple[int, str]] = []
    for k, p in enumerate(paths):
        try:
            out[start + k] = load_image(p, size, crop)
        except DataError as e:
            msg = str(e)
            bad.append((start + k, msg[len(p) + 2:] if msg.startswith(p + ": ") else msg))
    out.flush()
    del out
    return len(paths), bad


def _compact(tmp: Path, kept: np.ndarray, shape: tuple[int, int, int]) -> None:
    """Rewrite `tmp` with only the `kept` rows (skipped images leave holes otherwise)."""
    src = np.load(tmp, mmap_mode="r")
    tmp2 = tmp.with_name(tmp.stem + "-compact.npy")
    dst = np.lib.format.open_memmap(tmp2, mode="w+", dtype=np.uint8, shape=(len(kept), *shape))
    step = 4096
    for a in range(0, len(kept), step):
        dst[a:a + step] = src[kept[a:a + step]]
    dst.flush()
    del dst, src
    os.replace(tmp2, tmp)


@contextlib.contextmanager
def _lock(path: Path, stop: StopRequest | None) -> Iterator[None]:
    """An exclusive advisory lock held while one process builds or checks a cache key; waiting
    for it answers `stop`."""
    with open(path, "a+b") as f:
        if stop is None:
            fcntl.flock(f, fcntl.LOCK_EX)
        else:
            while True:
                stop.check()
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:  # another process is building this key
                    stop.wait(_POLL)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_temps(cache_dir: Path, stem: str) -> None:
    """Leftovers of a killed build of this key (we hold its lock, so none is in progress): its
    array, and a sidecar that atomic_write had not renamed yet (named `.STEM.json.*`)."""
    for f in [*cache_dir.glob(f"{stem}.tmp-*"), *cache_dir.glob(f".{stem}.json.*")]:
        with contextlib.suppress(FileNotFoundError):
            f.unlink()


def _clean_stale(cache_dir: Path, current: str) -> None:
    """Temp files of other keys whose build is not running (their lock is free)."""
    stems = {f.name.split(".tmp-")[0] for f in cache_dir.glob("*.tmp-*")} - {current}
    for stem in stems:
        lock = cache_dir / f"{stem}.lock"
        try:
            f = open(lock, "a+b")  # noqa: SIM115 - held across the try below
        except OSError:
            continue
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # being built right now
            try:
                _remove_temps(cache_dir, stem)
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _bar(total: int, enabled: bool) -> tqdm:
    return tqdm(total=total, desc="decoding images", unit="img", disable=not enabled,
                dynamic_ncols=True)
