"""Creates that are retried make one thing (issue 14, case 6).

A real `mlflow server` behind a real HTTP proxy that loses the answer to the first create:
the server made the run (or model version), the client saw the connection close. Whoever
retries - MLflow's own HTTP layer (it repeats POSTs) or our Tracker - there is one run and
one version afterwards.
"""

from __future__ import annotations

import pytest

from celebhpo.tracking import Tracker, create_study_run, register_model, start_trial
from tests.helpers import CONFIG
from tests.tracking.http_proxy import HttpProxy


def _trial_runs(tracker: Tracker, exp: str, number: int) -> list:
    return tracker.client.search_runs(
        [exp], filter_string=f"tags.role = 'trial' and tags.trial_number = '{number}'")


@pytest.mark.parametrize("who", ["tracker", "mlflow"])
def test_a_lost_answer_to_create_run_makes_one_run(tracking_server, monkeypatch, who):
    # "tracker": MLflow gives up at once and our retry asks for its first attempt first;
    # "mlflow": MLflow's HTTP layer repeats the POST by itself and a copy is made
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0" if who == "tracker" else "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    with HttpProxy(tracking_server) as proxy:
        tracker = Tracker(proxy.url, retries=2, backoff=0.05)
        exp, parent = create_study_run(tracker, f"lost-create-{who}", CONFIG)
        proxy.to_drop.append("/runs/create")
        run = start_trial(tracker, exp, parent, 0, {"lr": 0.1}, CONFIG)
        assert proxy.dropped("/runs/create") == 1
        assert proxy.requests("/runs/create") == (3 if who == "mlflow" else 2)
        runs = _trial_runs(tracker, exp, 0)
        assert [r.info.run_id for r in runs] == [run.run_id]
        assert runs[0].info.run_name == "t000 lr=0.1"
        run.end("COMPLETE")
        # a parent's create retried the same way
        proxy.to_drop.append("/runs/create")
        exp2, parent2 = create_study_run(tracker, f"lost-create-{who}", CONFIG, study_key="p2")
        parents = tracker.client.search_runs([exp], filter_string="tags.role = 'study'")
        assert sorted(r.info.run_id for r in parents) == sorted([parent, parent2])


def test_a_lost_answer_to_a_registry_create_makes_one_version(
        tracking_server, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with HttpProxy(tracking_server) as proxy:
        tracker = Tracker(proxy.url, retries=2, backoff=0.05)
        exp, parent = create_study_run(tracker, "lost-version", CONFIG)
        run = start_trial(tracker, exp, parent, 0, {"lr": 0.1}, CONFIG)

        def register(model: str, score: float = 0.5) -> str:
            return register_model(tracker, model, run.run_id, f"runs:/{run.run_id}/model",
                                  score=score, split="s", tags={"study": "lost-version"}).version

        assert register("lost-version-model") == "1"
        proxy.to_drop.append("/model-versions/create")
        assert register("lost-version-model", score=0.6) == "2"  # better: takes the alias
        assert proxy.dropped("/model-versions/create") == 1
        versions = tracker.client.search_model_versions("name = 'lost-version-model'")
        assert sorted(v.version for v in versions) == ["1", "2"]
        assert tracker.client.get_model_version_by_alias(
            "lost-version-model", "best").version == "2"
        # the model itself: its create answered "already exists" on the retry
        proxy.to_drop.append("/registered-models/create")
        assert register("lost-model-2") == "1"
        assert proxy.dropped("/registered-models/create") == 1
