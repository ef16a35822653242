"""Synthetic faces (layout, determinism, visible attributes) and `data inspect`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from celebhpo.data import inspect_dataset, read_celeba
from celebhpo.data.images import load_image
from celebhpo.data.layouts import ATTRIBUTES
from celebhpo.data.synth import VISIBLE_ATTRIBUTES, _draw_and_save, synthesize
from celebhpo.errors import DataError


def test_kaggle_layout_exactly(synth_root):
    assert (synth_root / "list_attr_celeba.csv").read_text().splitlines()[0] == \
        "image_id," + ",".join(ATTRIBUTES)
    assert (synth_root / "list_eval_partition.csv").read_text().splitlines()[:2] == \
        ["image_id,partition", "000001.jpg,0"]
    images = sorted((synth_root / "img_align_celeba" / "img_align_celeba").iterdir())
    assert len(images) == 300 and images[0].name == "000001.jpg"
    with Image.open(images[0]) as im:
        assert im.format == "JPEG" and im.size == (178, 218) and im.mode == "RGB"
    values = {v for line in (synth_root / "list_attr_celeba.csv").read_text().splitlines()[1:]
              for v in line.split(",")[1:]}
    assert values == {"-1", "1"}
    ds = read_celeba(synth_root)
    assert np.bincount(ds.partition).tolist() == [240, 30, 30]


def test_same_seed_same_bytes_any_process_count(synth_root, tmp_path):
    # the fixture drew its 300 images with a process pool; one image drawn alone matches
    src = synth_root / "img_align_celeba" / "img_align_celeba"
    for index in (0, 123, 299):
        out = tmp_path / f"{index}.jpg"
        _draw_and_save((0, index, str(out)))
        assert out.read_bytes() == (src / f"{index + 1:06d}.jpg").read_bytes()
    a = synthesize(tmp_path / "a", n=12, seed=5, progress=False)
    b = synthesize(tmp_path / "b", n=12, seed=5, progress=False)
    c = synthesize(tmp_path / "c", n=12, seed=6, progress=False)
    for name in ("list_attr_celeba.csv", "img_align_celeba/img_align_celeba/000007.jpg"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (c / name).read_bytes()
    with pytest.raises(DataError, match="at least 10"):
        synthesize(tmp_path / "d", n=3)


def test_visible_attributes_and_correlations(synth_root):
    assert len(VISIBLE_ATTRIBUTES) >= 12 and set(VISIBLE_ATTRIBUTES) <= set(ATTRIBUTES)
    ds = read_celeba(synth_root)
    lab = {a: ds.labels[:, i].astype(bool) for i, a in enumerate(ATTRIBUTES)}
    # exclusive hair colours, the beard rules, lipstick on women
    hair = sum(lab[a].astype(int) for a in ("Black_Hair", "Blond_Hair", "Brown_Hair",
                                             "Gray_Hair", "Bald"))
    assert hair.max() == 1
    assert not (lab["Goatee"] & lab["No_Beard"]).any()
    assert not (~lab["Male"] & ~lab["No_Beard"]).any() and not (~lab["Male"] & lab["Mustache"]).any()
    assert lab["Wearing_Lipstick"][~lab["Male"]].mean() > 0.6
    assert lab["Wearing_Lipstick"][lab["Male"]].mean() < 0.05
    # every attribute is sometimes positive and sometimes negative
    assert (ds.labels.mean(axis=0) > 0).all() and (ds.labels.mean(axis=0) < 1).all()


@pytest.fixture(scope="module")
def pixels(synth_root) -> tuple[np.ndarray, np.ndarray]:
    ds = read_celeba(synth_root)
    x = np.stack([load_image(p, 16, "squash") for p in ds.paths(range(len(ds)))])
    return x.reshape(len(x), -1) / 255.0, ds.labels  # (300, 768), (300, 40)


@pytest.mark.parametrize("attribute", ["Eyeglasses", "Blond_Hair", "Male", "Smiling",
                                       "Wearing_Lipstick", "Pale_Skin"])
def test_visible_attributes_are_in_the_pixels(pixels, attribute):
    """A linear model on 16x16 pixels separates each of these on held-out images: the
    attribute is drawn, not just written in the CSV. (Hats and ties come in many colours, so
    they need a CNN, not a linear model.)"""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    x, labels = pixels
    y = labels[:, ATTRIBUTES.index(attribute)]
    model = LogisticRegression(C=0.1, max_iter=300).fit(x[:220], y[:220])
    assert roc_auc_score(y[220:], model.predict_proba(x[220:])[:, 1]) > 0.75


def test_an_invisible_attribute_is_not_in_the_pixels(pixels):
    """The control: label noise (Attractive) is not separable, so the test above can fail."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    x, labels = pixels
    y = labels[:, ATTRIBUTES.index("Attractive")]
    model = LogisticRegression(C=0.1, max_iter=300).fit(x[:220], y[:220])
    assert roc_auc_score(y[220:], model.predict_proba(x[220:])[:, 1]) < 0.75


def test_inspect_report_and_plots(synth_root, tmp_path):
    report = inspect_dataset(synth_root, out_dir=tmp_path / "plots")
    json.dumps(report)
    assert report["layout"] == "kaggle"
    assert report["split_counts"] == {"train": 240, "val": 30, "test": 30}
    rows = report["attributes"]
    assert len(rows) == 40 and {r["attribute"] for r in rows} == set(ATTRIBUTES)
    rates = [r["positive_rate"] for r in rows]
    assert rates == sorted(rates, reverse=True)
    ds = read_celeba(synth_root)
    train = ds.labels[ds.partition == 0]
    male = next(r for r in rows if r["attribute"] == "Male")
    p = train[:, ATTRIBUTES.index("Male")].mean()
    assert male["positive_rate"] == pytest.approx(p, abs=1e-6)
    assert male["imbalance_ratio"] == pytest.approx(max(p, 1 - p) / min(p, 1 - p), abs=1e-3)
    for name in ("attribute_frequency.png", "attribute_correlation.png"):
        assert str(tmp_path / "plots" / name) in report["plots"]
        with Image.open(tmp_path / "plots" / name) as im:
            assert im.size[0] > 500
    assert inspect_dataset(synth_root)["plots"] == []


def test_inspect_official_layout_and_errors(synth_root, tmp_path):
    from tests.helpers import write_official

    root = write_official(synth_root, tmp_path / "celeba")
    assert inspect_dataset(root)["layout"] == "official"
    shutil.rmtree(root / "Eval")
    with pytest.raises(DataError, match="not a CelebA folder"):
        inspect_dataset(root)
