"""`celebhpo demo`: the whole workflow on synthetic faces, on a CPU, in minutes.

Each step calls the same library function as the matching command, so the demo shows what
the commands do rather than a special path of its own.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from celebhpo.config import load_study_file
from celebhpo.data import synthesize
from celebhpo.export import export_best
from celebhpo.hpo import create_study, leaderboard, list_studies, load_study, open_study, optimize
from celebhpo.inference import load_model, predict, retrieve
from celebhpo.report import (
    format_accuracy_check,
    format_export,
    format_optimize_summary,
    format_predictions,
    format_retrieval,
    format_table,
    format_trial_line,
)
from celebhpo.tracking import ui_command
from celebhpo.tracking.ui import runs_url

# The default demo: the seed's grid in miniature. --quick: a tiny one for the test suite.
DEMO = {"study_file": "demo.toml", "n_images": 2000, "retrieve": "Eyeglasses and not Male"}
QUICK = {"study_file": "demo-quick.toml", "n_images": 400, "retrieve": "Eyeglasses and not Male"}


def packaged_study(name: str) -> Path:
    return Path(str(resources.files("celebhpo") / "studies" / name))


@dataclass
class _Demo:
    """Where one demo run puts things, and how it talks."""

    workdir: Path
    quick: bool
    echo: Callable[[str], None]
    started: float = field(default_factory=time.perf_counter)

    @property
    def plan(self) -> dict:
        return QUICK if self.quick else DEMO

    @property
    def data_root(self) -> Path:
        return self.workdir / "data" / ("synthetic-quick" if self.quick else "synthetic")

    @property
    def image_dir(self) -> Path:
        return self.data_root / "img_align_celeba" / "img_align_celeba"

    @property
    def db(self) -> Path:
        return self.workdir / "studies" / "celebhpo.db"

    @property
    def storage(self) -> str:
        return f"sqlite:///{self.db}"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.workdir / 'mlruns' / 'mlflow.db'}"

    @property
    def best_dir(self) -> Path:
        return self.workdir / "best"

    def step(self, n: int, text: str) -> None:
        self.echo(f"\n[{n}/6] {text}  ({time.perf_counter() - self.started:.0f} s)")


def run_demo(workdir: Path, *, quick: bool = False, echo: Callable[[str], None] = print) -> dict:
    """Draw faces, create and optimize the demo grid, export, evaluate, predict, retrieve.

    Everything goes under `workdir`: data/, studies/, mlruns/, best/. Returns what it made.
    """
    demo = _Demo(Path(workdir).resolve(), quick, echo)
    _draw_faces(demo)
    name = _create_study(demo)

    demo.step(3, "optimize: every grid point; weak trials are pruned")
    summary = optimize(study_name=name, storage=demo.storage, device="cpu", progress=True,
                       on_trial=lambda t: print(format_trial_line(t)))
    print(format_optimize_summary(summary))
    board = leaderboard(load_study(name, demo.storage)[0])

    check = _export_and_check(demo, name)
    _predict_and_retrieve(demo)

    demo.step(6, "leaderboard")
    echo(format_table(board))
    ui = " ".join(shlex.quote(a) for a in ui_command(demo.tracking_uri, host="127.0.0.1",
                                                     port=5000))
    experiment = open_study(name, demo.storage)[2].experiment_id
    echo(f"\nCompare the trials in MLflow:\n  {ui}\n  then open "
         f"{runs_url('127.0.0.1', 5000, experiment)}")
    echo(f"\ndone in {time.perf_counter() - demo.started:.0f} s")
    return {"study": name, "storage": demo.storage, "tracking_uri": demo.tracking_uri,
            "best": demo.best_dir, "leaderboard": board, "check": check}


def _draw_faces(demo: _Demo) -> None:
    demo.step(1, f"synthetic faces in {demo.data_root}")
    if (demo.data_root / "list_attr_celeba.csv").exists():
        demo.echo("  already there: reusing them (and their decoded cache)")
    else:
        synthesize(demo.data_root, n=demo.plan["n_images"], seed=0, progress=True)


def _create_study(demo: _Demo) -> str:
    """The demo grid as a study under a name not taken by an earlier run; returns the name."""
    cfg = load_study_file(packaged_study(demo.plan["study_file"]), data_root=demo.data_root)
    (demo.workdir / "studies").mkdir(parents=True, exist_ok=True)
    existing = set(list_studies(demo.storage)["name"]) if demo.db.exists() else set()
    name = _fresh_name(cfg.study.name, existing)
    demo.step(2, f"study '{name}': {' x '.join(str(len(v)) for v in cfg.grid().values())} grid "
                 f"over {', '.join(cfg.grid())}")
    if name != cfg.study.name:
        demo.echo(f"  '{cfg.study.name}' exists from an earlier run; this run is '{name}' "
                  f"(delete {demo.workdir / 'studies'} and {demo.workdir / 'mlruns'} to start "
                  "afresh)")
    demo.echo("  " + create_study(cfg, storage=demo.storage, grid=True, name=name,
                                  tracking_uri=demo.tracking_uri).message)
    return name


def _export_and_check(demo: _Demo, name: str) -> dict[str, float]:
    demo.step(4, f"export the best trial to {demo.best_dir}; score it on validation and test")
    exported = export_best(study_name=name, storage=demo.storage, out=demo.best_dir,
                           formats=("pt",), register="celebhpo-demo",
                           tracking_uri=demo.tracking_uri, device="cpu", progress=False)
    demo.echo(format_export(exported))
    check = accuracy_check(exported.metrics)
    demo.echo(format_accuracy_check(check))
    return check


def _predict_and_retrieve(demo: _Demo) -> None:
    demo.step(5, "predict a few test faces (threshold 0.5), retrieve by attributes")
    predictor = load_model(demo.best_dir)
    images = sorted(demo.image_dir.glob("*.jpg"))[-3:]
    demo.echo(format_predictions(predict(predictor, images, threshold="0.5", progress=False),
                                 fmt="table"))
    where = demo.plan["retrieve"]
    demo.echo(f'\nretrieve --where "{where}" (top 5):')
    demo.echo(format_retrieval(retrieve(predictor, demo.image_dir, where, top=5,
                                        progress=False), fmt="table"))


def accuracy_check(metrics: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Mean accuracy over the 40 attributes on validation and test, at the tuned thresholds
    and at 0.5, beside always answering each attribute's train-split majority class (what a
    model that learned nothing scores): keys like `test_tuned`, `val_0.5`, `test_baseline`."""
    return {f"{split}_{how}": float(metrics[split][how]["mean_acc"])
            for split in ("val", "test") for how in ("tuned", "0.5", "baseline")}


def _fresh_name(base: str, existing: set[str]) -> str:
    if base not in existing:
        return base
    n = 2
    while f"{base}-{n}" in existing:
        n += 1
    return f"{base}-{n}"
