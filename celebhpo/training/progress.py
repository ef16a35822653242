"""Progress bars for training: one tqdm bar per run, advanced per batch, with epoch figures.

Used by `celebhpo train` and by each study trial. Imports no optuna/mlflow.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm

from celebhpo.training.epoch import Callback


class EpochProgress(Callback):
    """`t003 epoch 2/8 |#####     | 40/80 [loss 0.31 val 0.29 acc 0.871 1520 img/s]`."""

    def __init__(self, epochs: int, label: str = "", enabled: bool = True) -> None:
        self.epochs = epochs
        self.label = label
        self.enabled = enabled
        self.bar: tqdm | None = None
        self.last: dict[str, Any] = {}

    def on_batch_end(self, epoch: int, batch: int, n_batches: int) -> None:
        if not self.enabled:
            return
        if self.bar is None or self.bar.total != n_batches or batch == 0:
            self._close()
            desc = f"{self.label} epoch {epoch}/{self.epochs}".strip()
            self.bar = tqdm(total=n_batches, desc=desc, leave=False, file=sys.stderr,
                            dynamic_ncols=True)
            if self.last:
                self.bar.set_postfix_str(self._postfix(self.last))
        self.bar.update(1)

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        self.last = metrics
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix(metrics))
        self._close()

    def close(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    @staticmethod
    def _postfix(m: dict[str, Any]) -> str:
        return (
            f"loss {m.get('train_loss', float('nan')):.3f} val {m.get('val_loss', float('nan')):.3f}"
            f" acc {m.get('val_mean_acc', float('nan')):.3f}"
            f" {m.get('images_per_s', 0):.0f} img/s"
        )
