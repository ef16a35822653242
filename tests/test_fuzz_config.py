"""Fuzzed study files: every input loads, or raises ConfigError with a one-line message."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celebhpo.config import DataConfig, StudyConfig, StudySection, TrainConfig, load_study_file
from celebhpo.errors import ConfigError

SECTIONS = {"study": StudySection, "data": DataConfig, "train": TrainConfig}
scalars = (
    st.integers(-10**6, 10**6)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.text(max_size=12)
    | st.sampled_from(["resnet50", "tiny", "adam", "grid", "median", "squash", "none"])
)
values = scalars | st.lists(scalars, max_size=4) | st.dictionaries(
    st.sampled_from(["low", "high", "log", "step", "lo"]), scalars, max_size=4
)


@st.composite
def raw_configs(draw):
    raw = {}
    for section, cls in SECTIONS.items():
        if draw(st.booleans()):
            keys = [f.name for f in dataclasses.fields(cls)]
            key = st.sampled_from(keys) | st.text(min_size=1, max_size=8)
            raw[section] = draw(st.dictionaries(key, values, max_size=4))
    if draw(st.booleans()):
        key = st.sampled_from(["arch", "lr", "dropout", "num_features", "epochs"]) | st.text(
            min_size=1, max_size=6
        )
        raw["space"] = draw(st.dictionaries(key, values, max_size=3))
    if draw(st.integers(0, 9)) == 0:
        raw[draw(st.text(min_size=1, max_size=6))] = draw(values)
    return raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_configs())
def test_loader_accepts_or_raises_config_error(raw):
    try:
        cfg = StudyConfig.from_dict(raw, source="fuzz.toml")
    except ConfigError as e:
        message = str(e)
        assert message.startswith("fuzz.toml") and "\n" not in message
    else:
        assert StudyConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=80))
def test_random_text_files(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "s.toml"
    path.write_text(text)
    try:
        load_study_file(path)
    except ConfigError as e:
        assert str(path) in str(e)
