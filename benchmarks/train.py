"""Training throughput on the CPU: celebhpo's fit path vs a seed-style training loop.

Same images, same model (ResNet50 + the 40-label head, 64x64, batch 64), same machine, one run.

- seed-style: a torch Dataset that opens each JPEG with PIL per item (Resize((64, 64)),
  RandomHorizontalFlip, ToTensor, Normalize) in a DataLoader (batch 64, 2 workers); NCHW fp32;
  per batch `loss.item()` and an accuracy count read back to the host, as the notebooks did.
- celebhpo fit default: the decode-once uint8 cache (built once, timed apart) + BatchLoader +
  `train.train_one_epoch`, exactly as `fit` runs it by default: channels_last, and bf16
  autocast when `[train] amp = "auto"` finds native bf16 on this CPU (training.amp).
- for comparison: the same loop in fp32 NCHW, and fp32 channels_last.
- the cost of validating in fp32 (what fit does) rather than bf16: one pass over `--val`
  images each way, as a share of a bf16 training epoch of 8x as many images (the demo's
  train/val ratio).

Each path runs `--warmup` batches, then `--rounds` rounds of `--batches` timed batches; the
paths take turns round by round and the median round counts, so a busy shared machine does
not decide the result. Target (issue 16): the default path >= 1.5x the seed-style loop on a
CPU with native bf16, >= 1.2x without.

    python benchmarks/train.py                      # ~5 minutes on 2 busy cores
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
from celebhpo.training.amp import cpu_has_native_bf16, resolve_amp
from celebhpo.training.loop import (
    class_weights,
    evaluate,
    make_loss,
    make_optimizer,
    train_one_epoch,
)
from celebhpo.training.models import create_model

SEED = "seed-style (PIL DataLoader, fp32 NCHW)"


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


def eval_seconds(model: nn.Module, loader: BatchLoader, amp: bool, rounds: int) -> float:
    """Median seconds of one evaluation pass (fit's `evaluate`) over `loader`."""
    evaluate(model, loader, amp=amp)  # warm-up
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        evaluate(model, loader, amp=amp)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


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
    ap.add_argument("--val", type=int, default=256, help="images in the validation-cost pass")
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

        def loader(channels_last: bool) -> BatchLoader:
            return BatchLoader(decoded.array, ours_labels, args.batch, shuffle=True, flip=True,
                               device=device, channels_last=channels_last, drop_last=True)

        amp = resolve_amp("auto", device)  # what fit's default chooses here
        default = f"celebhpo fit default (channels_last, {'bf16' if amp else 'fp32'})"
        runners = {
            SEED: seed_style_runner(model(), seed_loader, labels, device),
            default: ours_runner(model(True), loader(True), ours_labels, device, amp=amp),
            "celebhpo fp32 NCHW": ours_runner(model(), loader(False), ours_labels, device,
                                              amp=False),
            "celebhpo fp32 channels_last": ours_runner(model(True), loader(True), ours_labels,
                                                       device, amp=False),
        }
        rates = measure(runners, args.warmup, args.batches, args.rounds)
        # fit validates in fp32 whatever amp is: its cost against bf16 validation
        val = BatchLoader(decoded.array[:args.val], ours_labels[:args.val], args.val,
                          shuffle=False, flip=False, device=device, channels_last=True)
        vm = model(True)
        fp32_s, bf16_s = (eval_seconds(vm, val, amp=a, rounds=args.rounds) for a in (False, True))

    base = rates[SEED]
    width = max(len(k) for k in rates)
    for name, rate in rates.items():
        print(f"{name:<{width}}  {rate:8.1f} images/s  {rate / base:5.2f}x")
    print(f"one-time decode of the cache: {build:.2f} s for {len(paths)} images (not in the rates)")
    epoch_s = 8 * args.val / rates[default]  # a training epoch of 8x the validation images
    print(f"validation of {args.val} images: fp32 {fp32_s:.2f} s, bf16 {bf16_s:.2f} s; fp32 "
          f"costs {100 * (fp32_s - bf16_s) / (epoch_s + bf16_s):+.1f}% of a default epoch with "
          "8x as many training images")
    print(f"native bf16 on this CPU: {cpu_has_native_bf16()}; target (issue 16): default >= "
          f"{1.5 if cpu_has_native_bf16() else 1.2}x the seed-style loop")


if __name__ == "__main__":
    main()
