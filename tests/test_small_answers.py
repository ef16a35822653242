"""The smaller answers of issue 24, each one clear line and a test: a 1x1 image, a label CSV
with an index column, `.JPG` files under `.jpg` ids, `--set` fixing the only searched key,
`--slices` with a typo, click's usage errors, a file given with its folder, a study whose
trials were all pruned, and ImageNet weights that cannot be downloaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from celebhpo.cli import cli
from celebhpo.data import load_image, read_celeba
from celebhpo.errors import ConfigError, DataError, StudyError
from celebhpo.hpo.results import require_best_trial
from celebhpo.training.slices import resolve_slices
from tests.helpers import write_study, write_tiny_model

FACES = ("img_align_celeba", "img_align_celeba")


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("small-answers") / "model")


def _copy_labels(synth_root: Path, root: Path) -> Path:
    """A Kaggle-layout folder whose images are the synthetic ones (linked, not copied)."""
    (root / "img_align_celeba").mkdir(parents=True)
    (root / "img_align_celeba" / "img_align_celeba").symlink_to(synth_root.joinpath(*FACES))
    for name in ("list_attr_celeba.csv", "list_eval_partition.csv"):
        shutil.copy(synth_root / name, root / name)
    return root


# -- a 1x1 image ------------------------------------------------------------------------------
def test_an_image_too_small_for_a_face_is_refused_by_name(model, synth_root, tmp_path):
    dot = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), "white").save(dot)
    reason = "image is 1x1 pixels, below the 16x16 minimum (too small to show a face)"
    with pytest.raises(DataError) as caught:
        load_image(dot, 64)
    assert str(caught.value) == f"{dot}: {reason}"
    alone = CliRunner().invoke(cli, ["predict", str(model), str(dot)])
    assert alone.exit_code == 1
    assert lines(alone.output) == [f"Error: none of the 1 input images could be read: {dot}: "
                                   f"{reason}; check the files (or the paths)"]
    face = synth_root.joinpath(*FACES, "000001.jpg")
    beside = CliRunner().invoke(cli, ["predict", str(model), str(face), str(dot), "--format",
                                      "csv"])
    assert beside.exit_code == 0, beside.output
    assert len(lines(beside.stdout)) == 2  # the header and the face
    assert lines(beside.stderr) == [f"skipped {dot}: {reason}"]
    Image.new("RGB", (16, 16), "white").save(tmp_path / "small.png")
    assert load_image(tmp_path / "small.png", 64).shape == (64, 64, 3)  # the minimum is fine


# -- a label file with an index column --------------------------------------------------------
@pytest.mark.parametrize("name", ["list_attr_celeba.csv", "list_eval_partition.csv"])
def test_an_index_column_is_named_as_the_cause(name, synth_root, tmp_path):
    root = _copy_labels(synth_root, tmp_path / "celeba")
    pd.read_csv(synth_root / name).to_csv(root / name)  # pandas' default: index=True
    result = CliRunner().invoke(cli, ["data", "inspect", str(root), "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert lines(result.output) == [
        f"Error: {root / name}:1: an extra first column ('') before 'image_id', as pandas' "
        "to_csv writes without index=False; remove that column so image ids come first"]


# -- .JPG on disk, .jpg in the labels ---------------------------------------------------------
def test_ids_that_differ_from_the_files_only_in_case_say_so(synth_root, tmp_path):
    root = tmp_path / "celeba"
    images = root.joinpath(*FACES)
    images.mkdir(parents=True)
    for face in synth_root.joinpath(*FACES).glob("*.jpg"):
        (images / f"{face.stem}.JPG").symlink_to(face)
    for name in ("list_attr_celeba.csv", "list_eval_partition.csv"):
        shutil.copy(synth_root / name, root / name)
    message = (f"{images / '000001.jpg'}: file not found, but 000001.JPG is there: 300 of 300 "
               "ids in list_attr_celeba.csv differ from their files only in case (names are "
               "case-sensitive); rename the files or fix the ids to match")
    with pytest.raises(DataError) as caught:
        read_celeba(root)
    assert str(caught.value) == message
    result = CliRunner().invoke(cli, ["data", "inspect", str(root), "--out", str(tmp_path)])
    assert result.exit_code == 1 and lines(result.output) == [f"Error: {message}"]
    (images / "000001.JPG").rename(images / "000001.jpg")  # a few mismatches: skipped as usual
    for face in list(images.glob("*.JPG"))[:200]:
        face.rename(face.with_suffix(".jpg"))
    assert len(read_celeba(root).ids) == 300


# -- --set on a searched key ------------------------------------------------------------------
def test_set_fixing_the_only_searched_key_says_so(synth_root, tmp_path):
    study = write_study(tmp_path / "one.toml", synth_root, space="lr = [0.003, 0.03]")
    db = tmp_path / "s.db"
    result = CliRunner().invoke(cli, ["study", "create", str(study), "--grid", "--set",
                                      "lr=0.1", "--no-tracking", "--storage", f"sqlite:///{db}"])
    assert result.exit_code == 1
    assert lines(result.output) == [
        f"Error: --set lr=0.1 fixes lr, which {study} searches in [space], and leaves the grid "
        f"nothing to search; drop --set lr=0.1 to grid-search lr, or train that one value with "
        f"`celebhpo train {study} --set lr=0.1`"]
    assert not db.exists()  # refused before the storage was opened
    two = write_study(tmp_path / "two.toml", synth_root, space="lr = [0.003, 0.03]\n"
                      "dropout = [0.1, 0.2]")
    ok = CliRunner().invoke(cli, ["study", "create", str(two), "--grid", "--set", "lr=0.1",
                                  "--no-tracking", "--storage", f"sqlite:///{db}"])
    assert ok.exit_code == 0 and "a grid of 2 points over dropout" in ok.output


# -- --slices with a typo ---------------------------------------------------------------------
def test_a_slice_name_with_a_typo_gets_a_did_you_mean(model, synth_root):
    result = CliRunner().invoke(cli, ["evaluate", str(model), str(synth_root), "--slices",
                                      "Male,Yuong"])
    assert result.exit_code == 1
    assert lines(result.output) == ["Error: --slices: 'Yuong' is not an attribute of the data; "
                                    "did you mean 'Young'?"]
    with pytest.raises(ConfigError, match=r"'Zzz' is not an attribute of the data; use names "
                                          r"from: Male, Young$"):
        resolve_slices(["Zzz"], ["Male", "Young"])  # nothing close: the names, as before


# -- click's usage errors ---------------------------------------------------------------------
@pytest.mark.parametrize("args, line", [
    (["retrieve", "{model}", "{tmp}", "--where", "Male", "--top", "0"],
     "Invalid value for '--top': 0 is not in the range x>=1; see `celebhpo retrieve -h`"),
    (["evaluate", "{model}", "{tmp}", "--out", "{tmp}/file.txt"],
     "Invalid value for '--out': Directory '{tmp}/file.txt' is a file; see `celebhpo "
     "evaluate -h`"),
    (["predict", "{model}"], "Missing argument 'INPUTS...'; see `celebhpo predict -h`"),
    (["study", "create"], "Missing argument 'STUDY_FILE'; see `celebhpo study create -h`"),
    (["nosuch"], "No such command 'nosuch'; see `celebhpo -h`"),
    (["--bogus"], "No such option '--bogus'; see `celebhpo -h`"),
])
def test_usage_errors_are_one_line_and_exit_1(args, line, model, tmp_path):
    (tmp_path / "file.txt").write_text("not a folder")
    fill = {"model": str(model), "tmp": str(tmp_path)}
    result = CliRunner().invoke(cli, [a.format(**fill) for a in args])
    assert result.exit_code == 1
    assert lines(result.output) == [f"Error: {line.format(**fill)}"]


# -- a file together with its folder ----------------------------------------------------------
def test_a_file_given_with_its_folder_is_predicted_once(model, synth_root, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for n in (1, 2, 3):
        shutil.copy(synth_root.joinpath(*FACES, f"00000{n}.jpg"), photos)
    again = photos / ".." / "photos" / "000002.jpg"
    result = CliRunner().invoke(cli, ["predict", str(model), str(photos / "000002.jpg"),
                                      str(photos), str(again), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert [r["image"] for r in json.loads(result.stdout)] == [
        str(photos / "000002.jpg"), str(photos / "000001.jpg"), str(photos / "000003.jpg")]


# -- a study whose trials were all pruned -----------------------------------------------------
def test_a_study_with_only_pruned_trials_names_the_cause_and_the_fix(synth_root, tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = write_study(tmp_path / "p.toml", synth_root, name="pruned", pruner="median")
    created = CliRunner().invoke(cli, ["study", "create", str(study), "--grid", "--storage",
                                       storage, "--no-tracking"])
    assert created.exit_code == 0, created.output
    optuna_study = optuna.load_study(study_name="pruned", storage=storage)
    for _ in range(2):  # both grid points, pruned as a pruner would
        optuna_study.tell(optuna_study.ask(), state=optuna.trial.TrialState.PRUNED)
    why = ("no trial{} completed (2 PRUNED), and a pruned trial keeps no model to export: "
           "create the study again without pruning (`celebhpo study create STUDY_FILE "
           "--replace --set study.pruner=none --grid`) and optimize it")
    run = CliRunner().invoke(cli, ["optimize", "--study", "pruned", "--storage", storage])
    assert run.exit_code == 0, run.output
    assert lines(run.stdout)[-1] == ("study 'pruned': 2 trials (2 PRUNED); this worker ran 0; "
                                     f"stopped: the grid is exhausted; {why.format('')}")
    with pytest.raises(StudyError) as caught:  # what export-best says, tracking on or off
        require_best_trial(optuna_study, storage)
    assert str(caught.value) == why.format(" of study 'pruned'")


# -- ImageNet weights that cannot be had ------------------------------------------------------
def test_imagenet_weights_offline_stop_the_worker_with_what_to_do(synth_root, tmp_path,
                                                                   monkeypatch):
    # no network, for certain: every download goes to a closed port (urllib reads the proxy)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    study = write_study(tmp_path / "w.toml", synth_root, name="weights", train_size=32)
    text = study.read_text().replace('arch = "tiny"', 'arch = "resnet18"')
    study.write_text(text.replace('pretrained = "none"', 'pretrained = "imagenet"'))
    storage = f"sqlite:///{tmp_path / 's.db'}"
    created = CliRunner().invoke(cli, ["study", "create", str(study), "--grid", "--no-tracking",
                                       "--storage", storage, "--set",
                                       f"data.cache_dir={tmp_path / 'cache'}"])
    assert created.exit_code == 0, created.output
    run = CliRunner().invoke(cli, ["optimize", "--study", "weights", "--storage", storage])
    assert run.exit_code == 1
    assert lines(run.stdout)[-1].startswith("trial 0 FAIL (cannot download ImageNet weights")
    last = lines(run.stderr)[-1]
    assert last.startswith("Error: cannot download ImageNet weights for resnet18 (")
    assert last.endswith(
        'use pretrained = "none", or pretrained = "/path/to/state_dict.pth" (a local file). '
        "Every trial would fail the same way, so this worker stopped and trial 0 is queued "
        "again: put the weights in place and run optimize again, or create the study again "
        "with `celebhpo study create STUDY_FILE --replace --set train.pretrained=none` (its "
        "config is stored: editing the file changes nothing)")
    states = [t.state.name for t in optuna.load_study(study_name="weights",
                                                      storage=storage).get_trials()]
    assert states.count("FAIL") == 1 and states.count("WAITING") == 2  # its re-run, point 2
