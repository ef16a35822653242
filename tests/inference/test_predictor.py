"""predict / evaluate / retrieve with a tiny model trained here on synthetic faces.

One module-scoped model (tiny arch, 32 px, a few epochs) serves every test; each test
works on its own copies of images under tmp_path.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from celebhpo.errors import CelebhpoError, CheckpointError, DataError, ExpressionError
from celebhpo.inference import Predictor, evaluate, load_model, predict, retrieve
from celebhpo.inference.retrieve import predict_folder
from celebhpo.inference.sheet import contact_sheet
from celebhpo.report import format_evaluation, format_predictions, format_retrieval

SIZE = 32
EPOCHS = 4
HELDOUT = 200  # images in the retrieval folder


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    """Train the tiny arch for a few epochs; export it as a folder with .pt, .ts and .onnx."""
    from celebhpo.config import StudyConfig
    from celebhpo.data import load_data, read_celeba
    from celebhpo.data.layouts import select_split
    from celebhpo.export.formats import export_onnx, export_torchscript
    from celebhpo.training.checkpoint import Checkpoint
    from celebhpo.training.loop import fit

    work = tmp_path_factory.mktemp("infer")
    cfg = StudyConfig.from_dict({
        "data": {"root": str(synth_root), "image_size": SIZE, "crop": "squash",
                 "cache_dir": str(work / "decoded")},
        "train": {"arch": "tiny", "epochs": EPOCHS, "batch_size": 32, "lr": 3e-3,
                  "device": "cpu", "num_features": 64, "dropout": 0.0, "seed": 0},
    }, source="test")
    torch.manual_seed(0)
    data = load_data(cfg.data, splits=("train", "val"), progress=False)
    result = fit(cfg, data, checkpoint_path=work / "best.pt")
    export = work / "export"
    export.mkdir()
    shutil.copy(result.checkpoint_path, export / "model.pt")
    # TorchScript and ONNX next to it, made by export-best's own functions
    model = Checkpoint.load(export / "model.pt").model().eval()
    gen = torch.Generator().manual_seed(0)
    example, check = torch.randn(2, 3, SIZE, SIZE, generator=gen), torch.randn(3, 3, SIZE, SIZE)
    export_torchscript(model, example, check, export / "model.ts")
    export_onnx(model, example, check, export / "model.onnx")

    ds = read_celeba(synth_root)
    rows = select_split(ds, "test")
    return {"cfg": cfg, "export": export, "checkpoint": result.checkpoint_path,
            "root": synth_root, "test_files": [Path(ds.image_dir) / ds.ids[i] for i in rows],
            "test_labels": pd.DataFrame(ds.labels[rows], columns=ds.attributes,
                                        index=[ds.ids[i] for i in rows])}


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """Faces the model never saw (another seed): a plain folder of images + their labels."""
    from celebhpo.data import read_celeba, synthesize

    root = synthesize(tmp_path_factory.mktemp("heldout") / "celeba", n=HELDOUT, seed=1,
                      progress=False)
    ds = read_celeba(root)
    return {"dir": Path(ds.image_dir),
            "labels": pd.DataFrame(ds.labels, columns=ds.attributes, index=ds.ids)}


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("CELEBHPO_CACHE_DIR", str(d))
    return d


@pytest.fixture(scope="module")
def predictor(trained) -> Predictor:
    return load_model(trained["export"])


def copy_images(src: Path, dst: Path, n: int) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(src.glob("*.jpg"))[:n]
    return [Path(shutil.copy(f, dst / f.name)) for f in files]


# -- loading -----------------------------------------------------------------------------------
def test_load_model_reads_metadata_from_the_checkpoint(trained, predictor):
    from celebhpo.data import ATTRIBUTES

    assert predictor.attributes == list(ATTRIBUTES)
    assert predictor.image_size == SIZE and predictor.crop == "squash"
    assert predictor.thresholds.shape == (40,)
    assert np.all((predictor.thresholds > 0) & (predictor.thresholds < 1))
    assert len(predictor.normalization["mean"]) == 3
    # a checkpoint file works as well as the folder, with the same answers
    direct = load_model(trained["checkpoint"])
    batch = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    np.testing.assert_allclose(direct.predict_uint8(batch), predictor.predict_uint8(batch),
                               rtol=0, atol=1e-6)


def test_predict_uint8_is_sigmoid_per_attribute_not_softmax(predictor):
    batch = np.random.default_rng(1).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    probs = predictor.predict_uint8(batch)
    assert probs.shape == (3, 40) and probs.dtype == np.float32
    assert np.all((probs >= 0) & (probs <= 1))
    assert not np.allclose(probs.sum(axis=1), 1.0, atol=0.05)
    # deterministic: no flip or dropout at inference
    np.testing.assert_array_equal(probs, predictor.predict_uint8(batch))
    with pytest.raises(CelebhpoError, match=r"\(B, 32, 32, 3\) uint8"):
        predictor.predict_uint8(np.zeros((1, 64, 64, 3), dtype=np.uint8))


@pytest.mark.parametrize(("backend", "atol"), [("torchscript", 1e-5), ("onnx", 1e-4)])
def test_exported_backends_give_the_same_answers(trained, predictor, backend, atol):
    other = load_model(trained["export"], backend=backend)
    assert other.backend == backend and other.attributes == predictor.attributes
    files = trained["test_files"][:20]
    a = predict(predictor, files, progress=False)
    b = predict(other, files, progress=False)
    assert a.images == b.images
    np.testing.assert_allclose(b.probs, a.probs, rtol=0, atol=atol)


def test_backend_without_its_file_or_package_says_what_to_do(trained, tmp_path, monkeypatch):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(trained["export"] / "model.pt", bare / "model.pt")
    with pytest.raises(CheckpointError, match=r"no model\.ts.*export-best --format pt,torchscript"):
        load_model(bare, backend="torchscript")
    with pytest.raises(CheckpointError, match="needs an export folder"):
        load_model(bare / "model.pt", backend="onnx")
    with pytest.raises(CelebhpoError, match="unknown backend"):
        load_model(bare, backend="tensorrt")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(CelebhpoError, match=r"pip install 'celebhpo\[onnx\]'"):
        load_model(trained["export"], backend="onnx")


def test_refuses_what_is_not_ours(tmp_path):
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no model.pt"):
        load_model(empty)

    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3), "epoch": 1}, plain)
    with pytest.raises(CheckpointError, match="plain.pt"):
        load_model(plain)

    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pt"):
        load_model(text)


class _WritesAFile:
    """Unpickling this runs code: it writes `marker`. weights_only=True must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned.txt"
    folder = tmp_path / "evil"
    folder.mkdir()
    payload = {"format": "celebhpo-checkpoint", "state_dict": {}, "extra": _WritesAFile(marker)}
    torch.save(payload, folder / "model.pt")
    with (folder / "raw.pt").open("wb") as f:
        pickle.dump(_WritesAFile(marker), f)

    with pytest.raises(CheckpointError):
        load_model(folder)
    with pytest.raises(CheckpointError):
        load_model(folder / "raw.pt")
    assert not marker.exists()
    # the payload is real: an unsafe load would have written the file
    with (folder / "raw.pt").open("rb") as f:
        pickle.load(f)  # noqa: S301 - on purpose, to show what weights_only=True prevented
    assert marker.read_text() == "pwned"


