"""Study files: typed loading, validation with the key and the nearest name, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from celebhpo.config import (
    Categorical,
    FloatRange,
    IntRange,
    StudyConfig,
    load_study_file,
    parse_overrides,
)
from celebhpo.errors import ConfigError

STUDIES = Path(__file__).resolve().parents[1] / "studies"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["seed-grid", "tpe", "demo", "fair", "front"])
def test_shipped_study_files_load_and_round_trip(name):
    cfg = load_study_file(STUDIES / f"{name}.toml")
    assert cfg.study.name == name
    again = StudyConfig.from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()


def test_seed_grid_is_the_seeds_study():
    cfg = load_study_file(STUDIES / "seed-grid.toml")
    assert cfg.grid() == {
        "arch": ["resnet50", "densenet121"],
        "lr": [0.01, 0.001],
        "dropout": [0.3, 0.5],
        "num_features": [512],
    }
    assert (cfg.data.train_size, cfg.data.val_size, cfg.data.test_size) == (40000, 5000, 5000)
    assert (cfg.data.image_size, cfg.train.batch_size, cfg.train.epochs) == (64, 64, 8)
    assert (cfg.train.optimizer, cfg.train.pretrained) == ("adam", "imagenet")


def test_defaults_serve_mean_accuracy(tmp_path):
    """Issue 13: plain BCE and accuracy-tuned thresholds unless the file says otherwise."""
    cfg = load_study_file(write(tmp_path, "[train]\nlr = 0.01\n"))
    assert (cfg.train.class_weighting, cfg.train.threshold_metric) == ("none", "accuracy")


def test_space_kinds(tmp_path):
    cfg = load_study_file(write(tmp_path, """
[space]
arch = ["tiny", "resnet18"]
lr = { low = 1e-4, high = 1e-2, log = true }
num_features = { low = 64, high = 256, step = 64 }
"""))
    assert cfg.space["arch"] == Categorical(["tiny", "resnet18"])
    assert cfg.space["lr"] == FloatRange(1e-4, 1e-2, True)
    assert cfg.space["num_features"] == IntRange(64, 256, 64)
    assert cfg.study.name == "s"  # from the file name
    fixed = cfg.fixed()
    assert fixed.train.arch == "tiny" and fixed.train.lr == pytest.approx(1e-3)
    assert fixed.train.num_features == 128 and fixed.space == {}


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[train]\nlrr = 0.1\n", "unknown [train] key 'lrr'; did you mean 'lr'?"),
        ("[trian]\nlr = 0.1\n", "unknown section 'trian'; did you mean 'train'?"),
        ("[train]\nepochs = 'ten'\n", "[train] epochs must be a whole number, got 'ten'"),
        ("[train]\nepochs = 2.5\n", "[train] epochs must be a whole number"),
        ("[train]\nlr = true\n", "[train] lr must be a number, got True"),
        ("[train]\noptimizer = 'adamm'\n", "did you mean 'adam'?"),
        ("[train]\narch = 'resnet5'\n", "train.arch = 'resnet5' is not a known architecture"),
        ("[space]\narch = ['resnet50', 'densenet12']\n", "space.arch = 'densenet12'"),
        ("[space]\nlr = { low = 0.1, high = 0.01 }\n", "low = 0.1 is greater than high = 0.01"),
        ("[space]\nlr = []\n", "[space] lr is an empty list"),
        ("[space]\nlr = { low = 0.0, high = 0.1, log = true }\n", "a log range needs low > 0"),
        ("[space]\nlearning_rate = [0.1]\n", "did you mean 'lr'?"),
        ("[space]\nepochs = { low = 1, high = 3, log = true }\n", "unknown range key 'log'"),
        ("[space]\narch = { low = 1, high = 3 }\n", "a range needs a numeric key"),
        ("[data]\nimage_size = 0\n", "[data] image_size = 0 must be > 0"),
        ("[train]\ndropout = 1.5\n", "dropout = 1.5 must be in [0, 1)"),
        ("[study]\npruner = 'medain'\n", "did you mean 'median'?"),
        ("[train]\nthreshold_metric = 'acc'\n", "did you mean 'accuracy'?"),
        # [space] values follow [train]'s rules (issue 14): refused at create, not per trial
        ("[space]\nlr = [-0.001, 0.003]\n", "[space] lr = -0.001 must be > 0"),
        ("[space]\ndropout = [0.3, 1.5]\n", "[space] dropout = 1.5 must be in [0, 1)"),
        ("[space]\nepochs = [0, 2]\n", "[space] epochs = 0 must be > 0"),
        ("[space]\nbatch_size = [-1, 64]\n", "[space] batch_size = -1 must be > 0"),
        ("[space]\nweight_decay = { low = -0.1, high = 0.1 }\n",
         "[space] weight_decay = -0.1 must be >= 0"),
        ("[train]\npatience = -1\n", "[train] patience = -1 must be >= 0"),
        ("[train]\nclass_weighting = 'inverse_freq'\n", "did you mean 'inverse_frequency'?"),
        ("[train\n", "not valid TOML"),
    ],
)
def test_bad_study_files_name_file_and_key(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_study_file(path)
    message = str(err.value)
    assert fragment in message
    assert str(path) in message
    assert "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="study file not found"):
        load_study_file(tmp_path / "nope.toml")


def test_grid_refuses_ranges(tmp_path):
    cfg = load_study_file(write(tmp_path, "[space]\nlr = { low = 0.001, high = 0.1 }\n"))
    with pytest.raises(ConfigError, match="lr is a range; a grid needs a list"):
        cfg.grid()


def test_overrides():
    assert parse_overrides(["lr=0.01", "data.image_size=32", "study.seed=3", "arch=tiny"]) == [
        ("train", "lr", 0.01),
        ("data", "image_size", 32),
        ("study", "seed", 3),
        ("train", "arch", "tiny"),
    ]
    cfg = load_study_file(STUDIES / "demo.toml", ["lr=0.05", "epochs=1"], data_root="/x/y")
    assert cfg.train.lr == 0.05 and "lr" not in cfg.space  # fixed beats searched
    assert cfg.train.epochs == 1 and cfg.data.root == "/x/y"
    with pytest.raises(ConfigError, match="unknown \\[train\\] key 'lrr'; did you mean 'lr'"):
        parse_overrides(["lrr=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["lr"])
    with pytest.raises(ConfigError, match="must be a number"):
        load_study_file(STUDIES / "demo.toml", ["lr=fast"])


def test_with_params_validates():
    cfg = load_study_file(STUDIES / "demo.toml")
    trial = cfg.with_params({"arch": "densenet121", "lr": 0.01, "dropout": 0.5})
    assert (trial.train.arch, trial.train.lr, trial.train.dropout) == ("densenet121", 0.01, 0.5)
    assert cfg.train.arch != "densenet121" or cfg.train.lr != 0.01  # the original is untouched
    with pytest.raises(ConfigError, match="dropout"):
        cfg.with_params({"dropout": 2.0})
