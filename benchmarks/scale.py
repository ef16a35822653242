"""Scale toward full CelebA: decode throughput, peak memory, one epoch streamed from the memmap.

Draws `--n` synthetic faces (default 50,000; CelebA has 202,599), then in one run:

1. the decode limit: a plain parallel PIL decode (`load_image` in a fork pool of every core,
   64 images per task, results thrown away): the most images/s this machine decodes;
2. the cache build: `decode_images` into a fresh cache folder (parallel decode straight into
   the memmap, the temp file renamed into place): images/s, as a share of the limit;
3. one training epoch of `--arch` streaming from the memmap (`BatchLoader` on the CPU gathers
   each batch with np.take; the array is never loaded whole), as fit runs it by default;
4. peak RSS of this process (the pools' children are separate) against the array's size,
   and its growth over the peak before decoding: a second copy would add the array's size
   again (at a small --n the interpreter and torch dominate the total).

Targets (issue 16): cache build >= 80% of the decode limit; peak RSS < array + 600 MB.

    python benchmarks/scale.py --n 5000 --arch resnet18       # ~4 minutes on 2 busy cores
    python benchmarks/scale.py                                # 50,000 faces, ResNet50
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from celebhpo.data import BatchLoader, load_image, read_celeba
from celebhpo.data.cache import decode_images
from celebhpo.training.amp import resolve_amp
from celebhpo.training.loop import make_loss, make_optimizer, train_one_epoch
from celebhpo.training.models import create_model

MB = 1 << 20


def _decode(job: tuple[list[str], int]) -> int:
    paths, size = job
    for p in paths:
        load_image(p, size, "squash")
    return len(paths)


def decode_limit(paths: list[str], size: int, workers: int) -> float:
    """Images/s of a plain parallel PIL decode (no writing anywhere)."""
    jobs = [(paths[a:a + 64], size) for a in range(0, len(paths), 64)]
    start = time.perf_counter()
    with get_context("fork").Pool(workers) as pool:
        done = sum(pool.imap_unordered(_decode, jobs))
    return done / (time.perf_counter() - start)


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def one_epoch(array: np.ndarray, labels: np.ndarray, arch: str, batch: int) -> float:
    """Images/s of one training epoch streamed from `array`, as fit's default runs on the CPU."""
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = create_model(arch, num_labels=labels.shape[1]).to(memory_format=torch.channels_last)
    loader = BatchLoader(array, labels, batch, shuffle=True, flip=True, seed=0,
                         channels_last=True, drop_last=True)
    stats = train_one_epoch(model, loader, make_loss(labels, "none", device),
                            make_optimizer(model, "adam", 1e-3, 0.0, device),
                            amp=resolve_amp("auto", device))
    return stats.images / stats.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000, help="synthetic faces")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0, help="decode processes (0: every core)")
    ap.add_argument("--rounds", type=int, default=3, help="limit/build pairs (medians count)")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp one)")
    args = ap.parse_args()
    workers = args.workers or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        t = time.perf_counter()
        root = Path(tmp) / "faces"  # drawn in a child process: its memory is not ours
        subprocess.run([sys.executable, "-m", "celebhpo", "data", "synth", str(root), "--n",
                        str(args.n), "--seed", "0"], check=True, capture_output=True)
        synth_s = time.perf_counter() - t
        rss_start = peak_rss()  # python, torch, celebhpo: before any image is decoded
        ds = read_celeba(root)
        paths = [str(p) for p in ds.paths(np.arange(len(ds.ids)))]
        labels = ds.labels.astype(np.float32)
        print(f"{args.n} synthetic faces drawn in {synth_s:.0f} s; {args.rounds} rounds; {args.size}x{args.size}, "
              f"{workers} decode processes, {os.cpu_count()} cores, torch {torch.__version__}")
        limits, builds = [], []
        for r in range(args.rounds):  # side by side, taking turns; medians count
            limits.append(decode_limit(paths, args.size, workers))
            t = time.perf_counter()
            decoded = decode_images(paths, args.size, "squash", Path(tmp) / f"cache-{r}",
                                    workers=workers, progress=False)
            builds.append(len(paths) / (time.perf_counter() - t))
        limit, build = statistics.median(limits), statistics.median(builds)
        rss_build = peak_rss()
        rate = one_epoch(decoded.array, labels[decoded.kept], args.arch, args.batch)
        rss = peak_rss()
        nbytes = decoded.array.nbytes
    print(f"plain parallel PIL decode (the limit)  {limit:9.1f} images/s")
    print(f"cache build (decode_images)            {build:9.1f} images/s  "
          f"{100 * build / limit:5.1f}% of the limit (target >= 80%)")
    print(f"one epoch of {args.arch} streamed from the memmap: {rate:.1f} images/s")
    print(f"array {nbytes / MB:.0f} MB; peak RSS {rss_start / MB:.0f} MB before decoding "
          f"(imports), {rss_build / MB:.0f} MB after the build, {rss / MB:.0f} MB "
          f"after the epoch; target < array + 600 MB = {(nbytes + 600 * MB) / MB:.0f} MB: "
          f"{'met' if rss < nbytes + 600 * MB else 'NOT met'}; growth over the start "
          f"{(rss - rss_start) / MB:.0f} MB ({(rss - rss_start) / nbytes:.2f}x the array)")


if __name__ == "__main__":
    main()