# -- predict -----------------------------------------------------------------------------------
def test_predict_agrees_with_evaluate_on_the_same_images(trained, predictor):
    from celebhpo.training.metrics import compute_metrics, per_class_report

    evaluation = evaluate(trained["export"], trained["root"], split="test", progress=False)
    metrics, report = evaluation.metrics, evaluation.report
    assert metrics["threshold"] == "tuned"
    files = trained["test_files"]
    result = predict(predictor, files, progress=False)
    assert result.images == [str(f) for f in files] and not result.skipped
    assert metrics["n_images"] == len(files)

    targets = trained["test_labels"].loc[[f.name for f in files], predictor.attributes].to_numpy()
    mine = compute_metrics(result.probs, targets.astype(np.float32),
                           thresholds=predictor.thresholds)
    half = compute_metrics(result.probs, targets.astype(np.float32), thresholds=0.5)
    for k in mine:
        assert metrics["tuned"][k] == pytest.approx(mine[k], abs=1e-6), k
        assert metrics["0.5"][k] == pytest.approx(half[k], abs=1e-6), k
    pd.testing.assert_frame_equal(
        report, per_class_report(result.probs, targets.astype(np.float32),
                                 predictor.attributes, predictor.thresholds))
    # and the model learnt something: better than chance on the test split
    assert metrics["tuned"]["mean_acc"] > 0.6


