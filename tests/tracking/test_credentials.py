"""Credentials in URLs: masked in everything shown, left out of everything stored, and taken
by each process from its own flag or environment (issue 14, case 7)."""

from __future__ import annotations

import pytest

from celebhpo.errors import TrackingError, mask_url, without_credentials
from celebhpo.tracking import Tracker, artifact_location, study_tracking_uri

# (text, masked, stored): one row per place a credential hides in a URL
CASES = [
    ("https://TOKEN123@mlflow.example/api", "https://***@mlflow.example/api",
     "https://mlflow.example/api"),
    ("http://bob:s3cret@127.0.0.1:5000", "http://bob:***@127.0.0.1:5000",
     "http://127.0.0.1:5000"),
    ("postgresql+psycopg2://alice:hunter2@db:5432/optuna",
     "postgresql+psycopg2://alice:***@db:5432/optuna", "postgresql+psycopg2://alice@db:5432/optuna"),
    ("postgresql://u:p@ss@db/x", "postgresql://u:***@db/x", "postgresql://u@db/x"),
    ("redis://:hunter2@cache:6379", "redis://:***@cache:6379", "redis://cache:6379"),
    ("postgresql://db/x?sslmode=require&password=hunter2&application_name=w",
     "postgresql://db/x?sslmode=require&password=***&application_name=w",
     "postgresql://db/x?sslmode=require&application_name=w"),
    ("http://h:5000/?token=abc123", "http://h:5000/?token=***", "http://h:5000/"),
    ("http://h/x?access_token=abc&api_key=def&secret=ghi",
     "http://h/x?access_token=***&api_key=***&secret=***", "http://h/x"),
    ("s3://bucket/k?X-Amz-Credential=AKIA1&X-Amz-Signature=f00d&v=1",
     "s3://bucket/k?X-Amz-Credential=***&X-Amz-Signature=***&v=1", "s3://bucket/k?v=1"),
]


@pytest.mark.parametrize(("text", "masked", "stored"), CASES)
def test_masking_and_storing_cover_every_credential(text, masked, stored):
    assert mask_url(text) == masked
    assert without_credentials(text) == stored
    assert mask_url(f"could not reach {text} after 3 tries") == f"could not reach {masked} after 3 tries"


@pytest.mark.parametrize("text", [
    "postgresql+psycopg2://postgres@127.0.0.1:5432/db",  # a database's user name is no secret
    "sqlite:////data/a@b/mlflow.db",  # an @ in a path is not userinfo
    "http://127.0.0.1:5000/#/experiments/1",
    "lr=0.001 pass --tracking-uri",
])
def test_what_is_no_credential_stays(text):
    assert mask_url(text) == text
    assert without_credentials(text) == text


def test_secret_environment_values_are_masked_wherever_they_appear(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-9f8e7d")
    monkeypatch.setenv("PGPASSWORD", "pg-pass-1")
    text = "Authorization: Bearer tok-9f8e7d failed; PGPASSWORD pg-pass-1 rejected"
    assert mask_url(text) == "Authorization: Bearer *** failed; PGPASSWORD *** rejected"
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "ab")  # too short to mask text blindly
    assert mask_url("a tab b") == "a tab b"


def test_a_process_brings_its_own_credentials(monkeypatch, tmp_path):
    stored = "http://127.0.0.1:5999"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert Tracker(stored).uri == stored
    # the environment names the same store with a password: used
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://bob:s3cret@127.0.0.1:5999")
    tracker = Tracker(stored)
    assert tracker.uri == "http://bob:s3cret@127.0.0.1:5999"
    assert repr(tracker) == "Tracker('http://bob:***@127.0.0.1:5999')"
    # ... but not for another store, and never over credentials given explicitly
    assert Tracker("http://127.0.0.1:6000").uri == "http://127.0.0.1:6000"
    assert Tracker("http://eve:other@127.0.0.1:5999").uri == "http://eve:other@127.0.0.1:5999"
    # a worker's own --tracking-uri: the study's store with credentials, or refused
    assert study_tracking_uri(stored, None) == stored
    assert study_tracking_uri(stored, "http://bob:pw@127.0.0.1:5999") == (
        "http://bob:pw@127.0.0.1:5999")
    with pytest.raises(TrackingError, match=r"--tracking-uri http://bob:\*\*\*@127.0.0.1:6000 "
                       r"is not this study's tracking store http://127.0.0.1:5999") as info:
        study_tracking_uri(stored, "http://bob:pw@127.0.0.1:6000")
    assert "pw@" not in str(info.value)
    db = f"sqlite:///{tmp_path}/m.db"
    assert study_tracking_uri(db, f"sqlite:///{tmp_path}/./m.db") == db


def test_artifact_location_where_every_worker_can_reach_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pg = "postgresql+psycopg2://u:pw@db.example/mlflow"
    with pytest.raises(TrackingError) as info:
        artifact_location(pg)
    line = str(info.value)
    assert line.startswith("tracking URI postgresql+psycopg2://u:***@db.example/mlflow is a "
                           "database without an artifact location")
    assert f"{tmp_path.as_uri()}/mlruns/artifacts on this machine only" in line
    assert "--artifacts-destination" in line and "http://host:5000" in line
    assert "\n" not in line and "pw@" not in line
    assert artifact_location(pg, "s3://bucket/celebhpo") == "s3://bucket/celebhpo"
    assert artifact_location(pg, "shared/art") == (tmp_path / "shared" / "art").as_uri()
    assert artifact_location(pg, f"file://{tmp_path}/x") == (tmp_path / "x").as_uri()
    # SQLite keeps them beside its file; a server decides for itself
    assert artifact_location(f"sqlite:///{tmp_path}/m/mlflow.db") == (
        tmp_path / "m" / "artifacts").as_uri()
    assert artifact_location("http://127.0.0.1:5000") is None
