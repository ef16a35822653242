"""A retrieval that finds nothing says why (issue 24): each attribute of the expression, the
highest probability any face got against its threshold, and the 5 closest faces, each with
what kept it out; in the table, beside an empty CSV/JSON (on stderr) and on the sheet."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from celebhpo.cli import cli
from celebhpo.data import ATTRIBUTES
from celebhpo.inference import load_model, predict
from tests.helpers import write_tiny_model

N = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synth_root) -> dict:
    work = tmp_path_factory.mktemp("retrieve-empty")
    photos = work / "photos"
    photos.mkdir()
    for src in sorted((synth_root / "img_align_celeba" / "img_align_celeba").glob("*.jpg"))[:N]:
        shutil.copy(src, photos / src.name)
    model = write_tiny_model(work / "model")
    probs = predict(load_model(model), [photos], progress=False).probs  # (N, 40), name order
    names = sorted(p.name for p in photos.iterdir())
    return {"model": model, "photos": photos, "probs": probs, "names": names}


@pytest.fixture
def cache_env(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CELEBHPO_CACHE_DIR", str(tmp_path / "predcache"))
    return tmp_path / "predcache"


def _retrieve(setup: dict, *args: str):
    return CliRunner().invoke(cli, ["retrieve", str(setup["model"]), str(setup["photos"]),
                                    *args])


def test_an_empty_answer_names_each_attributes_best_score_and_the_closest_faces(
        setup, cache_env, tmp_path):
    sheet = tmp_path / "closest.png"
    result = _retrieve(setup, "--where", "Eyeglasses and Smiling", "--threshold", "0.99",
                       "--sheet", str(sheet))
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert out[0] == f'0 of {N} images match "Eyeglasses and Smiling" at 0.99 thresholds'
    probs, names, photos = setup["probs"], setup["names"], setup["photos"]
    for line, attr in zip(out[1:3], ("Eyeglasses", "Smiling"), strict=True):
        col = probs[:, ATTRIBUTES.index(attr)]
        best = photos / names[int(np.argmax(col))]
        assert line == (f"{attr}: highest {col.max():.3f} ({best}) vs threshold 0.990: above "
                        f"it in 0 of {N} images")
    assert out[3].startswith("the 5 closest, none a match")
    rows = out[5:]
    assert len(rows) == 5
    score = probs[:, ATTRIBUTES.index("Eyeglasses")] * probs[:, ATTRIBUTES.index("Smiling")]
    order = sorted(range(N), key=lambda i: (-score[i], names[i]))[:5]
    for row, i in zip(rows, order, strict=True):
        assert row.split()[0] == str(photos / names[i])  # best first
        assert "Eyeglasses" in row and "<= 0.990" in row  # marked: below its threshold
    with Image.open(sheet) as im:  # the sheet shows those 5 instead of "no matches"
        assert im.format == "PNG" and im.height > 2 * 128


def test_an_empty_json_answer_stays_json_and_says_why_on_stderr(setup, cache_env):
    result = _retrieve(setup, "--where", "Eyeglasses", "--threshold", "0.99", "--format",
                       "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []
    assert result.stderr.startswith("Eyeglasses: highest ")


def test_a_negated_attribute_shows_its_lowest_score(setup, cache_env):
    result = _retrieve(setup, "--where", "not Male", "--threshold", "0.01")
    assert result.exit_code == 0, result.output
    col = setup["probs"][:, ATTRIBUTES.index("Male")]
    line = result.stdout.splitlines()[1]
    assert line.startswith(f"Male: highest {col.max():.3f} (")
    assert f", lowest {col.min():.3f} vs threshold 0.010: above it in {N} of {N}" in line
    assert "> 0.010" in result.stdout  # each closest face: Male above, where "not" wants below


def test_matches_below_min_score_are_counted(setup, cache_env):
    result = _retrieve(setup, "--where", "Eyeglasses", "--threshold", "0.01", "--min-score",
                       "0.99")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1] == (f"{N} images pass the thresholds but score below "
                                             "--min-score 0.99")


def test_an_answer_with_matches_has_no_explanation(setup, cache_env):
    result = _retrieve(setup, "--where", "Eyeglasses", "--threshold", "0.01", "--top", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f'{N} of {N} images match "Eyeglasses"')
    assert "closest" not in result.output and "highest" not in result.output


def test_retrieve_json_does_not_escape_slashes(setup, cache_env):
    result = _retrieve(setup, "--where", "Eyeglasses", "--threshold", "0.01", "--top", "1",
                       "--format", "json")
    assert result.exit_code == 0, result.output
    assert "\\/" not in result.stdout
    (row,) = json.loads(result.stdout)
    assert row["image"] == str(setup["photos"] / row["image"].rsplit("/", 1)[-1])
    assert f'"{setup["photos"]}/' in result.stdout  # the path as it is written
