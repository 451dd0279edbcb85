"""Train the multi-phase tumor synthesizer (KL autoencoder, then latent diffusion UNet) and write a bundle.

Training data per labelled case: ROIs around each real tumor component (random jitter and flips) plus a fraction of
ROIs centred anywhere in the liver; target = the registered real phases (with tumors), condition = the normal
(tumor-free) phases + the real tumor mask of that ROI (+ each tumor's enhancement pattern, its mean change per
phase, with Preset.enhancement_condition; the patterns go into the bundle's bank). Everything is resampled once to
the working spacing (only the liver's bounding box plus half an ROI), and crops are cut from there.

1. Autoencoder: L1 (tumor voxels weighted 1 + ae_tumor_weight) + kl_weight * KL on random patches (mostly
   target, some normal images) smaller than the ROI (the network is fully convolutional; 16^3 patches cost
   ~9x less per sample than 32^3 ROIs on CPU). No adversarial/perceptual term (CPU budget).
2. Latent cache: every training ROI variant (jittered, flipped) is encoded once with the final autoencoder.
   The UNet diffuses the residual (z_tumor - z_normal) * target_scale (see models/conditional_unet.py) with
   the DDPM loss on the noise (epsilon) or on v (Preset.prediction_type), weighted 1 + unet_tumor_weight on
   latent voxels at the tumor (the rest of the ROI's residual is ~0); EMA weights (diffusers EMAModel) are
   validated and shipped.

Runs under `accelerate.Accelerator` (plain CPU run or `accelerate launch`): the preset's ae_batch / unet_batch
is the global batch; each of N processes draws its own batch // N samples (its own random stream) and DDP averages
the gradients, so one optimizer step sees the configured batch at the configured learning rate whatever N is
(see per_process_batch; N must divide the batch). Resumable: every epoch checkpoints models (save_pretrained),
optimizer and EMA state (torch.save, reloaded with weights_only=True) into OUT/training/checkpoint; a finished
bundle is left alone. Epoch randomness comes from SeedSequence([seed, stage, epoch, process]), so a resumed run
repeats what an uninterrupted one would have drawn.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import time
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage

from registration.image_io import write_json_atomic

from .bundle import BUNDLE_JSON, BundleError, save_bundle
from .checkpoints import first_line as _first_line, load_state, remove_checkpoint, write_checkpoint
from .devices import resolve_device
from .enhancement import EnhancementBank, measure_patterns, resampled_condition
from .models.conditional_unet import MaskConditionedUNet
from .models.roi_autoencoder import ROIAutoencoderKL
from .intensity import denormalize_hu, normalize_hu
from .roi import ROISpec, resample_grid
from .tumor_masks import fit_mask_distribution, label_tumors, tumor_diameters_mm

_STAGES = {"autoencoder": 1, "unet": 2, "cache": 3, "validation": 4, "preview": 5}
PREDICTION_TYPES = ("epsilon", "v_prediction")


def _check_prediction_type(value: str) -> None:
    if value not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, not {value!r}")


@dataclass(frozen=True)
class Preset:
    roi_size_vox: int
    working_spacing_mm: float
    ae_channels: tuple[int, ...]
    ae_norm_groups: int
    latent_channels: int
    unet_channels: tuple[int, ...]
    unet_attention: tuple[bool, ...]
    unet_norm_groups: int
    unet_head_channels: int
    ae_patch_vox: int
    ae_batch: int
    ae_steps_per_epoch: int
    ae_epochs: int
    ae_lr: float
    kl_weight: float  # on the KL summed over the latent, per sample (MONAI tutorials' convention)
    unet_batch: int
    unet_steps_per_epoch: int
    unet_epochs: int
    unet_lr: float
    latent_variants: int  # augmented ROIs per real tumor in the latent cache
    tumor_free_fraction: float  # share of ROIs centred anywhere in the liver
    ddim_steps: int
    blend_margin_mm: float
    # soft-tissue window: tumor contrast (10-50 HU) is a larger share of [-1, 1] and bone edges weigh less
    intensity_window_hu: tuple[float, float] = (-100.0, 250.0)
    ema_max_decay: float = 0.999
    ae_tumor_weight: float = 4.0  # extra L1 weight on tumor voxels (1 + w * tumor fraction)
    ae_target_fraction: float = 0.75  # share of autoencoder patches cut from the target (with tumors)
    # what the UNet predicts: "epsilon" (the noise) or "v_prediction" (Salimans & Ho's velocity, which stays
    # well-conditioned at the high-noise end where few-step DDIM starts)
    prediction_type: str = "epsilon"
    # extra weight of the diffusion loss on latent voxels holding tumor (and one latent voxel around it): the
    # tumor is ~1 % of a ROI's latent, and the rest is a near-zero residual the UNet learns early
    unet_tumor_weight: float = 0.0
    # condition the UNet on each tumor's enhancement pattern (mean change per phase in HU; drawn at sampling
    # from the training tumors of similar size, synthesis/enhancement.py), not on the mask alone
    enhancement_condition: bool = False

    def __post_init__(self):  # fail before hours of autoencoder training, not when the UNet stage starts
        _check_prediction_type(self.prediction_type)

    @property
    def roi(self) -> ROISpec:
        return ROISpec(self.roi_size_vox, self.working_spacing_mm)


PRESETS: dict[str, Preset] = {
    # tests: seconds on CPU
    "tiny": Preset(roi_size_vox=16, working_spacing_mm=6.0, ae_channels=(8, 16, 16), ae_norm_groups=8,
                   latent_channels=4, unet_channels=(16, 32), unet_attention=(False, True), unet_norm_groups=8,
                   unet_head_channels=8, ae_patch_vox=16, ae_batch=4, ae_steps_per_epoch=3, ae_epochs=2,
                   ae_lr=1e-3, kl_weight=1e-6, unet_batch=8, unet_steps_per_epoch=3, unet_epochs=2, unet_lr=5e-4,
                   latent_variants=2, tumor_free_fraction=0.2, ddim_steps=10, blend_margin_mm=9.0,
                   unet_tumor_weight=100.0, enhancement_condition=True),
    # CPU: 96 mm ROI at 3 mm, 16^3 x 4 latent (a latent voxel is 6 mm, as in the gpu preset; at 12 mm the
    # autoencoder decoded a held-out +29 HU arterial enhancement as +4.5 HU, at 6 mm as +30); v-prediction (with
    # epsilon 18 of 27 samples fell outside the real tumors' contrast range); diffusion loss x101 near the tumor
    # (unweighted, 62 % of the samples blended the two real enhancement patterns, weighted 43 %); each tumor's
    # enhancement pattern as a condition (blends 30 %, hypervascular arterial contrast +27 HU, mask-only +11,
    # real +32); 3000 + 6000 steps, ~37 min on one core (the CPU demo passes epochs=20 to stay in its budget).
    # docs/decisions.md, Stage 3
    "cpu": Preset(roi_size_vox=32, working_spacing_mm=3.0, ae_channels=(16, 32), ae_norm_groups=8,
                      latent_channels=4, unet_channels=(16, 32, 64), unet_attention=(False, False, True),
                      unet_norm_groups=8, unet_head_channels=16, ae_patch_vox=16, ae_batch=8,
                      ae_steps_per_epoch=50, ae_epochs=60, ae_lr=1e-3, kl_weight=1e-6, unet_batch=12,
                      unet_steps_per_epoch=50, unet_epochs=120, unet_lr=5e-4, latent_variants=12,
                      tumor_free_fraction=0.2, ddim_steps=20, blend_margin_mm=4.5, prediction_type="v_prediction",
                      unet_tumor_weight=100.0, enhancement_condition=True),
    # one GPU: 96 mm ROI at 1.5 mm, 16^3 x 8 latent (6 mm latent voxel); v-prediction, the tumor-weighted
    # loss and the enhancement condition for the default preset's reasons (trained for one epoch on an H200 only)
    "gpu": Preset(roi_size_vox=64, working_spacing_mm=1.5, ae_channels=(32, 64, 128), ae_norm_groups=16,
                  latent_channels=8, unet_channels=(64, 128, 256), unet_attention=(False, True, True),
                  unet_norm_groups=32, unet_head_channels=32, ae_patch_vox=32, ae_batch=16,
                  ae_steps_per_epoch=200, ae_epochs=50, ae_lr=5e-4, kl_weight=1e-6, unet_batch=32,
                  unet_steps_per_epoch=200, unet_epochs=200, unet_lr=2e-4, latent_variants=32,
                  tumor_free_fraction=0.2, ddim_steps=20, blend_margin_mm=3.0, prediction_type="v_prediction",
                  unet_tumor_weight=100.0, enhancement_condition=True),
}
# the name the "cpu" preset had until 2026-12 (one vocabulary across commands, issue #19); accepted for a release
LEGACY_PRESET_NAMES = {"default": "cpu"}


def make_noise_scheduler(prediction_type: str = "epsilon"):
    """DDPM training schedule (LDM's scaled-linear betas) and the DDIM sampler derived from it."""
    _check_prediction_type(prediction_type)
    from diffusers import DDIMScheduler, DDPMScheduler

    ddpm = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.0015,
                         beta_end=0.0195, prediction_type=prediction_type, clip_sample=False)
    # "trailing" spacing starts sampling at t=999 (pure noise), which few-step DDIM needs
    ddim = DDIMScheduler.from_config(ddpm.config, timestep_spacing="trailing", set_alpha_to_one=True)
    return ddpm, ddim


