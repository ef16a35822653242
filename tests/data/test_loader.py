"""BatchLoader: normalization, per-epoch determinism, flips on train only, batch bookkeeping."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from celebhpo.data.loader import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchLoader,
    fits_on_gpu,
    normalize,
)
from celebhpo.errors import DataError

N, S = 70, 8


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    """Random images whose labels encode their row number in binary, so every y says which
    image x came from."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, S, S, 3), dtype=np.uint8)
    bits = (np.arange(N)[:, None] >> np.arange(40)[None, :]) & 1  # (N, 40)
    return images, bits.astype(np.float32)


def row_of(y: torch.Tensor) -> np.ndarray:
    return (y.numpy().astype(np.int64) << np.arange(40)).sum(axis=1)


def test_normalize_matches_hand_computation():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
    mean, std = (0.5, 0.25, 0.1), (0.2, 0.3, 0.4)
    hand = np.empty((4, 3, 5, 5), np.float32)
    for c in range(3):
        hand[:, c] = (x[..., c] / 255.0 - mean[c]) / std[c]
    got = normalize(torch.from_numpy(x), mean, std)
    assert got.dtype == torch.float32 and got.shape == (4, 3, 5, 5) and got.is_contiguous()
    np.testing.assert_allclose(got.numpy(), hand, rtol=1e-5, atol=1e-5)
    cl = normalize(torch.from_numpy(x), mean, std, channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(cl.numpy(), hand, rtol=1e-5, atol=1e-5)
    # ImageNet defaults: a mid-grey pixel lands near zero in every channel
    grey = normalize(torch.full((1, 1, 1, 3), 118, dtype=torch.uint8))
    expected = [(118 / 255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    np.testing.assert_allclose(grey.flatten().numpy(), expected, rtol=1e-5)


def test_eval_loader_is_ordered_unflipped_and_deterministic(data):
    images, labels = data
    loader = BatchLoader(images, labels, 32, shuffle=False, flip=False)
    assert len(loader) == 3 and loader.num_images == N
    first = [(x.clone(), y.clone()) for x, y in loader]
    assert [len(y) for _, y in first] == [32, 32, 6]
    x = torch.cat([b[0] for b in first])
    y = torch.cat([b[1] for b in first])
    assert x.shape == (N, 3, S, S) and y.dtype == torch.float32
    np.testing.assert_array_equal(row_of(y), np.arange(N))
    np.testing.assert_allclose(x.numpy(), normalize(torch.from_numpy(images)).numpy())
    loader.set_epoch(5)
    for (x1, y1), (x2, y2) in zip(first, loader, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def _epoch(loader: BatchLoader, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    loader.set_epoch(epoch)
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_shuffle_and_flip_are_deterministic_per_seed_and_epoch(data):
    images, labels = data
    a = BatchLoader(images, labels, 16, shuffle=True, flip=True, seed=7)
    b = BatchLoader(torch.from_numpy(images), labels, 16, shuffle=True, flip=True, seed=7)
    xa, ya = _epoch(a, 3)
    xb, yb = _epoch(b, 3)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    order = row_of(ya)
    assert sorted(order) == list(range(N)) and list(order) != list(range(N))
    _, y4 = _epoch(a, 4)
    assert list(row_of(y4)) != list(order)
    _, y_other_seed = _epoch(BatchLoader(images, labels, 16, shuffle=True, flip=True, seed=8), 3)
    assert list(row_of(y_other_seed)) != list(order)
    # without set_epoch the loader moves on by itself: two passes differ
    c = BatchLoader(images, labels, 16, shuffle=True, flip=False, seed=7)
    p1 = row_of(torch.cat([y for _, y in c]))
    p2 = row_of(torch.cat([y for _, y in c]))
    assert list(p1) != list(p2)


def test_flip_only_when_asked(data):
    images, labels = data
    plain = normalize(torch.from_numpy(images))  # (N, 3, S, S)
    mirrored = plain.flip(3)
    for flip in (True, False):
        x, y = _epoch(BatchLoader(images, labels, 16, shuffle=True, flip=flip, seed=1), 0)
        rows = row_of(y)
        same = [torch.equal(x[k], plain[r]) for k, r in enumerate(rows)]
        flipped = [torch.equal(x[k], mirrored[r]) for k, r in enumerate(rows)]
        assert all(s or f for s, f in zip(same, flipped, strict=True))
        if flip:
            assert 10 < sum(flipped) < N - 10  # about half
        else:
            assert all(same)


def test_drop_last_and_bad_arguments(data):
    images, labels = data
    loader = BatchLoader(images, labels, 32, shuffle=True, flip=False, drop_last=True)
    assert len(loader) == 2 and [len(y) for _, y in loader] == [32, 32]
    with pytest.raises(DataError):
        BatchLoader(images, labels[:-1], 8, shuffle=False, flip=False)
    with pytest.raises(DataError):
        BatchLoader(images, labels, 0, shuffle=False, flip=False)


def test_memmap_input_and_channels_last(data, tmp_path):
    images, labels = data
    np.save(tmp_path / "a.npy", images)
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    loader = BatchLoader(mm, labels, 64, shuffle=False, flip=False, channels_last=True,
                         mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    x, _ = next(iter(loader))
    assert x.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(x.permute(0, 2, 3, 1).numpy(), images[:64] / 255.0, rtol=1e-6)


# -- the CUDA paths' logic, on the CPU ---------------------------------------------------------
GB = 1 << 30


def test_gpu_room_counts_pytorchs_cached_blocks():
    # an 80 GB card after trial 1: 60 GB cached but unused by PyTorch, 2 GB free to the driver
    assert fits_on_gpu(6 * GB, free=2 * GB, reserved=60 * GB, allocated=1 * GB)
    assert not fits_on_gpu(6 * GB, free=2 * GB, reserved=1 * GB, allocated=1 * GB)  # truly full
    assert not fits_on_gpu(40 * GB, free=10 * GB, reserved=60 * GB, allocated=1 * GB)  # > half
    assert fits_on_gpu(34 * GB, free=10 * GB, reserved=60 * GB, allocated=1 * GB)
    # allocated above reserved never counts as room
    assert fits_on_gpu(GB, free=2 * GB, reserved=0, allocated=5 * GB)
    assert not fits_on_gpu(GB + 1, free=2 * GB, reserved=0, allocated=5 * GB)


@pytest.mark.parametrize("kind", ["numpy", "memmap", "tensor"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_double_buffered_host_path_equals_the_plain_one(data, tmp_path, kind,
                                                            channels_last):
    images, labels = data
    if kind == "memmap":
        np.save(tmp_path / "a.npy", images)
        images = np.load(tmp_path / "a.npy", mmap_mode="r")
    elif kind == "tensor":
        images = torch.from_numpy(images.copy())

    def loader(staging: bool) -> BatchLoader:
        return BatchLoader(images, labels, 16, shuffle=True, flip=True, seed=3,
                           channels_last=channels_last, staging=staging)

    plain, staged = loader(False), loader(True)
    assert staged._stager is not None and not staged._stager.pinned  # no CUDA: no pinning
    for epoch in (1, 2):  # 4 full batches and a ragged one of 6, twice
        plain.set_epoch(epoch)
        staged.set_epoch(epoch)
        want = list(plain)
        got = list(staged)
        assert [len(x) for x, _ in got] == [16, 16, 16, 16, 6]
        for (xa, ya), (xb, yb) in zip(want, got, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
            assert xa.is_contiguous(memory_format=torch.channels_last) == \
                xb.is_contiguous(memory_format=torch.channels_last)
    # every batch is a copy of its own, not a view of a buffer that is refilled
    assert len({x.data_ptr() for x, _ in got}) == len(got)


def test_a_staged_epoch_stopped_early_stops_its_thread(data):
    images, labels = data
    loader = BatchLoader(images, labels, 8, shuffle=True, flip=False, staging=True)
    batches = iter(loader)
    next(batches)
    assert any(t.name == "celebhpo-stager" for t in threading.enumerate())
    batches.close()
    assert not any(t.name == "celebhpo-stager" for t in threading.enumerate())
