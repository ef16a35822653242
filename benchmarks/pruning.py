"""Does the study's pruner keep the comparison? Epochs with pruning vs without, over several
orderings of a grid study's queue.

    python benchmarks/pruning.py                     # studies/demo.toml and its own pruner
    python benchmarks/pruning.py --quick             # fewer images, while developing
    python benchmarks/pruning.py --try "n_startup_trials=3 n_warmup_steps=0"   # also these
    python benchmarks/pruning.py --verify            # and one shuffled ordering for real

Training is deterministic per configuration on the CPU, so the grid runs ONCE for real without
pruning (create_study + optimize in a temporary SQLite storage and MLflow store, never the
repo's studies/ or mlruns/), which records each configuration's per-epoch curve of the study
metric. The curves are replayed through the study's real pruner (make_pruner; a fresh
in-memory study per ordering; trials asked in the ordering, each epoch reported, stopped at
should_prune) for the file's order, reversed and seeded shuffles. A configuration's value is
its best epoch by the metric over the epochs it ran; the winner, the best COMPLETE one.
`--verify` runs the first shuffle for real with pruning and checks every configuration's
state, epochs and value against the replay.

Target (issue 13): in every ordering the same winner as without pruning, every architecture's
best configuration completes, and at most 70% of the unpruned epochs.

    python benchmarks/pruning.py --multi             # a study of two metrics, for real

`--multi` (issue 26; `--set` applies to it) runs one small grid of two metrics (val_mean_acc, gflops; the tiny
architecture on 600 synthetic faces, one learning rate that learns nothing) twice for real,
side by side: `pruner = "none"` and `"median"` (judged through hpo/shadow.py), and prints the
epochs each trained, the epochs saved and whether the Pareto front (its grid points) is the
same.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from celebhpo._io import atomic_write
from celebhpo.config import StudyConfig, load_study_file
from celebhpo.data import synthesize
from celebhpo.errors import CelebhpoError
from celebhpo.hpo import create_study, load_study, optimize
from celebhpo.hpo.space import grid_trials, make_pruner

QUICK = ["data.train_size=400", "data.val_size=100", "data.test_size=100"]
TARGET = 0.70  # epochs with pruning / without, at most


@dataclass
class Point:  # one grid configuration as it ran without pruning
    params: dict[str, Any]
    curve: list[float]  # the study metric at epochs 1, 2, ...
    state: str  # COMPLETE, or FAIL (it fails the same way whatever the order)


@dataclass
class Outcome:
    state: str
    epochs: int  # epochs run
    value: float | None  # COMPLETE: the best epoch's metric


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=repr)


def _quiet(line: str) -> None:
    print(f"  {line}", file=sys.stderr)


def _stores(work: Path) -> tuple[str, str]:
    """The temporary Optuna storage and MLflow store under `work`."""
    return f"sqlite:///{work / 'bench.db'}", f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"


# -- the real runs ---------------------------------------------------------------------------
def record(cfg: StudyConfig, storage: str, tracking_uri: str, device: str) -> list[Point]:
    """Run the grid for real without pruning; its points in the study file's order."""
    name = f"unpruned-{time.strftime('%H%M%S')}"
    create_study(cfg.with_overrides(["study.pruner=none"]), storage=storage, grid=True,
                 name=name, tracking_uri=tracking_uri)
    optimize(study_name=name, storage=storage, device=device, progress=False, echo=_quiet)
    study, _ = load_study(name, storage)
    by_key = {_key(t.params): t for t in study.trials}
    points = []
    for frozen in grid_trials(cfg):
        t = by_key[_key(frozen.params)]
        curve = [t.intermediate_values[s] for s in sorted(t.intermediate_values)]
        points.append(Point(dict(t.params), curve, t.state.name))
    return points


def verify(cfg: StudyConfig, points: list[Point], order: list[int], storage: str,
           tracking_uri: str, device: str) -> dict[int, Outcome]:
    """Run the grid for real with the study's pruner, its queue in `order`. create_study
    queues a grid in the file's order, so the study is made without a queue (sampler
    "random", which never samples: every trial is a queued point) and queued here."""
    name = f"verify-{time.strftime('%H%M%S')}"
    create_study(cfg.with_overrides(["study.sampler=random"]), storage=storage, grid=False,
                 name=name, tracking_uri=tracking_uri)
    study, _ = load_study(name, storage)
    queue = grid_trials(cfg)
    study.add_trials([queue[i] for i in order])
    optimize(study_name=name, storage=storage, n_trials=len(order), device=device,
             progress=False, echo=_quiet)
    study, _ = load_study(name, storage)
    index = {_key(p.params): i for i, p in enumerate(points)}
    return {index[_key(t.params)]: Outcome(t.state.name, len(t.intermediate_values), t.value)
            for t in study.trials}


