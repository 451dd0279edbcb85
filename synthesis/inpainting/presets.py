"""Stage 2's constants, its error type and the inpainter presets (model and training sizes)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace





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


