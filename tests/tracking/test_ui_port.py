"""`celebhpo ui` on a port in use: one line naming the port and the fix, exit 1, before MLflow
starts (MLflow itself logs `[Errno 98] Address already in use` and exits 0)."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

from celebhpo.cli import cli
from celebhpo.errors import TrackingError
from celebhpo.tracking import Tracker, create_study_run
from celebhpo.tracking.ui import require_free_port
from tests.helpers import CONFIG


@pytest.fixture
def held_port():
    """A port a real listening socket holds on 127.0.0.1 for the test's length."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def test_ui_on_a_busy_port_exits_1_with_one_line(tmp_path, held_port):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    create_study_run(Tracker(uri, retries=0), "alpha", CONFIG)
    result = CliRunner().invoke(cli, ["ui", "--port", str(held_port), "--tracking-uri", uri])
    assert result.exit_code == 1
    line = result.output.strip()
    assert "\n" not in line, result.output  # no "open ..." URL, no MLflow log
    assert f"port {held_port} is already in use on 127.0.0.1" in line
    assert "--port" in line and "Errno" not in line
    suggested = int(line.rsplit("--port ", 1)[1])  # "e.g. --port N": a port free right now
    assert suggested != held_port
    require_free_port("127.0.0.1", suggested)


def test_a_free_port_passes_and_other_bind_errors_name_the_option(held_port):
    with socket.socket() as probe:  # a port free a moment ago
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    require_free_port("127.0.0.1", free)
    with pytest.raises(TrackingError, match=f"port {held_port} is already in use"):
        require_free_port("127.0.0.1", held_port)
    with pytest.raises(TrackingError, match="cannot listen on 192.0.2.1:.*--host"):
        require_free_port("192.0.2.1", free)  # TEST-NET-1: no address of this machine