# -- the replay ------------------------------------------------------------------------------
def orderings(n: int, shuffles: int) -> list[tuple[str, list[int]]]:
    """(label, indices into the file's order): the file's order, reversed, shuffles."""
    out = [("file order", list(range(n))), ("reversed", list(range(n))[::-1])]
    for seed in range(shuffles):
        order = list(range(n))
        random.Random(seed).shuffle(order)
        out.append((f"shuffle {seed}", order))
    return out


def replay(cfg: StudyConfig, points: list[Point], order: list[int]) -> dict[int, Outcome]:
    """Feed the recorded curves, in `order`, to a fresh study with the study's real pruner."""
    direction = cfg.study.resolved_direction()
    study = optuna.create_study(direction=direction, pruner=make_pruner(cfg))
    out: dict[int, Outcome] = {}
    for i in order:
        point, trial = points[i], study.ask()
        for epoch, value in enumerate(point.curve, start=1):
            trial.report(value, epoch)
            # as TrialReporter: the last epoch is never pruned (it would save nothing)
            if epoch < cfg.train.epochs and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                out[i] = Outcome("PRUNED", epoch, None)
                break
        else:
            if point.state == "COMPLETE":
                value = (min if direction == "minimize" else max)(point.curve)
                study.tell(trial, value)
                out[i] = Outcome("COMPLETE", len(point.curve), value)
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                out[i] = Outcome("FAIL", len(point.curve), None)
    return out


def winner(outcomes: dict[int, Outcome], direction: str) -> int | None:
    """The best COMPLETE configuration (a tie goes to the earlier one in the file)."""
    done = sorted((i, o.value) for i, o in outcomes.items() if o.state == "COMPLETE")
    if not done:
        return None
    sign = 1 if direction == "minimize" else -1
    return min(done, key=lambda iv: (sign * iv[1], iv[0]))[0]


def arch_bests(points: list[Point], unpruned: dict[int, Outcome], direction: str
               ) -> dict[str, int]:
    """Each architecture's best configuration without pruning (one group without `arch`)."""
    groups: dict[str, dict[int, Outcome]] = {}
    for i, point in enumerate(points):
        groups.setdefault(str(point.params.get("arch", "all")), {})[i] = unpruned[i]
    return {arch: best for arch, outs in groups.items()
            if (best := winner(outs, direction)) is not None}


# -- the table -------------------------------------------------------------------------------
def judge(cfg: StudyConfig, points: list[Point], shuffles: int) -> bool:
    """Print `cfg`'s pruner, one row per ordering and the verdict; whether it met the target
    (the epochs part in every ordering, not only on average)."""
    s, direction = cfg.study, cfg.study.resolved_direction()
    print(f"pruner {s.pruner}: n_startup_trials={s.n_startup_trials} "
          f"n_warmup_steps={s.n_warmup_steps} percentile={s.percentile} "
          f"min_resource={s.min_resource} reduction_factor={s.reduction_factor}")
    unpruned = replay(cfg.with_overrides(["study.pruner=none"]), points, list(range(len(points))))
    full = sum(o.epochs for o in unpruned.values())
    best, bests = winner(unpruned, direction), arch_bests(points, unpruned, direction)
    print(f"{'ordering':<12}{'pruned':>7}{'epochs run':>16}  {'winner':<44}{'same':>5}  "
          "every arch's best completes")
    same_all, arch_all, ratios = True, True, []
    for label, order in orderings(len(points), shuffles):
        out = replay(cfg, points, order)
        epochs = sum(o.epochs for o in out.values())
        won = winner(out, direction)
        lost = [f"{a} pruned at epoch {out[i].epochs}" for a, i in bests.items()
                if out[i].state != "COMPLETE"]
        pruned = sum(o.state == "PRUNED" for o in out.values())
        params = "none" if won is None else " ".join(
            f"{k}={v}" for k, v in points[won].params.items())
        print(f"{label:<12}{f'{pruned}/{len(points)}':>7}"
              f"{f'{epochs}/{full} ({epochs / full:.0%})':>16}  {params:<44}"
              f"{'yes' if won == best else 'NO':>5}  {'NO: ' + ', '.join(lost) if lost else 'yes'}")
        same_all &= won == best
        arch_all &= not lost
        ratios.append(epochs / full)
    met = same_all and arch_all and max(ratios) <= TARGET
    print(f"verdict: {'MET' if met else 'MISSED'}: same winner in every ordering: "
          f"{'yes' if same_all else 'NO'}; every architecture's best completes: "
          f"{'yes' if arch_all else 'NO'}; epochs {max(ratios):.0%} of unpruned at most, "
          f"{sum(ratios) / len(ratios):.0%} on average (target <= {TARGET:.0%})\n")
    return met


