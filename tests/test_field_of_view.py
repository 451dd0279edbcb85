"""What the network sees outside a phase's scan (registration/field_of_view.py): air, or the nearest phase."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from registration.field_of_view import fill_outside_scans, inside_scan, nearest_phases
from registration.register import resample_to_reference

PHASES = ("NC", "AP", "PVP", "DELAY")


def _image(value: float, size=(6, 5, 10), origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(np.full(size[::-1], value, np.int16))
    image.SetSpacing((2.0, 2.0, 3.0))
    image.SetOrigin(origin)
    return image


def test_nearest_phases_in_acquisition_order_ties_to_the_later_phase():
    assert nearest_phases("AP", PHASES, PHASES) == ["PVP", "NC", "DELAY"]
    assert nearest_phases("NC", PHASES, PHASES) == ["AP", "PVP", "DELAY"]
    assert nearest_phases("DELAY", PHASES, ["NC", "PVP"]) == ["PVP", "NC"]


def test_outside_the_scan_air_or_the_nearest_phase_that_covers_the_voxel():
    reference = _image(100)  # PVP: 10 slices at z = 0..27 mm
    ap = _image(200, size=(6, 5, 4), origin=(0.0, 0.0, 9.0))  # AP covers slices 3..6 only
    nc = _image(50, size=(6, 5, 6))  # NC covers slices 0..5
    delay = _image(80)
    phases = {"NC": nc, "AP": ap, "PVP": reference, "DELAY": delay}
    on_grid = {p: resample_to_reference(image, reference) for p, image in phases.items()}
    inside = {p: inside_scan(image, reference) for p, image in phases.items() if p != "PVP"}
    assert sitk.GetArrayFromImage(inside["AP"]).any(axis=(1, 2)).tolist() == [False] * 3 + [True] * 4 + [False] * 3

    air, outside = fill_outside_scans(on_grid, inside, PHASES, "PVP", "air")
    assert sitk.GetArrayFromImage(air["AP"])[:, 0, 0].tolist() == [-1024] * 3 + [200] * 4 + [-1024] * 3
    assert outside == {"NC": pytest.approx(0.4), "AP": pytest.approx(0.6), "PVP": 0.0, "DELAY": 0.0}

    filled, _ = fill_outside_scans(on_grid, inside, PHASES, "PVP", "phase")
    # AP's nearest is PVP (a tie with NC goes to the later phase): PVP's values outside the slab
    assert sitk.GetArrayFromImage(filled["AP"])[:, 0, 0].tolist() == [100] * 3 + [200] * 4 + [100] * 3
    # NC (slices 0..5) is filled from its nearest phase, AP, where AP has data (slice 6), from PVP beyond
    assert sitk.GetArrayFromImage(filled["NC"])[:, 0, 0].tolist() == [50] * 6 + [200] + [100] * 3
    assert filled["DELAY"] is on_grid["DELAY"] and filled["PVP"] is on_grid["PVP"]  # covering: untouched
    assert filled["AP"].GetOrigin() == reference.GetOrigin()
    with pytest.raises(ValueError, match="outside fill"):
        fill_outside_scans(on_grid, inside, PHASES, "PVP", "median")
