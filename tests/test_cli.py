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


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_bad_storage_url_is_one_line_from_the_flag_or_the_environment(tmp_path, how):
    """--storage (or CELEBHPO_STORAGE) is parsed once, by the option: a bad one is the same
    one line for every command that takes it."""
    bad = str(tmp_path / "x.db")
    for command in (["study", "list"], ["study", "show"], ["optimize"]):
        args, env = ([*command, "--storage", bad], {}) if how == "flag" else (
            command, {"CELEBHPO_STORAGE": bad})
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert result.output.splitlines() == [
            f"Error: storage '{bad}': not a URL; use sqlite:///{bad} (one process), a journal "
            "file ending in .log (several processes) or postgresql+psycopg2://user:***@host/db"]
    assert list(tmp_path.iterdir()) == []


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


def test_train_prints_its_result(tmp_path: Path, synth_root: Path):
    """`train` returns a TrainResult; the command prints it through report.format_training."""
    from tests.helpers import write_study

    study = write_study(tmp_path / "s.toml", synth_root)
    out = tmp_path / "model.pt"
    result = CliRunner().invoke(cli, ["train", str(study), "--set",
                                      f"data.cache_dir={tmp_path / 'cache'}", "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tiny  lr=0.003  dropout=") and lines[0].endswith("on cpu")
    assert lines[1] == "epoch  train_loss  val_loss  val_mean_acc  val_map  images/s"
    assert lines[2].split()[0] == "1"
    assert lines[3] == ("best epoch 1 (lowest val_loss); validation, thresholds at 0.5 unless "
                        "named val_tuned_ (tuned for accuracy):")
    assert lines[-1] == f"checkpoint: {out}" and out.is_file()


def test_optimize_prints_each_trial_and_its_summary_with_the_worker_label(
        tmp_path: Path, synth_root: Path):
    """The worker hands each finished trial and its summary back as data; the command prints
    them (report.format_trial_line, format_optimize_summary), a `--devices` worker's lines
    led by its label."""
    import re

    from tests.helpers import write_study

    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = write_study(tmp_path / "s.toml", synth_root, name="lines")
    created = CliRunner().invoke(cli, ["study", "create", str(study), "--grid", "--storage",
                                       storage, "--tracking-uri",
                                       f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert created.exit_code == 0, created.output
    result = CliRunner().invoke(cli, ["optimize", "--storage", storage],
                                env={"CELEBHPO_WORKER": "gpu7"})
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith(("[gpu7]", "best"))]
    trial = r"\[gpu7\] trial {} COMPLETE val_loss=\d\.\d{{4}} lr={}  1 epochs, \d+\.\d s"
    assert re.fullmatch(trial.format(0, "0.003"), lines[0]), lines
    assert re.fullmatch(trial.format(1, "0.03"), lines[1]), lines
    assert lines[2] == ("[gpu7] study 'lines': 2 trials (2 COMPLETE); this worker ran 2; "
                        "stopped: the grid is exhausted")
    assert re.fullmatch(r"best: trial [01] val_loss=\d\.\d{4} lr=0\.0?03", lines[3]), lines
    assert len(lines) == 4
