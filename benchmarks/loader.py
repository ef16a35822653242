"""Loader throughput: celebhpo's decode-once cache + BatchLoader vs the seed's pipeline.

Same images, same machine, one run. The seed pipeline is a torch Dataset that opens each JPEG
with PIL per item and applies torchvision's Resize((64, 64)), RandomHorizontalFlip, ToTensor and
Normalize, in a DataLoader with batch 64 and 2 workers. Ours decodes once into a uint8 memmap
(timed separately: the one-time cache build), then batches with tensor ops.

    python benchmarks/loader.py --n 2000            # synthesizes faces into a temp folder
    python benchmarks/loader.py --root data/celeba --n 20000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from seed_pipeline import SeedDataset  # benchmarks/ is on sys.path when run as a script
from torch.utils.data import DataLoader

from celebhpo.data import BatchLoader, read_celeba, synthesize
from celebhpo.data.cache import decode_images

SIZE, BATCH = 64, 64


def images_per_s(loader, epochs: int) -> tuple[float, float]:
    """(steady-state images/s: the median epoch of `epochs` after one warm-up epoch, seconds
    of the warm-up epoch). The median keeps a noisy shared machine from deciding the result."""
    t = time.perf_counter()
    for x, _ in loader:  # warm-up: worker start-up, page cache
        x.sum()
    first = time.perf_counter() - t
    rates = []
    for _ in range(epochs):
        n, t = 0, time.perf_counter()
        for x, _ in loader:
            x.sum()  # touch the batch, as a model would
            n += len(x)
        rates.append(n / (time.perf_counter() - t))
    return float(np.median(rates)), first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="images to use (default 2000)")
    ap.add_argument("--root", type=Path, default=None, help="a CelebA folder (default: synthesize)")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch threads for our loader (default: all cores, as training uses "
                         "and as the seed's 2 workers do; on a busy shared machine 1 can be "
                         "steadier, since spinning OpenMP threads collapse under contention)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or synthesize(Path(tmp) / "synthetic", n=args.n, seed=0, progress=False)
        ds = read_celeba(root)
        rows = np.arange(min(args.n, len(ds.ids)))
        paths, labels = ds.paths(rows), ds.labels[rows].astype(np.float32)
        print(f"{len(paths)} images from {root} ({ds.layout}), {SIZE}x{SIZE}, batch {BATCH}, "
              f"CPU, {os.cpu_count()} cores, {args.threads} torch thread(s), torch {torch.__version__}")

        seed = DataLoader(SeedDataset(paths, labels, SIZE), batch_size=BATCH, shuffle=True,
                          num_workers=2, persistent_workers=True)
        seed_ips, seed_epoch = images_per_s(seed, args.epochs)
        del seed  # stop its workers before timing ours

        t = time.perf_counter()
        decoded = decode_images(paths, SIZE, "squash", Path(tmp) / "cache", progress=False)
        build = time.perf_counter() - t
        ours = BatchLoader(decoded.array, labels[decoded.kept], BATCH, shuffle=True, flip=True)
        ours_ips, _ = images_per_s(ours, 3 * args.epochs)

    print(f"seed-style loader (PIL per item, 2 workers): {seed_ips:10.0f} images/s")
    print(f"celebhpo BatchLoader (decode-once cache):    {ours_ips:10.0f} images/s")
    print(f"ratio: {ours_ips / seed_ips:.1f}x (target >= 30x)")
    print(f"one-time cache build: {build:.2f} s vs one seed-style epoch: {seed_epoch:.2f} s "
          f"(first epoch, incl. worker start)")


if __name__ == "__main__":
    main()
