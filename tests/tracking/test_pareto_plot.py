"""The accuracy-latency Pareto plot: a real PNG that opens."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from celebhpo.tracking.plots import pareto_plot

POINTS = [
    {"number": 0, "values": [0.90, 5.0], "label": "resnet50 64px", "feasible": True},
    {"number": 1, "values": [0.85, 1.0], "label": "resnet18 32px", "feasible": True},
    {"number": 2, "values": [0.80, 4.0], "label": "resnet18 64px", "feasible": True},
    {"number": 3, "values": [0.93, 9.0], "label": "resnet50 96px", "feasible": False},
    {"number": 5, "values": [0.70, 3.0], "feasible": False},  # no label, infeasible, dominated
]


@pytest.mark.parametrize("directions", [("maximize", "minimize"), ("maximize", "maximize")])
def test_writes_a_png_that_opens(tmp_path: Path, directions: tuple[str, str]) -> None:
    out = pareto_plot(POINTS, ("val_mean_acc", "latency_ms"), directions, tmp_path / "front.png",
                      "accuracy vs latency", front=[0, 1, 3])
    assert out == tmp_path / "front.png"
    with Image.open(out) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width > 100 and height > 100
        # not a blank canvas: the points and text drew something
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 10


def test_one_point_all_on_the_front(tmp_path: Path) -> None:
    out = pareto_plot(POINTS[:1], ("val_mean_acc", "latency_ms"), ("maximize", "minimize"),
                      tmp_path / "one.png", "one trial", front=[0])
    with Image.open(out) as image:
        assert image.size[0] > 0 and image.size[1] > 0


@pytest.mark.parametrize(("points", "front", "directions", "message"), [
    ([], [], ("maximize", "minimize"), "no completed trials"),
    (POINTS, [7], ("maximize", "minimize"), "out of range"),
    ([{"number": 0, "values": [0.9]}], [0], ("maximize", "minimize"), "two values"),
    (POINTS, [0], ("max", "minimize"), "directions must be"),
])
def test_bad_input(tmp_path: Path, points, front, directions, message) -> None:
    with pytest.raises(ValueError, match=message):
        pareto_plot(points, ("val_mean_acc", "latency_ms"), directions, tmp_path / "x.png", "t",
                    front=front)
    assert not (tmp_path / "x.png").exists()