@dataclass
class _Case:
    name: str
    target: np.ndarray  # (C, Z, Y, X) in [-1, 1] at the working spacing
    normal: np.ndarray
    tumor: np.ndarray  # (Z, Y, X) tumor fraction
    condition: np.ndarray  # (1 [+ C], Z, Y, X) the UNet's tumor condition: fraction [+ fraction x pattern]
    liver_idx: np.ndarray  # (N, 3) liver voxel indices
    tumor_centres: list[np.ndarray]
    patterns_hu: np.ndarray  # (n tumors, C) enhancement pattern of each tumor
    diameters_mm: np.ndarray  # (n tumors,) equivalent diameter


def _prepare_case(name, target: dict, normal: dict, label: sitk.Image, phases, preset: Preset) -> _Case:
    spacing = label.GetSpacing()
    lab = sitk.GetArrayFromImage(label)
    for kind, images in (("target", target), ("normal", normal)):
        if list(images) != list(phases):
            raise ValueError(f"{name}: {kind} phases {list(images)} differ from {list(phases)}")
        for phase, img in images.items():
            if img.GetSize() != label.GetSize():
                raise ValueError(f"{name}: {kind} {phase} has size {img.GetSize()}, label {label.GetSize()}; "
                                 "all images of a case must share the label's grid")
    liver = np.argwhere(lab > 0)
    if not len(liver):
        raise ValueError(f"{name}: the label has no liver (values 1/2)")
    step = preset.working_spacing_mm / np.asarray(spacing, float)[::-1]
    margin = (preset.roi_size_vox / 2 + preset.roi_size_vox / 4 + 2) * step
    start = liver.min(0) - margin
    shape = np.ceil((liver.max(0) + margin - start) / step).astype(int) + 1

    def grid(arrays, cval):
        return resample_grid(np.stack(arrays), start, step, shape, cval=cval)

    tgt = [sitk.GetArrayFromImage(target[p]).astype(np.float32) for p in phases]
    nrm = [sitk.GetArrayFromImage(normal[p]).astype(np.float32) for p in phases]
    # each tumor's pattern and size on the case's own grid, as the Synthesizer labels and sizes a random mask
    tumors, n_tumors = label_tumors(lab == 2)
    patterns = measure_patterns((t - u for t, u in zip(tgt, nrm)), tumors, n_tumors)
    diameters = tumor_diameters_mm(tumors, n_tumors, spacing)
    window = preset.intensity_window_hu
    tgt, nrm = normalize_hu(grid(tgt, -1024.0), window), normalize_hu(grid(nrm, -1024.0), window)
    masks = grid([(lab == 2).astype(np.float32), (lab > 0).astype(np.float32)], 0.0)
    tumor, liver_w = masks[0].astype(np.float32), masks[1] > 0.5
    comps, n = ndimage.label(tumor > 0.5, structure=np.ones((3, 3, 3)))
    centres = [np.rint((np.array([s.start for s in o]) + np.array([s.stop - 1 for s in o])) / 2).astype(int)
               for o in ndimage.find_objects(comps)] if n else []
    condition = (resampled_condition(tumors, patterns, start, step, shape) if preset.enhancement_condition
                 else tumor[None])
    return _Case(name, tgt, nrm, tumor, condition, np.argwhere(liver_w), centres, patterns, diameters)


