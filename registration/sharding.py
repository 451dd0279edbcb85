"""Deterministic case partitions for batch schedulers: ``--shard I/N`` runs the I-th of N parts of a stage.

Every shard lists the same cases (sorted by name, as the stages do) and takes every N-th one starting at I
(round robin: neighbouring cases, often of similar size, go to different shards). I counts from 0, like a SLURM
array index (``--array=0-3`` with ``--shard ${SLURM_ARRAY_TASK_ID}/4``). Nothing here reads files.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __post_init__(self):
        if not (isinstance(self.index, int) and isinstance(self.count, int)) or self.count < 1 \
                or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= I < N (I counts from 0)")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'I/N' -> Shard(I, N); ValueError saying what is expected otherwise."""
        index, sep, count = str(text).partition("/")
        try:
            return cls(int(index), int(count)) if sep else cls(-1, 0)
        except ValueError:
            raise ValueError(f"{text!r}: expected I/N with 0 <= I < N, e.g. 0/4 (I counts from 0)") from None

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def tag(self) -> str:  # for file names
        return f"shard-{self.index}-of-{self.count}"

    def select(self, items: Sequence[T], key=None) -> list[T]:
        """This shard's part of ``items``, ordered by ``key`` (default: the items themselves)."""
        ordered = sorted(items, key=key)
        return ordered[self.index::self.count]
