"""Epochs run with the study's pruner vs without, on the same grid: does pruning save work
and still pick the same best configuration?

    python benchmarks/pruning.py                     # studies/demo.toml, its own pruner vs none
    python benchmarks/pruning.py --quick             # fewer images: minutes on a 2-core CPU
    python benchmarks/pruning.py --study studies/x.toml --data data/celeba --device cuda

Both studies use the same seed, grid and data, in a temporary SQLite storage and MLflow store
(nothing is written to the repo's studies/ or mlruns/). Training is deterministic per
configuration, so a configuration that is not pruned ends identically in both studies.
Target (issue 4): at most 60% of the epochs, and the same winner.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from celebhpo.config import load_study_file
from celebhpo.hpo import create_study, leaderboard, load_study, optimize

QUICK = ["data.train_size=400", "data.val_size=100", "data.test_size=100"]


def run(name: str, cfg, storage: str, tracking_uri: str, device: str) -> dict:
    create_study(cfg, storage=storage, grid=True, name=name, tracking_uri=tracking_uri)
    started = time.perf_counter()
    optimize(study_name=name, storage=storage, device=device, progress=False,
             echo=lambda line: print(f"  {name}: {line}", file=sys.stderr))
    wall = time.perf_counter() - started
    study, _ = load_study(name, storage)
    states = [t.state.name for t in study.trials]
    best = study.best_trial
    return {
        "name": name,
        "trials": len(states),
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "epochs": sum(int(t.user_attrs.get("epochs_run", 0)) for t in study.trials),
        "wall_s": wall,
        "best_trial": best.number,
        "best_value": best.value,
        "best_params": dict(best.params),
        "board": leaderboard(study),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="studies/demo.toml", help="a grid study file")
    parser.add_argument("--data", default=None, help="CelebA-layout folder (default: the "
                        "study's root; synthetic faces are drawn there if it does not exist)")
    parser.add_argument("--quick", action="store_true", help=f"apply {' '.join(QUICK)}")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a study key (repeatable)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", default=None, help="keep the stores here (default: temp)")
    args = parser.parse_args(argv)

    overrides = (QUICK if args.quick else []) + args.overrides
    cfg = load_study_file(args.study, overrides=overrides, data_root=args.data)
    root = Path(cfg.data.root)
    if not (root / "list_attr_celeba.csv").exists() and not any(root.glob("Anno/*")):
        from celebhpo.data import synthesize

        n = 2000 if not args.quick else 1000
        print(f"drawing {n} synthetic faces into {root}", file=sys.stderr)
        synthesize(root, n=n, seed=0, progress=True)
    if cfg.study.pruner == "none":
        print(f"{args.study} has pruner = 'none': nothing to compare", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="celebhpo-bench-") as tmp:
        work = Path(args.workdir or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{work / 'bench.db'}"
        tracking_uri = f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"
        stamp = time.strftime("%H%M%S")
        unpruned = load_study_file(args.study, overrides=overrides + ["study.pruner=none"],
                                   data_root=args.data)
        # the same data root for both (load_study_file resolves it the same way)
        results = [run(f"{cfg.study.pruner}-{stamp}", cfg, storage, tracking_uri, args.device),
                   run(f"none-{stamp}", unpruned, storage, tracking_uri, args.device)]

    pruned, full = results
    grid = " x ".join(f"{k}({len(v)})" for k, v in cfg.grid().items())
    s = cfg.study
    print(f"\npruning benchmark: {args.study}{' --quick' if args.quick else ''}, grid {grid}, "
          f"{cfg.train.epochs} epochs, {cfg.data.train_size or 'all'} train images at "
          f"{cfg.data.image_size} px, {args.device}")
    print(f"pruner: {s.pruner} (n_startup_trials={s.n_startup_trials}, "
          f"n_warmup_steps={s.n_warmup_steps}) vs none; metric {s.metric}\n")
    print(f"{'pruner':<20}{'trials':>7}{'complete':>9}{'pruned':>7}{'epochs':>7}{'wall s':>8}"
          f"  best trial  best {s.metric}  best params")
    for label, r in ((s.pruner, pruned), ("none", full)):
        params = " ".join(f"{k}={v}" for k, v in r["best_params"].items())
        print(f"{label:<20}{r['trials']:>7}{r['complete']:>9}{r['pruned']:>7}{r['epochs']:>7}"
              f"{r['wall_s']:>8.1f}  {r['best_trial']:>10}  {r['best_value']:>13.4f}  {params}")
    ratio = pruned["epochs"] / full["epochs"]
    same = pruned["best_params"] == full["best_params"]
    print(f"\nepochs with pruning / without: {pruned['epochs']}/{full['epochs']} = {ratio:.0%} "
          f"(target <= 60%: {'met' if ratio <= 0.6 else 'MISSED'})")
    print(f"wall time with pruning / without: {pruned['wall_s'] / full['wall_s']:.0%}")
    print(f"same best configuration: {'yes' if same else 'NO'}")
    print("\nleaderboard with pruning:")
    print(pruned["board"].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
