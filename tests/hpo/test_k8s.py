"""`celebhpo launch k8s`: the indexed Job for 4 workers, validated against the Kubernetes
schemas (kubernetes-validate, strict: no unknown field either), with no secret value in it,
one GPU per pod, and the same `celebhpo optimize` command as a SLURM task."""

from __future__ import annotations

import copy
import shlex

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from celebhpo.cli import cli
from celebhpo.hpo.k8s import K8sJob, k8s_name, render_job

SECRET = "pw-Zq8vX2"
TOKEN = "tok-9fK3mW7rL1"
CREDENTIALS = {"CELEBHPO_STORAGE", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN",
               "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PGPASSWORD"}
# the oldest Kubernetes with every field the Job uses (backoffLimitPerIndex), and the newest
VERSIONS = ["1.29", kubernetes_validate.latest_version()]


@pytest.fixture
def manifest(tmp_path) -> tuple[str, dict]:
    """The Job written by the command for 4 workers, with credentials in its environment."""
    env = {"CELEBHPO_STORAGE": f"postgresql+psycopg2://celebhpo:{SECRET}@db/celebhpo",
           "MLFLOW_TRACKING_URI": f"https://{TOKEN}@mlflow.example.com",
           "MLFLOW_TRACKING_TOKEN": TOKEN, "PGPASSWORD": SECRET}
    result = CliRunner().invoke(cli, ["launch", "k8s", "--study", "Seed Grid", "--workers", "4",
                                      "--image", "registry.example.com/celebhpo:0.1",
                                      "--volume", "celeba:/data/celeba",
                                      "--out", str(tmp_path / "k8s")], env=env)
    assert result.exit_code == 0, result.output
    [path] = (tmp_path / "k8s").glob("*.yaml")
    assert path.name == "celebhpo-seed-grid-job.yaml" and path.name in result.output
    text = path.read_text()
    return text, yaml.safe_load(text)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_job_is_valid_kubernetes(manifest, version):
    _, job = manifest
    kubernetes_validate.validate(job, version, strict=True)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["parallelism"] == spec["completions"] == 4


def test_the_schemas_catch_a_broken_job(manifest):
    """The validation above can fail: a wrong type and an unknown field are both caught."""
    _, job = manifest
    bad = copy.deepcopy(job)
    bad["spec"]["parallelism"] = "four"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)
    bad = copy.deepcopy(job)
    bad["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)


def test_no_secret_value_only_references(manifest):
    text, job = manifest
    assert SECRET not in text and TOKEN not in text
    [container] = job["spec"]["template"]["spec"]["containers"]
    by_name = {e["name"]: e for e in container["env"]}
    assert set(by_name) >= CREDENTIALS
    for name in CREDENTIALS:
        assert "value" not in by_name[name]
        ref = by_name[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "celebhpo" and ref["key"] == name
        assert ref.get("optional", False) == (name != "CELEBHPO_STORAGE")


def test_every_pod_asks_for_exactly_one_gpu(manifest):
    _, job = manifest
    pod = job["spec"]["template"]["spec"]
    containers = pod["containers"] + pod.get("initContainers", [])
    gpus = [c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0) for c in containers]
    assert sum(gpus) == 1 and gpus == [1]
    assert all("nvidia.com/gpu" not in c.get("resources", {}).get("requests", {})
               for c in containers)  # requests default to the limit
    assert pod["restartPolicy"] == "Never" and pod["terminationGracePeriodSeconds"] == 60
    assert pod["volumes"] == [{"name": "vol0", "persistentVolumeClaim": {"claimName": "celeba"}}]


def test_the_command_is_the_slurm_tasks(manifest):
    _, job = manifest
    [container] = job["spec"]["template"]["spec"]["containers"]
    script = CliRunner().invoke(cli, ["launch", "slurm", "--study", "Seed Grid", "--workers", "4",
                                      "--dry-run"]).output
    exec_line = shlex.split(script.splitlines()[-1])
    assert exec_line[0] == "exec"
    assert container["command"] == exec_line[1:] == [
        "celebhpo", "optimize", "--study", "Seed Grid", "--device", "cuda"]


def test_grace_and_names():
    job = render_job(K8sJob(study="a", workers=2, image="i", grace_s=300, trials=50))
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 300
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-4:] == [
        "--trials", "50", "--device", "cuda"]
    assert k8s_name("Seed_Grid v2!") == "celebhpo-seed-grid-v2"
    assert len(k8s_name("x" * 200)) <= 52
    result = CliRunner().invoke(cli, ["launch", "k8s", "--study", "a", "--workers", "2",
                                      "--image", "i", "--volume", "relative/path"])
    assert result.exit_code == 1 and "--volume 'relative/path': give CLAIM:/mount/path" in \
        result.output