def test_predict_matches_the_training_pipeline(trained, predictor):
    """Paths through load_image give what the decode-once cache gave the model in training."""
    from celebhpo.data import load_data

    data = load_data(trained["cfg"].data, splits=("test",), progress=False)
    split = data.splits["test"]
    probs_cache = predictor.predict_uint8(np.asarray(split.images[:16]))
    result = predict(predictor, [trained["test_files"][0].parent / i for i in split.ids[:16]], progress=False)
    np.testing.assert_allclose(result.probs, probs_cache, rtol=0, atol=1e-6)


def test_thresholds_tuned_half_and_number(trained, predictor):
    files = trained["test_files"]
    tuned = predict(predictor, files, progress=False)
    half = predict(predictor, files, threshold="0.5", progress=False)
    high = predict(predictor, files, threshold=0.9, progress=False)
    np.testing.assert_array_equal(tuned.probs, half.probs)
    np.testing.assert_array_equal(tuned.present, tuned.probs > predictor.thresholds)
    np.testing.assert_array_equal(half.present, half.probs > 0.5)
    np.testing.assert_array_equal(high.present, high.probs > 0.9)
    assert tuned.threshold_label == "tuned" and half.threshold_label == "0.5"
    assert high.present.sum() <= half.present.sum()
    # the tuned thresholds are not all 0.5, so they make a difference somewhere
    assert not np.allclose(predictor.thresholds, 0.5)
    for bad in ("abc", "1.5", 0, -0.1, "nan"):
        with pytest.raises(CelebhpoError, match="tuned, 0.5, or a number"):
            predict(predictor, files, threshold=bad, progress=False)


