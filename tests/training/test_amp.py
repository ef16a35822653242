"""Precision and memory format (training.amp) and what fit does with them, on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from celebhpo.config import StudyConfig
from celebhpo.data import BatchLoader, DataBundle
from celebhpo.errors import ConfigError
from celebhpo.training.amp import amp_mode, cpu_has_native_bf16, resolve_amp
from celebhpo.training.checkpoint import Checkpoint
from celebhpo.training.loop import Callback, evaluate, fit
from celebhpo.training.metrics import tune_thresholds
from tests.training.test_loop import _bundle as loop_bundle

CPU = torch.device("cpu")


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    p = tmp_path / f"cpuinfo-{abs(hash(flags))}"
    p.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\n"
                 f"flags\t\t: {flags}\n", encoding="utf-8")
    return p


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    assert cpu_has_native_bf16(_cpuinfo(tmp_path, "fpu sse2 avx512f avx512bw avx512_bf16"))
    assert cpu_has_native_bf16(_cpuinfo(tmp_path, "fpu avx512f amx_tile amx_bf16"))
    # AVX512 alone is not native bf16 (emulated bf16 is slower than fp32)
    assert not cpu_has_native_bf16(_cpuinfo(tmp_path, "fpu sse2 avx2 avx512f avx512bw"))
    assert not cpu_has_native_bf16(tmp_path / "no-such-cpuinfo")


def test_amp_values_old_booleans_and_bad_ones():
    assert [amp_mode(v) for v in (True, False, "auto", "BF16", "off")] == \
        ["auto", "off", "auto", "bf16", "off"]
    with pytest.raises(ConfigError, match=r"\[train\] amp = 'fp16'.*auto, bf16, off"):
        amp_mode("fp16")


def test_resolve_amp_on_cpu_follows_native_bf16_and_the_setting():
    assert resolve_amp("auto", CPU, native_cpu_bf16=True)
    assert not resolve_amp("auto", CPU, native_cpu_bf16=False)
    assert resolve_amp(True, CPU, native_cpu_bf16=True)
    assert not resolve_amp(False, CPU, native_cpu_bf16=True)
    assert not resolve_amp("off", CPU, native_cpu_bf16=True)
    assert resolve_amp("bf16", CPU, native_cpu_bf16=False)  # forced
    mps = torch.device("mps")  # a device name only: nothing runs on it
    assert not resolve_amp("auto", mps)
    with pytest.raises(ConfigError, match="not supported on mps"):
        resolve_amp("bf16", mps)


def _bundle() -> DataBundle:
    return loop_bundle(n_train=96, n_val=48, seed=1)  # test_loop's learnable random faces


def _cfg(amp: str) -> StudyConfig:
    cfg = StudyConfig.from_dict({"train": {
        "arch": "tiny", "epochs": 2, "batch_size": 16, "eval_batch_size": 20, "lr": 3e-3,
        "device": "cpu", "num_features": 16, "dropout": 0.0, "seed": 0}}, source="test")
    cfg.train.amp = amp  # the string form, whatever the config file accepts today
    return cfg


class _Info(Callback):
    def on_fit_start(self, info):
        self.info = info


def test_bf16_training_keeps_accuracy_and_thresholds_come_from_fp32(tmp_path):
    data = _bundle()
    seen = {amp: _Info() for amp in ("bf16", "off")}
    got = {amp: fit(_cfg(amp), data, [seen[amp]], checkpoint_path=tmp_path / f"{amp}.pt")
           for amp in seen}
    assert seen["bf16"].info["amp"] and not seen["off"].info["amp"]
    assert all(s.info["channels_last"] for s in seen.values())  # on the CPU too, by default
    # bf16 steps do not cost accuracy
    acc = {amp: r.best_metrics["val_mean_acc"] for amp, r in got.items()}
    assert abs(acc["bf16"] - acc["off"]) <= 0.01, acc
    # the bf16 run's thresholds and metrics are those of an fp32 pass of its best weights
    ckpt = Checkpoint.load(got["bf16"].checkpoint_path)
    model = ckpt.model().eval()
    val = data.splits["val"]
    out = evaluate(model, BatchLoader(val.images, val.labels, 20, shuffle=False, flip=False),
                   amp=False)
    # (fit's model is channels_last, this one NCHW: the same sums in another order)
    tuned = np.asarray(ckpt.thresholds)
    np.testing.assert_allclose(tuned, tune_thresholds(out.probs, out.targets, metric="accuracy"),
                               atol=1e-6)
    assert ckpt.metrics["val_loss"] == pytest.approx(out.loss, rel=1e-6)
    bf16 = evaluate(model, BatchLoader(val.images, val.labels, 20, shuffle=False, flip=False),
                    amp=True)
    # the check above can tell them apart
    assert not np.allclose(tuned, tune_thresholds(bf16.probs, bf16.targets, metric="accuracy"),
                           atol=1e-6)
