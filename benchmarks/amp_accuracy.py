"""Does bf16 cost accuracy? The demo study (studies/demo.toml: 8 grid points, synthetic faces)
run twice on the same faces, once with `[train] amp = "off"` (fp32) and once with the shipped
default `amp = "auto"` (bf16 training steps where the device has native bf16), then each
run's best trial's validation mean accuracy side by side. Target: within 0.01.

    python benchmarks/amp_accuracy.py [--workdir /tmp/amp-acc] [--n 2000]

The device decides what "auto" means (training.amp.resolve_amp): on a CPU without native
bf16 both runs are fp32 and the script says so.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from celebhpo.config import load_study_file
from celebhpo.data import synthesize
from celebhpo.demo import packaged_study
from celebhpo.hpo import create_study, load_study, optimize
from celebhpo.hpo.results import best_trial
from celebhpo.training.amp import resolve_amp
from celebhpo.training.devices import resolve_device


def run(workdir: Path, data: Path, amp: str) -> tuple[float, float, int, float]:
    """(best trial's val_mean_acc, its value, its number, seconds) of the demo study."""
    name = f"amp-{amp}"
    cfg = load_study_file(packaged_study("demo.toml"), [f"train.amp={amp}"], data_root=data)
    storage = f"sqlite:///{workdir / f'{name}.db'}"
    uri = f"sqlite:///{workdir / f'{name}-mlruns.db'}"
    create_study(cfg, storage=storage, grid=True, name=name, tracking_uri=uri)
    started = time.perf_counter()
    optimize(study_name=name, storage=storage, tracking_uri=uri, progress=False)
    best = best_trial(load_study(name, storage)[0])
    return (float(best.user_attrs["val_mean_acc"]), float(best.value), best.number,
            time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/celebhpo-amp-accuracy"))
    ap.add_argument("--n", type=int, default=2000, help="synthetic faces (the demo draws 2000)")
    args = ap.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    data = args.workdir / "data"
    synthesize(data, n=args.n, seed=0, progress=False)
    device = resolve_device("auto")
    print(f"device {device}: amp auto -> {'bf16' if resolve_amp('auto', device) else 'fp32'}")
    rows = {amp: run(args.workdir, data, amp) for amp in ("off", "auto")}
    print("amp   best trial  val_loss  val_mean_acc  seconds")
    for amp, (acc, value, number, seconds) in rows.items():
        print(f"{amp:<5} {number:>10}  {value:.4f}  {acc:>12.4f}  {seconds:>7.0f}")
    diff = rows["auto"][0] - rows["off"][0]
    print(f"auto - off: {diff:+.4f} val_mean_acc ({'within' if abs(diff) <= 0.01 else 'NOT within'}"
          " the 0.01 target); training time ratio off/auto "
          f"{rows['off'][3] / rows['auto'][3]:.2f}x")


if __name__ == "__main__":
    main()
