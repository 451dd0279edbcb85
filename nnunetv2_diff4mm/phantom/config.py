"""The phantom's settings, light to import (numpy only): ``diff4mm_phantom --help`` reads its defaults without
loading the generator (scipy), which took 1.5 s."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .tissues import PHASES, REFERENCE_PHASE

FORMAT_VERSION = 1
MAX_CRANIOCAUDAL_SHIFT_MM = 15.0  # largest breathing shift of a phase against the reference, mm


@dataclass(frozen=True)
class PhantomConfig:
    """Settings that change the generated data; stored in phantom.json."""

    seed: int = 0
    spacing: tuple[float, float, float] = (3.0, 3.0, 5.0)  # reference (PVP) voxel size, mm (x, y, z)
    max_tumors: int = 5
    max_shift_mm: float = MAX_CRANIOCAUDAL_SHIFT_MM

    def to_json(self) -> dict:
        return {"format_version": FORMAT_VERSION, **asdict(self), "spacing": list(self.spacing),
                "phases": list(PHASES), "reference": REFERENCE_PHASE}
