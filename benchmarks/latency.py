"""Latency on a quiet vs a busy machine, side by side, and the cost no load changes.

For each configuration (architecture @ image size, the six points of studies/front.toml by
default), the same model is measured with the CPU quiet and again with `--hogs` busy
processes (`while True: pass`) beside it, two ways:

- old: the method before issue 24 (2 warm-up + 5 timed forwards at batch 1 on all torch
  threads, the median), with no check of the spread;
- new: training.latency.measure_latency (torch.utils.benchmark blocked_autorange on 1 thread,
  re-measured once when noisy, then flagged: spread > 20% or on-CPU < 90%).

It prints each figure, loaded / quiet, the flag, and GFLOPs per image (torch.utils.flop_counter,
the same under any load). The claim it checks: a new figure is within 1.5x of its quiet one or
flagged, and the front's order by GFLOPs never depends on the load. "Quiet" is only as quiet as
the machine is: its own flag says so.

    python benchmarks/latency.py                      # 6 configurations, ~2 minutes on 2 cores
    python benchmarks/latency.py --configs resnet18@32,resnet50@64 --hogs 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

from celebhpo.objectives import latency_noise
from celebhpo.training.latency import count_gflops, measure_latency
from celebhpo.training.models import create_model

FRONT = "resnet18@32,resnet18@48,resnet18@64,resnet50@32,resnet50@48,resnet50@64"


def old_latency_ms(model: torch.nn.Module, size: int) -> float:
    """The pre-issue-24 figure: median of 5 timed batch-1 forwards after 2, all threads."""
    x = torch.randn(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        for _ in range(5):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure_all(models: dict[str, tuple[torch.nn.Module, int]], min_run_time: float
                ) -> dict[str, tuple[float, dict[str, float]]]:
    return {name: (old_latency_ms(m, size),
                   measure_latency(m, size, "cpu", batch_sizes=(1,), min_run_time=min_run_time))
            for name, (m, size) in models.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=FRONT, help="ARCH@SIZE,... (default: front.toml's)")
    ap.add_argument("--hogs", type=int, default=os.cpu_count() or 2,
                    help="busy processes beside the loaded measurement (default: one per core)")
    ap.add_argument("--min-run-time", type=float, default=0.5)
    args = ap.parse_args()
    torch.manual_seed(0)
    models = {}
    for item in args.configs.split(","):
        arch, size = item.split("@")
        models[item] = (create_model(arch, num_features=256, dropout=0.0, pretrained="none")
                        .to(memory_format=torch.channels_last).eval(), int(size))
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()} (old) / 1 (new), load average "
          f"{os.getloadavg()[0]:.1f} before")
    quiet = measure_all(models, args.min_run_time)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(args.hogs)]
    try:
        time.sleep(0.5)
        loaded = measure_all(models, args.min_run_time)
    finally:
        for p in hogs:
            p.kill()
            p.wait()
    report(models, quiet, loaded, args.hogs)


def report(models: dict, quiet: dict, loaded: dict, hogs: int) -> None:
    print(f"\n{'config':<12} {'GFLOPs':>7} | {'old quiet':>9} {'old load':>9} {'ratio':>6} | "
          f"{'new quiet':>9} {'new load':>9} {'ratio':>6}  flag (loaded; {hogs} hogs)")
    held = []
    for name, (model, size) in models.items():
        (oq, nq), (ol, nl) = quiet[name], loaded[name]
        gflops = count_gflops(model, size)
        assert nq["gflops"] == nl["gflops"] == gflops  # a count: no load moves it
        ratio = nl["latency_ms"] / nq["latency_ms"]
        flag = latency_noise(nl)
        held.append(ratio <= 1.5 or bool(flag))
        quiet_flag = latency_noise(nq)
        print(f"{name:<12} {gflops:>7.3f} | {oq:>9.2f} {ol:>9.2f} {ol / oq:>5.1f}x | "
              f"{nq['latency_ms']:>9.2f} {nl['latency_ms']:>9.2f} {ratio:>5.1f}x  "
              f"{flag or '-'}" + (f" (quiet one flagged too: {quiet_flag})" if quiet_flag else ""))
    order = sorted(models, key=lambda n: count_gflops(*models[n]))
    print(f"\nby GFLOPs (any load): {' < '.join(order)}")
    for label, figures in (("old quiet", {n: quiet[n][0] for n in models}),
                           ("old loaded", {n: loaded[n][0] for n in models}),
                           ("new quiet", {n: quiet[n][1]["latency_ms"] for n in models}),
                           ("new loaded", {n: loaded[n][1]["latency_ms"] for n in models})):
        print(f"by {label + ' latency:':<20} {' < '.join(sorted(models, key=figures.get))}")
    print(f"\nnew figures within 1.5x of quiet or flagged: {sum(held)} of {len(held)}")


if __name__ == "__main__":
    main()