def test_unreadable_images_are_skipped_by_name(heldout, predictor, tmp_path):
    folder = tmp_path / "mixed"
    good = copy_images(heldout["dir"], folder, 3)
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    raw = good[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(raw[: len(raw) // 3])
    (folder / "notes.txt").write_text("ignored: not an image name")

    result = predict(predictor, [folder], batch_size=2, progress=False)
    skipped = {Path(name).name for name, _ in result.skipped}
    assert "broken.jpg" in skipped and "notes.txt" not in skipped
    assert all(reason for _, reason in result.skipped)
    assert set(result.images) | {n for n, _ in result.skipped} == {
        str(p) for p in folder.iterdir() if p.suffix == ".jpg"}
    assert {str(p) for p in good} <= set(result.images)
    assert len(result.probs) == len(result.images)


def test_empty_inputs_say_so(predictor, tmp_path, cache_env):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no images"):
        predict(predictor, [empty], progress=False)
    with pytest.raises(DataError, match="no images"):
        retrieve(predictor, empty, "Male", progress=False)


def test_formats(trained, predictor):
    files = trained["test_files"][:3]
    result = predict(predictor, files, progress=False)

    records = json.loads(format_predictions(result, fmt="json"))
    assert [r["image"] for r in records] == [str(f) for f in files]
    assert len(records[0]["probabilities"]) == 40
    assert records[0]["present"] == [a for a, p in zip(result.attributes, result.present[0],
                                                       strict=True) if p]

    csv_text = format_predictions(result, fmt="csv")
    frame = pd.read_csv(io.StringIO(csv_text))
    assert list(frame.columns[:2]) == ["image", "present"] and len(frame) == 3
    np.testing.assert_allclose(frame[result.attributes].to_numpy(), result.probs, atol=1e-4)

    table = format_predictions(result, fmt="table")
    first = table.split("\n\n")[0].splitlines()
    assert first[0].startswith(str(files[0]))
    assert len(first) - 1 == max(1, int(result.present[0].sum()))
    full = format_predictions(result, fmt="table", show_all=True).split("\n\n")[0].splitlines()
    assert len(full) == 2 + 40


# -- evaluate ----------------------------------------------------------------------------------
def test_evaluate_writes_report_files(trained, predictor, tmp_path):
    result = evaluate(predictor, trained["root"], split="val", out_dir=tmp_path / "ev",
                      progress=False)
    metrics, report = result.metrics, result.report
    assert metrics["split"] == "val" and metrics["n_images"] > 0
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["tuned"] == pytest.approx(metrics["tuned"])
    csv = pd.read_csv(tmp_path / "ev" / "classification_report.csv")
    assert len(csv) == 40 == len(report)
    json.loads((tmp_path / "ev" / "classification_report.json").read_text())
    text = format_evaluation(result)
    assert "val split" in text and "mean_acc" in text and "Eyeglasses" in text
    assert "metric" in text and "at tuned    at 0.5" in text


def test_evaluate_at_a_chosen_threshold(trained, predictor, tmp_path):
    """--threshold 0.3: the metrics at 0.3 beside those at 0.5, each named; the report's
    columns say 0.3 where they used to say tuned."""
    from celebhpo.training.metrics import compute_metrics

    result = evaluate(predictor, trained["root"], split="test", threshold="0.3", progress=False)
    metrics, report = result.metrics, result.report
    files = trained["test_files"]
    probs = predict(predictor, files, progress=False).probs
    targets = trained["test_labels"].loc[[f.name for f in files], predictor.attributes]
    targets = targets.to_numpy().astype(np.float32)
    assert metrics["threshold"] == "0.3" and "tuned" not in metrics
    for label, cut in (("0.3", 0.3), ("0.5", 0.5)):
        mine = compute_metrics(probs, targets, thresholds=cut, attributes=predictor.attributes)
        got = {k: v for k, v in metrics[label].items() if k != "worst_group_acc"}
        assert got == pytest.approx(mine, abs=1e-6), label
    assert metrics["0.3"]["mean_acc"] != metrics["0.5"]["mean_acc"]
    assert "accuracy_at_0.3" in report.columns and "accuracy_tuned" not in report.columns
    np.testing.assert_allclose(report["accuracy_at_0.3"], ((probs > 0.3) == targets).mean(0))
    np.testing.assert_allclose(report["threshold"], 0.3)
    text = format_evaluation(result)
    assert "at 0.3    at 0.5" in text and "0.3 for every attribute" in text
    # a bad value fails first, before the folder is read
    with pytest.raises(CelebhpoError, match="threshold 'high' is not valid: use tuned, 0.5"):
        evaluate(predictor, tmp_path / "nowhere", threshold="high", progress=False)


def test_evaluate_slices_default_from_the_checkpoint_chosen_or_off(trained, predictor, tmp_path):
    from celebhpo.errors import ConfigError
    from celebhpo.training.slices import slice_metrics

    files = trained["test_files"]
    probs = predict(predictor, files, progress=False).probs
    targets = trained["test_labels"].loc[[f.name for f in files], predictor.attributes]
    targets = targets.to_numpy().astype(np.float32)

    # default: the checkpoint's [study] slices (Male x Young), at the tuned thresholds
    result = evaluate(predictor, trained["root"], split="test", out_dir=tmp_path / "ev",
                      progress=False)
    metrics = result.metrics
    expect = slice_metrics(probs, targets, predictor.attributes, ["Male", "Young"],
                           predictor.thresholds)
    assert metrics["slices"]["slices"] == ["Male", "Young"]
    assert metrics["tuned"]["worst_group_acc"] == pytest.approx(expect.worst_group_acc, abs=1e-6)
    assert metrics["slices"]["worst_group"] == expect.worst_group
    assert [g["n"] for g in metrics["slices"]["groups"]] == list(expect.groups["n"])
    half = slice_metrics(probs, targets, predictor.attributes, ["Male", "Young"], 0.5)
    assert metrics["0.5"]["worst_group_acc"] == pytest.approx(half.worst_group_acc, abs=1e-6)
    written = pd.read_csv(tmp_path / "ev" / "slices.csv")
    assert len(written) == len(expect.long())
    assert str(tmp_path / "ev" / "slices.csv") in metrics["written"]
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["slices"]["worst_group_acc"] == pytest.approx(expect.worst_group_acc, abs=1e-6)
    assert "worst_group_acc" in format_evaluation(result)

    # chosen: one slice; off: none, and no slices.csv
    one = evaluate(predictor, trained["root"], split="test", slices=["Smiling"],
                   progress=False).metrics
    assert one["slices"]["slices"] == ["Smiling"] and len(one["slices"]["groups"]) == 2
    off = evaluate(predictor, trained["root"], split="test", out_dir=tmp_path / "off",
                   slices=[], progress=False).metrics
    assert "slices" not in off and "worst_group_acc" not in off["tuned"]
    assert not (tmp_path / "off" / "slices.csv").exists()
    # a name the model does not predict fails first, naming the option
    with pytest.raises(ConfigError, match="--slices: 'Beard' is not an attribute"):
        evaluate(predictor, tmp_path / "nowhere", slices=["Beard"], progress=False)


# -- retrieve ----------------------------------------------------------------------------------
def test_retrieval_ranks_a_visible_attribute(heldout, predictor, cache_env):
    from celebhpo.data.synth import VISIBLE_ATTRIBUTES

    labels = heldout["labels"]
    # drawn in the pixels, and what the tiny model learns best in a few epochs (Eyeglasses is
    # a few thin lines at 32 px: learnt, but more slowly)
    attr = "Wearing_Hat"
    assert attr in VISIBLE_ATTRIBUTES
    base = labels[attr].mean()
    assert 0 < base < 0.5

    got = predict_folder(predictor, heldout["dir"], progress=False)
    truth = labels.loc[got.names, attr].to_numpy().astype(bool)
    p = got.probs[:, predictor.attributes.index(attr)]
    # true positives above true negatives: the AUC as a pairwise fraction
    auc = (p[truth][:, None] > p[~truth][None, :]).mean()
    assert auc > 0.85, auc

    k = max(5, int(truth.sum()) // 2)
    result = retrieve(predictor, heldout["dir"], attr.replace("_", " ").lower(), top=k,
                      progress=False)
    hits = labels.loc[[Path(i).name for i in result.frame["image"]], attr].to_numpy()
    assert len(hits) > 0
    precision = hits.mean()
    assert precision >= min(1.0, base + 0.4), (precision, base)
    assert list(result.frame.columns) == ["image", "score", attr]
    assert result.frame["score"].is_monotonic_decreasing

    # negation: "not <attr>" returns images mostly without it
    result = retrieve(predictor, heldout["dir"], f"not {attr}", top=k, progress=False)
    assert labels.loc[[Path(i).name for i in result.frame["image"]], attr].mean() < base


def test_retrieve_filters_scores_and_limits(heldout, predictor, cache_env):
    where = "(Male or Smiling) and not Eyeglasses"
    result = retrieve(predictor, heldout["dir"], where, top=0, progress=False)
    got = predict_folder(predictor, heldout["dir"], progress=False)
    present = got.probs > predictor.thresholds
    a = {n: predictor.attributes.index(n) for n in ("Male", "Smiling", "Eyeglasses")}
    holds = (present[:, a["Male"]] | present[:, a["Smiling"]]) & ~present[:, a["Eyeglasses"]]
    assert result.n_matches == int(holds.sum()) == len(result.frame)
    row = result.frame.iloc[0]
    pm, ps, pe = row["Male"], row["Smiling"], row["Eyeglasses"]
    assert row["score"] == pytest.approx((pm + ps - pm * ps) * (1 - pe), abs=1e-6)

    cut = float(result.frame["score"].median())
    some = retrieve(predictor, heldout["dir"], where, top=3, min_score=cut, progress=False)
    assert len(some.frame) == min(3, int((result.frame["score"] >= cut).sum()))
    assert (some.frame["score"] >= cut).all()
    text = format_retrieval(some)
    assert text.startswith(f"{some.n_matches} of {some.n_images} images match")
    assert json.loads(format_retrieval(some, fmt="json"))[0]["image"] == some.frame["image"][0]
    with pytest.raises(CelebhpoError, match="min_score"):
        retrieve(predictor, heldout["dir"], where, min_score=1.5, progress=False)


def test_retrieve_bad_expression_fails_before_predicting(heldout, predictor, cache_env):
    with pytest.raises(ExpressionError, match="did you mean Eyeglasses"):
        retrieve(predictor, heldout["dir"], "Eyeglases and not Male", progress=False)
    with pytest.raises(ExpressionError, match="at position 16"):
        retrieve(predictor, heldout["dir"], "Eyeglasses and and Male", progress=False)
    assert not cache_env.exists()


def test_prediction_cache_reuse_and_invalidation(trained, heldout, predictor, tmp_path,
                                                 cache_env):
    folder = tmp_path / "photos"
    files = copy_images(heldout["dir"], folder, 12)
    (folder / "broken.jpg").write_bytes(b"garbage")

    first = retrieve(predictor, folder, "Male or not Male", top=0, progress=False)
    assert (first.n_predicted, first.n_cached, first.n_images) == (13, 0, 12)
    assert first.cache_path is not None and first.cache_path.is_file()
    assert str(first.cache_path).startswith(str(cache_env))
    assert not any(p.name.startswith(".") for p in folder.iterdir())  # folder left clean

    # a second query, even another expression, predicts nothing (the broken file included)
    again = retrieve(predictor, folder, "Smiling or not Smiling", top=0, progress=False)
    assert (again.n_predicted, again.n_cached) == (0, 13)
    assert [n for n, _ in again.skipped] == ["broken.jpg"]
    same = retrieve(predictor, folder, "Male or not Male", top=0, progress=False)
    pd.testing.assert_frame_equal(same.frame, first.frame)

    # a changed image is predicted again, and its new answer is used
    with Image.open(files[1]) as im:
        im.transpose(Image.Transpose.ROTATE_180).save(files[0])
    st = files[0].stat()
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = predict_folder(predictor, folder, progress=False)
    assert (changed.n_predicted, changed.n_cached) == (1, 12)
    fresh = predict(predictor, [files[0]], progress=False).probs[0]
    np.testing.assert_allclose(changed.probs[changed.names.index(files[0].name)], fresh,
                               atol=1e-6)

    # a new image: only it; a removed image: nothing, and it is gone from the answers
    shutil.copy(sorted(heldout["dir"].glob("*.jpg"))[-1], folder / "zz-new.jpg")
    assert predict_folder(predictor, folder, progress=False).n_predicted == 1
    files[2].unlink()
    after = predict_folder(predictor, folder, progress=False)
    assert after.n_predicted == 0 and files[2].name not in after.names

    # another model is another cache entry
    other = load_model(trained["export"], backend="torchscript")
    assert predict_folder(other, folder, progress=False).n_cached == 0

    # a damaged cache is ignored with a warning and rebuilt
    after_path = predict_folder(predictor, folder, progress=False).cache_path
    after_path.write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="ignoring unreadable prediction cache"):
        rebuilt = predict_folder(predictor, folder, progress=False)
    assert rebuilt.n_predicted == len(list(folder.glob("*.jpg")))
    assert predict_folder(predictor, folder, progress=False).n_predicted == 0


def test_contact_sheet(heldout, predictor, tmp_path, cache_env):
    out = tmp_path / "sheets" / "top.png"
    result = retrieve(predictor, heldout["dir"], "Male or not Male", top=5, sheet=out,
                      progress=False)
    assert result.sheet == out
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width >= 3 * 128 and im.height >= 2 * 128
    # no matches still gives a readable sheet that says so
    empty = contact_sheet([], [], tmp_path / "none.png", title="Bald and not Bald")
    with Image.open(empty) as im:
        assert im.size[0] > 0
    assert not list(tmp_path.glob("**/*.tmp"))


def test_retrieve_returns_only_faces_above_the_threshold(trained, heldout, predictor, cache_env):
    """`retrieve --where A` lists exactly the faces whose probability of A is above A's tuned
    threshold; with --threshold 0.5 the set is the faces above 0.5 instead."""
    from click.testing import CliRunner

    from celebhpo.cli import cli

    got = predict_folder(predictor, heldout["dir"], progress=False)
    tuned_set = got.probs > predictor.thresholds  # (N, 40)
    half_set = got.probs > 0.5
    # the attribute whose tuned threshold changes the answer most on these faces
    j = int(np.argmax((tuned_set != half_set).sum(0)))
    attr = predictor.attributes[j]
    assert (tuned_set[:, j] != half_set[:, j]).any() and tuned_set[:, j].any()

    def cli_matches(*extra: str) -> dict[str, float]:
        run = CliRunner().invoke(cli, ["retrieve", str(trained["export"]), str(heldout["dir"]),
                                       "--where", attr, "--top", str(HELDOUT), "--format", "csv",
                                       *extra])
        assert run.exit_code == 0, run.output
        frame = pd.read_csv(io.StringIO(run.stdout))
        return {Path(i).name: float(p) for i, p in zip(frame["image"], frame[attr],
                                                        strict=True)}

    tuned = cli_matches()
    assert tuned and all(p > predictor.thresholds[j] for p in tuned.values())
    assert set(tuned) == {n for n, ok in zip(got.names, tuned_set[:, j], strict=True) if ok}
    half = cli_matches("--threshold", "0.5")
    assert all(p > 0.5 for p in half.values())
    assert set(half) == {n for n, ok in zip(got.names, half_set[:, j], strict=True) if ok}
    assert set(half) != set(tuned)

    result = retrieve(predictor, heldout["dir"], attr, threshold=0.5, progress=False)
    assert format_retrieval(result).startswith(
        f'{len(half)} of {HELDOUT} images match "{attr}" at 0.5 thresholds')
    run = CliRunner().invoke(cli, ["retrieve", str(trained["export"]), str(heldout["dir"]),
                                   "--where", attr, "--threshold", "1.5"])
    assert run.exit_code == 1
    assert run.stderr == ("Error: threshold '1.5' is not valid: use tuned, 0.5, or a number "
                          "between 0 and 1\n")