def check(points: list[Point], expected: dict[int, Outcome], real: dict[int, Outcome]) -> bool:
    """Print and return whether the real pruned run matched the replay, point by point."""
    bad = []
    for i, want in expected.items():
        got = real.get(i)
        if got is None or (got.state, got.epochs) != (want.state, want.epochs) or (
                want.value is not None and abs((got.value or 0.0) - want.value) > 1e-6):
            bad.append(f"  {_key(points[i].params)}: replay {want}, real {got}")
    print("verify: the real pruned run " + ("matches the replay: every configuration's state, "
          "epochs and value" if not bad else "DIFFERS from the replay:\n" + "\n".join(bad)))
    return not bad


# -- a study of several metrics, for real -----------------------------------------------------
MULTI_STUDY = """
[study]
name = "multi"
metric = ["val_mean_acc", "gflops"]
sampler = "grid"
pruner = "median"            # its shipped settings: 2 startup trials, epoch 1 never judged

[data]
root = "{root}"
train_size = 480
val_size = 60
test_size = 60
image_size = 16

[train]
arch = "tiny"
pretrained = "none"
epochs = {epochs}
batch_size = 32
num_features = 16

[space]
lr = [0.01, 0.003, 1e-7]       # 1e-7 learns nothing: it stays where it started
data.image_size = [16, 24]
"""


def run_multi(cfg: StudyConfig, pruner: str, work: Path, device: str
              ) -> tuple[int, set[str], dict[str, str]]:
    """The grid for real with `pruner`: (epochs trained, the front's grid points, each
    point's state)."""
    storage, uri = f"sqlite:///{work / f'{pruner}.db'}", f"sqlite:///{work / f'{pruner}-mlflow.db'}"
    create_study(cfg.with_overrides([f"study.pruner={pruner}"]), storage=storage, grid=True,
                 name=pruner, tracking_uri=uri)
    optimize(study_name=pruner, storage=storage, device=device, tracking_uri=uri,
             progress=False, echo=_quiet)
    study, _ = load_study(pruner, storage)
    epochs = sum(int(t.user_attrs.get("epochs_run") or 0) for t in study.trials)
    states = {_key(t.params): t.state.name for t in study.trials}
    return epochs, {_key(t.params) for t in study.best_trials}, states


