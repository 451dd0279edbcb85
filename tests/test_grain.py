"""Native grain (synthesis/grain.py): a flat or coarse fill gets the scan's own noise texture, measured on its
healthy liver (amplitude, correlation, anisotropy), and keeps its structure."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from synthesis.grain import grain_field, grain_spectrum, highpass, lost_detail, restore_grain

SPACING_ZYX = (2.5, 0.8, 0.8)  # a clinical thin-slice grid
SHAPE = (24, 96, 96)
NOISE_SIGMA_VOXELS = (0.4, 1.4, 0.7)  # CT noise is correlated, and differently along each axis


def _scan(seed: int):
    """A 100 HU 'liver' block in -100 HU fat with correlated anisotropic noise; a ball-shaped hole in it."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(SHAPE)
    liver = (z >= 2) & (z < 22) & (y >= 8) & (y < 88) & (x >= 8) & (x < 88)
    noise = ndimage.gaussian_filter(rng.standard_normal(SHAPE), NOISE_SIGMA_VOXELS)
    image = np.where(liver, 100.0, -100.0) + 20.0 * noise / noise.std()
    mm = np.stack([(z - 12) * SPACING_ZYX[0], (y - 48) * SPACING_ZYX[1], (x - 48) * SPACING_ZYX[2]])
    hole = np.sqrt((mm ** 2).sum(0)) <= 20.0
    return image.astype(np.float32), liver, hole


def _lag1(residual: np.ndarray, mask: np.ndarray, axis: int) -> float:
    a, m = np.swapaxes(residual, 0, axis), np.swapaxes(mask, 0, axis)
    both = m[1:] & m[:-1]
    return float(np.corrcoef(a[1:][both], a[:-1][both])[0, 1])


def test_a_flat_fill_gets_the_healthy_livers_grain_amplitude_and_correlation_and_keeps_its_structure():
    image, liver, hole = _scan(0)
    flat = np.where(hole, float(np.median(image[liver & ~hole])), image).astype(np.float32)
    out, record = restore_grain(flat, image, hole, liver & ~hole, SPACING_ZYX, np.random.default_rng(1))

    assert record["texture"] == "nps" and record["fill_std"] < 0.05 * record["healthy_std"]
    inner = ndimage.binary_erosion(hole, iterations=3)
    truth_hp, fill_hp = highpass(image), highpass(out)
    assert 0.85 < fill_hp[inner].std() / truth_hp[inner].std() < 1.15
    # the measured spectrum carries each axis' correlation: the truth's lag-1 correlation of the residual is
    # ~-0.1 along z, ~0.87 along y, ~0.5 along x; white noise (the fallback) would be ~0.9 and ~0.55 off in-plane
    for axis in range(3):
        assert abs(_lag1(fill_hp, inner, axis) - _lag1(truth_hp, inner, axis)) < 0.15, axis
    # structure kept: the smoothed fill is still the flat value (the added field is high-pass, zero-mean)
    smooth_out = ndimage.gaussian_filter(out, 1.5)
    smooth_flat = ndimage.gaussian_filter(flat, 1.5)
    assert np.abs(smooth_out - smooth_flat)[inner].mean() < 0.25 * 20.0
    assert np.array_equal(out[~hole], flat[~hole])  # nothing outside the region changes


def test_a_fill_that_has_the_grain_already_gets_almost_nothing_and_the_draw_is_seeded():
    image, liver, hole = _scan(2)
    textured = np.where(hole, _scan(3)[0], image).astype(np.float32)  # same statistics, independent draw
    out, record = restore_grain(textured, image, hole, liver & ~hole, SPACING_ZYX, np.random.default_rng(0))
    # topped up, not added in full (which would give sqrt(2) = 1.41 of the truth's residual std)
    assert record["added_std"] < 0.5 * record["healthy_std"]
    inner = ndimage.binary_erosion(hole, iterations=3)
    assert 0.85 < highpass(out)[inner].std() / highpass(image)[inner].std() < 1.2
    again, _ = restore_grain(textured, image, hole, liver & ~hole, SPACING_ZYX, np.random.default_rng(0))
    assert np.array_equal(out, again)


def test_a_liver_too_thin_for_a_cube_falls_back_to_white_noise_of_the_measured_amplitude():
    rng = np.random.default_rng(4)
    image = (100 + 15 * rng.standard_normal((12, 40, 40))).astype(np.float32)
    healthy = np.zeros(image.shape, bool)
    healthy[:, 10:30, 19:22] = True  # three voxels wide: no 4-voxel cube fits
    spectrum, std = grain_spectrum(highpass(image, mask=healthy), healthy, (1.0, 1.0, 1.0), rng)
    assert spectrum is None and 8 < std < 20  # the high-pass of white noise keeps ~0.9 of its std
    assert grain_field((4, 5, 6), None, rng).shape == (4, 5, 6)


@pytest.mark.parametrize("shape", [(8, 16, 16), (5, 9, 7)])
def test_the_field_has_unit_std_and_the_spectrums_correlation(shape):
    rng = np.random.default_rng(5)
    image, liver, _ = _scan(6)
    spectrum, _ = grain_spectrum(highpass(image, mask=liver), liver, SPACING_ZYX, rng)
    field = grain_field((20, 80, 80), spectrum, rng)
    assert abs(field.std() - 1) < 1e-3 and abs(field.mean()) < 0.05
    assert _lag1(field, np.ones(field.shape, bool), 1) > _lag1(field, np.ones(field.shape, bool), 2) + 0.1
    assert grain_field(shape, spectrum, rng).shape == shape


def test_a_fill_made_on_a_coarse_working_grid_gets_what_that_grid_loses_and_nothing_on_a_coarse_scan():
    """A perfect fill on a 3 x 3 x 5 mm grid (the truth through that grid) lacks the 0.8 mm grain; it gets the
    detail that grid loses, measured on the healthy liver; a scan as coarse as the grid gets nothing."""
    image, liver, hole = _scan(7)
    working = (5.0, 3.0, 3.0)
    coarse_fill = np.where(hole, image - lost_detail(image, SPACING_ZYX, working), image).astype(np.float32)
    inner = ndimage.binary_erosion(hole, iterations=3)
    before = highpass(coarse_fill, mask=hole)[inner].std() / highpass(image, mask=hole)[inner].std()
    out, record = restore_grain(coarse_fill, image, hole, liver & ~hole, SPACING_ZYX, np.random.default_rng(0),
                                working_spacing_zyx=working)
    after = highpass(out, mask=hole)[inner].std() / highpass(image, mask=hole)[inner].std()
    assert before < 0.6 and 0.85 < after < 1.2 and record["texture"] == "nps"
    same, record = restore_grain(coarse_fill, image, hole, liver & ~hole, working, np.random.default_rng(0),
                                 working_spacing_zyx=working)
    assert record["added_std"] == 0 and np.array_equal(same, coarse_fill)
