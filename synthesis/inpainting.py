"""Normal CT generator (stage 2): remove the tumors from every phase by inpainting a dilated tumor mask.

The annotated (reference) phase's tumor mask is dilated in mm within the body, so that tumor tissue that the
registration left misaligned in the other phases is covered too, and the region is filled in ALL phases with
healthy-looking tissue. Fillers:

- ``FFCInpainter`` (learned; :func:`train_inpainter`): trained on healthy liver only: random lobulated holes are
  cut into tumor-free liver and the network learns to restore them (LaMa's recipe: large random masks, FFT
  receptive field). Works on a fixed working grid in mm, ROI by ROI.
- classical fallbacks, for users without a trained model (no learning involved, named for what they do):
  ``"median"`` (the healthy-liver median of the phase), ``"harmonic"`` (membrane fill: the Laplace equation
  solved in the hole with the surrounding voxels as boundary values, liver and non-liver kept apart), each
  optionally ``"+noise"`` (the case's own native grain, see below).

Conventions: phases are a ``{name: sitk.Image}`` dict on one grid with the label (0 background, 1 liver,
2 tumor); images come back as int16 HU on the same grid. Intensities for the network: HU clipped to the model's
``hu_window`` (default -200..400 HU: fat to enhanced vessels) and mapped linearly to [-1, 1]; the window is in
the model config, so inference normalises as training did. Voxels outside it (air, lung, bone) are never tumor
and are kept as they are.

Working grid: the network sees every case resampled (linear) to the model's ``spacing_mm`` (default 3 x 3 x
5 mm), around the liver for training and around each hole for inference, and its fill is resampled back onto
the native grid inside the hole only. A 0.8 mm clinical scan and a 3 mm phantom scan thus show the network the
same tissue scale (hole sizes, vessel calibres, grain correlation in voxels). 3 x 3 x 5 mm is the phantom's
native grid and a common clinical reconstruction, and keeps training to minutes on a CPU; a GPU preset can use
1.5 x 1.5 x 2.5 mm. Cost of the choice: on sub-millimetre scans the fill is smoother than the native grain,
so by default (``grain=True``) the fill gets the grain its working grid cannot hold, measured per phase on
the case's healthy liver at native resolution (synthesis/grain.py), and (``structure="membrane"``) its coarse
structure comes from the harmonic fill, its detail from the network (docs/decisions.md, Stage 2).
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage, sparse
from scipy.sparse.linalg import cg
from tqdm import tqdm

from registration.image_io import same_grid, write_atomic, write_json_atomic
from registration.nnunet_raw import DatasetLockedError, LockOwner, dataset_lock  # noqa: F401 (DatasetLockedError: raised)

from .bundle import hash_files, verify_files, without_local_path
from .devices import resolve_device
from .intensity import denormalize_hu, normalize_hu  # noqa: F401 (part of this module's API)
from .masks import body_mask, dilate_mask_mm, random_liver_blob_masks
from .grain import restore_grain
from .models.ffc_inpainter import FFCInpainter

# Margin added around the PVP tumor mask before inpainting (mm). Chosen with the phantom ground truth
# (benchmarks/inpainting.py, "dilation coverage"): see docs/decisions.md.
DEFAULT_DILATION_MM = 10.0
CLASSICAL_METHODS: tuple[str, ...] = ("median", "median+noise", "harmonic", "harmonic+noise")
MODEL_FOLDER = "model"  # train_inpainter's final model inside its out_dir
STATE_FILE = "training.json"
LOSS_FILE = "loss.csv"
CHECKPOINT_FOLDER = "checkpoints"
OPTIMIZER_FILE = "optimizer.pt"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
MANIFEST_FILE = "sha256.json"  # in a saved model folder: {"files": {name: sha256}} of every other file there
FORMAT_VERSION = 1
ROI_CONTEXT_MM = 30.0  # tissue kept around each hole's bounding box when filling it with the network
LABEL_LIVER, LABEL_TUMOR = 1, 2


class InpaintingError(ValueError):
    """Bad input for inpainting (phase mismatch, missing model files, grids that differ): one-line reason."""


# ------------------------------------------------------------------------------------------- intensities


# --------------------------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class InpainterPreset:
    """Network shape, working grid and training recipe (what ``train_inpainter`` needs besides data).

    Model fields become the ``FFCInpainter`` config; the rest is the recipe. A bigger GPU run is a preset with
    fields replaced, e.g. ``get_preset("cpu", base_channels=32, spacing_mm=(1.5, 1.5, 2.5),
    patch_size=(48, 96, 96), batch_size=8, steps_per_epoch=500, epochs=100)``.
    """

    # network (FFCInpainter config)
    base_channels: int = 16
    num_ffc_blocks: int = 3
    ratio_global: float = 0.75
    spatial_dims: int = 3
    num_downsamplings: int = 2
    noise_channels: int = 1
    hu_window: tuple[float, float] = (-200.0, 400.0)
    spacing_mm: tuple[float, float, float] = (3.0, 3.0, 5.0)  # working voxel size, x y z
    patch_size: tuple[int, int, int] = (24, 48, 48)  # training patch, z y x voxels
    # recipe
    batch_size: int = 2
    learning_rate: float = 2e-3
    epochs: int = 10
    steps_per_epoch: int = 100
    blobs_per_patch: tuple[int, int] = (1, 3)
    blob_radius_mm: tuple[float, float] = (4.0, 30.0)
    hole_dilation_mm: tuple[float, float] = (0.0, 10.0)  # holes grow like dilated tumor masks (past the liver)
    tumor_margin_mm: float = 10.0  # healthy liver = liver farther than this from any tumor
    texture_weight: float = 1.0  # local grain amplitude (see inpainting_loss)
    std_weight: float = 1.0  # std over each hole
    final_lr_fraction: float = 0.1  # cosine decay of the learning rate over the epochs, to this fraction

    def model_config(self, phases: Sequence[str]) -> dict:
        return {"in_phases": list(phases), "base_channels": self.base_channels,
                "num_ffc_blocks": self.num_ffc_blocks, "ratio_global": self.ratio_global,
                "spatial_dims": self.spatial_dims, "num_downsamplings": self.num_downsamplings,
                "noise_channels": self.noise_channels, "hu_window": list(self.hu_window),
                "spacing_mm": list(self.spacing_mm), "patch_size": list(self.patch_size)}


PRESETS: dict[str, InpainterPreset] = {
    # tests: a 5 x 5 x 8 mm grid, a 8 x 24 x 24 patch (12 x 12 x 6.4 cm), seconds on a CPU
    "tiny": InpainterPreset(base_channels=8, num_ffc_blocks=1, spacing_mm=(5.0, 5.0, 8.0), patch_size=(8, 24, 24),
                            epochs=3, steps_per_epoch=40, learning_rate=3e-3),
    # CPU: 0.26 s per step on one core, 10 x 100 steps in ~4 min (docs/decisions.md, Stage 2)
    "cpu": InpainterPreset(),
    # one GPU: a finer grid (the fill keeps the grain of thin-slice scans), wider network, 50 000 patches
    "gpu": InpainterPreset(base_channels=32, num_ffc_blocks=6, spacing_mm=(1.5, 1.5, 2.5), patch_size=(48, 96, 96),
                           batch_size=8, learning_rate=1e-3, epochs=50, steps_per_epoch=125),
}
# the name the "cpu" preset had until 2026-12 (one vocabulary across commands, issue #19); accepted for a release
LEGACY_PRESET_NAMES = {"default": "cpu"}


def get_preset(preset: str | InpainterPreset = "cpu", **overrides) -> InpainterPreset:
    """A preset by name (or as given), with fields replaced by ``overrides``."""
    if isinstance(preset, str):
        preset = LEGACY_PRESET_NAMES.get(preset, preset)
        if preset not in PRESETS:
            raise InpaintingError(f"unknown inpainter preset {preset!r}; choose one of {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    names = {f.name for f in fields(InpainterPreset)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise InpaintingError(f"unknown preset fields {unknown}; valid: {', '.join(sorted(names))}")
    return replace(preset, **overrides)


# ---------------------------------------------------------------------------------------- grids, checks


def _check_case(phases: Mapping[str, sitk.Image], label: sitk.Image | None, where: str = "") -> list[str]:
    """Phase names in order; InpaintingError unless every image shares the first one's grid."""
    if not phases:
        raise InpaintingError(f"{where}no phases given")
    names = list(phases)
    ref = phases[names[0]]
    others = [(n, phases[n]) for n in names[1:]] + ([("label", label)] if label is not None else [])
    for name, image in others:
        if not same_grid(image, ref):
            raise InpaintingError(f"{where}{name} is not on the grid of {names[0]} (size {image.GetSize()} vs "
                                  f"{ref.GetSize()}); inpainting needs registered phases on one grid")
    return names


