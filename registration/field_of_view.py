"""What the network sees where a phase's scan does not reach: the reference grid outside a phase's field of view.

A phase resampled onto the reference grid (registered or not) has no data where its scan ends: a liver-only
arterial scan that misses the dome, a shorter delayed scan, a breathing shift that moves the liver out of the
slab. ``resample_to_reference`` writes air (-1024 HU) there, so in that channel part of the liver looks like air.
Two rules (issue #15; the measured effect is in docs/decisions.md, "Inference"):

  air    -1024 HU, as resampling leaves it;
  phase  the value of the nearest phase in acquisition order that covers the voxel (ties to the later,
         contrast-enhanced phase; the reference phase covers its whole grid), the rule ``--fill-missing-phases``
         uses for a whole missing phase, applied voxel by voxel.

Written here because no library has it: SimpleITK's resampling only knows a constant default value.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

OUTSIDE_FILLS = ("air", "phase")


def nearest_phases(phase: str, phases: Sequence[str], available: Sequence[str]) -> list[str]:
    """The ``available`` phases other than ``phase``, nearest first in ``phases`` (acquisition order), ties to
    the later phase."""
    order = list(phases)
    i = order.index(phase)
    candidates = [p for p in order if p in available and p != phase]
    return sorted(candidates, key=lambda p: (abs(order.index(p) - i), -order.index(p)))


def inside_scan(moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None) -> sitk.Image:
    """uint8 mask on ``reference``'s grid: 1 where ``transform`` maps the point inside ``moving``'s scan (the
    region in which linear resampling has data), 0 outside its field of view."""
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    return sitk.Resample(ones, reference, transform if transform is not None else sitk.Transform(),
                         sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def fill_outside_scans(images: Mapping[str, sitk.Image], inside: Mapping[str, sitk.Image], phases: Sequence[str],
                       reference: str, rule: str = "air") -> tuple[dict[str, sitk.Image], dict[str, float]]:
    """(the phases with their voxels outside their scan filled by ``rule``, {phase: share of the reference grid
    that was outside its scan}). ``images``: the phases on the reference grid (those of ``phases`` present are
    used, in that acquisition order); ``inside``: :func:`inside_scan` of each phase but the reference (a phase
    without one counts as covering the grid)."""
    if rule not in OUTSIDE_FILLS:
        raise ValueError(f"outside fill must be one of {', '.join(OUTSIDE_FILLS)}, not {rule!r}")
    phases = [p for p in phases if p in images]
    arrays = {p: sitk.GetArrayFromImage(images[p]) for p in phases}
    covered = {p: (sitk.GetArrayFromImage(inside[p]) > 0 if p in inside and p != reference
                   else np.ones(arrays[p].shape, bool)) for p in phases}
    outside = {p: round(float(1.0 - covered[p].mean()), 6) for p in phases}
    if rule == "air" or not any(outside.values()):
        return dict(images), outside
    out = {}
    for phase in phases:
        todo = ~covered[phase]
        if not todo.any():
            out[phase] = images[phase]
            continue
        filled = arrays[phase].copy()
        for source in nearest_phases(phase, phases, phases):  # the reference, covering all, ends every chain
            take = todo & covered[source]
            filled[take] = arrays[source][take]
            todo &= ~take
            if not todo.any():
                break
        image = sitk.GetImageFromArray(filled)
        image.CopyInformation(images[phase])
        out[phase] = image
    return out, outside
