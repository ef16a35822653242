"""The command line as a user meets it: help everywhere, version, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from celebhpo import __version__
from celebhpo.cli import cli
from tests.helpers import COMMANDS


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_every_command_has_help_with_an_example(command, flag):
    result = CliRunner().invoke(cli, [*command.split(), flag])
    assert result.exit_code == 0, result.output
    assert "Example: celebhpo " in result.output, f"{command} --help has no example line"


def test_bad_study_file_is_one_line_no_traceback(tmp_path: Path):
    bad = tmp_path / "typo.toml"
    bad.write_text("[train]\nlrr = 0.01\n")
    result = CliRunner().invoke(
        cli, ["study", "create", str(bad), "--storage", f"sqlite:///{tmp_path}/s.db"]
    )
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"Error: {bad}: unknown [train] key 'lrr'; did you mean 'lr'? "
                     f"(valid: {lines[0].split('(valid: ')[1]}"]
    assert not (tmp_path / "s.db").exists(), "nothing may be written on bad input"


def test_next_hint_after_study_create_pastes_into_a_shell(tmp_path: Path, synth_root: Path):
    """A storage path with a space: the printed command must split back into the same argv."""
    import shlex

    from tests.helpers import write_study

    folder = tmp_path / "with space"
    folder.mkdir()
    storage = f"sqlite:///{folder / 's.db'}"
    study = write_study(tmp_path / "s.toml", synth_root, name="spaced")
    result = CliRunner().invoke(cli, ["study", "create", str(study), "--grid", "--storage",
                                      storage, "--tracking-uri",
                                      f"sqlite:///{folder / 'mlflow.db'}"])
    assert result.exit_code == 0, result.output
    hint = result.output.split("Next: ", 1)[1].strip()
    assert shlex.split(hint) == ["celebhpo", "optimize", "--study", "spaced", "--storage", storage]
