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
    # Liver-only scans: these phases cover only a cranio-caudal slab this long, centred on the liver as that
    # scan sees it, so that part of the liver lies outside their field of view (a liver-only arterial scan that
    # misses the dome). The other phases are unchanged: same random stream, the slab is cut from the full scan.
    liver_only_phases: tuple[str, ...] = ()
    liver_only_extent_mm: float = 100.0
    # Deformation at organ-part scale (issue #20), added to the 30 mm-scale wobble of every moving phase: std (mm)
    # and correlation length (mm). Drawn from its own random stream: with 0 the phantom is the one made before.
    local_deformation_mm: float = 0.0
    local_deformation_scale_mm: float = 15.0

    def __post_init__(self) -> None:
        unknown = [p for p in self.liver_only_phases if p not in PHASES or p == REFERENCE_PHASE]
        if unknown:
            raise ValueError(f"liver-only phases must be moving phases ({', '.join(p for p in PHASES if p != REFERENCE_PHASE)}), "
                             f"not {', '.join(unknown)}")
        if not (0 <= self.local_deformation_mm <= 10 and 6 <= self.local_deformation_scale_mm <= 100):
            raise ValueError("local deformation: std 0-10 mm and correlation length 6-100 mm (the motion field's "
                             f"grid is 6 mm), not {self.local_deformation_mm} and {self.local_deformation_scale_mm}")
        if not self.liver_only_extent_mm > 0:
            raise ValueError(f"liver-only extent must be > 0 mm, not {self.liver_only_extent_mm}")

    def to_json(self) -> dict:
        data = {"format_version": FORMAT_VERSION, **asdict(self), "spacing": list(self.spacing),
                "phases": list(PHASES), "reference": REFERENCE_PHASE,
                "liver_only_phases": list(self.liver_only_phases)}
        if not self.liver_only_phases:  # a phantom without them reads as one made before they existed
            del data["liver_only_phases"], data["liver_only_extent_mm"]
        if not self.local_deformation_mm:
            del data["local_deformation_mm"], data["local_deformation_scale_mm"]
        return data
