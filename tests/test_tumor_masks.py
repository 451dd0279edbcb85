"""Random tumor masks: inside the liver, sized in mm at any voxel size, distribution fitted to labels."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from synthesis.tumor_masks import TumorMaskDistribution, fit_mask_distribution, random_tumor_mask


def _ellipsoid_liver(spacing_xyz, radii_mm=(90.0, 70.0, 70.0)) -> np.ndarray:
    sx, sy, sz = spacing_xyz
    shape = [int(2 * r / s) + 6 for r, s in zip(radii_mm[::-1], (sz, sy, sx))]
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    c = [(n - 1) / 2 for n in shape]
    q = (((x - c[2]) * sx / radii_mm[0]) ** 2 + ((y - c[1]) * sy / radii_mm[1]) ** 2
         + ((z - c[0]) * sz / radii_mm[2]) ** 2)
    return q < 1


def _equivalent_diameters(mask, spacing_xyz):
    comps, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    volumes = np.bincount(comps.ravel())[1:] * np.prod(spacing_xyz)
    return (6 * volumes / np.pi) ** (1 / 3)


@pytest.mark.parametrize("spacing", [(1.5, 1.5, 1.5), (3.0, 3.0, 5.0)])
def test_masks_stay_strictly_inside_the_liver(spacing):
    liver = _ellipsoid_liver(spacing)
    for seed in range(5):
        mask, tumors = random_tumor_mask(liver, spacing, np.random.default_rng(seed))
        assert tumors and mask.any()
        assert not (mask.astype(bool) & ~liver).any()
        touching = ndimage.binary_dilation(mask.astype(bool)) & ~liver
        assert not touching.any(), f"seed {seed}: a tumor reaches the liver boundary"


def test_sizes_are_physical_not_voxel_counts():
    dist = TumorMaskDistribution(log_diameter_mean=np.log(30.0), log_diameter_std=1e-6, lobulation=0.0,
                                 elongation=0.0)
    for spacing in [(1.0, 1.0, 1.0), (2.0, 2.0, 4.0)]:
        mask, tumors = random_tumor_mask(_ellipsoid_liver(spacing), spacing, np.random.default_rng(0), dist,
                                         count=1)
        (d,) = _equivalent_diameters(mask, spacing)
        assert d == pytest.approx(30.0, rel=0.15), spacing


def test_same_seed_same_mask_and_counts_follow_the_distribution():
    liver = _ellipsoid_liver((3.0, 3.0, 3.0))
    a, _ = random_tumor_mask(liver, (3, 3, 3), np.random.default_rng(7))
    b, _ = random_tumor_mask(liver, (3, 3, 3), np.random.default_rng(7))
    assert np.array_equal(a, b)
    dist = TumorMaskDistribution(count_probabilities=[0, 0, 0, 1.0], max_diameter_mm=15)
    _, tumors = random_tumor_mask(liver, (3, 3, 3), np.random.default_rng(1), dist)
    assert len(tumors) == 3


def test_fit_recovers_count_and_size_distribution():
    spacing = (2.0, 2.0, 2.0)
    truth = TumorMaskDistribution(count_probabilities=[0, 0, 1.0], log_diameter_mean=np.log(18.0),
                                  log_diameter_std=0.25, min_diameter_mm=8, max_diameter_mm=40)
    labels = []
    rng = np.random.default_rng(3)
    liver = _ellipsoid_liver(spacing)
    for _ in range(12):
        mask, _ = random_tumor_mask(liver, spacing, rng, truth)
        labels.append((liver.astype(np.uint8) + mask, spacing))
    fitted = fit_mask_distribution(labels)
    assert int(np.argmax(fitted.count_probabilities)) == 2
    assert np.exp(fitted.log_diameter_mean) == pytest.approx(18.0, rel=0.2)
    assert fitted.min_diameter_mm >= 3.0 and fitted.max_diameter_mm <= 45.0
    empty = fit_mask_distribution([(liver.astype(np.uint8), spacing)])
    assert empty == TumorMaskDistribution()  # no tumors seen: defaults
