"""Per-case segmentation metrics for liver and tumor, and tumor-wise detection counts that pool over cases.

Structures (labels 0 background, 1 liver, 2 tumor): **liver** = label in {1, 2} (the organ including its
tumors), **tumor** = label 2.

Per structure and case:
- **Dice** 2|P∩R| / (|P| + |R|).
- **HD95** (mm): MONAI ``compute_hausdorff_distance(percentile=95)``, symmetric (the larger of the two directed
  95th percentiles of edge-voxel distances), with the voxel spacing of the reference image.
- **NSD** at a tolerance τ (mm): MONAI ``compute_surface_dice``, the share of edge voxels of both masks that lie
  within τ of the other mask's edge.

Empty masks are decided here, before MONAI is called (MONAI returns NaN or inf and warns for them):

=====================  =====  =====  ===
case                   Dice   HD95   NSD
=====================  =====  =====  ===
both empty             1      0      1
exactly one empty      0      NaN    0
=====================  =====  =====  ===

A NaN HD95 is "missing": `summarize` averages HD95 over the cases that have one and reports how many are
missing, so read HD95 together with its missing count (a method that misses every small tumor has few HD95
values, all from its easy cases).

Tumor detection: connected components of the tumor masks with 26-connectivity. A reference tumor is detected
(TP) if any predicted tumor component overlaps it by at least one voxel, else missed (FN). A predicted
component that overlaps no reference tumor is a false positive (FP); one that does is counted in `tp_pred`.
Recall = TP / (TP + FN), precision = tp_pred / (tp_pred + FP); `summarize` pools the counts over cases. Small
lesions: reference tumors whose equivalent diameter (of their physical volume) is under 20 mm, the paper's and
the clinic's "small" (``tumor_tp_small``, ``tumor_fn_small``); "a tumor" is synthesis.tumor_masks' definition.

Spacing always comes from the image (mm); prediction and reference must share one grid.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

DEFAULT_NSD_TOLERANCE_MM = 2.0
STRUCTURES = {"liver": (1, 2), "tumor": (2,)}
VALID_LABELS = (0, 1, 2)
METRICS = tuple(f"{s}_{m}" for s in STRUCTURES for m in ("dice", "hd95_mm", "nsd"))
DETECTION_COUNTS = ("tumor_tp", "tumor_fn", "tumor_fp", "tumor_tp_pred")
SMALL_COUNTS = ("tumor_tp_small", "tumor_fn_small")
SMALL_TUMOR_MM = 20.0


class EvaluationInputError(ValueError):
    """A prediction or reference cannot be evaluated (message names the case and the problem)."""


class GridMismatchError(EvaluationInputError):
    """Prediction and reference are not on the same voxel grid."""


def structure_metrics(pred: np.ndarray, ref: np.ndarray, spacing, tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM
                      ) -> dict[str, float]:
    """Dice, HD95 (mm) and NSD at `tolerance_mm` of two binary masks.

    `spacing` is the voxel size in mm in the ARRAY's axis order (for a SimpleITK array: spacing[::-1]).
    """
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise GridMismatchError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} values for a {pred.ndim}D mask")
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    if n_pred == 0 and n_ref == 0:
        return {"dice": 1.0, "hd95_mm": 0.0, "nsd": 1.0}
    if n_pred == 0 or n_ref == 0:
        return {"dice": 0.0, "hd95_mm": math.nan, "nsd": 0.0}
    dice = 2.0 * float(np.logical_and(pred, ref).sum()) / (n_pred + n_ref)
    # crop to the union's bounding box plus one background voxel: same edges, far fewer voxels to scan
    idx = np.argwhere(pred | ref)
    box = tuple(slice(max(lo - 1, 0), hi + 2) for lo, hi in zip(idx.min(axis=0), idx.max(axis=0)))
    p = torch.from_numpy(np.ascontiguousarray(pred[box]))[None, None]
    r = torch.from_numpy(np.ascontiguousarray(ref[box]))[None, None]
    spacing = [float(s) for s in spacing]
    with warnings.catch_warnings():  # MONAI 1.5+ warns about an argument it passes to itself
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        hd95 = compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=spacing)
        nsd = compute_surface_dice(p, r, class_thresholds=[float(tolerance_mm)], include_background=True,
                                   spacing=spacing)
    return {"dice": dice, "hd95_mm": float(hd95[0, 0]), "nsd": float(nsd[0, 0])}


def detect_tumors(pred: np.ndarray, ref: np.ndarray, spacing_xyz=(1.0, 1.0, 1.0)) -> dict[str, int]:
    """Tumor-wise detection counts of two binary tumor masks (26-connected components, overlap >= 1 voxel).

    Returns tumor_tp (reference tumors hit), tumor_fn (reference tumors missed), tumor_fp (predicted components
    hitting no reference tumor), tumor_tp_pred (predicted components hitting one), n_ref_tumors, n_pred_tumors,
    and tumor_tp_small / tumor_fn_small: the same as tp / fn for reference tumors under SMALL_TUMOR_MM.
    """
    from synthesis.tumor_masks import label_tumors, tumor_diameters_mm

    ref_lab, n_ref = label_tumors(ref)
    pred_lab, n_pred = label_tumors(pred)
    overlap = (ref_lab > 0) & (pred_lab > 0)
    hit = np.unique(ref_lab[overlap])
    hit_pred = np.unique(pred_lab[overlap]).size
    small = np.flatnonzero(tumor_diameters_mm(ref_lab, n_ref, spacing_xyz) < SMALL_TUMOR_MM) + 1
    small_hit = int(np.isin(small, hit).sum())
    return {"tumor_tp": int(hit.size), "tumor_fn": int(n_ref - hit.size), "tumor_fp": int(n_pred - hit_pred),
            "tumor_tp_pred": int(hit_pred), "n_ref_tumors": int(n_ref), "n_pred_tumors": int(n_pred),
            "tumor_tp_small": small_hit, "tumor_fn_small": int(small.size - small_hit)}


def _check_same_grid(pred: sitk.Image, ref: sitk.Image, where: str) -> None:
    problems = []
    if pred.GetSize() != ref.GetSize():
        problems.append(f"size {pred.GetSize()} vs {ref.GetSize()}")
    else:
        if not np.allclose(pred.GetSpacing(), ref.GetSpacing(), rtol=1e-4, atol=1e-5):
            problems.append(f"spacing {pred.GetSpacing()} vs {ref.GetSpacing()}")
        if not np.allclose(pred.GetOrigin(), ref.GetOrigin(), atol=1e-3):
            problems.append(f"origin {pred.GetOrigin()} vs {ref.GetOrigin()}")
        if not np.allclose(pred.GetDirection(), ref.GetDirection(), atol=1e-5):
            problems.append("direction")
    if problems:
        raise GridMismatchError(f"{where}: prediction and reference are not on one grid ({'; '.join(problems)} "
                                "(prediction vs reference))")


def _label_array(image: sitk.Image, where: str) -> np.ndarray:
    array = sitk.GetArrayFromImage(image)
    bad = np.setdiff1d(np.unique(array), VALID_LABELS)
    if bad.size:
        raise EvaluationInputError(f"{where}: unexpected label values {bad.tolist()[:5]} (expected 0 background, 1 liver, "
                         "2 tumor)")
    return array


def evaluate_case(pred: sitk.Image, ref: sitk.Image, tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
                  name: str = "case") -> dict:
    """All metrics of one case: {case, liver_dice, liver_hd95_mm, liver_nsd, tumor_..., detection counts}."""
    _check_same_grid(pred, ref, name)
    p, r = _label_array(pred, f"{name} (prediction)"), _label_array(ref, f"{name} (reference)")
    spacing_zyx = ref.GetSpacing()[::-1]
    row: dict = {"case": name}
    for structure, values in STRUCTURES.items():
        scores = structure_metrics(np.isin(p, values), np.isin(r, values), spacing_zyx, tolerance_mm)
        row.update({f"{structure}_{k}": v for k, v in scores.items()})
    row.update(detect_tumors(p == 2, r == 2, ref.GetSpacing()))
    return row


def evaluate_case_files(pred_path, ref_path, tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
                        name: str | None = None) -> dict:
    pred_path, ref_path = Path(pred_path), Path(ref_path)
    return evaluate_case(sitk.ReadImage(str(pred_path)), sitk.ReadImage(str(ref_path)), tolerance_mm,
                         name or pred_path.name)


def _evaluate_job(args) -> dict:
    return evaluate_case_files(*args)


def evaluate_pairs(pairs, tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM, num_processes: int = 1) -> list[dict]:
    """Rows for [(prediction path, reference path, case name), ...] in the given order; with num_processes > 1
    the cases are spread over one pool of worker processes (each imports MONAI once)."""
    jobs = [(pred, ref, tolerance_mm, name) for pred, ref, name in pairs]
    if num_processes > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
            return pool.map(_evaluate_job, jobs)
    return [_evaluate_job(job) for job in jobs]


def folder_pairs(pred_dir, ref_dir, file_ending: str = ".nii.gz", cases: list[str] | None = None
                 ) -> list[tuple[Path, Path, str]]:
    """[(pred_dir/<case><ending>, ref_dir/<case><ending>, case)] sorted by case, for every prediction in pred_dir
    (or the given cases); a missing prediction or reference raises FileNotFoundError naming it."""
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    if cases is None:
        cases = [p.name[: -len(file_ending)] for p in pred_dir.glob(f"*{file_ending}") if not p.name.startswith(".")]
        if not cases:
            raise FileNotFoundError(f"{pred_dir}: no predictions ending in {file_ending}")
    pairs = []
    for case in sorted(cases):
        pred, ref = pred_dir / f"{case}{file_ending}", ref_dir / f"{case}{file_ending}"
        for path, what in ((pred, "prediction"), (ref, "reference")):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing {what} of case {case}")
        pairs.append((pred, ref, case))
    return pairs


def evaluate_folder(pred_dir, ref_dir, file_ending: str = ".nii.gz",
                    tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM, num_processes: int = 1,
                    cases: list[str] | None = None) -> list[dict]:
    """One row per case (sorted by name) for every `<case><file_ending>` in pred_dir (or the given `cases`).

    Every evaluated case needs `ref_dir/<case><file_ending>`; a missing prediction or reference raises
    FileNotFoundError naming it, so no case is dropped silently.
    """
    return evaluate_pairs(folder_pairs(pred_dir, ref_dir, file_ending, cases), tolerance_mm, num_processes)


def mean_std(values) -> tuple[float, float, int, int]:
    """(mean, sample std (ddof 1; NaN for fewer than 2 values), n valid, n missing (NaN)) of a sequence."""
    values = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    valid = values[~np.isnan(values)]
    n = int(valid.size)
    mean = float(valid.mean()) if n else math.nan
    std = float(valid.std(ddof=1)) if n > 1 else math.nan
    return mean, std, n, int(values.size - n)


def summarize(rows: list[dict]) -> dict:
    """Mean ± std of every metric over the rows (NaN = missing, counted) and pooled detection recall/precision.

    {"n_cases": N, "metrics": {metric: {"mean", "std", "n", "n_missing"}},
     "detection": {"tp", "fn", "fp", "tp_pred", "recall", "precision"}}; recall (precision) is NaN when there
    is no reference tumor (no predicted tumor) in any row.
    """
    metrics = {}
    for metric in METRICS:
        mean, std, n, missing = mean_std([row[metric] for row in rows])
        metrics[metric] = {"mean": mean, "std": std, "n": n, "n_missing": missing}
    tp, fn, fp, tp_pred = (int(sum(row[k] for row in rows)) for k in DETECTION_COUNTS)
    tp_small, fn_small = (int(sum(row.get(k, 0) for row in rows)) for k in SMALL_COUNTS)
    detection = {"tp": tp, "fn": fn, "fp": fp, "tp_pred": tp_pred,
                 "recall": tp / (tp + fn) if tp + fn else math.nan,
                 "precision": tp_pred / (tp_pred + fp) if tp_pred + fp else math.nan,
                 "tp_small": tp_small, "fn_small": fn_small,
                 "recall_small": tp_small / (tp_small + fn_small) if tp_small + fn_small else math.nan}
    return {"n_cases": len(rows), "metrics": metrics, "detection": detection}
