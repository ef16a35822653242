"""`[study]` metric lists, constraints and slices, and `[space] data.*` keys (issue 17)."""

from __future__ import annotations

from pathlib import Path

import pytest

from celebhpo.config import Categorical, StudyConfig, load_study_file
from celebhpo.errors import ConfigError
from celebhpo.objectives import feasible, violations


def load(tmp_path: Path, study: str = "", space: str = "") -> StudyConfig:
    path = tmp_path / "s.toml"
    path.write_text(f"[study]\n{study}\n[train]\narch = \"tiny\"\n[space]\n{space}\n")
    return load_study_file(path)


def test_a_metric_list_is_a_multi_objective_study_that_round_trips(tmp_path):
    cfg = load(tmp_path, 'metric = ["latency_ms", "val_mean_acc"]\npruner = "none"')
    assert cfg.study.multi_objective()
    assert cfg.study.metric == "val_mean_acc"  # the epoch metric picks each trial's best epoch
    assert cfg.study.objective_names() == ["latency_ms", "val_mean_acc"]
    assert cfg.study.objective_directions() == ["minimize", "maximize"]
    again = StudyConfig.from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict() and again.study.multi_objective()


def test_a_one_item_list_is_a_single_metric(tmp_path):
    cfg = load(tmp_path, 'metric = ["val_map"]')
    assert not cfg.study.multi_objective()
    assert cfg.study.objective_names() == ["val_map"]
    assert cfg.study.objective_directions() == ["maximize"]


@pytest.mark.parametrize("study, fragment", [
    ('metric = ["latency_ms", "params_m"]', "pruner = 'median' prunes on an epoch curve"),
    ('metric = ["val_mean_acc", "latency_ms"]\npruner = "none"\nsampler = "cmaes"',
     "'cmaes' is single-objective"),
    ('metric = ["latency_ms", "params_m"]\npruner = "none"', "needs at least one validation"),
    ('metric = ["val_mean_acc", "val_mean_acc"]\npruner = "none"', "2 or 3 different"),
    ('metric = ["val_mean_acc", "latency_ms"]\npruner = "none"\ndirection = "minimize"',
     "remove direction"),
    ('metric = "latency_ms"', "'latency_ms' is not one of"),
    ('metric = "val_mean_accuracy"', "did you mean 'val_mean_acc'"),
    ('constraints = { max_params = 30 }', "unknown constraint 'max_params'; did you mean "
                                          "'max_params_m'"),
    ('constraints = { max_latency_ms = -1 }', "max_latency_ms = -1 must be > 0"),
    ('constraints = { min_worst_group_acc = 1.5 }', "must be in (0, 1]"),
    ('constraints = { max_params_m = 30 }\nsampler = "random"', "cannot use constraints"),
    ('constraints = { max_params_m = "big" }', "must be a table of numbers"),
    ('slices = []\nmetric = "val_worst_group_acc"', "slices = [] but the worst-group"),
    ('slices = []\nconstraints = { min_worst_group_acc = 0.7 }', "slices = [] but"),
    ('slices = ["Male", "Male"]', "at most 4 different"),
    ('slices = "Male"', "[study] slices must be a list of names"),
])
def test_bad_objectives_are_one_line_naming_the_key(tmp_path, study, fragment):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, study)
    assert fragment in str(e.value) and "s.toml" in str(e.value)
    assert "\n" not in str(e.value)


def test_constraints_load_with_the_grid_and_tpe(tmp_path):
    cfg = load(tmp_path, 'sampler = "grid"\nconstraints = { max_params_m = 30, '
                         'max_latency_ms = 4, min_worst_group_acc = 0.7 }')
    assert cfg.study.constraints == {"max_params_m": 30.0, "max_latency_ms": 4.0,
                                     "min_worst_group_acc": 0.7}
    assert cfg.study.slices == ["Male", "Young"]  # the default


def test_violations_follow_optunas_sign_and_a_missing_value_is_not_met():
    c = {"max_params_m": 30.0, "min_worst_group_acc": 0.7}
    assert violations({"params_m": 25.0, "val_worst_group_acc": 0.75}, c) == pytest.approx(
        {"max_params_m": -5.0, "min_worst_group_acc": -0.05})
    assert feasible({"params_m": 25.0, "val_worst_group_acc": 0.75}, c)
    assert not feasible({"params_m": 31.0, "val_worst_group_acc": 0.75}, c)
    assert violations({"params_m": 25.0}, c)["min_worst_group_acc"] == 1.0
    assert not feasible({"params_m": 25.0, "val_worst_group_acc": float("nan")}, c)


def test_the_image_size_can_be_searched(tmp_path):
    cfg = load(tmp_path, "", "data.image_size = [16, 32]\nlr = [0.01, 0.001]")
    assert cfg.space["data.image_size"] == Categorical([16, 32])
    assert cfg.grid() == {"lr": [0.01, 0.001], "data.image_size": [16, 32]}
    trial = cfg.with_params({"data.image_size": 32, "lr": 0.01})
    assert trial.data.image_size == 32 and trial.train.lr == 0.01
    again = StudyConfig.from_dict(cfg.to_dict())
    assert again.space == cfg.space
    assert "data.image_size" not in cfg.with_overrides(["data.image_size=24"]).space


@pytest.mark.parametrize("space, fragment", [
    ("data.image_size = [0, 32]", "[space] image_size = 0 must be > 0"),
    ("data.root = [\"a\", \"b\"]", "unknown [space] key (a [train] key or data.image_size"),
    ("data.crop = [\"squash\", \"circle\"]", "'circle' is not one of"),
])
def test_bad_data_keys_in_the_space(tmp_path, space, fragment):
    with pytest.raises(ConfigError, match=None) as e:
        load(tmp_path, "", space)
    assert fragment in str(e.value)


def test_set_metric_replaces_the_files_metric_list(tmp_path):
    cfg = load(tmp_path, 'metric = ["val_mean_acc", "latency_ms"]\npruner = "none"')
    single = cfg.with_overrides(["study.metric=val_map"])
    assert not single.study.multi_objective() and single.study.objective_names() == ["val_map"]
    other = cfg.with_overrides(['study.metric=["val_map", "params_m"]'])
    assert other.study.objective_names() == ["val_map", "params_m"]