def multi(args: argparse.Namespace) -> int:
    """`--multi`: the grid with no pruner and with the median pruner, side by side."""
    with tempfile.TemporaryDirectory(prefix="celebhpo-bench-multi-") as tmp:
        work = Path(args.workdir or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        root = work / "faces"
        if not (root / "list_attr_celeba.csv").exists():
            synthesize(root, n=600, seed=0, progress=False)
        path = work / "multi.toml"
        path.write_text(MULTI_STUDY.format(root=root, epochs=args.multi_epochs))
        cfg = load_study_file(path, overrides=args.overrides)  # --set study.n_warmup_steps=0
        print(f"\nmulti-metric pruning benchmark: grid lr(3) x data.image_size(2), metric "
              f"{cfg.study.objective_names()} (pruned on {cfg.study.metric}), tiny arch, "
              f"{cfg.train.epochs} epochs, {cfg.data.train_size} train images, {args.device}; "
              f"median n_startup_trials={cfg.study.n_startup_trials} "
              f"n_warmup_steps={cfg.study.n_warmup_steps}\n")
        full, front, _ = run_multi(cfg, "none", work, args.device)
        pruned, front_p, states = run_multi(cfg, "median", work, args.device)
    print(f"{'pruner':<8}{'epochs trained':>16}  Pareto front (grid points)")
    print(f"{'none':<8}{full:>16}  {' '.join(sorted(front))}")
    print(f"{'median':<8}{pruned:>16}  {' '.join(sorted(front_p))}")
    cut = sorted(k for k, s in states.items() if s == "PRUNED")
    print(f"median pruned {len(cut)} of {len(states)} points ({' '.join(cut) or 'none'}); "
          f"epochs saved: {full - pruned} of {full} ({(full - pruned) / full:.0%}); "
          f"front unchanged: {'yes' if front == front_p else 'NO'}")
    return 0 if front == front_p else 1


# -- main ------------------------------------------------------------------------------------
def load_points(args: argparse.Namespace, cfg: StudyConfig, work: Path) -> list[Point]:
    """The curves from `--curves` when it holds this config's (the pruner aside), else from
    a real run."""
    source = json.loads(json.dumps({**cfg.to_dict(), "study": {"metric": cfg.study.metric}}))
    path = Path(args.curves) if args.curves else None
    if path is not None and path.exists():
        saved = json.loads(path.read_text())
        if saved.get("source") == source:
            print(f"curves from {path}", file=sys.stderr)
            return [Point(**p) for p in saved["points"]]
    points = record(cfg, *_stores(work), args.device)
    if path is not None:
        atomic_write(path, json.dumps({"source": source, "points": [p.__dict__ for p in points]},
                                      indent=1, default=repr))
    return points


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="studies/demo.toml", help="a grid study file")
    parser.add_argument("--data", default=None, help="CelebA-layout folder (default: the "
                        "study's root; synthetic faces are drawn there if it does not exist)")
    parser.add_argument("--quick", action="store_true", help=f"apply {' '.join(QUICK)}")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a study key (repeatable)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", default=None, help="keep the stores here (default: temp)")
    parser.add_argument("--shuffles", type=int, default=3, help="seeded shuffled orderings")
    parser.add_argument("--try", dest="tries", action="append", default=[], metavar="SETTINGS",
                        help='other [study] pruner settings to replay too, e.g. '
                        '"n_startup_trials=2 n_warmup_steps=1" (repeatable)')
    parser.add_argument("--curves", default=None, help="JSON file of the recorded curves: "
                        "reused when it holds this config's (pruner keys aside; a code change "
                        "is not noticed: delete it), else written after the real run")
    parser.add_argument("--verify", action="store_true",
                        help="also run the first shuffled ordering for real, with pruning")
    parser.add_argument("--multi", action="store_true", help="instead: a study of two "
                        "metrics run for real with no pruner and with the median pruner")
    parser.add_argument("--multi-epochs", type=int, default=4, help="epochs per trial of --multi")
    args = parser.parse_args(argv)
    if args.shuffles < 1:
        parser.error("--shuffles must be >= 1: the target asks for shuffled orderings")
    args.base = (QUICK if args.quick else []) + args.overrides
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per in-memory replay study
    if args.multi:
        return multi(args)
    try:
        cfg = load_study_file(args.study, overrides=args.base, data_root=args.data)
        tries = [cfg.with_overrides([s if "." in s else f"study.{s}" for s in t.split()])
                 for t in args.tries]
        for c in (cfg, *tries):
            c.grid()  # a range in [space] cannot be replayed: a ConfigError naming the key
            make_pruner(c)
    except CelebhpoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    root = Path(cfg.data.root)
    if not (root / "list_attr_celeba.csv").exists() and not any(root.glob("Anno/*")):
        print(f"drawing 2000 synthetic faces into {root}", file=sys.stderr)
        synthesize(root, n=2000, seed=0, progress=True)

    with tempfile.TemporaryDirectory(prefix="celebhpo-bench-") as tmp:
        work = Path(args.workdir or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        points = load_points(args, cfg, work)
        grid = " x ".join(f"{k}({len(v)})" for k, v in cfg.grid().items())
        print(f"\npruning benchmark: {args.study}{' --quick' if args.quick else ''}, grid {grid}, "
              f"{cfg.train.epochs} epochs, {cfg.data.train_size or 'all'} train images at "
              f"{cfg.data.image_size} px, {args.device}; metric {cfg.study.metric} "
              f"({cfg.study.resolved_direction()}), {len(points)} configurations\n")
        for c in (cfg, *tries):
            judge(c, points, args.shuffles)
        if args.verify:
            order = orderings(len(points), 1)[2][1]
            print("verify: running shuffle 0 for real with the pruner ...", file=sys.stderr)
            real = verify(cfg, points, order, *_stores(work), args.device)
            if not check(points, replay(cfg, points, order), real):
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