def _check_phases(model_phases: Sequence[str], data_phases: Sequence[str]) -> None:
    if set(model_phases) != set(data_phases):
        raise InpaintingError(f"the inpainter was trained on phases {list(model_phases)} but the data has phases "
                              f"{list(data_phases)}; train an inpainter on these phases or use a classical method "
                              f"({', '.join(CLASSICAL_METHODS)})")


def _grid_around(reference: sitk.Image, lo_xyz, hi_xyz, spacing_mm, margin_mm, min_size_xyz, multiple: int
                 ) -> sitk.Image:
    """An empty float image with the reference's direction and the working spacing, centred on the index box
    [lo_xyz, hi_xyz] of ``reference`` grown by ``margin_mm``, at least ``min_size_xyz`` voxels, sizes rounded up
    to ``multiple``."""
    ref_spacing = np.asarray(reference.GetSpacing(), float)
    spacing = np.asarray(spacing_mm, float)
    lo_mm = np.asarray(lo_xyz, float) * ref_spacing - margin_mm
    hi_mm = np.asarray(hi_xyz, float) * ref_spacing + margin_mm
    size = np.ceil((hi_mm - lo_mm) / spacing).astype(int) + 1
    size = np.maximum(size, np.asarray(min_size_xyz, int))
    size = (np.ceil(size / multiple) * multiple).astype(int)
    start_mm = (lo_mm + hi_mm) / 2 - (size - 1) / 2 * spacing
    direction = np.asarray(reference.GetDirection(), float).reshape(3, 3)
    origin = np.asarray(reference.GetOrigin(), float) + direction @ start_mm
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing([float(s) for s in spacing])
    grid.SetOrigin([float(o) for o in origin])
    grid.SetDirection(reference.GetDirection())
    return grid


