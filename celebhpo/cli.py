"""The `celebhpo` command line: parse, call one library function, print its result.

No logic lives here. Library errors (CelebhpoError) and OSErrors become one line and exit code
1; warnings become one `warning:` line. Each command imports the library it calls in its own
body: all of celebhpo (torch, mlflow, optuna) imports in 4.7 s, `celebhpo --help` in 0.04 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from celebhpo import __version__
from celebhpo.cli_launch import launch
from celebhpo.cli_options import (
    CONTEXT,
    backend_option,
    device_option,
    no_progress_option,
    no_tracking_option,
    retry_given_up_option,
    storage_option,
    study_option,
    threshold_option,
    tracking_option,
)
from celebhpo.cli_options import Group as _Group
from celebhpo.cli_study import study

if TYPE_CHECKING:
    from celebhpo.hpo.storage import StorageSpec


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="celebhpo")
def cli() -> None:
    """Hyperparameter studies for face-attribute classifiers, tracked in MLflow.

    \b
    Start here:
      celebhpo demo                                        # everything, on synthetic faces
      celebhpo study create studies/seed-grid.toml --grid --data /path/to/celeba
      celebhpo optimize --study seed-grid --trials 8
      celebhpo export-best --study seed-grid --out best/
    """


# -- data ------------------------------------------------------------------------------
@cli.group(cls=_Group)
def data() -> None:
    """Draw synthetic faces, inspect a CelebA folder."""


@data.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n", "n", default=2000, show_default=True, help="Number of faces to draw.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same images.")
def data_synth(out: Path, n: int, seed: int) -> None:
    """Draw N synthetic faces in CelebA's Kaggle layout into OUT.

    The images are 178x218 JPEGs with both CSVs and 80/10/10 partitions; about a dozen
    attributes are visible in the pixels (see the README), the rest are label noise.

    Example: celebhpo data synth data/synthetic --n 2000
    """
    from celebhpo.data import synthesize

    root = synthesize(out, n=n, seed=seed, progress=True)
    click.echo(f"wrote {n} synthetic faces to {root}")


@data.command("inspect")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--layout", type=click.Choice(["auto", "kaggle", "official", "torchvision"]),
              default="auto", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the two PNG plots go (default: ROOT/inspect, else ./inspect-NAME).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def data_inspect(root: Path, layout: str, out_dir: Path | None, as_json: bool) -> None:
    """Split counts, attribute balance and correlations of a CelebA folder.

    Writes attribute_frequency.png and attribute_correlation.png.

    Example: celebhpo data inspect data/synthetic
    """
    from celebhpo.data import default_plot_dir, inspect_dataset
    from celebhpo.report import format_inspect

    report = inspect_dataset(root, layout=layout, out_dir=out_dir or default_plot_dir(root))
    click.echo(json.dumps(report, indent=2) if as_json else format_inspect(report))


# -- one configuration -------------------------------------------------------------------
@cli.command("train")
@click.argument("study_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a key: --set lr=0.01 --set data.image_size=32 (repeatable).")
@click.option("--data", "data_root", type=click.Path(exists=True, file_okay=False), default=None,
              help="CelebA folder; overrides [data] root.")
@device_option
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("train-out/model.pt"),
              show_default=True, help="Where to write the best epoch's checkpoint.")
def train_cmd(study_file: Path, overrides: tuple[str, ...], data_root: str | None,
              device: str | None, out: Path) -> None:
    """Train one configuration, outside any study.

    Searched keys in [space] take their first value unless --set fixes them.

    Example: celebhpo train studies/demo.toml --set arch=resnet18 --set epochs=2
    """
    from celebhpo._io import check_writable, output_errors
    from celebhpo.report import format_training
    from celebhpo.training.runner import train_one_config

    check_writable(out, "--out")  # now, not after the training it would lose
    with output_errors(out, "--out"):
        r = train_one_config(study_file, list(overrides), data_root=data_root, device=device,
                             checkpoint=out)
    click.echo(format_training(r.config, r.fit, r.skipped))


@cli.command("optimize")
@study_option
@click.option("--trials", "n_trials", type=int, default=None,
              help="Run until the study holds N trials in all. Workers share this budget: "
              "two workers with --trials 8 run 8 trials between them, not 16.")
@click.option("--timeout", type=float, default=None, metavar="SECONDS",
              help="Start no new trial after this many seconds.")
@storage_option
@device_option
@click.option("--devices", default=None, metavar="0,1,...",
              help="Start one worker per GPU (CUDA_VISIBLE_DEVICES, --device cuda unless "
              "given) on this shared study; needs a journal or PostgreSQL storage.")
@tracking_option
@no_tracking_option
@no_progress_option
@retry_given_up_option
@click.option("--storage-retry", type=float, default=60.0, show_default=True, metavar="SECONDS",
              help="How long a lost database (a restart, a dropped connection) is retried "
              "before the worker stops; keep it below [study] grace_period.")
def optimize_cmd(study_name: str | None, n_trials: int | None, timeout: float | None,
                 storage: StorageSpec, device: str | None, devices: str | None,
                 tracking_uri: str | None, no_tracking: bool, progress: bool | None,
                 retry_given_up: bool, storage_retry: float) -> None:
    """Run trials of a study until --trials, the end of the grid, or --timeout.

    Each trial trains one configuration, reports val_loss per epoch (weak trials are
    pruned) and logs to MLflow. Run it again to resume; run it on several machines
    against one PostgreSQL storage to share a study. Exits 1 when a point was given up
    after its retry limit (named in the last lines; --retry-given-up runs it once more).

    Example: celebhpo optimize --study seed-grid --trials 8
    """
    from celebhpo.stopping import StopRequest, stop_on_signals

    stop = StopRequest()
    # from the first line: the imports below take seconds, and a Ctrl-C there is a request too
    with stop_on_signals(stop):
        from celebhpo.hpo import launch_workers, load_study, optimize
        from celebhpo.hpo.retry import requeue_given_up
        from celebhpo.report import format_optimize_summary, format_requeued, format_trial_line

        if retry_given_up:  # here, once: not once per --devices worker
            click.echo(format_requeued(requeue_given_up(load_study(study_name, storage)[0])))
        if devices:  # the storage goes to the workers by environment, as the tracking URI does
            stop.check()
            args = ["optimize"]
            args += ["--study", study_name] if study_name else []
            args += ["--trials", str(n_trials)] if n_trials is not None else []
            args += ["--timeout", str(timeout)] if timeout is not None else []
            args += ["--device", device or "cuda"]  # a missing GPU is an error, not the CPU
            args += ["--no-tracking"] if no_tracking else []
            args += ["--storage-retry", str(storage_retry)]
            if tracking_uri:  # to the workers by environment: `ps` shows argv, not the password
                os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
            sys.exit(launch_workers(devices.split(","), args, storage))
        # bars (on stderr) only for a person watching: not into a log or a pipe
        bars = progress if progress is not None else (
            sys.stdout.isatty() and sys.stderr.isatty())
        # Ctrl-C/SIGTERM: Interrupted once the worker has said what it did; Group exits 130/143
        summary = optimize(study_name=study_name, storage=storage, n_trials=n_trials,
                           timeout=timeout, device=device, tracking_uri=tracking_uri,
                           tracking=not no_tracking, stop=stop, progress=bars,
                           storage_retry=storage_retry,
                           on_trial=lambda t: print(format_trial_line(t)))
    click.echo(format_optimize_summary(summary))
    if summary.given_up:
        sys.exit(1)


# -- the best model ----------------------------------------------------------------------
@cli.command("export-best")
@study_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("best"),
              show_default=True)
@click.option("--format", "formats", default="pt", show_default=True,
              help="Comma-separated: pt, torchscript, onnx.")
@click.option("--register", default=None, metavar="NAME", help="Also register in the MLflow "
              "Model Registry under NAME; alias 'best' moves only to a better test score.")
@click.option("--force", is_flag=True, help="With --register: move alias 'best' regardless.")
@click.option("--trial", "trial", type=int, default=None, metavar="N", help="Export trial N "
              "instead of the best (needed in a study of several metrics: pick one of "
              "`study show --pareto`).")
@storage_option
@tracking_option
@device_option
def export_best_cmd(study_name: str | None, out: Path, formats: str, register: str | None,
                    force: bool, trial: int | None, storage: StorageSpec,
                    tracking_uri: str | None, device: str | None) -> None:
    """Export the best completed trial, evaluated once on the validation and test splits.
    With [study] constraints, the best of the trials that meet them.

    Writes model.pt, model_card.md and model_card.json (and model.ts / model.onnx when
    asked), each checked against the PyTorch model before it is written. Prints one line:
    test mean accuracy at the tuned thresholds and at 0.5 vs the majority-class baseline;
    the model card holds validation and test side by side.

    Example: celebhpo export-best --study seed-grid --out best/ --format pt,torchscript
    """
    from celebhpo.export import export_best
    from celebhpo.report import format_export

    result = export_best(study_name=study_name, storage=storage, out=out,
                         formats=tuple(f.strip() for f in formats.split(",") if f.strip()),
                         register=register, force=force, tracking_uri=tracking_uri,
                         device=device or "auto", trial=trial)
    click.echo(format_export(result))


@cli.command("predict")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True)
@threshold_option
@click.option("--all", "show_all", is_flag=True, help="Show every attribute, not only those present.")
@backend_option
def predict_cmd(model: Path, inputs: tuple[Path, ...], fmt: str, threshold: str, show_all: bool,
                backend: str) -> None:
    """Predict the 40 attributes of faces with an exported model.

    MODEL is an export-best folder or a checkpoint; IMAGE_OR_DIR are images or folders.

    Example: celebhpo predict best/ face.jpg photos/
    """
    from celebhpo.inference import load_model, predict
    from celebhpo.report import format_predictions

    predictor = load_model(model, backend=backend)
    result = predict(predictor, list(inputs), threshold=threshold, progress=True)
    click.echo(format_predictions(result, fmt=fmt, show_all=show_all))
    for name, reason in result.skipped:
        click.echo(f"skipped {name}: {reason}", err=True)


@cli.command("evaluate")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.argument("data_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test",
              show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write metrics.json, classification_report.csv/.json and slices.csv "
              "here.")
@threshold_option
@click.option("--slices", default=None, metavar="A,B", help="Group the images by these "
              "attributes' true labels (at most 4) and report each group's accuracy and the "
              "worst group's; default: the checkpoint's [study] slices; \"\" = off.")
@click.option("--all", "whole_split", is_flag=True, help="The whole split, not the study's subset.")
@click.option("--attributes", default=None, metavar="BAND|A,B",
              help="Score only these: a label-agreement band (reliable = the 12 attributes "
              "annotators agree on >= 95%; moderate, low, chance) and/or attribute names.")
def evaluate_cmd(model: Path, data_root: Path, split: str, out_dir: Path | None,
                 threshold: str, slices: str | None, whole_split: bool,
                 attributes: str | None) -> None:
    """Metrics and the per-attribute report of a model on a CelebA-layout folder.

    On the study's subset of the split, as its card (--all: the whole split): metrics at
    --threshold and at 0.5 side by side, the subgroups, the attributes with the largest gaps;
    --attributes reliable scores only the 12 attributes whose labels annotators agree on.

    Example: celebhpo evaluate best/ data/synthetic --split test --slices Male,Young --out eval/
    """
    from celebhpo.inference import evaluate
    from celebhpo.report import format_evaluation

    names = None if slices is None else [s.strip() for s in slices.split(",") if s.strip()]
    result = evaluate(model, data_root, split=split, out_dir=out_dir, threshold=threshold,
                      slices=names, whole_split=whole_split, attributes=attributes)
    click.echo(format_evaluation(result))


@cli.command("retrieve")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.argument("image_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--where", required=True, metavar="EXPR",
              help='Attributes with and/or/not/parentheses: "Eyeglasses and not Male".')
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many matches to show (1 or more).")
@click.option("--min-score", default=0.0, show_default=True,
              help="Drop matches whose probability is below this.")
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a contact sheet PNG of the top matches.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True)
@threshold_option
@backend_option
def retrieve_cmd(model: Path, image_dir: Path, where: str, top: int, min_score: float,
                 sheet: Path | None, fmt: str, threshold: str, backend: str) -> None:
    """Find the faces in IMAGE_DIR that match an attribute expression, best first.

    An attribute holds for a face when its probability > --threshold; matches are ranked by
    the expression's probability. Predictions are cached per image (name, size, mtime) and
    model, so a second query over the same folder is fast.

    Example: celebhpo retrieve best/ photos/ --where "(Blond_Hair or Gray_Hair) and Smiling"
    """
    from celebhpo.inference import load_model, retrieve
    from celebhpo.report import format_empty_retrieval, format_retrieval

    predictor = load_model(model, backend=backend)
    result = retrieve(predictor, image_dir, where, top=top, min_score=min_score, sheet=sheet,
                      progress=True, threshold=threshold)
    click.echo(format_retrieval(result, fmt=fmt))
    if result.empty is not None and fmt != "table":  # why, beside the empty csv/json
        click.echo(format_empty_retrieval(result), err=True)
    if sheet:
        click.echo(f"contact sheet: {sheet}", err=True)


# -- looking at results -------------------------------------------------------------------
@cli.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Bind address; the default keeps the UI on this machine.")
@click.option("--port", default=5000, show_default=True)
@click.option("--study", "study_name", default=None, metavar="NAME",
              help="Print the URL of this study's runs (default: every study's).")
@tracking_option
def ui_cmd(host: str, port: int, study_name: str | None, tracking_uri: str | None) -> None:
    """Serve the MLflow UI on the store (on 127.0.0.1 unless told); print each study's URL.

    Example: celebhpo ui --study demo --port 5000
    """
    from celebhpo.tracking.ui import ui_launch

    argv, lines = ui_launch(tracking_uri, host=host, port=port, study=study_name)
    click.echo("\n".join(lines), err=True)
    sys.exit(subprocess.call(argv))


@cli.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where data/, studies/, mlruns/ and best/ go.")
@click.option("--quick", is_flag=True, help="A smaller, faster version (used by the tests).")
def demo_cmd(workdir: Path, quick: bool) -> None:
    """Everything on synthetic faces, on a CPU, in minutes: draw, study, export, use.

    Draws 2,000 faces, runs the demo grid (ResNet50 vs DenseNet121 x 2 learning rates x
    2 dropouts) with pruning, exports the best model, evaluates it on the test split,
    predicts and retrieves, and prints how to open the MLflow UI.

    Example: celebhpo demo --workdir demo-work
    """
    from celebhpo.demo import run_demo

    run_demo(workdir, quick=quick, echo=click.echo)


cli.add_command(study)  # celebhpo study create|list|show (cli_study.py)
cli.add_command(launch)  # celebhpo launch slurm|status|k8s (cli_launch.py)


def main() -> None:  # pragma: no cover
    cli(prog_name="celebhpo")
