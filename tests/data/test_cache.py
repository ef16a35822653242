"""load_image's conversions and crops; the decode-once cache: reuse, rebuild, atomicity, bad
images; load_data end to end."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from celebhpo.config import DataConfig
from celebhpo.data import load_data
from celebhpo.data.cache import cache_key, decode_images
from celebhpo.data.images import load_image
from celebhpo.data.layouts import read_celeba
from celebhpo.errors import DataError

S = 16


@pytest.fixture
def some_images(synth_root, tmp_path) -> list[Path]:
    """Copies of 20 synthetic JPEGs that a test may damage or touch."""
    src = synth_root / "img_align_celeba" / "img_align_celeba"
    dst = tmp_path / "imgs"
    dst.mkdir()
    out = []
    for i in range(1, 21):
        shutil.copy2(src / f"{i:06d}.jpg", dst / f"{i:06d}.jpg")
        out.append(dst / f"{i:06d}.jpg")
    return out


# -- load_image --------------------------------------------------------------------------
def test_grayscale_rgba_and_palette_become_rgb(tmp_path):
    rng = np.random.default_rng(0)
    gray = tmp_path / "gray.jpg"
    Image.fromarray(rng.integers(0, 256, (50, 40), dtype=np.uint8), "L").save(gray)
    a = load_image(gray, S, "squash")
    assert a.shape == (S, S, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a[..., 0], a[..., 1])
    np.testing.assert_array_equal(a[..., 0], a[..., 2])

    rgba = tmp_path / "rgba.jpg"  # a PNG with alpha behind a .jpg name
    Image.new("RGBA", (30, 30), (200, 10, 20, 128)).save(rgba, format="PNG")
    b = load_image(rgba, S, "center")
    assert b.shape == (S, S, 3)
    assert tuple(b[8, 8]) == (200, 10, 20)

    pal = tmp_path / "pal.jpg"
    Image.new("RGB", (30, 30), (0, 0, 255)).convert("P").save(pal, format="PNG")
    assert tuple(load_image(pal, S)[4, 4]) == (0, 0, 255)


def test_squash_versus_center_crop(tmp_path):
    # a wide image: red | green | blue thirds; the center square is all green
    arr = np.zeros((60, 180, 3), dtype=np.uint8)
    arr[:, :60, 0] = arr[:, 60:120, 1] = arr[:, 120:, 2] = 255
    p = tmp_path / "wide.png"
    Image.fromarray(arr).save(p)
    center = load_image(p, S, "center")[:, 1:-1]  # the filter reads a pixel past the box
    assert (center[..., 1] > 250).all() and (center[..., 0] < 5).all()
    squash = load_image(p, S, "squash")
    assert squash[:, 0, 0].min() > 250 and squash[:, -1, 2].min() > 250


def test_bad_images_raise_with_the_path(tmp_path, some_images):
    with pytest.raises(DataError, match="missing.jpg: file not found"):
        load_image(tmp_path / "missing.jpg", S)
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(some_images[0].read_bytes()[:2000])
    with pytest.raises(DataError, match="trunc.jpg: cannot decode"):
        load_image(trunc, S)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="junk.jpg: cannot decode"):
        load_image(junk, S)
    with pytest.raises(DataError, match="unknown crop"):
        load_image(some_images[0], S, "zoom")


# -- the cache ---------------------------------------------------------------------------
def test_cache_matches_load_image_and_is_reused(some_images, tmp_path):
    cache = tmp_path / "cache"
    first = decode_images(some_images, S, "squash", cache, workers=2, progress=False)
    assert not first.reused and first.bad == []
    assert isinstance(first.array, np.memmap) and first.array.shape == (20, S, S, 3)
    np.testing.assert_array_equal(first.kept, np.arange(20))
    for i in (0, 7, 19):
        np.testing.assert_array_equal(first.array[i], load_image(some_images[i], S, "squash"))
    again = decode_images(some_images, S, "squash", cache, workers=1, progress=False)
    assert again.reused and again.path == first.path
    np.testing.assert_array_equal(np.asarray(again.array), np.asarray(first.array))
    # crop and size are part of the key
    other = decode_images(some_images, S, "center", cache, workers=1, progress=False)
    assert not other.reused and other.path != first.path
    assert len(list(cache.glob("*.npy"))) == 2 and not list(cache.glob("*.tmp*"))


def test_cache_rebuilds_when_an_image_changes(some_images, tmp_path):
    cache = tmp_path / "cache"
    first = decode_images(some_images, S, "squash", cache, workers=1, progress=False)
    key = cache_key(some_images, S, "squash")
    st = os.stat(some_images[3])
    os.utime(some_images[3], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert cache_key(some_images, S, "squash") != key
    # a different image under the same name: the cache must pick up the new pixels
    shutil.copy(some_images[4], some_images[3])
    second = decode_images(some_images, S, "squash", cache, workers=1, progress=False)
    assert not second.reused and second.path != first.path
    np.testing.assert_array_equal(second.array[3], load_image(some_images[4], S))


def test_leftover_temp_files_are_never_used(some_images, tmp_path):
    cache = tmp_path / "cache"
    key = cache_key(some_images, S, "squash")
    stem = f"images-{S}px-squash-{key[:20]}"
    cache.mkdir()
    # what a build killed mid-way leaves: a full-size temp array of zeros, and (worse) a
    # finished-looking sidecar whose .npy never got renamed into place
    np.save(cache / f"{stem}.tmp-999999.npy", np.zeros((20, S, S, 3), np.uint8))
    (cache / f"{stem}.json").write_text(json.dumps({"key": key, "kept": list(range(20)),
                                                    "bad": []}))
    (cache / "images-8px-squash-0123.tmp-999998.npy").write_bytes(b"stale, other key")
    got = decode_images(some_images, S, "squash", cache, workers=1, progress=False)
    assert not got.reused
    assert got.array.max() > 0
    np.testing.assert_array_equal(got.array[0], load_image(some_images[0], S))
    assert not list(cache.glob("*.tmp*"))


def test_bad_images_skip_or_fail(some_images, tmp_path):
    some_images[2].write_bytes(some_images[2].read_bytes()[:1500])  # truncated
    some_images[5].unlink()  # missing
    some_images[9].write_bytes(b"\x00" * 100)  # not an image
    cache = tmp_path / "cache"
    got = decode_images(some_images, S, "squash", cache, on_bad="skip", workers=2,
                        progress=False)
    assert [name for name, _ in got.bad] == ["000003.jpg", "000006.jpg", "000010.jpg"]
    assert "file not found" in got.bad[1][1] and "cannot decode" in got.bad[0][1]
    kept = [i for i in range(20) if i not in (2, 5, 9)]
    np.testing.assert_array_equal(got.kept, kept)
    assert got.array.shape == (17, S, S, 3)
    for row, i in enumerate(kept):
        np.testing.assert_array_equal(got.array[row], load_image(some_images[i], S))
    # a reused cache still knows what was skipped
    again = decode_images(some_images, S, "squash", cache, on_bad="skip", progress=False)
    assert again.reused and again.bad == got.bad
    np.testing.assert_array_equal(again.kept, kept)
    with pytest.raises(DataError, match=r"000003\.jpg"):
        decode_images(some_images, S, "squash", cache, on_bad="fail", progress=False)

    fresh = tmp_path / "fresh"
    with pytest.raises(DataError, match=r"000003\.jpg: cannot decode") as e:
        decode_images(some_images, S, "squash", fresh, on_bad="fail", workers=1,
                      progress=False)
    assert "on_bad_image" in str(e.value) and "\n" not in str(e.value)
    assert not list(fresh.glob("*.npy")) and not list(fresh.glob("*.json"))


# -- load_data ---------------------------------------------------------------------------
def test_load_data_subsets_and_labels(synth_root, tmp_path):
    cfg = DataConfig(root=str(synth_root), image_size=S, train_size=50, val_size=10,
                     subset="random", subset_seed=3, cache_dir=str(tmp_path / "c"))
    default_cache = synth_root / ".celebhpo-cache"  # other tests of the session may fill it
    before = sorted(default_cache.iterdir()) if default_cache.exists() else []
    data = load_data(cfg, splits=("train", "val", "test"), progress=False)
    ds = read_celeba(synth_root)
    assert data.layout == "kaggle" and data.attributes == ds.attributes and data.skipped == []
    assert [len(data.splits[s].ids) for s in ("train", "val", "test")] == [50, 10, 30]
    tr = data.splits["train"]
    assert tr.images.shape == (50, S, S, 3) and tr.images.dtype == np.uint8
    assert tr.labels.dtype == np.float32 and tr.labels.shape == (50, 40)
    rows = [ds.ids.index(i) for i in tr.ids]
    assert all(ds.partition[r] == 0 for r in rows)
    np.testing.assert_array_equal(tr.labels, ds.labels[rows].astype(np.float32))
    np.testing.assert_array_equal(tr.images[7], load_image(ds.image_dir / tr.ids[7], S))
    # cache_dir was honoured: the cache is there, nothing new in the data's default folder
    assert list((tmp_path / "c").glob("*.npy"))
    assert (sorted(default_cache.iterdir()) if default_cache.exists() else []) == before


def test_load_data_skips_or_fails_on_bad_images(synth_root, tmp_path):
    root = tmp_path / "celeba"
    shutil.copytree(synth_root, root, ignore=shutil.ignore_patterns(".celebhpo-cache"))
    bad = root / "img_align_celeba" / "img_align_celeba" / "000004.jpg"
    bad.write_bytes(bad.read_bytes()[:1000])
    cfg = DataConfig(root=str(root), image_size=S, train_size=20, val_size=5)
    data = load_data(cfg, progress=False)
    assert [n for n, _ in data.skipped] == ["000004.jpg"]
    assert len(data.splits["train"].ids) == 19 and "000004.jpg" not in data.splits["train"].ids
    assert (root / ".celebhpo-cache").is_dir()  # the default cache folder
    cfg.on_bad_image = "fail"
    with pytest.raises(DataError, match="000004.jpg"):
        load_data(cfg, progress=False)