def _resample(image: sitk.Image, grid: sitk.Image, linear: bool = True, default: float = -1024.0) -> np.ndarray:
    interpolator = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
    out = sitk.Resample(image, grid, sitk.Transform(), interpolator, default,
                        sitk.sitkFloat32 if linear else image.GetPixelID())
    return sitk.GetArrayFromImage(out)


def _like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def _bbox(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) inclusive index corners (z, y, x) of a non-empty mask."""
    idx = np.argwhere(mask)
    return idx.min(axis=0), idx.max(axis=0)


def _case_body(phases: Mapping[str, sitk.Image]) -> sitk.Image:
    """Body of registered phases: from their voxel-wise maximum, so no phase's body is cut off."""
    arrays = [sitk.GetArrayViewFromImage(img) for img in phases.values()]
    maximum = np.max(np.stack([np.asarray(a, np.float32) for a in arrays]), axis=0)
    return body_mask(_like(maximum, next(iter(phases.values()))))


def _far_from(mask: np.ndarray, margin_mm: float, spacing_zyx) -> np.ndarray:
    """Voxels farther than margin_mm from every voxel of mask (all True if the mask is empty)."""
    if not mask.any():
        return np.ones(mask.shape, bool)
    return ndimage.distance_transform_edt(~mask, sampling=spacing_zyx) > margin_mm


# ------------------------------------------------------------------------------------- training data


