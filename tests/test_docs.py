"""The README documents every command and every study-file key (sqlite-utils' test_docs)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from celebhpo.config import DataConfig, StudySection, TrainConfig
from tests.helpers import COMMANDS

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
