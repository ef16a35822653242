"""Latency per image, GFLOPs and parameter counts: what constraints and fronts use.
(Under load, the cache and FLOPs across architectures: test_latency_load.py.)"""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from celebhpo.training.latency import count_params_m, measure_latency
from celebhpo.training.models import create_model


class SleepyNet(nn.Module):
    """Sleeps a fixed time per forward, whatever the batch, and records what it was given."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.conv = nn.Conv2d(3, 4, 3)
        self.calls: list[dict] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append({"shape": tuple(x.shape), "training": self.training,
                           "inference": torch.is_inference_mode_enabled(), "dtype": x.dtype,
                           "nhwc": x.is_contiguous(memory_format=torch.channels_last)
                           and not x.is_contiguous(), "sum": float(x.sum())})
        time.sleep(self.seconds)
        return self.conv(x)


def test_keys_positive_and_per_image_for_the_tiny_net() -> None:
    model = create_model("tiny", num_features=16, dropout=0.1)
    result = measure_latency(model, 32, "cpu", min_run_time=0.05)
    assert set(result) == {"latency_ms", "latency_ms_b64", "latency_spread", "latency_cpu_share",
                           "latency_threads", "gflops"}
    assert all(isinstance(v, float) and v >= 0 for v in result.values())
    assert result["latency_ms"] > 0 and result["latency_ms_b64"] > 0 and result["gflops"] > 0
    assert result["latency_threads"] == 1.0 and result["latency_cpu_share"] <= 1.0
    assert {k for k in measure_latency(model, 16, "cpu", batch_sizes=(1, 8, 32), min_run_time=0.02)
            if k.startswith("latency_ms")} == {"latency_ms", "latency_ms_b8", "latency_ms_b32"}


def test_batch_latency_is_per_image() -> None:
    # every forward sleeps 20 ms whatever its batch: a whole forward of 64 images takes at least
    # that (time.sleep never returns early), and per image far less than a forward of one
    sleep_ms = 20.0
    result = measure_latency(SleepyNet(sleep_ms / 1e3), 8, "cpu", min_run_time=0.1)
    assert result["latency_ms"] >= sleep_ms
    assert result["latency_ms_b64"] * 64 >= sleep_ms
    # without the division by 64 the batch figure would be >= the batch-1 one; the margin (8x)
    # is far above any scheduling noise on a median
    assert result["latency_ms_b64"] < result["latency_ms"] / 8
    # asleep is off the CPU: the measuring thread's share of the wall time says so
    assert result["latency_cpu_share"] < 0.5


def test_forwards_are_eval_inference_fp32_channels_last_and_counted() -> None:
    model = SleepyNet(0.0)
    measure_latency(model, 12, "cpu", batch_sizes=(1, 4), min_run_time=0.02)
    shapes = [c["shape"] for c in model.calls]
    assert set(shapes) == {(1, 3, 12, 12), (4, 3, 12, 12)} and shapes[0] == (1, 3, 12, 12)
    assert all(not c["training"] and c["inference"] and c["dtype"] == torch.float32
               and c["nhwc"] for c in model.calls)
    # a fixed generator: the same input every time, and again in a second measurement
    first = {c["shape"]: c["sum"] for c in model.calls}
    assert all(c["sum"] == first[c["shape"]] for c in model.calls)
    model.calls.clear()
    measure_latency(model, 12, "cpu", batch_sizes=(1, 4), min_run_time=0.02,
                    channels_last=False)
    assert all(c["sum"] == pytest.approx(first[c["shape"]]) for c in model.calls)
    assert not any(c["nhwc"] for c in model.calls)


@pytest.mark.parametrize("training", [True, False])
def test_mode_and_weights_are_restored(training: bool) -> None:
    model = create_model("tiny", num_features=16, dropout=0.1).train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    strides = {k: v.stride() for k, v in model.state_dict().items()}
    measure_latency(model, 16, "cpu", min_run_time=0.02)
    assert model.training is training
    assert all(m.training is training for m in model.modules())
    after = model.state_dict()
    # eval forwards leave BatchNorm's running statistics alone, and the memory format stays
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {k: v.stride() for k, v in after.items()} == strides


def test_params_in_millions() -> None:
    model = create_model("tiny", num_features=16, dropout=0.1)
    model.fc_frozen = nn.Linear(10, 10).requires_grad_(False)  # counted too: all parameters
    assert count_params_m(model) == sum(p.numel() for p in model.parameters()) / 1e6
    assert count_params_m(nn.Linear(1000, 1000)) == pytest.approx(1.001)
    # counted by hand: conv 3*8*3*3 + 8, linear 8*4 + 4; a layer used twice counts once
    shared = nn.Linear(8, 4)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), shared, shared)
    assert count_params_m(net) == pytest.approx((3 * 8 * 9 + 8 + 8 * 4 + 4) / 1e6, rel=1e-12)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"image_size": 0}, "image_size"),
    ({"batch_sizes": ()}, "batch_sizes"),
    ({"batch_sizes": (1, 1)}, "twice"),
    ({"min_run_time": 0}, "min_run_time"),
    ({"threads": 0}, "threads"),
    ({"retries": -1}, "retries"),
])
def test_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"image_size": 16, **kwargs}
    with pytest.raises(ValueError, match=message):
        measure_latency(nn.Conv2d(3, 3, 1), args.pop("image_size"), "cpu", **args)


def test_refuses_a_model_it_would_have_to_change() -> None:
    with pytest.raises(ValueError, match=r"weight is torch.bfloat16"):
        measure_latency(nn.Conv2d(3, 3, 1).to(torch.bfloat16), 16, "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"weight is on cpu, not cuda: move the model"):
            measure_latency(nn.Conv2d(3, 3, 1), 16, "cuda")
