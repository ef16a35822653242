"""GPU training throughput: celebhpo's path vs the seed-style pipeline on the same device.

1. Correctness first (printed PASS/FAIL; exit status 1 if any fails):
   - the device BatchLoader == the CPU one (same seed) on fit's path (channels_last: the NHWC
     `addcmul` normalize), on NCHW, and on the host fallback's pinned double buffer;
   - bf16-autocast logits are close to fp32 logits (same weights, same batch), when fit's
     `amp = "auto"` picks bf16 on this device;
   - the loss decreases over a few steps of our training path.
2. A table, per architecture (resnet50 and densenet121 at 64x64 by default): training
   images/s of our path as fit runs it by default (GPU-resident uint8 data, flip/normalize on
   the device, bf16 where native, channels_last, TF32, batch 256); the seed-style pipeline
   (per-item PIL DataLoader, fp32, NCHW, batch 64) on the same device and images; the ratio;
   evaluation images/s (`train.evaluate` in fp32, as fit validates, batch 1024); and the
   projected time of one
   seed-grid trial (40,000 images x 8 epochs + 8 validations of 5,000) and of the 8-trial
   grid (half the trials per architecture).

Without a GPU it runs on the CPU (the table says "cpu"); use --quick there.

    python benchmarks/gpu.py                 # on a GPU machine: a few minutes
    python benchmarks/gpu.py --quick         # CPU smoke run: tiny step counts

Targets (issue 8, one H200): ResNet50 >= 20,000 images/s, >= 10x the seed-style pipeline,
the whole seed grid in under 5 minutes.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from celebhpo.data import BatchLoader, read_celeba, synthesize
from celebhpo.data.cache import decode_images
from celebhpo.training.amp import enable_fast_fp32, resolve_amp
from celebhpo.training.devices import resolve_device
from celebhpo.training.loop import (
    evaluate,
    make_loss,
    make_optimizer,
    train_one_epoch,
)
from celebhpo.training.models import create_model

SEED_GRID_IMAGES, SEED_GRID_EPOCHS, SEED_GRID_VAL, SEED_GRID_TRIALS = 40_000, 8, 5_000, 8


def _seed_helpers():
    """SeedDataset and seed_style_runner from benchmarks/train.py (one definition of the
    seed's loop for both benchmarks)."""
    spec = importlib.util.spec_from_file_location("_bench_train", Path(__file__).with_name(
        "train.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.SeedDataset, mod.seed_style_runner


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- correctness -----------------------------------------------------------------------------
def check_loader(images: np.ndarray, labels: np.ndarray, device: torch.device,
                 channels_last: bool, staging: bool = False) -> bool:
    """The device loader (or its double-buffered host fallback) == the CPU loader."""
    kw = dict(shuffle=True, flip=True, seed=7, channels_last=channels_last)
    cpu = BatchLoader(images, labels, 32, device="cpu", **kw)
    dev = BatchLoader(images, labels, 32, device=device, staging=staging, **kw)
    for loader in (cpu, dev):
        loader.set_epoch(3)
    ok = True
    for (xc, yc), (xd, yd), _ in zip(cpu, dev, range(3), strict=False):
        ok &= bool(torch.allclose(xc, xd.cpu(), atol=1e-5)) and bool(torch.equal(yc, yd.cpu()))
        ok &= xd.is_contiguous(memory_format=torch.channels_last) == channels_last
    return ok


def check_bf16(model: nn.Module, x: torch.Tensor) -> tuple[bool, float]:
    """Relative max difference of bf16-autocast logits vs fp32 logits (eval mode)."""
    model.eval()
    with torch.inference_mode():
        ref = model(x).float()
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            low = model(x).float()
    rel = float((low - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
    return rel < 0.05, rel


def check_loss_decreases(model: nn.Module, loader: BatchLoader, labels: np.ndarray,
                         device: torch.device, amp: bool, steps: int) -> tuple[bool, list]:
    """A few steps on one repeated batch: the training loss must go down."""
    x, y = next(iter(loader))
    one = _Fixed(x, y)
    loss_fn = make_loss(labels, "pos_weight", device)
    opt = make_optimizer(model, "adam", 1e-3, 0.0, device)
    losses = [train_one_epoch(model, one, loss_fn, opt, amp=amp).loss for _ in range(steps)]
    return losses[-1] < losses[0], losses


class _Fixed:
    """A one-batch loader."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return 1

    def __iter__(self):
        yield self.x, self.y


# -- throughput ------------------------------------------------------------------------------
def train_rate(model: nn.Module, loader: BatchLoader, labels: np.ndarray,
               device: torch.device, amp: bool, warmup: int, steps: int) -> float:
    """Images/s of train_one_epoch over `steps` batches (epochs repeat when data runs out)."""
    loss_fn = make_loss(labels, "pos_weight", device)
    opt = make_optimizer(model, "adam", 1e-3, 0.0, device)
    epoch = 0

    def run(n: int) -> tuple[int, float]:
        nonlocal epoch
        images, seconds = 0, 0.0
        while n > 0:
            epoch += 1
            loader.set_epoch(epoch)
            s = train_one_epoch(model, loader, loss_fn, opt, epoch=epoch, amp=amp, max_batches=n)
            images, seconds, n = images + s.images, seconds + s.seconds, n - len_batches(s, loader)
        return images, seconds

    run(warmup)
    images, seconds = run(steps)
    return images / seconds


def len_batches(stats, loader: BatchLoader) -> int:
    return max(1, -(-stats.images // loader.batch_size))


def eval_rate(model: nn.Module, loader: BatchLoader, device: torch.device, amp: bool,
              repeats: int) -> float:
    loss_fn = nn.BCEWithLogitsLoss()
    evaluate(model, loader, loss_fn, amp=amp)  # warm-up
    rates = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        out = evaluate(model, loader, loss_fn, amp=amp)  # ends with a device->host copy
        rates.append(len(out.probs) / (time.perf_counter() - t))
    return statistics.median(rates)


def seed_rate(model: nn.Module, dataset, labels: np.ndarray, device: torch.device,
              batch: int, workers: int, warmup: int, steps: int, runner_factory) -> float:
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, drop_last=True)
    run = runner_factory(model, loader, labels, device)
    run(warmup)
    images, seconds = run(steps)
    return images / seconds


def _fmt_time(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny step counts (CPU smoke run)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--archs", default="resnet50,densenet121")
    ap.add_argument("--root", type=Path, default=None, help="a CelebA folder (default: synthesize)")
    ap.add_argument("--n", type=int, default=None, help="images (default 4096; --quick 192)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=None, help="our batch (default 256; quick 32)")
    ap.add_argument("--seed-batch", type=int, default=None, help="default 64; quick 32")
    ap.add_argument("--seed-workers", type=int, default=None,
                    help="seed-style DataLoader workers (default min(8, cores); quick 2)")
    ap.add_argument("--steps", type=int, default=None, help="timed batches (default 40; quick 2)")
    ap.add_argument("--warmup", type=int, default=None, help="default 10; quick 1")
    args = ap.parse_args()
    q = args.quick
    n = args.n or (192 if q else 4096)
    batch = args.batch or (32 if q else 256)
    seed_batch = args.seed_batch or (32 if q else 64)
    workers = args.seed_workers if args.seed_workers is not None else (
        2 if q else min(8, os.cpu_count() or 1))
    steps = args.steps or (2 if q else 40)
    warmup = args.warmup or (1 if q else 10)
    device = resolve_device(args.device)
    on_cuda = device.type == "cuda"
    amp = resolve_amp("auto", device)  # what fit's default picks on this device
    enable_fast_fp32(device)  # as fit: TF32 for the fp32 passes, cuDNN autotuning
    where = torch.cuda.get_device_name(device) if on_cuda else "cpu"
    SeedDataset, seed_style_runner = _seed_helpers()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or synthesize(Path(tmp) / "synthetic", n=n, seed=0, progress=False)
        ds = read_celeba(root)
        rows = np.arange(min(n, len(ds.ids)))
        paths, labels = ds.paths(rows), ds.labels[rows].astype(np.float32)
        decoded = decode_images(paths, args.size, "squash", Path(tmp) / "cache", progress=False)
        images, ours_labels = decoded.array, labels[decoded.kept]
        print(f"device: {where} | torch {torch.__version__} | {len(images)} images "
              f"{args.size}x{args.size} | ours batch {batch}, seed-style batch {seed_batch} "
              f"({workers} workers) | {warmup} warm-up + {steps} timed batches")

        # 1. correctness
        archs = [a.strip() for a in args.archs.split(",") if a.strip()]
        torch.manual_seed(0)
        probe = create_model(archs[0]).to(device)
        x = next(iter(BatchLoader(images, ours_labels, min(batch, 64), shuffle=False,
                                  flip=False, device=device)))[0]
        results = {
            "device loader == CPU loader (channels_last, fit's path)": (
                check_loader(images, ours_labels, device, channels_last=True), ""),
            "device loader == CPU loader (NCHW)": (
                check_loader(images, ours_labels, device, channels_last=False), ""),
            "host fallback (double-buffered) == CPU loader": (
                check_loader(images, ours_labels, device, channels_last=True, staging=True), ""),
        }
        if amp:
            ok, rel = check_bf16(probe, x)
            results["bf16 logits close to fp32"] = (ok, f"max rel diff {rel:.4f} (< 0.05)")
        loader = BatchLoader(images, ours_labels, min(batch, 64), shuffle=True, flip=False,
                             device=device)
        ok, losses = check_loss_decreases(probe, loader, ours_labels, device, amp,
                                          steps=5 if q else 10)
        results["loss decreases"] = (ok, " -> ".join(f"{v:.3f}" for v in losses[::2]))
        del probe
        for name, (ok, detail) in results.items():
            print(f"  {'PASS' if ok else 'FAIL'}  {name}  {detail}")

        # 2. throughput
        table = []
        for arch in archs:
            torch.manual_seed(0)
            # exactly fit's default: channels_last model and loader, amp as resolved above
            ours_model = create_model(arch).to(device, memory_format=torch.channels_last)
            enable_fast_fp32(device)
            train_loader = BatchLoader(images, ours_labels, batch, shuffle=True, flip=True,
                                       device=device, channels_last=True, drop_last=True)
            ours = train_rate(ours_model, train_loader, ours_labels, device, amp, warmup, steps)
            val_loader = BatchLoader(images, ours_labels, 1024 if not q else 64, shuffle=False,
                                     flip=False, device=device, channels_last=True)
            ev = eval_rate(ours_model, val_loader, device, False, 3 if not q else 1)  # fp32
            del ours_model
            if on_cuda:
                torch.backends.cudnn.benchmark = False  # the seed did not set it
                torch.cuda.empty_cache()
            torch.manual_seed(0)
            seed = seed_rate(create_model(arch).to(device), SeedDataset(paths, labels, args.size),
                             labels, device, seed_batch, workers, warmup, steps,
                             seed_style_runner)
            trial = (SEED_GRID_IMAGES * SEED_GRID_EPOCHS / ours
                     + SEED_GRID_VAL * SEED_GRID_EPOCHS / ev)
            seed_trial = SEED_GRID_IMAGES * SEED_GRID_EPOCHS / seed  # its eval is extra
            table.append((arch, ours, seed, ev, trial, seed_trial))

    print()
    print(f"[{'cuda: ' + where if on_cuda else 'cpu'}] training at {args.size}x{args.size}"
          f" (ours as fit's default: {'bf16 autocast' if amp else 'fp32'}, channels_last"
          f"{', GPU-resident data' if on_cuda else ''}; validation fp32)")
    head = (f"{'arch':<12} {'ours img/s':>11} {'seed img/s':>11} {'ratio':>6} "
            f"{'eval img/s':>11} {'trial (ours)':>13} {'trial (seed)':>13}")
    print(head)
    print("-" * len(head))
    per_arch = SEED_GRID_TRIALS / len(table)
    for arch, ours, seed, ev, trial, seed_trial in table:
        print(f"{arch:<12} {ours:>11.0f} {seed:>11.0f} {ours / seed:>5.1f}x {ev:>11.0f} "
              f"{_fmt_time(trial):>13} {_fmt_time(seed_trial):>13}")
    grid = sum(t[4] for t in table) * per_arch
    seed_grid = sum(t[5] for t in table) * per_arch
    print(f"seed grid ({SEED_GRID_TRIALS} trials, {per_arch:g} per arch, "
          f"{SEED_GRID_IMAGES:,} images x {SEED_GRID_EPOCHS} epochs): ours {_fmt_time(grid)}, "
          f"seed-style {_fmt_time(seed_grid)} (ours with its validations, seed-style training "
          "only)")
    if on_cuda:
        print("targets: resnet50 >= 20,000 img/s, >= 10x seed-style, grid < 5 min")
    return 0 if all(ok for ok, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
