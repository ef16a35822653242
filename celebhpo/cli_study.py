"""`celebhpo study create|list|show` (cli.py adds the group): parse, call the library, print.
No logic lives here (cli.py's docstring)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from celebhpo.cli_options import Group as _Group
from celebhpo.cli_options import no_tracking_option, storage_option, tracking_option
from celebhpo.config import load_study_file

if TYPE_CHECKING:
    from celebhpo.hpo.storage import StorageSpec

__all__ = ["study"]


@click.group(cls=_Group)
def study() -> None:
    """Create, list and show studies."""


@study.command("create")
@click.argument("study_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--grid", is_flag=True, help="Grid-sample the [space]: every value list, in full.")
@click.option("--name", default=None, help="Study name (default: [study] name, else file name).")
@click.option("--data", "data_root", type=click.Path(exists=True, file_okay=False), default=None,
              help="CelebA folder; overrides [data] root.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a key before the study is stored (repeatable).")
@click.option("--replace", is_flag=True, help="Delete a study of that name with another config.")
@storage_option
@tracking_option
@click.option("--artifacts-destination", "artifacts", default=None, metavar="URI", help="Where "
              "MLflow artifacts go (s3://..., or a folder every worker mounts at one path); "
              "needed with a database tracking URI other than SQLite.")
@no_tracking_option
def study_create(study_file: Path, grid: bool, name: str | None, data_root: str | None,
                 overrides: tuple[str, ...], replace: bool, storage: StorageSpec,
                 tracking_uri: str | None, artifacts: str | None, no_tracking: bool) -> None:
    """Create a study from STUDY_FILE, with its MLflow experiment and parent run (none with
    --no-tracking: the study then runs without MLflow).

    The resolved config is stored with the study, so workers need only its name and storage.
    Creating the same config again does nothing; another config under the same name is
    refused unless --replace.

    Example: celebhpo study create studies/seed-grid.toml --grid --data data/celeba
    """
    from celebhpo.hpo import create_study

    overrides += ("study.tracking=off",) if no_tracking else ()
    cfg = load_study_file(study_file, overrides=list(overrides), data_root=data_root)
    result = create_study(cfg, storage=storage, grid=grid, name=name,
                          replace=replace, tracking_uri=tracking_uri, artifacts=artifacts)
    click.echo(result.message)


@study.command("list")
@storage_option
def study_list(storage: StorageSpec) -> None:
    """List the studies in a storage, with their trial counts and best values.

    Example: celebhpo study list --storage studies/shared.log
    """
    from celebhpo.hpo import list_studies

    table = list_studies(storage)
    click.echo("no studies" if table.empty else table.to_string(index=False))


@study.command("show")
@click.argument("name", required=False)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True)
@click.option("--pareto", is_flag=True, help="Only the Pareto front of a study of several "
              "metrics: the trials no other (feasible) trial beats on every metric.")
@storage_option
def study_show(name: str | None, fmt: str, pareto: bool, storage: StorageSpec) -> None:
    """Leaderboard of a study: trial, state, params, value(s), the best epoch's validation
    figures, worst-group accuracy, latency and size, feasibility, epochs, duration.

    Example: celebhpo study show demo --format csv > leaderboard.csv
    Example: celebhpo study show front --pareto
    """
    from celebhpo.hpo import leaderboard, load_study, pareto_board
    from celebhpo.report import format_table

    optuna_study, _ = load_study(name, storage)
    board = pareto_board(optuna_study) if pareto else leaderboard(optuna_study)
    click.echo(format_table(board, fmt))
