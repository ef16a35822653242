"""The command line's shared parts: the group that turns errors into one line, and the
options several commands take."""

from __future__ import annotations

import errno
import warnings
from typing import Any

import click

from celebhpo.errors import CelebhpoError, mask_url
from celebhpo.stopping import Interrupted

__all__ = ["CONTEXT", "Group", "backend_option", "device_option", "no_progress_option",
           "no_tracking_option", "retry_given_up_option", "storage_option", "study_option",
           "threshold_option", "tracking_option"]


class Group(click.Group):
    """Turns our typed errors, click's usage errors (a bad option value, a missing argument,
    an unknown command: click's own are three lines and exit 2), OSErrors and warnings into
    one clean line each (exit 1), wherever in the command tree they rise; a worker stopped
    by Ctrl-C/SIGTERM (celebhpo.stopping), which has said what it did, into exit code
    130/143 like a shell's."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:  # the top command's own options are parsed here, outside invoke
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            raise _one_line(e) from None

    def invoke(self, ctx: click.Context):
        try:
            with warnings.catch_warnings():
                warnings.showwarning = lambda msg, *_, **__: click.echo(f"warning: {msg}", err=True)
                return super().invoke(ctx)
        except click.UsageError as e:
            raise _one_line(e) from None
        except CelebhpoError as e:
            raise click.ClickException(mask_url(str(e))) from None
        except Interrupted as e:
            raise click.exceptions.Exit(e.exit_code) from None
        except OSError as e:
            if e.errno == errno.EPIPE:  # `celebhpo ... | head`: click's own handling
                raise
            from celebhpo._io import describe_os_error

            raise click.ClickException(mask_url(describe_os_error(e))) from None


def _one_line(e: click.UsageError) -> click.ClickException | click.UsageError:
    """click's usage error as one line naming the command's help, for exit 1; a bare group
    (`celebhpo study`), which shows its help, stays as click shows it."""
    if isinstance(e, click.exceptions.NoArgsIsHelpError):
        return e
    # named as the user types it, whatever the program was started as (`python -m`, a test)
    where = " ".join(["celebhpo", *(e.ctx.command_path.split()[1:] if e.ctx else [])])
    message = e.format_message().rstrip(".")
    return click.ClickException(mask_url(f"{message}; see `{where} -h`"))


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def storage_option(f):
    """--storage, parsed here once: the command gets an hpo.storage.StorageSpec."""
    return click.option("--storage", envvar="CELEBHPO_STORAGE", default=None, metavar="URL",
                        callback=_storage_spec,
                        help="Optuna storage: sqlite:///studies/celebhpo.db (default, one "
                        "process), a journal file path ending in .log (several processes, one "
                        "machine) or postgresql+psycopg2://user:pass@host/db (many machines). "
                        "Env: CELEBHPO_STORAGE.")(f)


def _storage_spec(ctx: click.Context, param: click.Parameter, url: str | None) -> Any:
    # late: hpo imports optuna, which `celebhpo --help` never needs
    from celebhpo.hpo.storage import DEFAULT_STORAGE, parse_storage

    return parse_storage(url or DEFAULT_STORAGE)


def tracking_option(f):
    return click.option("--tracking-uri", default=None, metavar="URI", help="MLflow tracking "
                        "URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db with "
                        "artifacts in mlruns/artifacts).")(f)


def no_tracking_option(f):
    return click.option("--no-tracking", is_flag=True, help="Run without MLflow, as [study] "
                        "tracking = \"off\" does: no experiment, runs, checkpoints or resume "
                        "states (export-best then has nothing to export).")(f)


def no_progress_option(f):
    return click.option("--progress/--no-progress", "progress", default=None,
                        help="Progress bars on or off; by default on only when the output is "
                        "a terminal (not a log, not a pipe).")(f)


def retry_given_up_option(f):
    return click.option("--retry-given-up", is_flag=True, help="First queue once more each "
                        "point given up after its retry limit (trials whose workers kept "
                        "dying; study show marks them), then run as usual.")(f)


def device_option(f):
    return click.option("--device", default=None, metavar="DEVICE", help="auto (cuda > mps > "
                        "cpu), cpu, cuda, cuda:1 or mps; overrides [train] device.")(f)


def study_option(f):
    return click.option("--study", "study_name", default=None, metavar="NAME", help="Study name;"
                        " may be omitted when the storage holds exactly one study.")(f)


def backend_option(f):
    return click.option("--backend", type=click.Choice(["torch", "torchscript", "onnx"]),
                        default="torch", show_default=True, help="Run model.pt (torch), "
                        "model.ts or model.onnx of an exported folder.")(f)


def threshold_option(f):
    return click.option("--threshold", default="tuned", show_default=True,
                        metavar="tuned|0.5|FLOAT", help="When an attribute counts as present "
                        "(probability > threshold): tuned (per attribute, tuned on validation "
                        "and stored in the checkpoint), 0.5, or any number in (0, 1) for every "
                        "attribute.")(f)