def _crop(array: np.ndarray, centre: np.ndarray, size: int, cval: float | None = None) -> np.ndarray:
    """size^3 crop centred at `centre`; the prepared volumes carry a margin, so only rare crops need padding
    (with `cval`; default -1 = air for images (C, Z, Y, X), 0 for maps (Z, Y, X))."""
    lo = np.asarray(centre) - size // 2
    spatial = array.shape[-3:]
    src = tuple(slice(max(a, 0), min(a + size, n)) for a, n in zip(lo, spatial))
    if cval is None:
        cval = -1.0 if array.ndim == 4 else 0.0
    out = np.full(array.shape[:-3] + (size,) * 3, cval, np.float32)
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo))
    out[(Ellipsis, *dst)] = array[(Ellipsis, *src)]
    return out


def _sample_centre(case: _Case, rng: np.random.Generator, jitter: int, tumor_free_fraction: float) -> np.ndarray:
    if case.tumor_centres and rng.random() >= tumor_free_fraction:
        centre = case.tumor_centres[rng.integers(len(case.tumor_centres))]
        return centre + rng.integers(-jitter, jitter + 1, 3)
    return case.liver_idx[rng.integers(len(case.liver_idx))]


def _roi_sample(case: _Case, centre, size: int, flips) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    out = [_crop(case.target, centre, size), _crop(case.normal, centre, size), _crop(case.condition, centre, size, 0.0)]
    for axis, flip in enumerate(flips):
        if flip:
            out = [np.flip(a, axis + 1) for a in out]
    return tuple(np.ascontiguousarray(a) for a in out)


def per_process_batch(batch: int, num_processes: int, name: str) -> int:
    """This process's share of the global batch `batch` under `accelerate launch --num_processes N`.

    Chosen over scaling the learning rate with N (issue #16, docs/decisions.md "Scale-out"): the presets' learning
    rates were tuned at their batch, AdamW and the diffusion loss do not follow the linear scaling rule reliably,
    and a global batch keeps the optimisation, and so the bundle, the same on 1 GPU and on N. Not divisible: a
    clear error before any training, rather than a silently different global batch."""
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if batch % num_processes:
        raise ValueError(f"{name} {batch} (the global batch) does not split evenly over {num_processes} processes; "
                         f"launch a number of processes that divides it, or use a preset whose {name} is a multiple "
                         f"of {num_processes}")
    return batch // num_processes


def _epoch_rng(seed: int, stage: str, epoch: int, process: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _STAGES[stage], epoch, process]))


def _torch_generator(seed: int, stage: str, epoch: int, process: int = 0) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(int(_epoch_rng(seed, stage, epoch, process).integers(2**62)))


