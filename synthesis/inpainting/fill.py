"""Inference: loading a trained inpainter, the region to fill, and filling it in every phase with the network
(coarse structure from the membrane fill, the case's grain restored) or a classical method."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage


from ..intensity import denormalize_hu, normalize_hu
from registration.masks import dilate_mm
from ..grain import restore_grain
from ..models.ffc_inpainter import FFCInpainter
from .classical import _fill_classical, _healthy_liver
from .grids import _bbox, _case_body, _check_case, _check_phases, _grid_around, _like, _resample
from .model_io import load_inpainter
from .presets import CLASSICAL_METHODS, DEFAULT_DILATION_MM, LABEL_TUMOR, PRESETS, ROI_CONTEXT_MM, InpaintingError


# -------------------------------------------------------------------------------------------- inference


def tumor_inpaint_region(label: sitk.Image, dilation_mm: float = DEFAULT_DILATION_MM,
                         body: sitk.Image | None = None) -> sitk.Image:
    """The region to inpaint: the tumor (label 2) dilated by ``dilation_mm`` (Euclidean, mm), within ``body``."""
    return dilate_mm(label == LABEL_TUMOR, dilation_mm, within=body)


# The learned fill's coarse structure is replaced by the membrane (harmonic) fill's below this scale, its finer
# detail kept: on the phantom's development split the learned fill alone had a worse structure MAE than the
# classical fills in 3 of 4 phases (docs/decisions.md, Stage 2; benchmarks/inpainting.py).
STRUCTURE_SIGMA_MM = 5.0
STRUCTURES = ("membrane", "learned")


def _membrane_structure(filled: np.ndarray, membrane: np.ndarray, region: np.ndarray, spacing_zyx) -> np.ndarray:
    """Inside ``region``: the membrane fill's low-pass plus the learned fill's detail (each minus its own
    low-pass), the low-pass a Gaussian of STRUCTURE_SIGMA_MM as a normalised convolution over the region only,
    so that the tissue around the hole does not leak in. Per phase; outside the region ``filled`` is kept."""
    out = filled.copy()
    if not region.any():
        return out
    lo, hi = _bbox(region)
    sigma = STRUCTURE_SIGMA_MM / np.asarray(spacing_zyx, float)
    pad = np.ceil(3 * sigma).astype(int)
    lo, hi = np.maximum(lo - pad, 0), np.minimum(hi + pad + 1, region.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    inside = region[box]
    weight = np.maximum(ndimage.gaussian_filter(inside.astype(np.float32), sigma, mode="constant"), 1e-6)

    def low(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(np.where(inside, a, 0.0).astype(np.float32), sigma, mode="constant") / weight

    for p in range(filled.shape[0]):
        learned, smooth = filled[p][box], membrane[p][box]
        fused = low(smooth) + learned - low(learned)
        out[p][box] = np.where(inside, fused, learned)
    return out


def _add_grain(filled: np.ndarray, arrays: np.ndarray, region: np.ndarray, label: np.ndarray | None, spacing_zyx,
               rng: np.random.Generator, window: Sequence[float], working_spacing_xyz: Sequence[float]) -> np.ndarray:
    """Every phase of a learned fill plus the native grain its working grid cannot hold (synthesis/grain.py)."""
    out = filled.copy()
    working_zyx = tuple(float(s) for s in working_spacing_xyz)[::-1]
    for p in range(arrays.shape[0]):
        healthy = _healthy_liver(label, region) & (arrays[p] >= window[0]) & (arrays[p] <= window[1])
        out[p], _ = restore_grain(filled[p], arrays[p], region, healthy, spacing_zyx, rng,
                                  working_spacing_zyx=working_zyx)
    return out


@torch.no_grad()
def _fill_with_model(arrays: np.ndarray, region: np.ndarray, reference: sitk.Image, model: FFCInpainter,
                     order: Sequence[str], data_order: Sequence[str], device: torch.device,
                     generator: torch.Generator) -> np.ndarray:
    """Fill each connected piece of the region in turn (later pieces see earlier fills), on a working-grid ROI
    of at least the training patch size with ROI_CONTEXT_MM of context around the piece."""
    cfg = model.config
    out = arrays.astype(np.float32).copy()
    pieces, count = ndimage.label(region)
    perm = [list(data_order).index(p) for p in order]  # model order -> data index
    for k in range(1, count + 1):
        piece = pieces == k
        lo, hi = _bbox(piece)
        roi = _grid_around(reference, lo[::-1], hi[::-1], cfg.spacing_mm, ROI_CONTEXT_MM, cfg.patch_size[::-1],
                           model.size_multiple)
        images = np.stack([_resample(_like(out[i], reference), roi) for i in perm])
        hole = _resample(_like(piece.astype(np.float32), reference), roi, default=0.0) > 1e-3
        x = torch.from_numpy(normalize_hu(images, cfg.hu_window))[None]
        m = torch.from_numpy(hole.astype(np.float32))[None, None]
        if cfg.spatial_dims == 2:  # slices as the batch
            x, m = x[0].permute(1, 0, 2, 3), m[0].permute(1, 0, 2, 3)
        noise = torch.randn((x.shape[0], cfg.noise_channels, *x.shape[2:]), generator=generator)
        y = model(x.to(device), m.to(device), noise=noise.to(device)).float().cpu()
        y = y.permute(1, 0, 2, 3)[None] if cfg.spatial_dims == 2 else y
        filled = denormalize_hu(y[0].numpy(), cfg.hu_window)
        filled = np.where(hole[None], filled, images)
        # back to the native grid, only over the piece's bounding box
        box = tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi))
        native = reference[int(lo[2]):int(hi[2]) + 1, int(lo[1]):int(hi[1]) + 1, int(lo[0]):int(hi[0]) + 1]
        inside = piece[box]
        for j, i in enumerate(perm):
            image = sitk.GetImageFromArray(filled[j])
            image.CopyInformation(roi)
            values = _resample(image, native, default=-1024.0)
            out[i][box][inside] = values[inside]
    return out


def fill_region(phases: Mapping[str, sitk.Image], region: sitk.Image, model_or_method="median", *,
                label: sitk.Image | None = None, device: str | torch.device = "cpu", seed: int = 0,
                grain: bool = True, structure: str = "membrane") -> dict[str, sitk.Image]:
    """Fill ``region`` (non-zero voxels) in every phase; returns int16 HU images on the same grid.

    ``model_or_method``: an FFCInpainter, a folder with a trained one (Path, or str naming an existing
    folder), or a classical method name (``CLASSICAL_METHODS``). ``label`` (0/1/2) tells the classical
    methods where healthy liver is (label 1 outside the region). ``grain`` (learned model only, needs ``label``):
    top the fill up with the scan's own native grain, measured per phase on its healthy liver
    (synthesis/grain.py; the network works on a coarse grid, so on a finer scan its fill lacks it).
    ``structure`` (learned model only): ``"membrane"`` takes the fill's coarse structure (Gaussian
    STRUCTURE_SIGMA_MM) from the harmonic fill and its finer detail from the network; ``"learned"`` keeps the
    network's fill as it is. The classical ``+noise`` methods always add that grain; ``median`` and
    ``harmonic`` never. Voxels outside the model's HU window (default -200..400 HU: air, lung, bone) are kept:
    no tumor has such values.
    """
    names = _check_case(phases, label)
    reference = phases[names[0]]
    _check_case({names[0]: reference, "region": region}, None)
    region_arr = sitk.GetArrayViewFromImage(region) != 0
    arrays = np.stack([sitk.GetArrayFromImage(phases[p]).astype(np.float32) for p in names])
    lab = None if label is None else sitk.GetArrayFromImage(label)
    spacing_zyx = np.asarray(reference.GetSpacing(), float)[::-1]
    rng = np.random.default_rng(seed)
    model = model_or_method
    if isinstance(model, str) and model in CLASSICAL_METHODS:
        window = PRESETS["cpu"].hu_window
        filled = _fill_classical(arrays, region_arr, lab, model, spacing_zyx, rng, window)
    else:
        if isinstance(model, (str, os.PathLike)):
            if isinstance(model, str) and not Path(model).exists():
                raise InpaintingError(f"{model!r} is neither a classical method ({', '.join(CLASSICAL_METHODS)}) "
                                      "nor an existing model folder")
            model = load_inpainter(model, device)
        if not isinstance(model, FFCInpainter):
            raise InpaintingError(f"model_or_method must be an FFCInpainter, a model folder or one of "
                                  f"{', '.join(CLASSICAL_METHODS)}, not {type(model).__name__}")
        _check_phases(model.config.in_phases, names)
        model.eval()
        window = model.config.hu_window
        dev = next(model.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        filled = _fill_with_model(arrays, region_arr, reference, model, list(model.config.in_phases), names, dev,
                                  generator)
        if structure not in STRUCTURES:
            raise InpaintingError(f"structure must be one of {', '.join(STRUCTURES)}, not {structure!r}")
        if structure == "membrane":
            membrane = _fill_classical(arrays, region_arr, lab, "harmonic", spacing_zyx, rng, window)
            filled = _membrane_structure(filled, membrane, region_arr, spacing_zyx)
        if grain and lab is not None:
            filled = _add_grain(filled, arrays, region_arr, lab, spacing_zyx, rng, window, model.config.spacing_mm)
    low, high = window
    keep = (arrays < low) | (arrays > high) | ~region_arr[None]
    result = np.where(keep, arrays, filled)
    result = np.clip(np.rint(result), -32768, 32767).astype(np.int16)
    return {p: _like(result[i], phases[p]) for i, p in enumerate(names)}


def inpaint_case(phases: Mapping[str, sitk.Image], label: sitk.Image, model_or_method="median",
                 dilation_mm: float = DEFAULT_DILATION_MM, device: str | torch.device = "cpu", *, seed: int = 0,
                 grain: bool = True, structure: str = "membrane"
                 ) -> tuple[dict[str, sitk.Image], sitk.Image, sitk.Image]:
    """Remove the tumors of one case from all its phases.

    The tumor (label 2) is dilated by ``dilation_mm`` within the body and that region is filled in every phase
    (see :func:`fill_region` for ``model_or_method``). Returns (normal phases as int16 HU on the input grid,
    the inpainted region as uint8 0/1, the normal liver mask = label > 0 as uint8 0/1: the tumor becomes
    liver; the margin outside the liver stays background).
    """
    names = _check_case(phases, label, where="")
    body = _case_body({p: phases[p] for p in names})
    region = tumor_inpaint_region(label, dilation_mm, body)
    if sitk.GetArrayViewFromImage(region).any():
        normal = fill_region(phases, region, model_or_method, label=label, device=device, seed=seed, grain=grain,
                             structure=structure)
    else:
        normal = {p: sitk.Cast(phases[p], sitk.sitkInt16) for p in names}
        if not isinstance(model_or_method, str) or model_or_method not in CLASSICAL_METHODS:
            model = model_or_method
            if isinstance(model, (str, os.PathLike)):
                model = load_inpainter(model, device)
            if isinstance(model, FFCInpainter):
                _check_phases(model.config.in_phases, names)
    liver = sitk.Cast(label > 0, sitk.sitkUInt8)
    return normal, region, liver
