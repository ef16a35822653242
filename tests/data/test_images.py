"""load_image on real files written here: EXIF orientation, 16-bit grayscale, palette and
other modes, the JPEG draft path, broken EXIF. (Crops, bad files and the cache: test_cache.py.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from celebhpo.data.images import load_image

S = 32
ORIENTATION = 0x0112
# what a camera stores for each EXIF orientation, given the upright picture: the inverse of
# the transform a viewer applies (EXIF 2.32, tag 274). 6 = "rotate 90 CW to view", so the
# stored pixels are the upright picture turned 90 degrees counter-clockwise.
STORED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def face(synth_root: Path) -> Image.Image:
    """A synthetic face, upright, 352 x 432: not square, big enough that `draft` scales it, and
    whole 16-px JPEG blocks, so that every orientation re-encodes the same blocks."""
    src = synth_root / "img_align_celeba" / "img_align_celeba" / "000001.jpg"
    with Image.open(src) as im:
        return im.convert("RGB").resize((352, 432), Image.Resampling.BILINEAR)


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# -- EXIF orientation --------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", sorted(STORED))
@pytest.mark.parametrize("crop", ["squash", "center"])
def test_exif_orientation_decodes_upright(synth_root, tmp_path, orientation, crop):
    upright = face(synth_root)
    upright.save(tmp_path / "upright.jpg", quality=95)
    stored = upright.transpose(STORED[orientation])
    stored.save(tmp_path / "plain.jpg", quality=95)  # the same pixels with no EXIF
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    stored.save(tmp_path / "tagged.jpg", quality=95, exif=exif)

    want = load_image(tmp_path / "upright.jpg", S, crop)
    got = load_image(tmp_path / "tagged.jpg", S, crop)
    raw = load_image(tmp_path / "plain.jpg", S, crop)
    assert got.shape == (S, S, 3)
    assert mean_abs(got, want) < 1.0  # measured 0.0-0.1: only JPEG re-encoding apart
    assert mean_abs(raw, want) > 20.0  # measured 29-66: the stored pixels, a different picture


def test_rotated_crop_uses_the_upright_size(tmp_path):
    # upright: a tall 60 x 120 picture, red top half, blue bottom half; stored sideways (6)
    up = np.zeros((120, 60, 3), np.uint8)
    up[:60] = (255, 0, 0)
    up[60:] = (0, 0, 255)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(up).transpose(STORED[6]).save(tmp_path / "tall.png", exif=exif)
    # center crop of the upright picture: its middle 60 x 60, half red above, half blue below
    got = load_image(tmp_path / "tall.png", 8, "center")
    assert np.all(got[1, :, 0] > 200) and np.all(got[1, :, 2] < 50)
    assert np.all(got[-2, :, 2] > 200) and np.all(got[-2, :, 0] < 50)


def test_broken_or_odd_exif_still_decodes(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "plain.png")
    want = load_image(tmp_path / "plain.png", S)
    # a truncated IFD, then a tag value EXIF does not define (9): both read as upright
    broken = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03"
    odd = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\t\x00\x00\x00"
    for name, exif in (("broken.png", broken), ("odd.png", odd)):
        Image.fromarray(rgb).save(tmp_path / name, exif=exif)
        np.testing.assert_array_equal(load_image(tmp_path / name, S), want)


@pytest.mark.parametrize("orientation", [1, 6])
def test_jpeg_still_decodes_through_draft(synth_root, tmp_path, orientation):
    # the DCT-scaled decode gives other pixels than a full decode + resize: the fast path is
    # kept, for a rotated JPEG too (draft works only before the transpose decodes the file)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    face(synth_root).save(tmp_path / "big.jpg", quality=95, exif=exif)

    def reference(draft: bool) -> np.ndarray:
        with Image.open(tmp_path / "big.jpg") as im:
            if draft:
                im.draft("RGB", (S, S))
                assert im.size == (352 // 8, 432 // 8)  # libjpeg scales by 1/8 here
            im = ImageOps.exif_transpose(im).convert("RGB")
            return np.asarray(im.resize((S, S), Image.Resampling.BILINEAR, reducing_gap=3.0))

    got = load_image(tmp_path / "big.jpg", S)
    np.testing.assert_array_equal(got, reference(draft=True))
    assert not np.array_equal(got, reference(draft=False))


# -- modes -------------------------------------------------------------------------------------
def gradient16() -> tuple[np.ndarray, np.ndarray]:
    """A 16-bit gradient over the whole range and the 8-bit values it must decode to."""
    wide = np.linspace(0, 65535, 64).round().astype(np.uint16)[None, :].repeat(64, axis=0)
    return wide, np.round(wide / 257.0).astype(np.uint8)


def test_16bit_png_scales_to_8_bits(tmp_path):
    wide, want = gradient16()
    Image.fromarray(wide).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode == "I;16"  # really a 16-bit file
    got = load_image(tmp_path / "g16.png", 64)  # same size: no resampling in the way
    assert np.abs(got.astype(int) - want[..., None].astype(int)).max() <= 1
    assert got[:, 0].max() == 0 and got[:, -1].min() >= 254  # the full range, not clipped
    assert np.all(got[..., 0] == got[..., 2])


@pytest.mark.parametrize(("name", "mode"), [("g16b.tif", "I;16B"), ("g32.tif", "I"),
                                            ("g16.pgm", "I")])
def test_other_wide_grayscale_files(tmp_path, name, mode):
    wide, want = gradient16()
    im = Image.fromarray(wide)
    if mode == "I;16B":
        im = Image.frombytes("I;16B", im.size, wide.astype(">u2").tobytes())
    elif name.endswith(".tif"):
        im = im.convert("I")
    im.save(tmp_path / name)
    with Image.open(tmp_path / name) as back:
        assert back.mode == mode
    got = load_image(tmp_path / name, 64)
    assert np.abs(got[..., 1].astype(int) - want.astype(int)).max() <= 1


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_png_matches_its_rgb_original(tmp_path, transparency):
    # 6 colours in blocks: a palette holds them exactly
    colours = np.array([(255, 0, 0), (0, 128, 0), (0, 0, 255), (250, 250, 20), (30, 30, 30),
                        (200, 100, 150)], np.uint8)
    blocks = np.random.default_rng(0).integers(0, 6, (8, 8))
    rgb = colours[np.kron(blocks, np.ones((8, 8), int))]  # (64, 64, 3)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    pal = Image.fromarray(rgb).quantize(colors=6, dither=Image.Dither.NONE)
    kwargs = {"transparency": 2} if transparency else {}  # one colour marked transparent
    pal.save(tmp_path / "pal.png", **kwargs)
    with Image.open(tmp_path / "pal.png") as im:
        assert im.mode == "P" and ("transparency" in im.info) == transparency
    np.testing.assert_array_equal(load_image(tmp_path / "pal.png", 64), rgb)
    np.testing.assert_array_equal(load_image(tmp_path / "pal.png", S),
                                  load_image(tmp_path / "rgb.png", S))


@pytest.mark.parametrize("mode", ["1", "L", "LA", "RGBA", "CMYK"])
def test_other_modes_match_their_rgb_view(tmp_path, mode):
    rgb = np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    im = Image.fromarray(rgb).convert(mode)
    im.save(tmp_path / "m.tif")  # TIFF keeps every one of these modes as is
    with Image.open(tmp_path / "m.tif") as back:
        assert back.mode == mode
    np.testing.assert_array_equal(load_image(tmp_path / "m.tif", 48), np.asarray(im.convert("RGB")))