@dataclass
class _TrainingVolume:
    """One case on the working grid, around its liver."""

    image: np.ndarray  # (P, Z, Y, X) float32, normalised
    healthy: np.ndarray  # bool: tumor-free liver (hole centres and blobs)
    allowed: np.ndarray  # bool: body away from tumors (where a dilated hole may reach)
    healthy_index: np.ndarray  # flat indices of healthy voxels (patch centres)


def _training_volume(phases: Mapping[str, sitk.Image], label: sitk.Image, order: Sequence[str],
                     preset: InpainterPreset) -> _TrainingVolume | None:
    lab = sitk.GetArrayViewFromImage(label)
    if not (lab == LABEL_LIVER).any():
        return None
    lo, hi = _bbox(lab > 0)
    patch_mm = np.asarray(preset.patch_size[::-1]) * np.asarray(preset.spacing_mm)  # x y z
    grid = _grid_around(label, lo[::-1], hi[::-1], preset.spacing_mm, float(patch_mm.max()) / 2,
                        preset.patch_size[::-1], 1)
    image = np.stack([normalize_hu(_resample(phases[p], grid), preset.hu_window) for p in order])
    lab_w = _resample(label, grid, linear=False, default=0)
    body = _resample(_case_body(phases), grid, linear=False, default=0) > 0
    spacing_zyx = np.asarray(preset.spacing_mm)[::-1]
    away = _far_from(lab_w == LABEL_TUMOR, preset.tumor_margin_mm, spacing_zyx)
    # liver reading below the window in some phase lies outside that phase's field of view (registered phases
    # are padded with air there): no truth to learn from
    seen = np.all(image > -1.0, axis=0)
    healthy = (lab_w == LABEL_LIVER) & away & seen
    if not healthy.any():
        return None
    return _TrainingVolume(image, healthy, body & away, np.flatnonzero(healthy))