class _Log:
    FIELDS = ("stage", "epoch", "steps", "train_loss", "val_loss", "seconds")

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, **row) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        with open(self.path, "a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, self.FIELDS)
            if new:
                writer.writeheader()
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _resume_fix(work: Path) -> str:
    return f"delete {work} (the interrupted training) to train afresh, or restore the file"


def _load_into(target, path: Path, work: Path) -> None:
    """optimizer/EMA ``load_state_dict`` from a checkpoint file; a missing, truncated or rejected file, or a state
    of another model, is a BundleError naming it and how to start afresh."""
    state = load_state(path, BundleError, _resume_fix(work))
    try:
        target.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as err:
        raise BundleError(f"{path}: does not fit this model ({_first_line(err)}); {_resume_fix(work)}") from None


def _stage_checkpoint(ckpt: Path, state: dict, stage: str) -> tuple[Path, str, str]:
    """Where a stage resumes from: (model folder, optimizer file, EMA file) of the checkpoint that progress.json
    names (synthesis/checkpoints.py); a run interrupted before that record existed resumes from the folder layout
    it wrote then."""
    name = state.get("checkpoints", {}).get(stage)
    if name:
        return ckpt / name / "model", ckpt / name / "optimizer.pt", ckpt / name / "ema.pt"
    return ckpt / stage, ckpt / f"{stage}_optimizer.pt", ckpt / f"{stage}_ema.pt"


def _read_json(path: Path, fix: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{path}: not valid JSON ({err}); {fix}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: holds a JSON {type(data).__name__}, not an object; {fix}")
    return data


def _train_stage(accelerator, stage: str, model, optimizer, *, state: dict, epochs: int, steps_per_epoch: int,
                 seed: int, step_loss, validate, checkpoint_states, ckpt: Path, log: "_Log", progress_path: Path,
                 progress: bool, after_step=None, desc: str | None = None):
    """One epoch loop for both synthesizer stages (autoencoder, diffusion UNet), from epoch ``state[stage]`` to
    ``epochs``. Per step: ``step_loss(model, rng, generator)`` -> loss, backward, clip, optimizer step,
    ``after_step(model)`` (the UNet's EMA). Per epoch: ``validate(model)`` -> validation loss, then on the main
    process a checkpoint ``ckpt/<stage>_epoch_NNNN`` (the model and ``checkpoint_states(optimizer)``, written whole
    by synthesis/checkpoints.py), then ``state[stage] = epoch + 1`` and the checkpoint's name in progress.json, a
    line of log.csv, and the previous checkpoint removed: the resume point. The epoch's random streams derive from (seed, stage, epoch, process), so a
    resumed run draws what an uninterrupted one would. Returns the unwrapped model."""
    from tqdm import tqdm

    main = accelerator.is_main_process
    model, optimizer = accelerator.prepare(model, optimizer)
    bar = tqdm(total=epochs * steps_per_epoch, initial=state[stage] * steps_per_epoch, desc=desc or stage,
               unit="step", disable=not (progress and main))
    for epoch in range(state[stage], epochs):
        rng = _epoch_rng(seed, stage, epoch, accelerator.process_index)
        gen = _torch_generator(seed, stage, epoch, accelerator.process_index)
        model.train()
        start, losses = time.time(), []
        for _ in range(steps_per_epoch):
            loss = step_loss(model, rng, gen)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if after_step is not None:
                after_step(model)
            losses.append(float(loss.detach()))
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        val = validate(accelerator.unwrap_model(model))
        state[stage] = epoch + 1
        if main:
            name = f"{stage}_epoch_{epoch + 1:04d}"
            write_checkpoint(ckpt, name, {"model": accelerator.unwrap_model(model)}, checkpoint_states(optimizer))
            checkpoints = state.setdefault("checkpoints", {})
            previous, checkpoints[stage] = checkpoints.get(stage), name
            write_json_atomic(progress_path, state)
            remove_checkpoint(ckpt, previous, keep=name)
            log.write(stage=stage, epoch=epoch + 1, steps=(epoch + 1) * steps_per_epoch,
                      train_loss=float(np.mean(losses)), val_loss=val, seconds=time.time() - start)
        accelerator.wait_for_everyone()
    bar.close()
    trained = accelerator.unwrap_model(model)
    accelerator.free_memory()
    return trained


def train_synthesizer(cases, out_dir, preset: str | Preset = "cpu", device: str = "auto",
                      epochs: int | None = None, seed: int = 0, resume: bool = True, progress: bool = True,
                      case_names: list[str] | None = None, lineage_cases: list[str] | None = None,
                      source: dict | None = None) -> Path:
    """Train on `cases` = [(target_phases {phase: sitk.Image}, normal_phases {phase: sitk.Image},
    label sitk.Image 0/1/2), ...] (each case on one grid; any sequence, e.g. one that reads each case from disk
    when indexed, as synthesis.dataset_io.load_training_cases returns) and write the bundle to `out_dir`.

    `epochs` overrides both stages' epoch counts of the preset. Returns the bundle path. Re-running a finished
    training returns at once; an interrupted one resumes from its last epoch (unless resume=False).

    What the bundle learnt from is recorded, so a segmentation experiment can prove it never saw a held-back
    case: ``training.cases`` (`case_names`) and ``training.lineage_cases``, those cases plus `lineage_cases`,
    every other case whose data went into the training data (the normal CTs' inpainter's training cases), or
    None when that is not known. `source` (e.g. {"dataset": ..., "phases": [...]}) is recorded with the settings:
    a folder holding a training on other cases, lineage or source is refused, never reported as this one.
    """
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel

    name = LEGACY_PRESET_NAMES.get(preset, preset) if isinstance(preset, str) else "custom"
    if isinstance(preset, str):
        preset = name
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    if epochs is not None:
        if epochs < 1:
            raise ValueError("epochs must be >= 1")
        preset = replace(preset, ae_epochs=epochs, unet_epochs=epochs)
    if not cases:
        raise ValueError("no training cases")
    out_dir = Path(out_dir)
    work = out_dir / "training"
    ckpt = work / "checkpoint"
    names = list(case_names) if case_names is not None else [f"case_{i:03d}" for i in range(len(cases))]
    if len(names) != len(cases):
        raise ValueError(f"{len(names)} case names for {len(cases)} training cases")
    lineage = sorted(set(names) | set(lineage_cases)) if lineage_cases is not None else None
    settings = {"preset": name, "preset_values": asdict(preset), "seed": seed, "cases": names, "lineage": lineage,
                "source": source or {}}
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as stored
    stored = _stored_settings(work / "settings.json")
    if stored is not None and stored.get("preset") in LEGACY_PRESET_NAMES:  # a run under the preset's old name
        stored["preset"] = LEGACY_PRESET_NAMES[stored["preset"]]
    if (out_dir / BUNDLE_JSON).exists():
        if stored is None:
            raise ValueError(f"{out_dir}: holds a synthesis bundle without a training record; choose another "
                             "output folder")
        if stored == settings and resume:
            return out_dir  # finished: nothing to do
    changed = sorted(k for k in settings if stored is not None and stored.get(k) != settings[k])
    if changed and ((out_dir / BUNDLE_JSON).exists() or (resume and (work / "progress.json").exists())):
        raise ValueError(f"{out_dir}: holds a synthesizer trained with other settings ({', '.join(changed)}); "
                         "choose another output folder or delete this one")
    if not resume or changed:  # start afresh (nothing finished with other settings is lost)
        shutil.rmtree(work, ignore_errors=True)
        (out_dir / BUNDLE_JSON).unlink(missing_ok=True)

    device = resolve_device(device)
    accelerator = Accelerator(cpu=device.type == "cpu")
    main = accelerator.is_main_process
    ae_batch = per_process_batch(preset.ae_batch, accelerator.num_processes, "ae_batch")
    unet_batch = per_process_batch(preset.unet_batch, accelerator.num_processes, "unet_batch")
    if main:
        ckpt.mkdir(parents=True, exist_ok=True)
        write_json_atomic(work / "settings.json", settings)
    accelerator.wait_for_everyone()
    log = _Log(work / "log.csv", main)
    progress_path = work / "progress.json"
    state = (_read_json(progress_path, _resume_fix(work)) if progress_path.exists()
             else {"autoencoder": 0, "unet": 0})
    if not all(isinstance(state.get(k), int) for k in ("autoencoder", "unet")) or not isinstance(
            state.get("checkpoints", {}), dict):
        raise BundleError(f"{progress_path}: needs integer 'autoencoder' and 'unet' epoch counts (and a "
                          f"'checkpoints' mapping); "
                          f"{_resume_fix(work)}")

    # ---- data ---------------------------------------------------------------------------------------------
    # one pass over `cases` (which may load each case lazily): keep only the working-spacing volumes and the
    # label inside the liver's bounding box (for the mask-distribution fit)
    t0 = time.time()
    prepared, labels, phases = [], [], None
    for n, (tgt, nrm, lab) in zip(names, cases):
        phases = phases or list(tgt)
        prepared.append(_prepare_case(n, tgt, nrm, lab, phases, preset))
        lab_array = sitk.GetArrayFromImage(lab)
        idx = np.argwhere(lab_array > 0)
        labels.append((lab_array[tuple(slice(a, b + 1) for a, b in zip(idx.min(0), idx.max(0)))],
                       lab.GetSpacing()))
    n_val = 0 if len(prepared) < 2 else max(1, len(prepared) // 8)
    train_cases, val_cases = prepared[: len(prepared) - n_val], (prepared[len(prepared) - n_val:] or prepared)
    distribution = fit_mask_distribution(labels)
    enhancement_bank = None
    if preset.enhancement_condition:
        tumors = [(p, d) for c in prepared for p, d in zip(c.patterns_hu, c.diameters_mm)]
        if not tumors:
            raise ValueError(f"none of the {len(names)} training cases ({names[0]} .. {names[-1]}) has a tumor "
                             "(label 2) to learn enhancement patterns from")
        enhancement_bank = EnhancementBank([p.tolist() for p, _ in tumors], [float(d) for _, d in tumors])
    del labels
    size, jitter = preset.roi_size_vox, max(1, preset.roi_size_vox // 8)
    prep_seconds = time.time() - t0

    # ---- stage 1: autoencoder -----------------------------------------------------------------------------
    with torch.random.fork_rng(devices=[]):  # initial weights from the seed, global RNG left alone
        torch.manual_seed(seed)
        ae = ROIAutoencoderKL(in_channels=len(phases), latent_channels=preset.latent_channels,
                              channels=preset.ae_channels, norm_num_groups=preset.ae_norm_groups)
    ae_dir, ae_optimizer, _ = _stage_checkpoint(ckpt, state, "autoencoder")
    if state["autoencoder"] > 0:
        ae = ROIAutoencoderKL.from_pretrained(ae_dir, use_safetensors=True)
    val_rois = [_roi_sample(c, centre, size, (False,) * 3) for c in val_cases
                for centre in (c.tumor_centres or [c.liver_idx[len(c.liver_idx) // 2]])]
    val_images = torch.from_numpy(np.stack([v[k] for v in val_rois for k in (0, 1)]))
    t_ae = time.time()
    if state["autoencoder"] < preset.ae_epochs:
        optimizer = torch.optim.AdamW(ae.parameters(), lr=preset.ae_lr)
        if state["autoencoder"] > 0:
            _load_into(optimizer, ae_optimizer, work)
        ae_jitter = max(jitter, (size - preset.ae_patch_vox) // 2)

        def ae_loss(model, rng, gen):
            x, w = (torch.from_numpy(a).to(accelerator.device) for a in _ae_batch(train_cases, rng, preset,
                                                                                    ae_jitter, ae_batch))
            recon, posterior = model(x, generator=gen)
            return ((recon - x).abs() * w).mean() / w.mean() + preset.kl_weight * posterior.kl().mean()

        ae = _train_stage(accelerator, "autoencoder", ae, optimizer, state=state, epochs=preset.ae_epochs,
                          steps_per_epoch=preset.ae_steps_per_epoch, seed=seed, step_loss=ae_loss,
                          validate=lambda model: _ae_validation(model, val_images, accelerator.device),
                          checkpoint_states=lambda optimizer: {"optimizer.pt": optimizer.state_dict()}, ckpt=ckpt,
                          log=log, progress_path=progress_path, progress=progress)
        del optimizer
    ae = ae.to(accelerator.device).eval()
    ae_seconds = time.time() - t_ae

    # ---- latent cache and scales ----------------------------------------------------------------------------
    t_cache = time.time()
    train_cache = _latent_cache(ae, train_cases, _epoch_rng(seed, "cache", 0), preset, size, jitter,
                                accelerator.device)
    val_cache = _latent_cache(ae, val_cases, _epoch_rng(seed, "validation", 0), replace(preset, latent_variants=2),
                              size, jitter, accelerator.device)
    z_all = torch.cat([train_cache["target"], train_cache["normal"]])
    scaling_factor = float(1.0 / z_all.std())
    residual = (train_cache["target"] - train_cache["normal"]) * scaling_factor
    inside = (train_cache["mask"][:, :1] > 0).expand_as(residual)
    target_scale = float(1.0 / residual[inside].std()) if inside.sum() > 1 else 1.0
    ae.register_to_config(scaling_factor=scaling_factor)
    cache_seconds = time.time() - t_cache

    def x0_of(cache):
        return (cache["target"] - cache["normal"]) * scaling_factor * target_scale

    # ---- stage 2: diffusion UNet ----------------------------------------------------------------------------
    ddpm, ddim = make_noise_scheduler(preset.prediction_type)
    unet_dir, unet_optimizer, unet_ema = _stage_checkpoint(ckpt, state, "unet")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        unet = MaskConditionedUNet(latent_channels=preset.latent_channels, channels=preset.unet_channels,
                                   attention_levels=preset.unet_attention, norm_num_groups=preset.unet_norm_groups,
                                   num_head_channels=preset.unet_head_channels, target="residual",
                                   target_scale=target_scale,
                                   enhancement_channels=len(phases) if preset.enhancement_condition else 0)
    if state["unet"] > 0:
        unet = MaskConditionedUNet.from_pretrained(unet_dir, use_safetensors=True)
    ema = EMAModel(unet.parameters(), decay=preset.ema_max_decay, use_ema_warmup=True, inv_gamma=1.0,
                   power=3 / 4)
    if state["unet"] > 0:
        _load_into(ema, unet_ema, work)
    t_unet = time.time()
    if state["unet"] < preset.unet_epochs:
        optimizer = torch.optim.AdamW(unet.parameters(), lr=preset.unet_lr)
        if state["unet"] > 0:
            _load_into(optimizer, unet_optimizer, work)
        ema.to(accelerator.device)
        x0_all, cond_all, mask_all = (x0_of(train_cache), train_cache["normal"] * scaling_factor,
                                      train_cache["mask"])
        timesteps_n = ddpm.config.num_train_timesteps

        def unet_loss(model, rng, gen):
            idx = torch.from_numpy(rng.integers(0, len(x0_all), unet_batch))
            x0, cond, m = (t[idx].to(accelerator.device) for t in (x0_all, cond_all, mask_all))
            noise = torch.randn(x0.shape, generator=gen).to(accelerator.device)
            t = torch.randint(0, timesteps_n, (x0.shape[0],), generator=gen).to(accelerator.device)
            prediction = model(ddpm.add_noise(x0, noise, t), t, cond, m)
            return _diffusion_loss(prediction, _training_target(ddpm, x0, noise, t), m, preset.unet_tumor_weight)

        def unet_validate(raw):  # with the EMA weights, which the bundle ships
            ema.store(raw.parameters())
            ema.copy_to(raw.parameters())
            val = _unet_validation(raw, ddpm, x0_of(val_cache), val_cache["normal"] * scaling_factor,
                                   val_cache["mask"], accelerator.device, seed, preset.unet_tumor_weight)
            ema.restore(raw.parameters())
            return val

        unet = _train_stage(accelerator, "unet", unet, optimizer, state=state, epochs=preset.unet_epochs,
                            steps_per_epoch=preset.unet_steps_per_epoch, seed=seed, step_loss=unet_loss,
                            validate=unet_validate, ckpt=ckpt, log=log, progress_path=progress_path,
                            checkpoint_states=lambda optimizer: {"optimizer.pt": optimizer.state_dict(),
                                                                 "ema.pt": ema.state_dict()},
                            progress=progress, desc="diffusion unet",
                            after_step=lambda model: ema.step(accelerator.unwrap_model(model).parameters()))
        del optimizer
    unet_seconds = time.time() - t_unet
    ema.copy_to(unet.parameters())  # the bundle ships the EMA weights
    unet = unet.cpu().eval()
    ae = ae.cpu().eval()

    # ---- bundle + previews ----------------------------------------------------------------------------------
    if main:
        training = {"preset": name, "seed": seed, "cases": names, "lineage_cases": lineage, "source": source or {},
                    "validation_cases": [c.name for c in val_cases],
                    "autoencoder_epochs": preset.ae_epochs, "unet_epochs": preset.unet_epochs,
                    "seconds": {"prepare": round(prep_seconds, 1), "autoencoder": round(ae_seconds, 1),
                                "latent_cache": round(cache_seconds, 1), "unet": round(unet_seconds, 1)},
                    "latent_rois": int(len(train_cache["target"])), "device": str(accelerator.device),
                    # the batch semantics under accelerate launch (per_process_batch): global = per process x N
                    "processes": accelerator.num_processes,
                    "batch": {"autoencoder": {"global": preset.ae_batch, "per_process": ae_batch},
                              "unet": {"global": preset.unet_batch, "per_process": unet_batch}}}
        save_bundle(out_dir, autoencoder=ae, unet=unet, scheduler=ddim, phases=phases, roi=preset.roi,
                    intensity_window_hu=preset.intensity_window_hu, blend_margin_mm=preset.blend_margin_mm,
                    ddim_steps=preset.ddim_steps, mask_distribution=distribution, training=training,
                    enhancement_bank=enhancement_bank)
        _write_previews(out_dir, val_rois[:4], phases, preset.intensity_window_hu, seed)
        shutil.rmtree(ckpt, ignore_errors=True)
    accelerator.wait_for_everyone()
    return out_dir


def _stored_settings(path: Path) -> dict | None:
    """The training record, with preset fields added after it was written filled in with their defaults (the
    values such a run used), so upgrading the package does not make a finished bundle look foreign."""
    if not path.exists():
        return None
    stored = _read_json(path, f"delete {path.parent.parent} or choose another output folder")
    values = stored.get("preset_values")
    if isinstance(values, dict):
        for field in fields(Preset):
            if field.default is not MISSING and field.name not in values:
                values[field.name] = json.loads(json.dumps(field.default))
    return stored


def _ae_batch(cases: list[_Case], rng: np.random.Generator, preset: Preset, jitter: int, batch: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Autoencoder patches (B, C, p, p, p) and L1 weights (B, 1, p, p, p); B = batch (this process's share),
    preset.ae_batch when not given."""
    patch, images, weights = preset.ae_patch_vox, [], []
    for _ in range(preset.ae_batch if batch is None else batch):
        case = cases[rng.integers(len(cases))]
        centre = _sample_centre(case, rng, jitter, preset.tumor_free_fraction)
        source = case.target if rng.random() < preset.ae_target_fraction else case.normal
        crop, tumor = _crop(source, centre, patch), _crop(case.tumor, centre, patch)[None]
        for axis in np.flatnonzero(rng.random(3) < 0.5):
            crop, tumor = np.flip(crop, axis + 1), np.flip(tumor, axis + 1)
        images.append(crop)
        weights.append(1.0 + preset.ae_tumor_weight * tumor)
    return np.ascontiguousarray(np.stack(images), np.float32), np.ascontiguousarray(np.stack(weights), np.float32)


@torch.no_grad()
def _ae_validation(ae: ROIAutoencoderKL, images: torch.Tensor, device) -> float:
    ae.eval()
    losses = [F.l1_loss(ae.decode(ae.encode(x.to(device)).mode()), x.to(device)).item()
              for x in images.split(8)]
    return float(np.mean(losses))


def _training_target(ddpm, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    if ddpm.config.prediction_type == "v_prediction":
        return ddpm.get_velocity(x0, noise, t)
    return noise


def _tumor_loss_weight(mask: torch.Tensor, tumor_weight: float) -> torch.Tensor:
    """(B, 1, latent grid) loss weight: 1 + tumor_weight on latent voxels within one voxel of the tumor."""
    near_tumor = F.max_pool3d((mask[:, :1] > 0).to(mask.dtype), kernel_size=3, stride=1, padding=1)
    return 1.0 + tumor_weight * near_tumor


def _diffusion_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, tumor_weight: float
                    ) -> torch.Tensor:
    """Tumor-weighted mean squared error (plain MSE for tumor_weight 0)."""
    weight = _tumor_loss_weight(mask, tumor_weight)
    return ((prediction - target) ** 2 * weight).mean() / weight.mean()


@torch.no_grad()
def _unet_validation(unet: MaskConditionedUNet, ddpm, x0, cond, mask, device, seed: int,
                     tumor_weight: float = 0.0) -> float:
    """The training loss (tumor-weighted MSE of the noise or velocity) on the validation ROIs at 8 fixed
    timesteps with fixed noise, so epochs are comparable."""
    unet.eval()
    gen = torch.Generator("cpu").manual_seed(seed + 12345)
    losses = []
    for t_value in np.linspace(0, ddpm.config.num_train_timesteps - 1, 8).astype(int):
        for chunk in torch.arange(len(x0)).split(32):
            noise = torch.randn(x0[chunk].shape, generator=gen)
            t = torch.full((len(chunk),), int(t_value))
            xt = ddpm.add_noise(x0[chunk], noise, t)
            prediction = unet(xt.to(device), t.to(device), cond[chunk].to(device), mask[chunk].to(device))
            target = _training_target(ddpm, x0[chunk], noise, t)
            losses.append(_diffusion_loss(prediction.cpu(), target, mask[chunk], tumor_weight).item() * len(chunk))
    return float(np.sum(losses) / (8 * len(x0)))


@torch.no_grad()
def _latent_cache(ae: ROIAutoencoderKL, cases: list[_Case], rng: np.random.Generator, preset: Preset, size: int,
                  jitter: int, device) -> dict[str, torch.Tensor]:
    """Encode augmented ROI variants of every case: target/normal latents (posterior means, unscaled) and the
    tumor condition (mask [+ mask x pattern]) average-pooled to the latent grid (all on the CPU)."""
    ae.eval()
    samples = []
    for case in cases:
        n_tumor = preset.latent_variants * len(case.tumor_centres)
        n_free = max(int(round(n_tumor * preset.tumor_free_fraction / (1 - preset.tumor_free_fraction))),
                     0 if n_tumor else preset.latent_variants)
        centres = [c + rng.integers(-jitter, jitter + 1, 3) for c in case.tumor_centres
                   for _ in range(preset.latent_variants)]
        centres += [case.liver_idx[rng.integers(len(case.liver_idx))] for _ in range(n_free)]
        samples += [_roi_sample(case, c, size, rng.random(3) < 0.5) for c in centres]
    out = {"target": [], "normal": [], "mask": []}
    f = ae.downsampling_factor
    for i in range(0, len(samples), 16):
        chunk = samples[i:i + 16]
        for key, k in (("target", 0), ("normal", 1)):
            x = torch.from_numpy(np.stack([s[k] for s in chunk])).to(device)
            out[key].append(ae.encode(x).mode().cpu())
        out["mask"].append(F.avg_pool3d(torch.from_numpy(np.stack([s[2] for s in chunk])), f))
    return {k: torch.cat(v) for k, v in out.items()}


def _write_previews(out_dir: Path, val_cache_rois: list, phases, window, seed: int) -> None:
    """PNG of validation ROIs (centre axial slice): normal | synthetic | real per phase, tumor mask contour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .pipeline import Synthesizer

    if not val_cache_rois:
        return
    synth = Synthesizer.from_bundle(out_dir, "cpu")
    normal = np.stack([r[1] for r in val_cache_rois])
    mask = np.stack([r[2] for r in val_cache_rois])
    # what the Synthesizer paints: the normal ROI plus the decoded change, inside the mask
    change = synth.synthesize_rois(normal, mask, seed, output_type="difference")
    synthetic = normal + change * np.clip(mask[:, :1] * 2.0, 0.0, 1.0)
    rows, cols = len(val_cache_rois), 3 * len(phases)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.4 * rows + 0.4), squeeze=False)
    z = normal.shape[2] // 2
    for r, (real, _, m) in enumerate(val_cache_rois):
        for c, phase in enumerate(phases):
            for k, (title, img) in enumerate((("normal", normal[r, c]), ("synthetic", synthetic[r, c]),
                                               ("real", real[c]))):
                ax = axes[r, 3 * c + k]
                ax.imshow(denormalize_hu(img[z], window), cmap="gray", vmin=-150, vmax=250)
                if m[0, z].max() > 0.5 > m[0, z].min():
                    ax.contour(m[0, z] > 0.5, levels=[0.5], colors="red", linewidths=0.5)
                ax.set_axis_off()
                if r == 0:
                    ax.set_title(f"{phase} {title}", fontsize=7)
    fig.suptitle("validation ROIs: normal input | synthetic (real mask) | real (window L50/W400)", fontsize=8)
    fig.tight_layout()
    path = out_dir / "training" / "preview.png"
    fig.savefig(path.with_name(".preview.png"), dpi=100, format="png")
    plt.close(fig)
    os.replace(path.with_name(".preview.png"), path)
