"""nnU-Net training dataset plus virtual synthetic cases served from the synthetic pool.

nnU-Net's data loader draws identifiers uniformly from `dataset.identifiers`; adding
n_syn = round(f / (1 - f) * n_real) virtual identifiers makes a fraction f of the drawn samples synthetic
(in expectation; the trainer counts the real fraction from the batch keys). Synthetic samples go through
nnU-Net's cropping and augmentation unchanged. If the pool has no readable sample, the real case with the
same position is served instead and the fallback is recorded, so training never stops for synthesis.

Which pooled slot a synthetic identifier gets is drawn from a generator of the process that loads it:
batchgenerators forks (or, spawned, unpickles) one copy of the dataset into every augmentation worker, and a
generator made once in the trainer would be copied with it, so every worker would draw the same slot sequence.
Each process instead derives its own at first use from SeedSequence([seed, rank, worker]) (seed = DIFF4MM_SEED,
rank = nnU-Net's DDP rank, worker = the process's multiprocessing name, "Process-N" in the order the workers were
started), keyed on os.getpid() so that a copy made after the trainer drew already re-derives.
"""
from __future__ import annotations

import multiprocessing
import os
import zlib
from pathlib import Path

import numpy as np

from .synthetic_pool import load_sample, slots

SYNTHETIC_PREFIX = "diff4mm_synthetic_"
FALLBACK_LOG = "fallbacks.log"


def synthetic_count(n_real: int, fraction: float) -> int:
    if not 0 <= fraction < 1:
        raise ValueError(f"synthetic fraction must be in [0, 1), got {fraction}")
    return int(round(fraction / (1 - fraction) * n_real))


def is_synthetic(identifier: str) -> bool:
    return str(identifier).startswith(SYNTHETIC_PREFIX)


def worker_rng(seed: int, rank: int, worker: str) -> np.random.Generator:
    """The slot generator of one (seed, rank, worker); worker is a process name, hashed with crc32 because
    Python's hash() of a str differs between interpreters (PYTHONHASHSEED)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(rank), zlib.crc32(worker.encode())]))


class SyntheticMixDataset:
    def __init__(self, real, pool_folder: Path, fraction: float, seed: int = 0, rank: int = 0):
        self.real = real
        self.pool_folder = Path(pool_folder)
        self.real_identifiers = list(real.identifiers)
        n = synthetic_count(len(self.real_identifiers), fraction)
        self.identifiers = self.real_identifiers + [f"{SYNTHETIC_PREFIX}{i:04d}" for i in range(n)]
        self.seed, self.rank = int(seed), int(rank)
        self._rng, self._rng_pid = None, None  # made in the process that draws, see _process_rng

    def __getstate__(self):  # a pickled copy (spawned worker) derives its own generator
        return {**self.__dict__, "_rng": None, "_rng_pid": None}

    def __setstate__(self, state):
        self.__dict__.update(state)

    def _process_rng(self) -> np.random.Generator:
        if self._rng is None or self._rng_pid != os.getpid():  # first draw here, or a forked copy
            self._rng = worker_rng(self.seed, self.rank, multiprocessing.current_process().name)
            self._rng_pid = os.getpid()
        return self._rng

    def __getattr__(self, name):  # everything else behaves like nnU-Net's dataset
        if name.startswith("__") or name == "real":  # keeps pickling (spawned workers) working
            raise AttributeError(name)
        return getattr(self.real, name)

    def load_case(self, identifier):
        if not is_synthetic(identifier):
            return self.real.load_case(identifier)
        available = slots(self.pool_folder)
        if available:
            try:
                data, seg, properties = load_sample(available[int(self._process_rng().integers(len(available)))])
                return data, seg, None, properties
            except (OSError, ValueError, KeyError):
                pass  # a slot being replaced or damaged: fall back below
        try:
            with open(self.pool_folder / FALLBACK_LOG, "a", encoding="utf-8") as fh:
                fh.write(f"{os.getpid()} {identifier}\n")
        except OSError:
            pass  # the pool folder is gone (e.g. removed by hand): still serve a real case
        position = int(identifier[len(SYNTHETIC_PREFIX):]) % len(self.real_identifiers)
        return self.real.load_case(self.real_identifiers[position])


def fallback_count(pool_folder: Path) -> int:
    try:
        with open(Path(pool_folder) / FALLBACK_LOG, encoding="utf-8") as fh:
            return sum(1 for _ in fh)
    except OSError:
        return 0
