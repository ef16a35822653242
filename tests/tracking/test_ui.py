"""`celebhpo ui`: the URL that lands on a study's runs table; no silent empty store."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from celebhpo.cli import cli
from celebhpo.errors import TrackingError
from celebhpo.tracking import Tracker, create_study_run
from celebhpo.tracking.ui import runs_url, ui_launch
from tests.helpers import CONFIG, free_port


def test_ui_refuses_a_folder_without_a_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(cli, ["ui", "--port", "5999"])
    assert result.exit_code == 1
    line = result.output.strip()
    assert "\n" not in line and "no MLflow store at" in line and "--tracking-uri" in line
    assert str(tmp_path / "mlruns" / "mlflow.db") in line
    assert not (tmp_path / "mlruns").exists()  # nothing created


def test_ui_prints_the_runs_table_url_of_each_study(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    tracker = Tracker(uri, retries=0)
    exp_a, _ = create_study_run(tracker, "alpha", CONFIG)
    exp_b, _ = create_study_run(tracker, "beta", CONFIG)
    port, other = free_port(), free_port()  # the ports are checked for being free
    argv, lines = ui_launch(uri, host="127.0.0.1", port=port, study="beta")
    assert argv[argv.index("--port") + 1] == str(port)
    assert lines[-1] == (f"open http://127.0.0.1:{port}/#/experiments/{exp_b}/runs"
                         "?workflowType=machine_learning")
    _, lines = ui_launch(uri, host="0.0.0.0", port=other)
    assert lines[1:] == ["open a study's runs:",
                         f"  beta: {runs_url('127.0.0.1', other, exp_b)}",
                         f"  alpha: {runs_url('127.0.0.1', other, exp_a)}"]
    with pytest.raises(TrackingError, match=r"no experiment for study 'gamma'.*alpha"):
        ui_launch(uri, host="127.0.0.1", port=other, study="gamma")
    result = CliRunner().invoke(cli, ["ui", "--study", "gamma", "--tracking-uri", uri])
    assert result.exit_code == 1 and "--study" in result.output


def test_runs_url_shapes():
    assert runs_url("127.0.0.1", 5000) == "http://127.0.0.1:5000/"
    assert runs_url("::", 8080, "7") == (
        "http://127.0.0.1:8080/#/experiments/7/runs?workflowType=machine_learning")
    assert runs_url("::1", 80, "1").startswith("http://[::1]:80/#/experiments/1/")
