"""The README documents every command and every study-file key (sqlite-utils' test_docs)."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from celebhpo.cli import cli
from celebhpo.config import DataConfig, StudySection, TrainConfig
from tests.helpers import COMMANDS, write_official

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize("command", COMMANDS)
def test_command_in_readme(command):
    assert f"celebhpo {command}" in README, f"`celebhpo {command}` is not in the README"


@pytest.mark.parametrize(
    "section, key",
    [(s, f.name) for s, cls in (("study", StudySection), ("data", DataConfig),
                                ("train", TrainConfig)) for f in dataclasses.fields(cls)],
)
def test_study_key_documented(section, key):
    assert f"| `{key}` |" in README, f"[{section}] {key} is not in the README's study-file reference"


# -- "Using real CelebA", word for word ------------------------------------------------------
STUDIES = Path(__file__).resolve().parents[1] / "celebhpo" / "studies"
# the shipped file's [study] and [data] as they are (whole splits, 64x64); in place of its
# [train] and [space], a model that trains in seconds on a CPU, from random weights, and a grid
# of one point (MLflow's logging makes each trial cost seconds more)
SMALL = """
[train]
arch = "tiny"
pretrained = "none"
epochs = 1
num_features = 16
device = "cpu"

[space]
lr = [0.01]
"""


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    return README[start:README.index("\n## ", start + 1)]


def section_commands(title: str) -> list[str]:
    """The command lines of the section's ```bash blocks, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", section(title), flags=re.DOTALL)
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.startswith("#")]


def _small_study(work: Path) -> None:
    shipped = (STUDIES / "celeba.toml").read_text()
    (work / "studies").mkdir()
    (work / "studies" / "celeba.toml").write_text(shipped[:shipped.index("\n[train]")] + SMALL)


@pytest.mark.parametrize("layout", ["kaggle", "official"])
def test_using_real_celeba_runs_as_written(layout, synth_root, tmp_path, monkeypatch):
    work = tmp_path / "work"
    root = work / "data" / "celeba"
    if layout == "kaggle":
        root.joinpath("img_align_celeba").mkdir(parents=True)
        root.joinpath("img_align_celeba", "img_align_celeba").symlink_to(
            synth_root / "img_align_celeba" / "img_align_celeba")
        for name in ("list_attr_celeba.csv", "list_eval_partition.csv"):
            shutil.copy(synth_root / name, root / name)
    else:
        write_official(synth_root, root)
    _small_study(work)
    monkeypatch.chdir(work)
    pip, *commands = section_commands("Using real CelebA")
    # the venv's pip, with the extras the commands below need (ONNX for --format onnx)
    assert pip == ".venv/bin/pip install -e '.[onnx]'"
    assert [c.split()[0] for c in commands] == ["celebhpo"] * 4
    for command in commands:
        result = CliRunner().invoke(cli, shlex.split(command)[1:])
        assert result.exit_code == 0, f"{command}\n{result.output}"
        if command.startswith("celebhpo data inspect"):
            assert f"({layout} layout)" in result.stdout
        if command.startswith("celebhpo optimize"):  # the whole splits: 240 train images
            assert "stopped: the grid is exhausted" in result.stdout
    assert sorted(p.name for p in (work / "best").iterdir()) == [
        "model.onnx", "model.pt", "model.ts", "model_card.json", "model_card.md"]
    card = json.loads((work / "best" / "model_card.json").read_text())
    assert card["data"]["root"] == str(root.resolve())
    assert card["metrics"]["test"]["n_images"] == 30  # the whole test split of 300 faces


def test_the_shipped_real_celeba_files_on_a_small_copy(synth_root, tmp_path):
    """celeba.toml takes whole splits, so it creates a study on any copy; seed-grid.toml asks
    for the seed's 40,000 train images and says how to lower them."""
    storage = ["--no-tracking", "--storage", f"sqlite:///{tmp_path / 's.db'}"]
    celeba = CliRunner().invoke(cli, ["study", "create", str(STUDIES / "celeba.toml"), "--grid",
                                      "--data", str(synth_root), *storage])
    assert celeba.exit_code == 0, celeba.output
    assert "a grid of 8 points over arch, lr, dropout" in celeba.output
    seed = CliRunner().invoke(cli, ["study", "create", str(STUDIES / "seed-grid.toml"), "--grid",
                                    "--data", str(synth_root), *storage])
    assert seed.exit_code == 1
    assert seed.output.strip().endswith(
        "asked for 40000 train images but the split has 240; lower data.train_size (0 = all)")
    header = (STUDIES / "seed-grid.toml").read_text().split("\n[study]")[0]
    assert "40,000 train" in header and "studies/celeba.toml" in header
