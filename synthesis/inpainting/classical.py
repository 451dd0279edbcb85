"""The classical fills, no learning involved: the healthy-liver median and the harmonic (membrane) fill, each
optionally with the case's own grain."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.linalg import cg


from ..grain import restore_grain
from .grids import _bbox
from .presets import LABEL_LIVER


def _healthy_liver(label: np.ndarray | None, region: np.ndarray) -> np.ndarray:
    if label is None:
        return np.zeros(region.shape, bool)
    return (label == LABEL_LIVER) & ~region


def _reference_values(array: np.ndarray, healthy: np.ndarray, region: np.ndarray, spacing_zyx) -> np.ndarray:
    """Voxels that show healthy parenchyma near the region: healthy liver eroded by one voxel (no partial volume
    with fat at the liver's edge) within 40 mm of the region; the whole eroded healthy liver if that is too
    little; without a liver, a 10 mm shell around the region."""
    core = ndimage.binary_erosion(healthy, iterations=1) if healthy.any() else healthy
    if core.sum() >= 50:
        near = core & (ndimage.distance_transform_edt(~region, sampling=spacing_zyx) <= 40.0)
        return array[near] if near.sum() >= 50 else array[core]
    if healthy.sum() >= 20:
        return array[healthy]
    shell = (ndimage.distance_transform_edt(~region, sampling=spacing_zyx) <= 10.0) & ~region
    return array[shell] if shell.any() else array.ravel()


def _harmonic_fill(array: np.ndarray, region: np.ndarray, spacing_zyx, compartment: np.ndarray | None = None,
                   clip: Mapping[int, tuple[float, float]] | None = None) -> np.ndarray:
    """Membrane fill: solve Laplace's equation (anisotropic, weights 1/spacing^2) on the region's voxels with
    Dirichlet values from the lightly smoothed image around it (conjugate gradients). Returns a copy.

    ``compartment`` (integer array, e.g. liver / not liver) decouples tissues: a hole voxel only exchanges with
    neighbours of its own compartment, so a hole at the liver's edge is filled from liver, not from the fat next
    to it (zero flux across compartment borders). A vanishing pull (1e-4 of a neighbour's weight) towards the
    compartment's median keeps pieces without any boundary of their own well defined. ``clip`` maps a
    compartment to a (low, high) HU range for its boundary values (e.g. the healthy-liver range, so that vessels
    and partial-volume voxels on the rim are not smeared across the hole).
    """
    out = array.astype(np.float32).copy()
    if not region.any():
        return out
    lo, hi = _bbox(region)
    lo, hi = np.maximum(lo - 2, 0), np.minimum(hi + 3, region.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    sub_region = region[box]
    comp = np.zeros(sub_region.shape, np.int64) if compartment is None else np.asarray(compartment)[box]
    sigma = 1.0 / np.asarray(spacing_zyx) * min(spacing_zyx)  # ~1 voxel in-plane: damp the rim's noise
    smooth = np.zeros(sub_region.shape, np.float32)
    for value in np.unique(comp):  # normalised convolution per compartment, hole excluded: no smoothing
        inside = ((comp == value) & ~sub_region).astype(np.float32)  # across tissues or from the tumor
        num = ndimage.gaussian_filter(out[box] * inside, sigma)
        values = num / np.maximum(ndimage.gaussian_filter(inside, sigma), 1e-6)
        if clip and int(value) in clip:
            values = np.clip(values, *clip[int(value)])
        smooth = np.where(comp == value, values, smooth)
    index = -np.ones(sub_region.shape, np.int64)
    unknown = np.argwhere(sub_region)
    n = len(unknown)
    index[sub_region] = np.arange(n)
    own = comp[tuple(unknown.T)]
    weights = 1.0 / np.asarray(spacing_zyx, float) ** 2
    eps = 1e-4 * weights.min()
    prior = np.zeros(n)
    for value in np.unique(own):
        known = (comp == value) & ~sub_region
        prior[own == value] = float(np.median(smooth[known])) if known.any() else float(np.median(smooth))
    rows, cols, vals = [np.arange(n)], [np.arange(n)], []
    diagonal = np.full(n, eps)
    rhs = eps * prior
    for axis in range(3):
        for step in (-1, 1):
            nb = unknown.copy()
            nb[:, axis] += step
            ok = (nb[:, axis] >= 0) & (nb[:, axis] < sub_region.shape[axis])  # else zero flux (box border)
            src = np.flatnonzero(ok)
            nb = nb[ok]
            linked = comp[tuple(nb.T)] == own[src]
            src, nb = src[linked], nb[linked]
            w = weights[axis]
            diagonal[src] += w
            nb_index = index[tuple(nb.T)]
            free = nb_index >= 0
            rows.append(src[free])
            cols.append(nb_index[free])
            vals.append(np.full(int(free.sum()), -w))
            np.add.at(rhs, src[~free], w * smooth[tuple(nb[~free].T)])
    vals.insert(0, diagonal)
    matrix = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    solution, _ = cg(matrix, rhs, x0=prior.copy(), rtol=1e-6, maxiter=5000)
    sub = out[box]
    sub[sub_region] = solution.astype(np.float32)
    return out


def _fill_classical(arrays: np.ndarray, region: np.ndarray, label: np.ndarray | None, method: str,
                    spacing_zyx, rng: np.random.Generator, window: Sequence[float]) -> np.ndarray:
    compartment = None if label is None else (label > 0).astype(np.int64)
    out = arrays.astype(np.float32).copy()
    base, _, noise = method.partition("+")
    for p in range(arrays.shape[0]):
        # healthy liver of this phase: inside its field of view (registered phases are padded with air outside)
        healthy = _healthy_liver(label, region) & (arrays[p] >= window[0]) & (arrays[p] <= window[1])
        values = _reference_values(arrays[p], healthy, region, spacing_zyx)
        median = float(np.median(values))
        if base == "median":
            out[p][region] = median
        else:
            spread = 2 * 1.4826 * float(np.median(np.abs(values - median)))
            clip = {1: (median - spread, median + spread)} if compartment is not None else None
            out[p] = _harmonic_fill(arrays[p], region, spacing_zyx, compartment, clip)
        if noise:  # the case's own native grain (synthesis/grain.py), topped up to the healthy liver's
            out[p], _ = restore_grain(out[p], arrays[p], region, healthy, spacing_zyx, rng,
                                      tissue=None if label is None else label > 0)
    return out


