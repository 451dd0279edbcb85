"""Tumor synthesis: the diffusers-style ROI pipeline and the array-level `Synthesizer` API.

`TumorSynthesisPipeline` (components: autoencoder, unet, scheduler) turns normal ROIs + tumor conditions (in
[-1, 1] / the mask in [0, 1] [+ mask x enhancement pattern], on the working grid) into ROIs with tumors: encode the
normal ROI, run DDIM in the latent space conditioned on (normal latent, condition), decode. It is a diffusers
`DiffusionPipeline`: ``TumorSynthesisPipeline.from_pretrained(BUNDLE)`` opens a synthesis bundle (its
model_index.json names the components; the hashes of diff4mm_bundle.json are verified first; a format-1/2 bundle,
written without model_index.json, loads through `load_bundle` instead), ``save_pretrained(DIR)`` writes a plain
pipeline folder (model_index.json + component folders, safetensors, no local paths; no diff4mm_bundle.json - a
bundle for the Synthesizer is written by `synthesis.bundle.save_bundle`). Local folders only: nothing is
downloaded. ``__call__`` returns a `TumorSynthesisPipelineOutput` (``.images``), or a 1-tuple with
``return_dict=False``.

`Synthesizer` works on whole cases in HU: it draws a random tumor mask inside the liver from the bundle's fitted
distribution (unless one is given), gives each tumor component an enhancement pattern (drawn from the bundle's
training tumors of similar size, unless given; bundles whose UNet takes one, synthesis/enhancement.py), synthesises
one ROI per tumor component (one batched pipeline call) and adds what the tumor changes - decoded synthetic ROI
minus decoded normal ROI - to the normal volume, weighted by 1 inside the mask and a distance feather (to 0 at
`blend_margin_mm` outside it). Adding the change rather than pasting the decoded ROI keeps the scan's own noise and
texture (the autoencoder returns a smoothed ROI, and a smooth patch would be a give-away for a segmenter) and
cancels the autoencoder's reconstruction error of the background. Outside the margin the output is exactly the
normal input. Deterministic for a fixed `np.random.Generator` state (the diffusion noise is drawn on the CPU from a
seed taken from it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from scipy import ndimage

from .bundle import (BUNDLE_JSON, COMPONENTS, MODEL_INDEX, BundleError, SynthesisBundle, load_bundle,
                     read_bundle_config, without_local_path)
from .enhancement import roi_condition
from .models.conditional_unet import MaskConditionedUNet
from .models.roi_autoencoder import ROIAutoencoderKL
from .intensity import normalize_hu
from .roi import (add_change, component_centre, component_extent_mm, extract_roi, feather_weight,
                  roi_box, roi_to_case)
from .tumor_masks import TumorMaskDistribution, label_tumors, random_tumor_mask, tumor_diameters_mm


@dataclass
class TumorSynthesisPipelineOutput(BaseOutput):
    """images: (B, C, n, n, n) - the decoded ROIs, their difference to the decoded normal ROIs, or the latents, as
    `output_type` asked."""

    images: torch.Tensor


class TumorSynthesisPipeline(DiffusionPipeline):
    def __init__(self, autoencoder: ROIAutoencoderKL, unet: MaskConditionedUNet, scheduler):
        super().__init__()
        self.register_modules(autoencoder=autoencoder, unet=unet, scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "TumorSynthesisPipeline":
        """Open a local synthesis bundle or `save_pretrained` folder (diffusers' loader, safetensors only,
        ``local_files_only``). A bundle's diff4mm_bundle.json (format version, every hash) is verified before any
        weight is read. A format-1/2 bundle (no model_index.json) loads through `load_bundle` (``torch_dtype`` is
        the only option it takes); re-save it with `save_bundle` to make it a format-3 one."""
        path = Path(pretrained_model_name_or_path)
        if not path.is_dir():
            raise BundleError(f"{path}: no such folder; TumorSynthesisPipeline loads local folders only (a synthesis "
                              "bundle or a save_pretrained folder), nothing is downloaded")
        if (path / BUNDLE_JSON).is_file():
            config = read_bundle_config(path)
            if MODEL_INDEX not in config["files"]:
                return cls._from_old_bundle(path, config["format_version"], **kwargs)
        elif not (path / MODEL_INDEX).is_file():
            raise BundleError(f"{path}: neither a synthesis bundle ({BUNDLE_JSON}) nor a diffusers pipeline folder "
                              f"({MODEL_INDEX}); train one with diff4mm_train_synthesizer")
        if kwargs.get("use_safetensors") is False:
            raise ValueError("a TumorSynthesisPipeline's weights are read from safetensors only")
        kwargs.update(use_safetensors=True, local_files_only=True)
        return super().from_pretrained(path, **kwargs)

    @classmethod
    def _from_old_bundle(cls, path: Path, version, torch_dtype: torch.dtype | None = None, **kwargs):
        unused = sorted(set(kwargs) - {"use_safetensors", "local_files_only"})
        if unused:
            raise BundleError(f"{path / BUNDLE_JSON}: a format-{version} bundle (no {MODEL_INDEX}) loads through "
                              f"load_bundle, which takes no {', '.join(unused)}; re-save it with "
                              "synthesis.bundle.save_bundle (format 3) to open it with diffusers' options")
        bundle = load_bundle(path, "cpu")
        pipe = cls(bundle.autoencoder, bundle.unet, bundle.scheduler)
        return pipe.to(dtype=torch_dtype) if torch_dtype is not None else pipe

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True, **kwargs) -> None:
        """diffusers' save_pretrained (model_index.json + autoencoder/, unet/, scheduler/), safetensors only, with
        no local path (``_name_or_path``) in any config, so a loaded-and-saved pipeline equals a fresh one."""
        if not safe_serialization:
            raise ValueError("a TumorSynthesisPipeline's weights are written as safetensors only")
        for module in (self, *(getattr(self, name) for name in COMPONENTS)):
            without_local_path(module)
        super().save_pretrained(save_directory, safe_serialization=True, **kwargs)

    def encode(self, roi: torch.Tensor) -> torch.Tensor:
        """ROI in [-1, 1] -> scaled latent (posterior mean x scaling_factor)."""
        return self.autoencoder.encode(roi).mode() * self.autoencoder.config.scaling_factor

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(latent / self.autoencoder.config.scaling_factor).clamp(-1.0, 1.0)

    def target_to_latent(self, x0: torch.Tensor, normal_latent: torch.Tensor) -> torch.Tensor:
        cfg = self.unet.config
        return (normal_latent + x0 / cfg.target_scale) if cfg.target == "residual" else x0 / cfg.target_scale

    @torch.no_grad()
    def __call__(self, normal_roi: torch.Tensor, mask_roi: torch.Tensor,
                 generator: torch.Generator | None = None, num_inference_steps: int = 20,
                 output_type: str = "image", return_dict: bool = True
                 ) -> TumorSynthesisPipelineOutput | tuple[torch.Tensor]:
        """normal_roi (B, C, n, n, n) in [-1, 1], mask_roi (B, 1, n, n, n) in [0, 1] (or the (B, 1 + C, ...)
        condition with enhancement patterns, for a UNet that takes them) -> (B, C, n, n, n):
        output_type "image": the decoded ROI in [-1, 1]; "difference": decoded ROI minus the decoded normal ROI
        (what the tumor changes; the Synthesizer adds it to the normal CT); "latent": the sampled latent; as
        `TumorSynthesisPipelineOutput.images`, or the tuple ``(images,)`` with ``return_dict=False``.
        Noise comes from `generator` (CPU generators give the same result on any device)."""
        device = self._execution_device
        dtype = self.unet.dtype
        normal_roi = normal_roi.to(device, dtype)
        mask_roi = mask_roi.to(device, dtype)
        normal_latent = self.encode(normal_roi)
        mask_latent = self.unet.pool_mask(mask_roi, normal_latent.shape[2:])
        x = randn_tensor(normal_latent.shape, generator=generator, device=device, dtype=dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        x = x * self.scheduler.init_noise_sigma
        for t in self.progress_bar(self.scheduler.timesteps):
            # noise or velocity, as the scheduler's prediction_type says
            model_output = self.unet(self.scheduler.scale_model_input(x, t), t, normal_latent, mask_latent)
            x = self.scheduler.step(model_output, t, x, eta=0.0).prev_sample
        latent = self.target_to_latent(x, normal_latent)
        if output_type == "latent":
            images = latent
        elif output_type == "difference":
            images = self.decode(latent) - self.decode(normal_latent)
        else:
            images = self.decode(latent)
        return TumorSynthesisPipelineOutput(images=images) if return_dict else (images,)


class Synthesizer:
    """Paint random (or given) tumors into normal multi-phase CTs. Build with :meth:`from_bundle`."""

    def __init__(self, bundle: SynthesisBundle, device: str | torch.device | None = None,
                 match_enhancement: bool = True):
        self.bundle = bundle
        # Bundles conditioned on enhancement patterns: shift each painted tumor so that its mean change per phase
        # is the pattern it was asked for (see `_match_enhancement`). False paints what the diffusion model gives.
        self.match_enhancement = match_enhancement
        self.pipeline = TumorSynthesisPipeline(bundle.autoencoder, bundle.unet, bundle.scheduler)
        if device is not None:
            self.pipeline.to(device)
        self.pipeline.set_progress_bar_config(disable=True)
        self.mask_distribution = self._fitting_distribution(bundle.mask_distribution)

    @classmethod
    def from_bundle(cls, path, device: str | torch.device = "cpu", match_enhancement: bool = True) -> "Synthesizer":
        return cls(load_bundle(path, device), match_enhancement=match_enhancement)

    @property
    def phases(self) -> list[str]:
        return list(self.bundle.phases)

    def _fitting_distribution(self, dist: TumorMaskDistribution) -> TumorMaskDistribution:
        """Cap tumor size so that a tumor plus its blend margin always fits inside one ROI. A tumor's farthest
        boundary point is at most diameter/2 * (1 + elongation) * (1 + 3 lobulation) from its centre."""
        reach_per_diameter = (1 + dist.elongation) * (1 + 3 * dist.lobulation)
        cap = (self.bundle.roi.usable_mm - 2 * self.bundle.blend_margin_mm) / reach_per_diameter
        data = dist.to_json()
        data["max_diameter_mm"] = float(min(dist.max_diameter_mm, cap))
        data["min_diameter_mm"] = float(min(dist.min_diameter_mm, data["max_diameter_mm"]))
        return TumorMaskDistribution.from_json(data)

    def random_mask(self, liver_mask: np.ndarray, spacing_xyz, rng: np.random.Generator) -> np.ndarray:
        mask, _ = random_tumor_mask(np.asarray(liver_mask, bool), spacing_xyz, rng, self.mask_distribution)
        return mask.astype(bool)

    def __call__(self, normal_hu: np.ndarray, spacing_xyz, liver_mask: np.ndarray, rng: np.random.Generator,
                 mask: np.ndarray | None = None, num_inference_steps: int | None = None,
                 enhancement_hu=None) -> tuple[np.ndarray, np.ndarray]:
        """normal_hu (C, Z, Y, X) HU in the bundle's phase order, spacing_xyz = voxel size of axes (X, Y, Z) =
        (axis 2, axis 1, axis 0), liver_mask (Z, Y, X) -> (image_hu float32 (C, Z, Y, X), label uint8 (Z, Y, X):
        1 liver, 2 tumor). `enhancement_hu`: the mean change per phase (HU) to paint, one (C,) row for every
        tumor component (in scipy.ndimage.label order) or one for all; default: drawn from the bundle."""
        b = self.bundle
        normal_hu = np.asarray(normal_hu)
        liver_mask = np.asarray(liver_mask, bool)
        if normal_hu.ndim != 4 or normal_hu.shape[0] != len(b.phases):
            raise ValueError(f"normal_hu must be (C={len(b.phases)} phases {b.phases}, Z, Y, X), "
                             f"got shape {normal_hu.shape}")
        if liver_mask.shape != normal_hu.shape[1:]:
            raise ValueError(f"liver_mask shape {liver_mask.shape} != image shape {normal_hu.shape[1:]}")
        if mask is None:
            mask = self.random_mask(liver_mask, spacing_xyz, rng)
        mask = np.asarray(mask, bool)
        if mask.shape != liver_mask.shape:
            raise ValueError(f"mask shape {mask.shape} != image shape {liver_mask.shape}")
        if (mask & ~liver_mask).any():
            raise ValueError(f"mask has {int((mask & ~liver_mask).sum())} voxels outside liver_mask; tumors are painted "
                             "and labelled inside the liver only: pass mask & liver_mask")
        image = normal_hu.astype(np.float32, copy=True)
        label = liver_mask.astype(np.uint8)
        label[mask] = 2
        components, n = label_tumors(mask)
        seed = int(rng.integers(0, 2**63 - 1))
        patterns = self.enhancement_patterns(components, n, spacing_xyz, rng, enhancement_hu)
        if n == 0:
            return image, label
        centres, boxes, weights, inside = [], [], [], []
        mask_f = mask.astype(np.float32)
        normal_rois, mask_rois = [], []
        objects = ndimage.find_objects(components)
        for k, obj in enumerate(objects, start=1):
            comp = np.zeros(mask.shape, bool)
            comp[obj] = components[obj] == k
            extent = component_extent_mm(comp[obj], spacing_xyz)
            if np.any(extent + 2 * b.blend_margin_mm > b.roi.usable_mm):
                raise ValueError(f"tumor component {k} spans {np.round(extent[::-1], 1).tolist()} mm (x, y, z); with "
                                 f"the {b.blend_margin_mm} mm blend margin it must fit in {b.roi.usable_mm:.0f} mm "
                                 "(the bundle's ROI)")
            centre = component_centre(comp)
            box = roi_box(mask.shape, spacing_xyz, centre, b.roi)
            centres.append(centre)
            boxes.append(box)
            weights.append(feather_weight(comp[box], spacing_xyz, b.blend_margin_mm))
            inside.append(comp[box])
            normal_rois.append(normalize_hu(extract_roi(normal_hu, spacing_xyz, centre, b.roi, cval=-1024.0),
                                            b.intensity_window_hu))
            if patterns is None:
                mask_rois.append(extract_roi(mask_f, spacing_xyz, centre, b.roi, cval=0.0)[None])
            else:
                mask_rois.append(roi_condition(components, patterns, spacing_xyz, centre, b.roi))
        change = self.synthesize_rois(np.stack(normal_rois), np.stack(mask_rois), seed, num_inference_steps,
                                      output_type="difference")
        scale = (b.intensity_window_hu[1] - b.intensity_window_hu[0]) / 2.0  # normalised units -> HU
        for k, (roi, centre, box, weight) in enumerate(zip(change, centres, boxes, weights)):
            case_change = roi_to_case(roi * scale, spacing_xyz, centre, b.roi, box)
            if patterns is not None and self.match_enhancement:
                case_change = self._match_enhancement(case_change, inside[k], patterns[k])
            add_change(image, case_change, weight, box)
        return image, label

    @staticmethod
    def _match_enhancement(change: np.ndarray, component: np.ndarray, pattern: np.ndarray) -> np.ndarray:
        """Shift one tumor's change (C, box) per phase so that its mean inside the tumor is `pattern` (HU).

        Why (docs/decisions.md, "Synthetic tumor fidelity"): a bundle trained on few cases renders only a part of
        the pattern it is conditioned on (3 training cases, 10 epochs: 0.36 of it on average, and hypervascular
        patterns not at all), so nnU-Net learns tumor labels on liver that looks normal and stops finding tumors.
        The diffusion model keeps what it does well - the tumor's shape, heterogeneity and rim, which stay as the
        deviation from the mean - and the mean contrast comes from the real tumors of the enhancement bank.
        Added as a constant under the same feather weight, so the edge still fades into the liver. No library
        does this; it is four lines."""
        realised = change[:, component].mean(axis=1)
        offset = (np.asarray(pattern, np.float32) - realised).astype(np.float32)
        return change + offset[:, None, None, None]

    def enhancement_patterns(self, components: np.ndarray, n: int, spacing_xyz, rng: np.random.Generator,
                             given=None) -> np.ndarray | None:
        """(n, C) enhancement pattern (HU) of each of the n labelled tumor components: `given`, or drawn from the
        bundle's training tumors of similar size; None for a UNet conditioned on the mask alone."""
        bank = self.bundle.enhancement_bank
        if bank is None:
            if given is not None:
                raise ValueError(f"{self.bundle.path}: this bundle's UNet is conditioned on the mask alone; it "
                                 "cannot take enhancement_hu")
            return None
        if given is not None:
            given = np.asarray(given, np.float32)
            if given.ndim == 0 or not np.isfinite(given).all():
                raise ValueError(f"enhancement_hu must be finite HU values, one per phase {self.phases}, got {given}")
            if given.ndim == 1:
                given = np.broadcast_to(given, (n, given.shape[0]))
            if given.shape != (n, bank.channels):
                raise ValueError(f"enhancement_hu must be ({bank.channels},) or ({n}, {bank.channels}) (one row "
                                 f"per tumor component, phases {self.phases}), got shape {given.shape}")
            return given
        diameters = tumor_diameters_mm(components, n, spacing_xyz)
        return np.stack([bank.draw(d, rng) for d in diameters]) if n else np.zeros((0, bank.channels), np.float32)

    def synthesize_rois(self, normal_rois: np.ndarray, mask_rois: np.ndarray, seed: int,
                        num_inference_steps: int | None = None, output_type: str = "image") -> np.ndarray:
        """(B, C, n, n, n) normalised normal ROIs + (B, 1 [+ C], n, n, n) tumor conditions (mask [+ mask x
        pattern], as the bundle's UNet takes) -> (B, C, n, n, n) normalised synthetic ROIs (or their
        difference to the decoded normal ROI, see TumorSynthesisPipeline)."""
        generator = torch.Generator("cpu").manual_seed(seed)
        out = self.pipeline(torch.from_numpy(np.ascontiguousarray(normal_rois, np.float32)),
                            torch.from_numpy(np.ascontiguousarray(mask_rois, np.float32)), generator=generator,
                            num_inference_steps=num_inference_steps or self.bundle.ddim_steps,
                            output_type=output_type).images
        return out.float().cpu().numpy()
