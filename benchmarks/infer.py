"""Inference throughput: `retrieve` over a folder of unseen images vs a per-image loop.

Same images, same weights (ResNet50 + the 40-label head, 64x64, random seeded weights saved as
a fit checkpoint), same machine, one run:

- per-image loop: for each file, open and preprocess it (`load_image`, `normalize`), run the
  model on it alone (NCHW fp32, no_grad), sigmoid; then the same ranking retrieve does;
- celebhpo retrieve: `retrieve(..., where=...)` on an empty prediction cache: images decoded
  in parallel processes while the model runs whole batches (channels_last, inference_mode).

The two take turns `--rounds` times (each retrieve round with a fresh prediction cache) and the
median counts. Both read the pixels with load_image, so their probabilities must agree (the
largest difference is printed). Target (issue 16): retrieve >= 4x the per-image loop.

    python benchmarks/infer.py                 # 2,000 images, ~3 minutes on 2 busy cores
    python benchmarks/infer.py --n 500 --arch resnet18
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from celebhpo.config import StudyConfig
from celebhpo.data import ATTRIBUTES, IMAGENET_MEAN, IMAGENET_STD, load_image, normalize, synthesize
from celebhpo.inference import load_model
from celebhpo.inference.expr import parse_expression
from celebhpo.inference.predict import list_images
from celebhpo.inference.retrieve import rank, retrieve
from celebhpo.training.checkpoint import Checkpoint
from celebhpo.training.models import create_model

WHERE = "Eyeglasses and not Male"


def write_checkpoint(path: Path, arch: str, size: int) -> Path:
    cfg = StudyConfig.from_dict({"data": {"image_size": size}, "train": {"arch": arch}},
                                source="benchmark")
    torch.manual_seed(0)
    model = create_model(arch, num_labels=40, num_features=cfg.train.num_features,
                         dropout=cfg.train.dropout)
    return Checkpoint(
        arch=arch, state_dict=model.state_dict(), config=cfg.to_dict(),
        attributes=list(ATTRIBUTES), mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
        thresholds=[0.5] * 40, metrics={}, epoch=1, image_size=size, crop="squash",
    ).save(path)


def per_image(model: torch.nn.Module, folder: Path, size: int) -> tuple[np.ndarray, float]:
    """The per-image loop -> ((N, 40) probabilities, seconds), the ranking included."""
    start = time.perf_counter()
    files = list_images(folder)
    rows = []
    with torch.no_grad():
        for p in files:
            x = normalize(torch.from_numpy(load_image(p, size, "squash")[None].copy()))
            rows.append(torch.sigmoid(model(x))[0].numpy())
    probs = np.stack(rows)
    rank(parse_expression(WHERE, list(ATTRIBUTES)), [p.name for p in files], probs,
         list(ATTRIBUTES), np.full(40, 0.5))
    return probs, time.perf_counter() - start


def batched(ckpt: Path, folder: Path, cache: Path) -> tuple[np.ndarray, float]:
    """celebhpo retrieve on an empty prediction cache -> ((N, 40) probabilities, seconds)."""
    os.environ["CELEBHPO_CACHE_DIR"] = str(cache)
    start = time.perf_counter()
    predictor = load_model(ckpt)
    result = retrieve(predictor, folder, WHERE, top=0, progress=False)
    seconds = time.perf_counter() - start
    assert result.n_predicted == result.n_images and result.n_cached == 0
    from celebhpo.inference.retrieve import predict_folder  # the cache it just wrote

    return predict_folder(predictor, folder, progress=False).probs, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="unseen images in the folder")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = synthesize(tmp / "faces", n=args.n, seed=7, progress=False)
        folder = root / "img_align_celeba" / "img_align_celeba"
        ckpt = write_checkpoint(tmp / "model.pt", args.arch, args.size)
        model = Checkpoint.load(ckpt).model().eval()
        print(f"{args.n} unseen images, {args.arch} {args.size}x{args.size}, --where "
              f"{WHERE!r}, CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch "
              f"threads), torch {torch.__version__}")
        loop_s, ours_s, diff = [], [], 0.0
        for r in range(args.rounds):
            want, s1 = per_image(model, folder, args.size)
            got, s2 = batched(ckpt, folder, tmp / f"cache-{r}")
            loop_s.append(s1)
            ours_s.append(s2)
            diff = max(diff, float(np.abs(got - want).max()))
    loop, ours = statistics.median(loop_s), statistics.median(ours_s)
    print(f"per-image loop (open, preprocess, forward one)  {args.n / loop:8.1f} images/s  "
          f"{loop:7.2f} s  1.00x")
    print(f"celebhpo retrieve (parallel decode, batched)     {args.n / ours:8.1f} images/s  "
          f"{ours:7.2f} s  {loop / ours:5.2f}x")
    print(f"largest probability difference between the two: {diff:.2e}")
    print("target (issue 16): retrieve >= 4x the per-image loop")


if __name__ == "__main__":
    main()
