"""Metrics against hand-computed values: spheres on an anisotropic grid, identical and empty masks, detection."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_diff4mm.evaluation import (GridMismatchError, detect_tumors, evaluate_case, evaluate_folder,
                                         structure_metrics, summarize)

SPACING_XYZ = (1.0, 1.25, 2.0)  # mm; the offset below runs along z, the coarsest axis
SHAPE_ZYX = (36, 56, 64)
CENTRE_ZYX = np.array([34.0, 35.0, 32.0])  # mm


def _sphere(centre_zyx_mm, radius_mm) -> np.ndarray:
    axes = [np.arange(n) * s for n, s in zip(SHAPE_ZYX, SPACING_XYZ[::-1])]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    c = centre_zyx_mm
    return (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= radius_mm ** 2


def _image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin((-10.0, 5.0, 20.0))
    return image


def _lens_volume(r1: float, r2: float, d: float) -> float:
    """Volume of the intersection of two spheres with radii r1, r2 whose centres are d apart (|r1-r2| < d < r1+r2)."""
    return (math.pi * (r1 + r2 - d) ** 2
            * (d * d + 2 * d * r2 - 3 * r2 * r2 + 2 * d * r1 + 6 * r1 * r2 - 3 * r1 * r1) / (12 * d))


def _hd95_two_spheres(r1: float, r2: float, d: float) -> float:
    """Symmetric 95th-percentile surface distance of two spheres, surface points uniform in area.

    A point of sphere 1 at polar angle θ from the line of centres lies |sqrt(r1²+d²-2·r1·d·cosθ) - r2| from
    sphere 2, and cosθ is uniform in [-1, 1] for area-uniform points; the largest value is d + |r1 - r2|."""
    u = np.linspace(-1.0, 1.0, 400_001)
    one_to_two = np.abs(np.sqrt(r1 * r1 + d * d - 2 * r1 * d * u) - r2)
    two_to_one = np.abs(np.sqrt(r2 * r2 + d * d + 2 * r2 * d * u) - r1)
    return max(np.percentile(one_to_two, 95), np.percentile(two_to_one, 95))


@pytest.mark.parametrize("r_ref, r_pred, offset", [(14.0, 11.0, 4.0), (12.0, 12.0, 6.0)])
def test_two_spheres_match_analytic_values(r_ref, r_pred, offset):
    ref = _sphere(CENTRE_ZYX, r_ref)
    pred = _sphere(CENTRE_ZYX + [offset, 0.0, 0.0], r_pred)
    row = evaluate_case(_image(pred), _image(ref), tolerance_mm=2.0, name="spheres")  # spacing from the image

    v_ref, v_pred = 4 / 3 * math.pi * r_ref ** 3, 4 / 3 * math.pi * r_pred ** 3
    assert row["liver_dice"] == pytest.approx(2 * _lens_volume(r_ref, r_pred, offset) / (v_ref + v_pred), abs=0.01)
    worst = offset + abs(r_ref - r_pred)  # the plain Hausdorff distance; HD95 lies a little below it
    assert row["liver_hd95_mm"] == pytest.approx(_hd95_two_spheres(r_ref, r_pred, offset), abs=1.0)  # 1 voxel (z)
    assert row["liver_hd95_mm"] <= worst + 0.5
    # no tumor in either mask: the both-empty convention, and nothing to detect
    assert (row["tumor_dice"], row["tumor_hd95_mm"], row["tumor_nsd"]) == (1.0, 0.0, 1.0)
    assert (row["tumor_tp"], row["tumor_fn"], row["tumor_fp"]) == (0, 0, 0)

    spacing_zyx = SPACING_XYZ[::-1]
    assert structure_metrics(pred, ref, spacing_zyx, tolerance_mm=worst + 1.0)["nsd"] == 1.0
    assert structure_metrics(pred, ref, spacing_zyx, tolerance_mm=offset / 2)["nsd"] < 0.9


def test_spacing_order_matters():
    """The same voxels with the offset along x instead of z (1 mm instead of 2 mm voxels) give half the HD."""
    ref = np.zeros((20, 20, 20), bool)
    ref[5:15, 5:15, 5:15] = True
    shifted_z, shifted_x = np.roll(ref, 2, axis=0), np.roll(ref, 2, axis=2)
    spacing_zyx = (2.0, 1.0, 1.0)
    assert structure_metrics(shifted_z, ref, spacing_zyx)["hd95_mm"] == pytest.approx(4.0)
    assert structure_metrics(shifted_x, ref, spacing_zyx)["hd95_mm"] == pytest.approx(2.0)


def test_identical_masks():
    ref = _sphere(CENTRE_ZYX, 10.0)
    assert structure_metrics(ref, ref.copy(), SPACING_XYZ[::-1], tolerance_mm=0.0) == {
        "dice": 1.0, "hd95_mm": 0.0, "nsd": 1.0}


def test_empty_mask_conventions():
    empty, blob = np.zeros((8, 8, 8), bool), np.zeros((8, 8, 8), bool)
    blob[2:5, 2:5, 2:5] = True
    assert structure_metrics(empty, empty, (1, 1, 1)) == {"dice": 1.0, "hd95_mm": 0.0, "nsd": 1.0}
    for pred, ref in ((empty, blob), (blob, empty)):
        scores = structure_metrics(pred, ref, (1, 1, 1))
        assert scores["dice"] == 0.0 and scores["nsd"] == 0.0 and math.isnan(scores["hd95_mm"])


def test_tumor_detection_counts():
    ref, pred = np.zeros((20, 20, 20), bool), np.zeros((20, 20, 20), bool)
    ref[2:5, 2:5, 2:5] = True  # tumor 1: hit by a prediction overlapping it in one voxel
    ref[10:13, 2:5, 2:5] = True  # tumor 2: missed
    ref[2:4, 12:14, 12:14] = True  # tumor 3: missed
    ref[4, 14, 14] = True  # touches tumor 3 only through a corner: same component under 26-connectivity
    pred[4:7, 4:7, 4:7] = True  # overlaps tumor 1 at voxel (4, 4, 4) only
    pred[15:18, 15:18, 15:18] = True  # false positive
    counts = detect_tumors(pred, ref)  # 1 mm voxels: every tumor is under 20 mm
    assert counts == {"tumor_tp": 1, "tumor_fn": 2, "tumor_fp": 1, "tumor_tp_pred": 1, "n_ref_tumors": 3,
                      "n_pred_tumors": 2, "tumor_tp_small": 1, "tumor_fn_small": 2}
    # 6 mm voxels: tumors 1 and 2 (27 voxels) are 22.3 mm across, tumor 3 (9 voxels) 15.5 mm: only 3 is small
    counts = detect_tumors(pred, ref, (6.0, 6.0, 6.0))
    assert (counts["tumor_tp"], counts["tumor_tp_small"], counts["tumor_fn_small"]) == (1, 0, 1)


def test_summarize_pools_detection_and_counts_missing_hd95():
    base = {"liver_dice": 0.9, "liver_hd95_mm": 3.0, "liver_nsd": 0.8, "tumor_nsd": 0.5}
    rows = [{**base, "case": "a", "tumor_dice": 0.5, "tumor_hd95_mm": 4.0,
             "tumor_tp": 1, "tumor_fn": 2, "tumor_fp": 1, "tumor_tp_pred": 1},
            {**base, "case": "b", "tumor_dice": 0.0, "tumor_hd95_mm": math.nan,
             "tumor_tp": 0, "tumor_fn": 1, "tumor_fp": 0, "tumor_tp_pred": 0},
            {**base, "case": "c", "tumor_dice": 1.0, "tumor_hd95_mm": 2.0,
             "tumor_tp": 2, "tumor_fn": 0, "tumor_fp": 1, "tumor_tp_pred": 2}]
    s = summarize(rows)
    assert s["n_cases"] == 3
    assert s["metrics"]["tumor_dice"]["mean"] == pytest.approx(0.5)
    assert s["metrics"]["tumor_dice"]["std"] == pytest.approx(0.5)  # sample std of 0.5, 0, 1
    assert s["metrics"]["tumor_hd95_mm"] == {"mean": 3.0, "std": pytest.approx(math.sqrt(2)), "n": 2,
                                             "n_missing": 1}
    det = s["detection"]
    assert (det["tp"], det["fn"], det["fp"], det["tp_pred"]) == (3, 3, 2, 3)
    assert det["recall"] == pytest.approx(3 / 6) and det["precision"] == pytest.approx(3 / 5)


def test_evaluate_folder_rows_and_errors(tmp_path):
    ref = np.zeros((10, 12, 14), np.uint8)
    ref[2:8, 2:10, 2:12] = 1
    ref[4:6, 4:8, 4:8] = 2
    pred = ref.copy()
    pred[pred == 2] = 1  # tumor missed
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    sitk.WriteImage(_image(ref), str(tmp_path / "ref" / "c1.nii.gz"))
    sitk.WriteImage(_image(pred), str(tmp_path / "pred" / "c1.nii.gz"))
    [row] = evaluate_folder(tmp_path / "pred", tmp_path / "ref", ".nii.gz")
    assert row["case"] == "c1" and row["liver_dice"] == 1.0
    assert row["tumor_dice"] == 0.0 and math.isnan(row["tumor_hd95_mm"])
    assert (row["tumor_tp"], row["tumor_fn"], row["tumor_fp"]) == (0, 1, 0)

    with pytest.raises(FileNotFoundError, match="c2"):
        evaluate_folder(tmp_path / "pred", tmp_path / "ref", ".nii.gz", cases=["c1", "c2"])
    moved = _image(pred)
    moved.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(GridMismatchError, match="origin"):
        evaluate_case(moved, _image(ref), name="c1")
