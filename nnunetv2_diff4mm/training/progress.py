"""A progress bar inside each training epoch, for trainers that run on a CPU.

nnU-Net logs once per epoch; on a 2-core CPU one epoch of the CPU presets takes 15 s to several minutes, with
nothing on screen meanwhile. nnU-Net's trainer has the hooks for it (``on_train_epoch_start``, ``train_step``,
``on_train_epoch_end``), so this mixin adds a tqdm bar there without patching nnU-Net: on the CPU only (a GPU epoch
takes seconds), on rank 0 only, on stderr (nnU-Net's own log lines stay on stdout and in its log file), ASCII
(log files and C-locale terminals), cleared at the end of the epoch. ``DIFF4MM_EPOCH_PROGRESS=0`` turns it off.
"""
from __future__ import annotations

import os
import sys

ENV_EPOCH_PROGRESS = "DIFF4MM_EPOCH_PROGRESS"


class EpochProgress:
    """Mixin for an nnUNetTrainer subclass: ``class T(EpochProgress, nnUNetTrainer)``."""

    _epoch_bar = None

    def _wants_epoch_progress(self) -> bool:
        return (self.device.type == "cpu" and getattr(self, "local_rank", 0) == 0
                and os.environ.get(ENV_EPOCH_PROGRESS, "1") != "0")

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._epoch_bar = None
        if self._wants_epoch_progress():
            from tqdm import tqdm

            self._epoch_bar = tqdm(total=self.num_iterations_per_epoch, desc=f"epoch {self.current_epoch}",
                                   unit="it", leave=False, ascii=True, file=sys.stderr)

    def train_step(self, batch: dict) -> dict:
        result = super().train_step(batch)
        if self._epoch_bar is not None:
            self._epoch_bar.update(1)
        return result

    def on_train_epoch_end(self, train_outputs):
        if self._epoch_bar is not None:
            self._epoch_bar.close()
            self._epoch_bar = None
        super().on_train_epoch_end(train_outputs)
