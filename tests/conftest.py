"""Fixtures shared by the test modules: tiny synthetic CelebA data made by the project,
throw-away PostgreSQL databases, a real MLflow server. Helpers that tests import live in
tests/helpers.py."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from celebhpo.data.synth import synthesize
from tests.helpers import mlflow_server

# Hypothesis keeps its examples and caches outside the checkout: the suite writes nothing
# there (.ci/run checks)
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "celebhpo-hypothesis")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 synthetic faces (seed 0) in CelebA's Kaggle layout: 240 train, 30 val, 30 test.

    Treat it as read-only: it is shared by the whole session. Copy it to change it."""
    return synthesize(tmp_path_factory.mktemp("synth") / "celeba", n=300, seed=0, progress=False)


# -- PostgreSQL ---------------------------------------------------------------------------------
@pytest.fixture
def pg_url():
    """A throw-away database on 127.0.0.1:5432 (user postgres, trust auth), dropped after."""
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres",
                                connect_timeout=3)
    except psycopg2.OperationalError as e:
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432 as user postgres: {e}")
    conn.autocommit = True
    name = f"celebhpo_test_{uuid.uuid4().hex[:12]}"
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


# -- processes ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory) -> Iterator[str]:
    """One real MLflow server for the whole session (it takes seconds to start): its base URL.

    Never stop it: to make it unreachable for a client, put a Relay in between and stop that."""
    with mlflow_server(tmp_path_factory.mktemp("server")) as (base, _):
        yield base


