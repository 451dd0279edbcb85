"""Training the learned filler (FFCInpainter): patches of healthy liver with random holes, the loss, the epoch
loop with its checkpoints and resume, and the saved model folder."""
from __future__ import annotations

import csv
import json
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm import tqdm

from registration.image_io import write_atomic, write_json_atomic
from registration.nnunet_raw import LockOwner, dataset_lock

from ..checkpoints import first_line as _first_line, load_state, remove_checkpoint, write_checkpoint
from ..devices import resolve_device
from ..intensity import normalize_hu
from ..masks import random_liver_blob_masks
from ..models.ffc_inpainter import FFCInpainter
from .grids import _bbox, _case_body, _check_case, _far_from, _grid_around, _resample
from .model_io import _read_state, _save_model_folder, load_inpainter
from .presets import (CHECKPOINT_FOLDER, FORMAT_VERSION, LABEL_LIVER, LABEL_TUMOR, LOSS_FILE, MODEL_FOLDER,
                      OPTIMIZER_FILE, STATE_FILE, WEIGHTS_FILE, InpainterPreset, InpaintingError, get_preset)


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
        optimizer.load_state_dict(load_state(ckpt / OPTIMIZER_FILE, InpaintingError, fix))

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
        # the package's one checkpoint mechanism (synthesis/checkpoints.py): whole checkpoint, then the record
        name = f"{CHECKPOINT_FOLDER}/epoch_{epoch + 1:04d}"
        write_checkpoint(out_dir / CHECKPOINT_FOLDER, f"epoch_{epoch + 1:04d}", {MODEL_FOLDER: model},
                         {OPTIMIZER_FILE: optimizer.state_dict()})
        previous = state["checkpoint"]
        state.update(epochs_done=epoch + 1, checkpoint=name, history=history, finished=False)
        write_json_atomic(out_dir / STATE_FILE, state)
        _write_loss_csv(out_dir / LOSS_FILE, history)
        remove_checkpoint(out_dir, previous, keep=name)
    bar.close()
    model.eval()
    _save_model_folder(model, out_dir / MODEL_FOLDER)
    state["finished"] = True
    write_json_atomic(out_dir / STATE_FILE, state)
    return model


