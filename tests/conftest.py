"""Fixtures shared by every test module: tiny synthetic CelebA data made by the project."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 synthetic faces (seed 0) in CelebA's Kaggle layout: 240 train, 30 val, 30 test.

    Treat it as read-only: it is shared by the whole session. Copy it to change it."""
    from celebhpo.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("synth") / "celeba", n=300, seed=0, progress=False)
