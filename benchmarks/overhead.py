"""What a trial spends outside its epochs: per trial, its wall time beside the time in its
epochs, on the demo study, in one run.

A real study like `celebhpo demo`'s: studies/demo.toml (ResNet50 vs DenseNet121 grid,
32x32 synthetic faces, 3 epochs), its faces drawn by `celebhpo data synth`'s code, an Optuna
SQLite storage and an MLflow SQLite store, all in a temporary folder (never the repo's
studies/ or mlruns/). The decode cache is built before the study starts, so no trial pays
for it (the demo's first trial does).

Per trial it prints:
- wall: from the trial's `datetime_start` (its claim) to the next trial's (or the end of
  `optimize`): the trial as the worker lived it, including what comes after Optuna's
  `datetime_complete` (its MLflow run ended, the parent run's summaries refreshed);
- epochs: the sum of its epochs' `epoch_seconds` (training + validation of each epoch, as
  training records them; logged to the trial's MLflow run);
- outside = wall - epochs, and its share of wall; `after tell`: the part after
  `datetime_complete`.

`--profile` also runs cProfile over each trial with the profiler off inside every epoch
(`training.loop._one_epoch`) and prints the top functions of the time outside the epochs (the
frames open across an epoch, fit and its callers, are left out: their figures stop at the
first epoch). Profiled trials run slower: take the table from a run without it.

    python benchmarks/overhead.py                   # 2 ResNet50 + 2 DenseNet121 trials
    python benchmarks/overhead.py --trials 4        # the whole grid (4 points per architecture)
    python benchmarks/overhead.py --trials 2 --profile --top 25
    python benchmarks/overhead.py --trials 2 --profile --set data.train_size=256   # quicker:
        # the same models and files, shorter epochs (for finding costs, not for the figures)
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

import celebhpo.hpo.worker as worker_module
import celebhpo.training.loop as loop_module
from celebhpo.config import load_study_file
from celebhpo.data import load_data, synthesize
from celebhpo.demo import DEMO, packaged_study
from celebhpo.hpo import create_study, load_study, optimize
from celebhpo.tracking import RUN_ID_ATTR


class TrialProfiles:
    """cProfile per trial (hpo.worker.run_trial), off inside each epoch."""

    def __init__(self) -> None:
        self.stats: list[pstats.Stats] = []  # in the order the trials ran
        self.open_frames: set[tuple[str, int, str]] = set()
        self.current: cProfile.Profile | None = None
        self._run_trial = worker_module.run_trial
        self._one_epoch = loop_module._one_epoch

    def install(self) -> None:
        worker_module.run_trial = self.run_trial
        loop_module._one_epoch = self.one_epoch

    def run_trial(self, ctx: Any, trial: Any) -> Any:
        self.current = prof = cProfile.Profile()
        prof.enable()
        try:
            return self._run_trial(ctx, trial)
        finally:
            prof.disable()
            self.current = None
            self.stats.append(pstats.Stats(prof))

    def one_epoch(self, *args: Any, **kwargs: Any) -> Any:
        prof = self.current
        if prof is None:
            return self._one_epoch(*args, **kwargs)
        frame = sys._getframe(1)
        while frame is not None:  # their cumulative figures end here: not shown
            code = frame.f_code
            self.open_frames.add((code.co_filename, code.co_firstlineno, code.co_name))
            frame = frame.f_back
        prof.disable()
        try:
            return self._one_epoch(*args, **kwargs)
        finally:
            prof.enable()

    def top(self, index: int, n: int) -> list[str]:
        stats = self.stats[index]
        rows = stats.stats  # type: ignore[attr-defined]
        total = sum(tt for (_, _, tt, _, _) in rows.values())
        lines = [f"  profiled outside the epochs: {total:.2f} s (cProfile's own cost included)",
                 f"  {'cum s':>7} {'own s':>7} {'calls':>6}  function"]
        shown = sorted(((ct, tt, nc, key) for key, (_, nc, tt, ct, _) in rows.items()
                        if key not in self.open_frames and key[2] not in _WRAPPERS),
                       reverse=True)[:n]
        for ct, tt, nc, (path, line, name) in shown:
            lines.append(f"  {ct:>7.2f} {tt:>7.2f} {nc:>6}  {_short(path)}:{line}({name})")
        return lines


_WRAPPERS = {"one_epoch", "run_trial", "<built-in method builtins.exec>"}


def _short(path: str) -> str:
    for marker in ("/celebhpo/", "/site-packages/", "/lib/python"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _seconds(a: dt.datetime, b: dt.datetime) -> float:
    return (b - a).total_seconds()


def measure(work: Path, archs: list[str], trials: int, profiles: TrialProfiles | None,
            overrides: list[str]) -> list[dict[str, Any]]:
    """Run `trials` trials of the demo study per architecture in `archs` (its grid with the
    architecture fixed: the demo's configurations of it, a study of their own, so a short run
    covers both), with `overrides` (`--set`), in `work`; one row per trial."""
    data_root = work / "data"
    synthesize(data_root, n=DEMO["n_images"], seed=0, progress=False)
    storage = f"sqlite:///{work / 'optuna.db'}"
    uri = f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"
    if profiles is not None:
        profiles.install()
    rows = []
    for arch in archs:
        cfg = load_study_file(packaged_study(DEMO["study_file"]), [*overrides, f"arch={arch}"],
                              data_root=data_root)
        load_data(cfg.data, splits=("train", "val"), progress=False)  # the decode cache, once
        name = f"{cfg.study.name}-{arch}"
        create_study(cfg, storage=storage, grid=True, name=name, tracking_uri=uri)
        optimize(study_name=name, storage=storage, n_trials=trials, device="cpu",
                 tracking_uri=uri, progress=False, echo=lambda _: None,
                 on_trial=lambda t, a=arch: print(f"  {a} trial {t.number} {t.state} "
                                                  f"{t.duration_s:.1f} s", flush=True))
        rows += _rows(load_study(name, storage)[0], dt.datetime.now(), MlflowClient(uri), arch)
    return rows


def _rows(study: Any, ended: dt.datetime, client: MlflowClient, arch: str
          ) -> list[dict[str, Any]]:
    frozen = sorted((t for t in study.trials if t.datetime_start),
                    key=lambda t: t.datetime_start)
    rows = []
    for i, t in enumerate(frozen):
        nxt = frozen[i + 1].datetime_start if i + 1 < len(frozen) else ended
        epochs = sum(m.value for m in client.get_metric_history(
            t.user_attrs[RUN_ID_ATTR], "epoch_seconds"))
        wall = _seconds(t.datetime_start, nxt)
        rows.append({"number": t.number, "state": t.state.name, "arch": arch,
                     "epochs_run": t.user_attrs.get("epochs_run", 0), "wall": wall,
                     "epochs": epochs, "outside": wall - epochs,
                     "after_tell": _seconds(t.datetime_complete, nxt)})
    return rows


def report(rows: list[dict[str, Any]], profiles: TrialProfiles | None, top: int) -> None:
    print(f"\n{'trial':>5} {'arch':<12} {'state':<9} {'ep':>2} {'wall s':>7} {'epochs s':>8} "
          f"{'outside s':>9} {'share':>6} {'after tell s':>12}")
    for r in rows:
        print(f"{r['number']:>5} {r['arch']:<12} {r['state']:<9} {r['epochs_run']:>2} "
              f"{r['wall']:>7.2f} {r['epochs']:>8.2f} {r['outside']:>9.2f} "
              f"{r['outside'] / r['wall']:>6.1%} {r['after_tell']:>12.2f}")
    for state in ("COMPLETE", "PRUNED"):
        done = [r for r in rows if r["state"] == state]
        if done:
            wall, outside = sum(r["wall"] for r in done), sum(r["outside"] for r in done)
            print(f"{state.lower()}: {len(done)} trials, outside the epochs {outside:.2f} s of "
                  f"{wall:.2f} s = {outside / wall:.1%} (mean {outside / len(done):.2f} s a trial;"
                  f" target < 5% of a finished trial)")
    if profiles is None:
        return
    for i, r in enumerate(rows):
        print(f"\n{r['arch']} trial {r['number']} ({r['state']}, {r['epochs_run']} epochs): "
              f"top {top} by cumulative time outside the epochs")
        print("\n".join(profiles.top(i, top)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=2,
                    help="trials per architecture, of its 4 grid points (2)")
    ap.add_argument("--archs", default="resnet50,densenet121",
                    help="architectures, each a study of its own (the demo's two)")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile each trial outside its epochs (slower: see the docstring)")
    ap.add_argument("--top", type=int, default=20, help="functions per profile (20)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a study override, as `celebhpo study create --set` (not for the "
                         "figures: the demo is measured as shipped)")
    args = ap.parse_args()
    profiles = TrialProfiles() if args.profile else None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="celebhpo-overhead-") as tmp:
        rows = measure(Path(tmp), args.archs.split(","), args.trials, profiles, args.set)
    print(f"demo study{' with ' + ' '.join(args.set) if args.set else ''}, {args.trials} trials "
          f"per architecture, {time.perf_counter() - started:.0f} s in all"
          + (" (profiled)" if profiles else ""))
    report(rows, profiles, args.top)


if __name__ == "__main__":
    main()
