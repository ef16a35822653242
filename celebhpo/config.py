"""Typed study configuration, loaded from `studies/*.toml` and validated.

A study file has four sections. `[study]`, `[data]` and `[train]` map one-to-one onto the
dataclasses below; `[space]` holds the searched parameters, each a `[train]` key:
a list is categorical, `{low, high, log}` a float range, `{low, high, step}` an int range;
`data.image_size` and `data.crop` may be searched too. `[study] metric` may list 2-3 metrics
(a multi-objective study) and `[study] constraints` bound a trial (celebhpo.objectives).

Every error names the file and the key, and suggests the nearest valid name.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from celebhpo._typed import build as _build
from celebhpo._typed import check_keys as _check_keys
from celebhpo._typed import coerce as _coerce
from celebhpo._typed import field_types as _field_types
from celebhpo._typed import suggest as _suggest
from celebhpo.archs import is_known_arch, list_models
from celebhpo.errors import ConfigError
from celebhpo.objectives import METRICS, check_study

__all__ = ["Categorical", "DataConfig", "FloatRange", "IntRange", "StudyConfig", "StudySection",
           "TrainConfig", "load_study_file", "parse_overrides"]


@dataclass
class StudySection:
    """`[study]`: what a study optimizes, how Optuna searches and prunes (objectives.py)."""

    name: str = "study"
    # one epoch metric (objectives.EPOCH_METRICS), or a list of 2-3 metrics (a multi-objective
    # study; latency_ms / params_m allowed there): stored split into `metric` (the first epoch
    # metric: best epoch, early stopping) and `objectives` (the list)
    metric: Any = "val_loss"
    objectives: list[str] = field(default_factory=list)  # [] = just `metric`
    direction: Literal["auto", "minimize", "maximize"] = "auto"  # of `metric`; a list: auto
    sampler: Literal["grid", "tpe", "random", "cmaes", "nsga2"] = "tpe"
    seed: int = 0
    pruner: Literal["median", "percentile", "successive_halving", "hyperband", "none"] = "median"
    n_startup_trials: int = 2  # median/percentile: trials that must finish before any is pruned
    n_warmup_steps: int = 1  # median/percentile: first epochs never pruned (1 = judged from epoch 2)
    percentile: float = 25.0  # percentile pruner
    min_resource: int = 1  # successive_halving/hyperband: epoch of the first rung (1 = after epoch 1)
    reduction_factor: int = 3  # successive_halving/hyperband
    checkpoints: Literal["best", "all"] = "best"  # log every trial's checkpoint, or the best's
    resume: bool = True  # a retried trial resumes from its last epoch (state logged per epoch)
    system_metrics: bool = False  # MLflow system metrics (CPU, memory, GPU) on trial runs
    # "off": no MLflow at all (no runs, checkpoints, resume states; export-best refuses)
    tracking: Literal["on", "off"] = "on"
    heartbeat_interval: int = 30  # seconds; RDB storages other than SQLite
    grace_period: int = 120  # seconds without heartbeat before a trial counts as dead
    slices: list[str] = field(default_factory=lambda: ["Male", "Young"])  # [] = off
    # any of max_params_m, max_latency_ms, min_worst_group_acc (objectives.CONSTRAINTS)
    constraints: dict[str, float] = field(default_factory=dict)

    def resolved_direction(self) -> str:
        """The direction of `metric` (the epoch metric)."""
        return METRICS[self.metric] if self.direction == "auto" else self.direction

    def objective_names(self) -> list[str]:
        return list(self.objectives) or [self.metric]

    def objective_directions(self) -> list[str]:
        if not self.objectives:
            return [self.resolved_direction()]
        return [METRICS[m] for m in self.objectives]

    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def normalize(self, source: str) -> None:
        """Split a list `metric` into `objectives` and its first epoch metric; check them
        and the constraints (objectives.check_study)."""
        check_study(self, f"{source}: [study]")


@dataclass
class DataConfig:
    """`[data]`: which CelebA folder, which images, how they are decoded."""

    root: str = "data/synthetic"
    layout: Literal["auto", "kaggle", "official", "torchvision"] = "auto"
    train_size: int = 0  # 0 = the whole split
    val_size: int = 0
    test_size: int = 0
    subset: Literal["first", "random"] = "first"  # which N of each split
    subset_seed: int = 0
    image_size: int = 64
    crop: Literal["squash", "center"] = "squash"
    on_bad_image: Literal["skip", "fail"] = "skip"
    cache_dir: str = ""  # "" = ROOT/.celebhpo-cache, or the user cache dir if ROOT is read-only
    mean: list[float] = field(default_factory=list)  # [] = follow the weights (ImageNet stats)
    std: list[float] = field(default_factory=list)

    def split_size(self, split: str) -> int:
        return {"train": self.train_size, "val": self.val_size, "test": self.test_size}[split]


@dataclass
class TrainConfig:
    """`[train]`: one configuration. Any key may be moved to `[space]` to be searched."""

    arch: str = "resnet18"
    pretrained: str = "none"  # "imagenet", "none" or a path to a state_dict
    num_features: int = 512
    dropout: float = 0.3
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    scheduler: Literal["none", "cosine"] = "none"
    warmup_epochs: int = 0
    epochs: int = 8
    batch_size: int = 64
    eval_batch_size: int = 512
    # the training loss only (trials compare plain val_loss); "seed" = inverse_frequency
    class_weighting: Literal["none", "pos_weight", "inverse_frequency", "seed"] = "none"
    patience: int = 0  # early stopping on the study's metric; 0 = off
    grad_clip: float = 0.0  # max grad norm; 0 = off
    # per-attribute thresholds tuned on validation to maximise this; "none" keeps 0.5
    threshold_metric: Literal["accuracy", "f1", "balanced_accuracy", "none"] = "accuracy"
    device: str = "auto"  # auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps
    amp: Literal["auto", "bf16", "off"] = "auto"  # bf16 training steps where native (training.amp)
    channels_last: bool = True  # on every device
    compile: bool = False  # torch.compile the model
    seed: int = 0


@dataclass
class Categorical:
    choices: list[Any]  # stored as the list itself


@dataclass
class FloatRange:
    low: float
    high: float
    log: bool = False


@dataclass
class IntRange:
    low: int
    high: int
    step: int = 1


Dimension = Categorical | FloatRange | IntRange


@dataclass
class StudyConfig:
    study: StudySection = field(default_factory=StudySection)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    space: dict[str, Dimension] = field(default_factory=dict)
    source: str = "<config>"  # where it was loaded from, for messages; not stored
    # searched keys that a `--set` fixed (key -> "lr=0.1"), for messages; not stored
    fixed_by_set: dict[str, str] = field(default_factory=dict)

    # -- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON/TOML-able dict; `from_dict(to_dict())` round-trips."""
        return {
            "study": dataclasses.asdict(self.study),
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
            "space": {k: list(v.choices) if isinstance(v, Categorical) else dataclasses.asdict(v)
                      for k, v in self.space.items()},
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "<config>") -> StudyConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a table of sections, got {type(raw).__name__}")
        _check_keys(raw, ["study", "data", "train", "space"], source, "section")
        cfg = cls(
            study=_build(StudySection, raw.get("study", {}), source, "study"),
            data=_build(DataConfig, raw.get("data", {}), source, "data"),
            train=_build(TrainConfig, raw.get("train", {}), source, "train"),
            space=_build_space(raw.get("space", {}), source),
            source=source,
        )
        cfg.validate()
        return cfg

    # -- derived configs ------------------------------------------------------------
    def with_params(self, params: dict[str, Any]) -> StudyConfig:
        """The configuration of one trial: `[train]` with the sampled `params` applied."""
        new = copy.deepcopy(self)
        for key, value in params.items():
            cls, name = _space_target(key, self.source)
            target = new.data if cls is DataConfig else new.train
            setattr(target, name, _coerce(cls, name, value, self.source, "space"))
        new.validate()
        return new

    def with_overrides(self, overrides: list[str]) -> StudyConfig:
        """Apply `--set key=value` items: `train.lr=0.01`, `data.image_size=32`, or `lr=0.01`;
        `study.constraints.max_params_m=1` sets one entry of a table, keeping the others."""
        new = copy.deepcopy(self)
        for section, key, value in parse_overrides(overrides):
            target = getattr(new, section)
            key, _, entry = key.partition(".")
            if entry:  # one entry of a table (parse_overrides checked it is one)
                value = {**getattr(target, key), entry: value}
            setattr(target, key, _coerce(type(target), key, value, "--set", section))
            # a fixed value beats a searched one
            searched = key if section == "train" else f"{section}.{key}"
            if new.space.pop(searched, None) is not None:
                new.fixed_by_set[searched] = f"{searched}={value}"
            if (section, key) == ("study", "metric"):
                new.study.objectives = []  # the new metric(s) replace the old list
        new.validate()
        return new

    def fixed(self) -> StudyConfig:
        """One configuration from the space: each searched key at its first value (a list)
        or the middle of its range (geometric middle for a log range). For `celebhpo train`."""
        params: dict[str, Any] = {}
        for key, dim in self.space.items():
            if isinstance(dim, Categorical):
                params[key] = dim.choices[0]
            elif isinstance(dim, FloatRange):
                params[key] = (
                    math.sqrt(dim.low * dim.high) if dim.log else (dim.low + dim.high) / 2
                )
            else:
                steps = (dim.high - dim.low) // dim.step
                params[key] = dim.low + (steps // 2) * dim.step
        new = self.with_params(params)
        new.space = {}
        return new

    def grid(self) -> dict[str, list[Any]]:
        """The space as Optuna's GridSampler wants it; every dimension must be a list."""
        out = {}
        for key, dim in self.space.items():
            if not isinstance(dim, Categorical):
                raise ConfigError(
                    f"{self.source}: [space] {key} is a range; a grid needs a list of values "
                    f"(e.g. {key} = [...]), or create the study without --grid"
                )
            out[key] = list(dim.choices)
        if not out and self.fixed_by_set:
            keys, sets = ", ".join(self.fixed_by_set), " ".join(
                f"--set {v}" for v in self.fixed_by_set.values())
            raise ConfigError(
                f"{sets} fixes {keys}, which {self.source} searches in [space], and leaves the "
                f"grid nothing to search; drop {sets} to grid-search {keys}, or train that one "
                f"value with `celebhpo train {self.source} {sets}`")
        if not out:
            raise ConfigError(f"{self.source}: [space] is empty; a grid needs at least one list")
        return out

    # -- validation -----------------------------------------------------------------
    def validate(self) -> None:
        """Every value of [train], [data] and every value and range end of [space] against the
        same rules, so a searched value is refused at `study create` like a fixed one."""
        src = self.source
        self.study.normalize(src)
        for key, dim in self.space.items():
            cls, name = _space_target(key, src)
            section = "data" if cls is DataConfig else "train"
            for v in dim.choices if isinstance(dim, Categorical) else [dim.low, dim.high]:
                _check_value(section, name, _coerce(cls, name, v, src, "space"), src, "space")
                if key == "arch":
                    _check_arch(v, src, "space.arch")
        _check_arch(self.train.arch, src, "train.arch")
        for section in ("train", "data"):
            for key, value in dataclasses.asdict(getattr(self, section)).items():
                _check_value(section, key, value, src, section)
        if len(self.data.mean) != len(self.data.std) or len(self.data.mean) not in (0, 3):
            raise ConfigError(f"{src}: [data] mean and std must both be [] or both 3 numbers")
        if not self.study.name or "/" in self.study.name:
            raise ConfigError(f"{src}: [study] name must be a non-empty name without '/'")


_POSITIVE = (lambda v: v > 0, "> 0")
_NOT_NEGATIVE = (lambda v: v >= 0, ">= 0")
_RULES: dict[tuple[str, str], tuple[Callable[[Any], bool], str]] = {
    **{("train", k): _POSITIVE for k in ("epochs", "batch_size", "eval_batch_size",
                                         "num_features", "lr")},
    **{("train", k): _NOT_NEGATIVE for k in ("weight_decay", "warmup_epochs", "patience",
                                             "grad_clip")},
    ("train", "dropout"): (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    ("data", "image_size"): _POSITIVE,
    **{("data", k): (lambda v: v >= 0, ">= 0 (0 = the whole split)")
       for k in ("train_size", "val_size", "test_size", "subset_seed")},
}


def _check_value(section: str, key: str, value: Any, source: str, shown: str) -> None:
    """ConfigError naming `[shown] key = value` when it breaks `section`'s rule for `key`."""
    rule = _RULES.get((section, key))
    if rule is not None and not rule[0](value):
        raise ConfigError(f"{source}: [{shown}] {key} = {value} must be {rule[1]}")


def load_study_file(path: str | Path, overrides: list[str] | None = None,
                    data_root: str | Path | None = None) -> StudyConfig:
    """Read and validate a study file, then apply `--set` overrides and `--data ROOT`.
    Raises ConfigError naming the file and the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: study file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read study file ({e})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    cfg = StudyConfig.from_dict(raw, source=str(path))
    if "name" not in raw.get("study", {}):
        cfg.study.name = path.stem
    if data_root is not None:
        cfg.data.root = str(data_root)
    return cfg.with_overrides(overrides) if overrides else cfg


def parse_overrides(items: list[str]) -> list[tuple[str, str, Any]]:
    """`["train.lr=0.01", "epochs=3"]` -> `[("train", "lr", 0.01), ("train", "epochs", 3)]`.
    Values are read as TOML (numbers, booleans, lists), else kept as strings."""
    sections = {"study": StudySection, "data": DataConfig, "train": TrainConfig}
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.lr=0.01")
        key, _, text = item.partition("=")
        key = key.strip()
        if "." in key:
            section, _, key = key.partition(".")
            if section not in sections:
                raise ConfigError(
                    f"--set {item!r}: unknown section '{section}'{_suggest(section, sections)}"
                )
        else:
            section = next((s for s, c in sections.items() if key in _field_types(c)), "train")
        _check_keys({key.partition(".")[0]: None}, list(_field_types(sections[section])), "--set",
                    f"[{section}] key")
        head, _, entry = key.partition(".")
        if entry and not isinstance(getattr(sections[section](), head), dict):
            raise ConfigError(f"--set {item!r}: [{section}] {head} is not a table; use "
                              f"--set {section}.{head}=VALUE")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        out.append((section, key, value))
    return out


# [data] keys a study may search (`[space] data.image_size = [32, 64]`): each value gets its
# own decode cache
SPACE_DATA_KEYS = ("image_size", "crop")


def _space_target(key: str, source: str) -> tuple[type, str]:
    """(the config class, its field) that `[space] key` sets: `data.image_size` -> DataConfig."""
    section, _, name = key.rpartition(".")
    if section == "data" and name in SPACE_DATA_KEYS:
        return DataConfig, name
    if not section and name in _field_types(TrainConfig):
        return TrainConfig, name
    raise ConfigError(f"{source}: [space] key '{key}' is not a [train] key or one of "
                      f"{', '.join(f'data.{k}' for k in SPACE_DATA_KEYS)}")


def _build_space(raw: Any, source: str) -> dict[str, Dimension]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [space] must be a table, got {type(raw).__name__}")
    if isinstance(raw.get("data"), dict):  # TOML reads `data.image_size = [...]` as a table
        raw = {**{k: v for k, v in raw.items() if k != "data"},
               **{f"data.{k}": v for k, v in raw["data"].items()}}
    valid = [*_field_types(TrainConfig), *(f"data.{k}" for k in SPACE_DATA_KEYS)]
    _check_keys(raw, valid, source, "[space] key (a [train] key or data.image_size/data.crop)")
    space: dict[str, Dimension] = {}
    for key, spec in raw.items():
        cls, name = _space_target(key, source)
        where = f"{source}: [space] {key}"
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{where} is an empty list; give at least one value")
            if len({repr(v) for v in spec}) != len(spec):
                raise ConfigError(f"{where} lists a value twice: {spec!r}")
            space[key] = Categorical([_coerce(cls, name, v, source, "space") for v in spec])
        elif isinstance(spec, dict):
            space[key] = _build_range(key, spec, _field_types(cls)[name], where)
        else:
            raise ConfigError(
                f"{where} must be a list (categorical) or {{low, high}} (range), got {spec!r}"
            )
    return space


def _build_range(key: str, spec: dict, hint: Any, where: str) -> Dimension:
    if hint not in (int, float):
        raise ConfigError(f"{where}: a range needs a numeric key; give a list of values instead")
    valid = ["low", "high", "log"] if hint is float else ["low", "high", "step"]
    _check_keys(spec, valid, where, "range key")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a range needs both low and high")
    low, high = spec["low"], spec["high"]
    num = int if hint is int else (int, float)
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, num):
            kind = "whole number" if hint is int else "number"
            raise ConfigError(f"{where}.{name} must be a {kind}, got {v!r}")
    if low > high:
        raise ConfigError(f"{where}: low = {low} is greater than high = {high}; swap them")
    if hint is float:
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{where}.log must be true or false, got {log!r}")
        if log and low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
        return FloatRange(float(low), float(high), log)
    step = spec.get("step", 1)
    if isinstance(step, bool) or not isinstance(step, int) or step <= 0:
        raise ConfigError(f"{where}.step must be a whole number > 0, got {step!r}")
    return IntRange(low, high, step)


def _check_arch(name: Any, source: str, key: str) -> None:
    if not is_known_arch(name):  # imports torchvision (~1 s) only for a name not ours
        known = list_models()
        raise ConfigError(
            f"{source}: {key} = {name!r} is not a known architecture{_suggest(name, known)} "
            f"(known: {', '.join(known)}, or any torchvision classification model)"
        )
