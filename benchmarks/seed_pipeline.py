"""The seed notebooks' input pipeline, shared by the benchmarks that measure against it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from celebhpo.data import IMAGENET_MEAN, IMAGENET_STD


class SeedDataset(Dataset):
    """The seed notebooks' dataset: per-item PIL open + torchvision transforms."""

    def __init__(self, paths: list[Path], labels: np.ndarray, size: int) -> None:
        self.paths, self.labels = paths, labels
        self.tf = transforms.Compose([
            transforms.Resize((size, size)), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = Image.open(self.paths[i]).convert("RGB")
        return self.tf(img), torch.tensor(self.labels[i], dtype=torch.float32)