def _sample_patch(volume: _TrainingVolume, preset: InpainterPreset, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A patch around a random healthy-liver voxel and a hole of 1-3 random blobs (dilated like a tumor mask)."""
    patch = np.asarray(preset.patch_size)
    shape = np.asarray(volume.healthy.shape)
    centre = np.asarray(np.unravel_index(volume.healthy_index[rng.integers(volume.healthy_index.size)], shape))
    centre = centre + rng.integers(-(patch // 6), patch // 6 + 1)
    start = np.clip(centre - patch // 2, 0, shape - patch)
    box = tuple(slice(int(s), int(s + n)) for s, n in zip(start, patch))
    image = volume.image[(slice(None),) + box]
    healthy, allowed = volume.healthy[box], volume.allowed[box]
    inner = np.zeros_like(healthy)  # keep holes off the patch border: the network must see context around them
    edge = np.maximum(patch // 6, 1)
    inner[tuple(slice(int(e), int(n - e)) for e, n in zip(edge, patch))] = True
    inner &= healthy
    if not inner.any():
        inner = healthy
    spacing_xyz = preset.spacing_mm
    count = int(rng.integers(preset.blobs_per_patch[0], preset.blobs_per_patch[1] + 1))
    hole = random_liver_blob_masks(inner, spacing_xyz, rng, count, preset.blob_radius_mm) > 0
    radius = float(rng.uniform(*preset.hole_dilation_mm))
    if radius > 0 and hole.any():
        grown = ndimage.distance_transform_edt(~hole, sampling=np.asarray(spacing_xyz)[::-1]) <= radius
        hole |= grown & allowed
    for axis in range(3):  # mirror augmentation (texture and vessel continuation have no handedness)
        if rng.random() < 0.5:
            image, hole = np.flip(image, axis + 1), np.flip(hole, axis)
    return np.ascontiguousarray(image), np.ascontiguousarray(hole)


def _batch(volumes: Sequence[_TrainingVolume], preset: InpainterPreset, rng: np.random.Generator,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images, holes = [], []
    for _ in range(preset.batch_size):
        image, hole = _sample_patch(volumes[int(rng.integers(len(volumes)))], preset, rng)
        images.append(image)
        holes.append(hole[None].astype(np.float32))
    image = torch.from_numpy(np.stack(images)).to(device)
    hole = torch.from_numpy(np.stack(holes)).to(device)
    if preset.spatial_dims == 2:  # per-slice model: axial slices of the patches as the batch
        image = image.permute(0, 2, 1, 3, 4).reshape(-1, image.shape[1], *image.shape[3:])
        hole = hole.permute(0, 2, 1, 3, 4).reshape(-1, 1, *hole.shape[3:])
    return image, hole


# ------------------------------------------------------------------------------------------------- loss


def _local_energy(x: torch.Tensor, dims: int) -> torch.Tensor:
    """Local high-frequency amplitude: RMS over 3^d of (x - its 3^d local mean)."""
    pool = F.avg_pool3d if dims == 3 else F.avg_pool2d
    kw = {"kernel_size": 3, "stride": 1, "padding": 1, "count_include_pad": False}
    high = x - pool(x, **kw)
    return torch.sqrt(pool(high * high, **kw) + 1e-6)


def _hole_std(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Std over the hole of each (sample, phase): shape (B, P)."""
    axes = tuple(range(2, x.dim()))
    n = weight.sum(dim=axes).clamp_min(1.0)
    mean = (weight * x).sum(dim=axes) / n
    centred = x - mean.reshape(*mean.shape, *([1] * (x.dim() - 2)))
    return torch.sqrt((weight * centred * centred).sum(dim=axes) / n + 1e-6)


def inpainting_loss(output: torch.Tensor, target: torch.Tensor, hole: torch.Tensor, texture_weight: float = 1.0,
                    std_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, l1, texture) inside the hole, in normalised units.

    l1: pixel fidelity, averaged over hole voxels and phases; pulls the fill towards the conditional median
    (right level, continued vessels and edges, but flat: texture ratio ~0.3 on the phantom).
    texture = texture_weight * L1 between the local high-frequency amplitude (3^d RMS of x minus its local
    mean) of output and target over the hole's interior (windows that do not reach the known context) +
    std_weight * L1 between the std over each hole of output and target (per sample and phase). Both compare
    statistics, not voxels, so the fill carries grain and variation of the right strength without having to
    match the unpredictable noise voxel by voxel; a pixel-aligned high-pass loss would, like L1, be minimised by
    a flat fill. (LaMa gets texture from an adversarial loss; a discriminator is too slow to train on a CPU.)
    """
    dims = output.dim() - 2
    weight = hole.expand_as(output)
    denom = weight.sum().clamp_min(1.0)
    l1 = (weight * (output - target).abs()).sum() / denom
    pool = F.max_pool3d if dims == 3 else F.max_pool2d
    interior = (1 - pool(1 - hole, kernel_size=3, stride=1, padding=1)).expand_as(output)
    local = (interior * (_local_energy(output, dims) - _local_energy(target, dims)).abs()).sum()
    local = local / interior.sum().clamp_min(1.0)
    present = (hole.flatten(2).sum(dim=2) >= 8).to(output.dtype).expand(-1, output.shape[1])  # holes of 8+ voxels
    spread = (present * (_hole_std(output, weight) - _hole_std(target, weight)).abs()).sum()
    spread = spread / present.sum().clamp_min(1.0)
    texture = texture_weight * local + std_weight * spread
    return l1 + texture, l1, texture


# --------------------------------------------------------------------------------------------- training


def _write_loss_csv(path: Path, history: list[dict]) -> None:
    def write(handle):
        writer = csv.DictWriter(handle, fieldnames=["epoch", "loss", "l1", "texture", "seconds"])
        writer.writeheader()
        writer.writerows(history)

    write_atomic(path, write)


def _save_model_folder(model: FFCInpainter, folder: Path, extra: dict[str, object] | None = None) -> None:
    """save_pretrained into a hidden staging folder, then rename into place (readers never see half a model)."""
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    without_local_path(model).save_pretrained(staging, safe_serialization=True)
    for name, obj in (extra or {}).items():
        torch.save(obj, staging / name)
    (staging / MANIFEST_FILE).write_text(json.dumps({"files": hash_files(staging)}, indent=1), encoding="utf-8")
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(staging, folder)
    shutil.rmtree(old, ignore_errors=True)


def _read_state(out_dir: Path) -> dict | None:
    path = out_dir / STATE_FILE
    if not path.is_file():
        return None
    fix = f"delete {out_dir} to train afresh, or choose another folder"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InpaintingError(f"{path}: not valid JSON ({err}); {fix}") from None
    if not isinstance(state, dict) or not isinstance(state.get("settings"), dict) or not all(
            k in state for k in ("epochs_done", "checkpoint", "history")):
        raise InpaintingError(f"{path}: not a train_inpainter training record (settings, epochs_done, checkpoint, "
                              f"history); {fix}")
    return state


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0].strip()}" if lines else type(err).__name__


def _check_training_cases(cases) -> list[str]:
    cases = list(cases)
    if not cases:
        raise InpaintingError("no training cases given")
    order = None
    for i, case in enumerate(cases):
        phases, label = case
        names = _check_case(phases, label, where=f"training case {i}: ")
        if order is None:
            order = names
        elif set(names) != set(order):
            raise InpaintingError(f"training case {i} has phases {names}, case 0 has {order}; all cases need the "
                                  "same phases")
    return order


INPAINTER_LOCK = LockOwner("diff4mm_train_inpainter", "this inpainter folder", "train into another -o folder")


def train_inpainter(cases, out_dir, *, epochs: int | None = None, steps_per_epoch: int | None = None,
                    device: str | torch.device = "cpu", seed: int = 0,
                    preset: str | InpainterPreset = "cpu", resume: bool = True,
                    progress: bool = True, case_names: list[str] | None = None) -> FFCInpainter:
    """Train an FFCInpainter on healthy liver and save it to ``out_dir/model``; returns it (eval mode).

    One training per folder at a time: ``out_dir/.diff4mm_train_inpainter.lock`` (flock, released by the kernel if
    the holder dies) is held throughout; a second training into the same folder stops at once with
    DatasetLockedError naming the holder (two trainings writing one checkpoint folder collide on its epochs).

    ``cases``: iterable of (phases: {name: sitk.Image} on one grid, label: sitk.Image 0/1/2 on that grid).
    ``case_names``: their IDs, recorded in ``training.json`` (``inpainter_training_cases`` reads them) so that a
    segmentation experiment can prove the inpainter never saw its validation or test cases; a training with
    other cases is refused, not resumed.
    Every step samples ``batch_size`` patches around tumor-free liver (farther than ``tumor_margin_mm`` from
    any tumor), cuts random lobulated holes (grown by a random margin past the liver, like a dilated tumor
    mask) and trains the network to restore them (masked L1 + texture loss, Adam).

    Resumable: after each epoch the model (``save_pretrained``) and the optimizer state (``torch.save``,
    reloaded with ``weights_only=True``) go to ``out_dir/checkpoints/epoch_NNNN``, and ``training.json`` /
    ``loss.csv`` are updated atomically. A restart continues after the last finished epoch with the same data
    and noise streams (one random stream per epoch, seeded by (seed, epoch)), so it ends with the weights an
    uninterrupted run gives; calling again when the training is finished only loads the model; asking for more
    epochs continues it. ``resume=False`` discards an existing training in ``out_dir``.
    """
    with dataset_lock(Path(out_dir), INPAINTER_LOCK):
        return _train_inpainter(cases, out_dir, epochs=epochs, steps_per_epoch=steps_per_epoch, device=device,
                                seed=seed, preset=preset, resume=resume, progress=progress, case_names=case_names)


def _train_inpainter(cases, out_dir, *, epochs, steps_per_epoch, device, seed, preset, resume, progress,
                     case_names) -> FFCInpainter:
    preset = get_preset(preset)
    epochs = preset.epochs if epochs is None else int(epochs)
    steps = preset.steps_per_epoch if steps_per_epoch is None else int(steps_per_epoch)
    device = resolve_device(device)
    cases = list(cases)
    order = _check_training_cases(cases)
    out_dir = Path(out_dir)
    recipe = {k: v for k, v in asdict(preset).items() if k not in ("epochs", "steps_per_epoch")}
    if case_names is not None and len(case_names) != len(cases):
        raise InpaintingError(f"{len(case_names)} case names for {len(cases)} training cases")
    settings = {"format_version": FORMAT_VERSION, "phases": order, "seed": int(seed), "steps_per_epoch": steps,
                "preset": json.loads(json.dumps(recipe)),  # epochs may grow: a finished training continues
                "cases": sorted(case_names) if case_names is not None else None}

    state = _read_state(out_dir) if resume else None
    if state is not None and state["settings"] != settings:
        changed = sorted(k for k in settings if state["settings"].get(k) != settings[k])
        if changed == ["phases"] and set(state["settings"]["phases"]) == set(order):
            order = state["settings"]["phases"]  # same phases listed in another order
            settings["phases"] = order
        else:
            raise InpaintingError(f"{out_dir}: holds a training with other settings ({', '.join(changed)} differ); "
                                  "choose another folder, pass resume=False to overwrite it, or the same settings")
    if state is None:
        shutil.rmtree(out_dir / CHECKPOINT_FOLDER, ignore_errors=True)
        shutil.rmtree(out_dir / MODEL_FOLDER, ignore_errors=True)
        state = {"settings": settings, "epochs_done": 0, "checkpoint": None, "history": [], "finished": False}
    done = int(state["epochs_done"])
    if done >= epochs and (out_dir / MODEL_FOLDER / WEIGHTS_FILE).is_file():
        return load_inpainter(out_dir / MODEL_FOLDER, device)

    out_dir.mkdir(parents=True, exist_ok=True)
    fix = f"delete {out_dir / STATE_FILE} and {out_dir / CHECKPOINT_FOLDER} to train afresh"
    if state["checkpoint"]:
        ckpt = out_dir / state["checkpoint"]
        try:
            model = FFCInpainter.from_pretrained(ckpt / MODEL_FOLDER, use_safetensors=True).to(device)
        except (OSError, ValueError, RuntimeError, TypeError, KeyError) as err:
            raise InpaintingError(f"{ckpt / MODEL_FOLDER}: cannot resume from this checkpoint "
                                  f"({_first_line(err)}); {fix}") from None
    else:
        torch.manual_seed(seed)
        model = FFCInpainter(**preset.model_config(order)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=preset.learning_rate)
    if state["checkpoint"]:
        try:
            optimizer.load_state_dict(torch.load(ckpt / OPTIMIZER_FILE, map_location=device, weights_only=True))
        except Exception as err:  # noqa: BLE001 - torch.load raises pickle, zip, EOF and runtime errors alike
            raise InpaintingError(f"{ckpt / OPTIMIZER_FILE}: cannot resume from this optimizer state "
                                  f"({_first_line(err)}); {fix}") from None

    volumes = [v for v in (_training_volume(ph, lab, order, preset) for ph, lab in cases) if v is not None]
    if not volumes:
        raise InpaintingError("no training case has tumor-free liver (label 1 farther than "
                              f"{preset.tumor_margin_mm} mm from label 2)")
    history = list(state["history"])
    bar = tqdm(total=epochs * steps, initial=done * steps, desc="inpainter", unit="step", disable=not progress)
    for epoch in range(done, epochs):
        model.train()
        for group in optimizer.param_groups:  # cosine schedule per epoch: a pure function of (epoch, epochs)
            fraction = epoch / max(epochs - 1, 1)
            floor = preset.final_lr_fraction
            group["lr"] = preset.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * fraction)))
        rng = np.random.default_rng([seed, epoch])
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        sums = np.zeros(3)
        started = time.perf_counter()
        for _ in range(steps):
            image, hole = _batch(volumes, preset, rng, device)
            noise = torch.randn((image.shape[0], preset.noise_channels, *image.shape[2:]), generator=generator)
            output = model(image, hole, noise=noise.to(device))
            loss, l1, texture = inpainting_loss(output, image, hole, preset.texture_weight, preset.std_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += [loss.item(), l1.item(), texture.item()]
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}")
        mean = sums / max(steps, 1)
        history.append({"epoch": epoch + 1, "loss": round(float(mean[0]), 6), "l1": round(float(mean[1]), 6),
                        "texture": round(float(mean[2]), 6),
                        "seconds": round(time.perf_counter() - started, 2)})
        name = f"{CHECKPOINT_FOLDER}/epoch_{epoch + 1:04d}"
        (out_dir / CHECKPOINT_FOLDER).mkdir(exist_ok=True)
        ckpt = out_dir / name
        staging = out_dir / CHECKPOINT_FOLDER / ".partial"
        shutil.rmtree(staging, ignore_errors=True)
        without_local_path(model).save_pretrained(staging / MODEL_FOLDER, safe_serialization=True)
        torch.save(optimizer.state_dict(), staging / OPTIMIZER_FILE)
        os.replace(staging, ckpt)
        previous = state["checkpoint"]
        state.update(epochs_done=epoch + 1, checkpoint=name, history=history, finished=False)
        write_json_atomic(out_dir / STATE_FILE, state)
        _write_loss_csv(out_dir / LOSS_FILE, history)
        if previous and previous != name:
            shutil.rmtree(out_dir / previous, ignore_errors=True)
    bar.close()
    model.eval()
    _save_model_folder(model, out_dir / MODEL_FOLDER)
    state["finished"] = True
    write_json_atomic(out_dir / STATE_FILE, state)
    return model


# -------------------------------------------------------------------------------------------- inference


def inpainter_training_cases(path) -> list[str] | None:
    """The IDs of the cases an inpainter (a train_inpainter out_dir) was trained on; None when its training
    record does not say (trained before the IDs were recorded, or by a caller that gave no names)."""
    state = _read_state(Path(path))
    if state is None and Path(path).name == MODEL_FOLDER:
        state = _read_state(Path(path).parent)
    cases = (state or {}).get("settings", {}).get("cases")
    return list(cases) if cases is not None else None


def load_inpainter(path, device: str | torch.device = "cpu") -> FFCInpainter:
    """Load a trained inpainter from its folder (config.json + safetensors) or a train_inpainter out_dir."""
    path = Path(path)
    folder = path / MODEL_FOLDER if (path / MODEL_FOLDER).is_dir() else path
    missing = [n for n in ("config.json", WEIGHTS_FILE) if not (folder / n).is_file()]
    if missing:
        raise InpaintingError(f"{folder}: no trained inpainter ({', '.join(missing)} missing); train one with "
                              "train_inpainter (it writes OUT/model) or use a classical method "
                              f"({', '.join(CLASSICAL_METHODS)})")
    manifest = folder / MANIFEST_FILE
    fix = "copy the model folder again or retrain it with train_inpainter"
    if not manifest.is_file():
        raise InpaintingError(f"{manifest}: missing, so the weights cannot be checked (saved by an older version "
                              f"or not by train_inpainter); {fix}")
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InpaintingError(f"{manifest}: not valid JSON ({err}); {fix}") from None
    verify_files(folder, listed.get("files") if isinstance(listed, dict) else listed, manifest, InpaintingError,
                 ignore=(MANIFEST_FILE,), fix=fix)
    try:
        model = FFCInpainter.from_pretrained(folder, use_safetensors=True)
    except (OSError, ValueError, RuntimeError, TypeError) as err:
        raise InpaintingError(f"{folder}: cannot load the inpainter: {str(err).splitlines()[0]}") from err
    return model.to(resolve_device(device)).eval()


def tumor_inpaint_region(label: sitk.Image, dilation_mm: float = DEFAULT_DILATION_MM,
                         body: sitk.Image | None = None) -> sitk.Image:
    """The region to inpaint: the tumor (label 2) dilated by ``dilation_mm`` (Euclidean, mm), within ``body``."""
    return dilate_mask_mm(label == LABEL_TUMOR, dilation_mm, within=body)


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
