"""Training throughput on the CPU: celebhpo's fit path vs a seed-style training loop.

Same images, same model (ResNet50 + the 40-label head, 64x64, batch 64), same machine, one run.

- seed-style: a torch Dataset that opens each JPEG with PIL per item (Resize((64, 64)),
  RandomHorizontalFlip, ToTensor, Normalize) in a DataLoader (batch 64, 2 workers); NCHW fp32;
  per batch `loss.item()` and an accuracy count read back to the host, as the notebooks did.
- celebhpo: the decode-once uint8 cache (built once, timed apart) + BatchLoader +
  `train.train_one_epoch`, exactly as `fit` runs it on a CPU (fp32, NCHW).
- celebhpo + channels_last (fp32), and + bf16 autocast + channels_last: the same loop with
  what `fit` turns on for CUDA (bf16 only where this CPU has native bf16: AVX512-BF16/AMX);
  shown for comparison: `fit` itself uses neither on a CPU.

Each path runs `--warmup` batches, then `--rounds` rounds of `--batches` timed batches; the
paths take turns round by round and the median round counts, so a busy shared machine does
not decide the result. Target (issue 3): celebhpo >= 1.3x the seed-style loop.

    python benchmarks/train.py                      # ~4 minutes on 2 busy cores
    python benchmarks/train.py --arch resnet18 --batches 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from seed_pipeline import SeedDataset  # benchmarks/ is on sys.path when run as a script
from torch import nn
from torch.utils.data import DataLoader

from celebhpo.data import BatchLoader, read_celeba, synthesize
from celebhpo.data.cache import decode_images
from celebhpo.training.loop import class_weights, make_loss, make_optimizer, train_one_epoch
from celebhpo.training.models import create_model


def seed_style_runner(model: nn.Module, loader: DataLoader, labels: np.ndarray,
                      device: torch.device) -> Callable[[int], tuple[int, float]]:
    """A function running n batches of the seed's loop; returns (images, seconds)."""
    weight = torch.tensor(class_weights(labels, "seed"), dtype=torch.float32, device=device)
    criterion = nn.BCEWithLogitsLoss(weight=weight)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = iter(())

    def run(n: int) -> tuple[int, float]:
        nonlocal batches
        model.train()
        images, running_loss, correct = 0, 0.0, 0
        start = time.perf_counter()
        for _ in range(n):
            try:
                x, y = next(batches)
            except StopIteration:
                batches = iter(loader)
                x, y = next(batches)
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss = criterion(out, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running_loss += loss.item()  # a host sync per batch, as in the seed
            correct += ((torch.sigmoid(out) > 0.5) == y).sum().item()
            images += x.shape[0]
        return images, time.perf_counter() - start

    return run


def ours_runner(model: nn.Module, loader: BatchLoader, labels: np.ndarray,
                device: torch.device, amp: bool) -> Callable[[int], tuple[int, float]]:
    """A function running n batches of fit's loop (train_one_epoch); returns (images, s)."""
    loss_fn = make_loss(labels, "seed", device)
    optimizer = make_optimizer(model, "adam", 1e-3, 0.0, device)
    epoch = 0

    def run(n: int) -> tuple[int, float]:
        nonlocal epoch
        epoch += 1
        loader.set_epoch(epoch)
        stats = train_one_epoch(model, loader, loss_fn, optimizer, epoch=epoch, amp=amp,
                                max_batches=n)
        return stats.images, stats.seconds

    return run


def measure(runners: dict[str, Callable[[int], tuple[int, float]]], warmup: int, batches: int,
            rounds: int) -> dict[str, float]:
    """Median images/s per runner; runners take turns (in reversed order every other round)
    so load spikes and order effects hit all of them."""
    for run in runners.values():
        run(warmup)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(rounds):
        order = list(runners.items())
        for name, run in order if r % 2 == 0 else order[::-1]:
            images, seconds = run(batches)
            rates[name].append(images / seconds)
    return {name: statistics.median(r) for name, r in rates.items()}


def cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=None, help="a CelebA folder (default: synthesize)")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=1, help="untimed batches per path")
    ap.add_argument("--batches", type=int, default=2, help="timed batches per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2, help="seed-style DataLoader workers")
    args = ap.parse_args()
    device = torch.device("cpu")
    n = args.batch * (args.warmup + args.batches * args.rounds)  # every image used about once

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or synthesize(Path(tmp) / "synthetic", n=n, seed=0, progress=False)
        ds = read_celeba(root)
        rows = np.arange(min(n, len(ds.ids)))
        paths, labels = ds.paths(rows), ds.labels[rows].astype(np.float32)
        t = time.perf_counter()
        decoded = decode_images(paths, args.size, "squash", Path(tmp) / "cache", progress=False)
        build = time.perf_counter() - t
        ours_labels = labels[decoded.kept]
        print(f"{len(paths)} images from {root}, {args.arch}, {args.size}x{args.size}, batch "
              f"{args.batch}, CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch "
              f"threads), torch {torch.__version__}")

        def model(channels_last: bool = False) -> nn.Module:
            torch.manual_seed(0)
            m = create_model(args.arch, num_labels=labels.shape[1])
            return m.to(memory_format=torch.channels_last) if channels_last else m

        seed_loader = DataLoader(SeedDataset(paths, labels, args.size), batch_size=args.batch,
                                 shuffle=True, num_workers=args.workers,
                                 persistent_workers=args.workers > 0, drop_last=True)
        runners = {
            "seed-style (PIL DataLoader, fp32 NCHW)": seed_style_runner(
                model(), seed_loader, labels, device),
            "celebhpo fit path (fp32 NCHW, as fit on CPU)": ours_runner(
                model(), BatchLoader(decoded.array, ours_labels, args.batch, shuffle=True,
                                     flip=True, device=device, drop_last=True),
                ours_labels, device, amp=False),
        }
        runners["celebhpo + channels_last (fp32)"] = ours_runner(
            model(channels_last=True),
            BatchLoader(decoded.array, ours_labels, args.batch, shuffle=True, flip=True,
                        device=device, channels_last=True, drop_last=True),
            ours_labels, device, amp=False)
        if cpu_has_native_bf16():
            runners["celebhpo + bf16 autocast + channels_last"] = ours_runner(
                model(channels_last=True),
                BatchLoader(decoded.array, ours_labels, args.batch, shuffle=True, flip=True,
                            device=device, channels_last=True, drop_last=True),
                ours_labels, device, amp=True)
        rates = measure(runners, args.warmup, args.batches, args.rounds)

    base = rates["seed-style (PIL DataLoader, fp32 NCHW)"]
    width = max(len(k) for k in rates)
    for name, rate in rates.items():
        print(f"{name:<{width}}  {rate:8.1f} images/s  {rate / base:5.2f}x")
    print(f"one-time decode of the cache: {build:.2f} s for {len(paths)} images (not in the rates)")
    print("target (issue 3): celebhpo fit path >= 1.3x the seed-style loop")


if __name__ == "__main__":
    main()
