"""A real `mlflow server` on 127.0.0.1, filled through Tracker, read back through its REST API.

What a team sees: every trial a child of the study's parent run, one metric point per epoch
it ran, its end state, its report artifact; and a server that goes away mid-study turns into
one TrackingError, not a hang.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest

from celebhpo.errors import TrackingError
from celebhpo.tracking import Tracker, create_study_run, download_checkpoint, start_trial
from tests.helpers import CONFIG, Relay, make_fit


def _get(base: str, path: str, **query) -> dict:
    url = f"{base}{path}?{urllib.parse.urlencode(query)}" if query else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read() or b"{}")


def _post(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def test_study_through_a_tracking_server(tracking_server, tmp_path):
    base = tracking_server
    tracker = Tracker(base, retries=1, backoff=0.1)
    tracker.check()
    exp, parent = create_study_run(tracker, "served", CONFIG, study_key="served-1")
    assert create_study_run(tracker, "served", CONFIG, study_key="served-1") == (exp, parent)

    # (trial number, epochs run, end state)
    plan = [(0, 3, "COMPLETE"), (1, 1, "PRUNED"), (2, 2, "COMPLETE"), (3, 0, "FAIL")]
    runs = {}
    for number, epochs, state in plan:
        (tmp_path / str(number)).mkdir()
        fit = make_fit(tmp_path / str(number), epochs=max(epochs, 1))
        run = start_trial(tracker, exp, parent, number, {"arch": "tiny", "lr": 10.0 ** -number},
                          CONFIG, {"study": "served", "device": "cpu"})
        for h in fit.history[:epochs]:
            run.log_epoch(h["epoch"], h)
        if state == "COMPLETE":
            run.log_result(fit, CONFIG, log_checkpoint=number == 0)
        run.end(state, reason="loss is NaN" if state == "FAIL" else None,
                pruned_at=epochs if state == "PRUNED" else None)
        runs[number] = run.run_id

    found = _post(base, "/api/2.0/mlflow/runs/search", {
        "experiment_ids": [exp],
        "filter": f"tags.`mlflow.parentRunId` = '{parent}'",
        "max_results": 100,
    })["runs"]
    assert sorted(r["info"]["run_id"] for r in found) == sorted(runs.values())
    by_id = {r["info"]["run_id"]: r for r in found}
    expected_status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
    for number, epochs, state in plan:
        run = by_id[runs[number]]
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        assert run["info"]["status"] == expected_status[state]
        assert tags["state"] == state and tags["trial_number"] == str(number)
        assert tags["mlflow.parentRunId"] == parent
        history = _get(base, "/api/2.0/mlflow/metrics/get-history",
                       run_id=runs[number], metric_key="val_loss").get("metrics", [])
        assert sorted(m["step"] for m in history) == list(range(1, epochs + 1))
        files = {f["path"] for f in _get(base, "/api/2.0/mlflow/artifacts/list",
                                         run_id=runs[number]).get("files", [])}
        if state == "COMPLETE":
            assert {"classification_report.csv", "classification_report.json",
                    "curves.png", "config.json"} <= files
        else:
            assert "classification_report.csv" not in files
    assert tags_of(by_id[runs[1]])["pruned_at_epoch"] == "1"
    assert tags_of(by_id[runs[3]])["error"] == "loss is NaN"

    # the checkpoint comes back through the server's artifact proxy
    got = download_checkpoint(tracker, runs[0], tmp_path / "dl")
    assert got.read_bytes() == (tmp_path / "0" / "best.pt").read_bytes()
    with pytest.raises(TrackingError, match="no model.pt"):
        download_checkpoint(tracker, runs[2], tmp_path / "dl2")


def tags_of(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def test_server_gone_mid_study_is_a_tracking_error(tracking_server, tmp_path, monkeypatch):
    relay = Relay(tracking_server).start()  # the server as this client sees it
    base = relay.url
    tracker = Tracker(base, retries=1, backoff=0.1)
    exp, parent = create_study_run(tracker, "gone", CONFIG)
    run = start_trial(tracker, exp, parent, 0, {"lr": 1e-3}, CONFIG)
    run.log_epoch(1, make_fit(tmp_path).history[0])
    relay.stop()  # the server goes away: connections refused, open ones cut
    # MLflow's own HTTP retries would take minutes; ours (retries=1) are what this tests
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(TrackingError, match=r"after 2 attempts") as info:
        run.log_epoch(2, make_fit(tmp_path).history[0])
    assert str(info.value).startswith(f"MLflow log failed on {base}")
    assert not run.end("FAIL", reason=str(info.value))  # quiet: warns, returns False
    with pytest.raises(TrackingError, match="unreachable"):
        tracker.check()
