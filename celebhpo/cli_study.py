"""`celebhpo study create|list|show` (cli.py adds the group): parse, call the library, print.
No logic lives here (cli.py's docstring)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from celebhpo.cli_options import Group as _Group
from celebhpo.cli_options import no_tracking_option, storage_option, tracking_option
from celebhpo.config import load_study_file

if TYPE_CHECKING:
    from celebhpo.hpo.storage import StorageSpec
    from celebhpo.hpo.warm import WarmSummary

__all__ = ["study"]


def _storage_or_none(ctx: click.Context, param: click.Parameter, url: str | None) -> Any:
    from celebhpo.hpo.storage import parse_storage

    return None if url is None else parse_storage(url)


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
@click.option("--warm-start-from", "warm_from", default=None, metavar="OLD", help="Begin with "
              "study OLD's finished trials whose params fit this [space] (copied, not run "
              "again; a grid queues only the points they leave). Says what it left out, why.")
@click.option("--storage-of-old", "old_storage", default=None, metavar="URL",
              callback=_storage_or_none, help="The Optuna storage that holds OLD "
              "(default: --storage).")
@click.option("--allow-other-data", is_flag=True, help="Copy OLD's trials even when OLD saw "
              "other data (label or partition files, split sizes, image size, crop).")
def study_create(study_file: Path, grid: bool, name: str | None, data_root: str | None,
                 overrides: tuple[str, ...], replace: bool, storage: StorageSpec,
                 tracking_uri: str | None, artifacts: str | None, no_tracking: bool,
                 warm_from: str | None, old_storage: StorageSpec | None,
                 allow_other_data: bool) -> None:
    """Create a study from STUDY_FILE, with its MLflow experiment and parent run (none with
    --no-tracking: the study then runs without MLflow).

    The resolved config is stored with the study, so workers need only its name and storage.
    Creating the same config again does nothing; another config under the same name is
    refused unless --replace. --warm-start-from OLD starts it with OLD's trials.

    Example: celebhpo study create studies/seed-grid.toml --grid --data data/celeba

    Example: celebhpo study create studies/tpe.toml --name tpe2 --warm-start-from tpe
    """
    from celebhpo.hpo import create_study
    from celebhpo.hpo.warm import WarmStart

    for flag, given in (("--storage-of-old", old_storage), ("--allow-other-data",
                                                            allow_other_data)):
        if given and not warm_from:
            raise click.UsageError(f"{flag} needs --warm-start-from OLD",
                                   ctx=click.get_current_context())
    warm = WarmStart(warm_from, old_storage, allow_other_data) if warm_from else None
    overrides += ("study.tracking=off",) if no_tracking else ()
    cfg = load_study_file(study_file, overrides=list(overrides), data_root=data_root)
    result = create_study(cfg, storage=storage, grid=grid, name=name, replace=replace,
                          tracking_uri=tracking_uri, artifacts=artifacts, warm_start=warm)
    click.echo(result.message)
    if result.warm is not None:
        click.echo(_warm_lines(result.warm))


def _warm_lines(w: WarmSummary) -> str:
    """What --warm-start-from copied and left out, by reason."""
    copied = ", ".join(f"{n} {state}" for state, n in w.copied.items())
    lines = [f"warm start from study '{w.source}' in {w.storage}: copied {len(w.trials)} "
             f"trial{'s' * (len(w.trials) != 1)}{f' ({copied})' if copied else ''}"]
    lines += [f"  left out {len(v)}: {reason} ({'; '.join(v[:3])}{'; ...' * (len(v) > 3)})"
              for reason, v in w.left_out.items()]
    if w.grid_queued is not None:
        lines.append(f"  the grid: {w.grid_done} of its {w.grid_done + w.grid_queued} points "
                     f"done by the copies, {w.grid_queued} queued")
    if w.other_data:
        lines.append(f"  other data, copied anyway (--allow-other-data): {w.other_data}")
    if w.other_settings:
        lines.append(f"  note: settings not searched differ ({w.other_settings}): the copies "
                     "were trained with the old ones")
    return "\n".join(lines)


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
