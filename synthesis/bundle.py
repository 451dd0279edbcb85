"""The synthesis bundle: one folder that the trainer, `diff4mm_synthesize` and the tests load.

    BUNDLE/
      model_index.json        diffusers' pipeline index (TumorSynthesisPipeline: autoencoder, unet, scheduler, each
                              as [library = python module, class]), so that
                              ``TumorSynthesisPipeline.from_pretrained(BUNDLE)`` opens the folder (format 3 on)
      diff4mm_bundle.json     format_version, phases, spatial_dims, roi_size_vox, working_spacing_mm,
                              intensity_window_hu, blend_margin_mm, ddim_steps, mask_distribution,
                              enhancement_bank (training tumors' patterns, when the UNet takes them),
                              sha256 of every file below, package versions, training record
      autoencoder/            ROIAutoencoderKL.save_pretrained (config.json + safetensors)
      unet/                   MaskConditionedUNet (EMA weights) .save_pretrained
      scheduler/              DDIMScheduler.save_pretrained (scheduler_config.json)

The JSON is written last (atomically), so a folder without it is an unfinished bundle. Loading verifies the
format version and every hash before any weight is read, and reads weights only from safetensors (no pickle).
The hashes cover the component folders completely: every file under them must be listed and match, so a file
dropped from the list, added or edited is refused, not loaded; model_index.json is listed and checked the same way
(a format-3 bundle must list it; a version-1/2 bundle has none, and one added to it unlisted is refused too). Saved configs hold no local paths (diffusers'
``_name_or_path``, set by ``from_pretrained``, is removed first), so a resumed training gives the same bundle
as an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch

from registration.image_io import write_json_atomic

from .devices import resolve_device  # noqa: F401 (part of this module's API)
from .models.conditional_unet import MaskConditionedUNet
from .models.roi_autoencoder import ROIAutoencoderKL
from .roi import ROISpec
from .enhancement import EnhancementBank
from .tumor_masks import TumorMaskDistribution

FORMAT_VERSION = 3  # 2: optional enhancement_bank (a UNet conditioned on enhancement patterns); 3: model_index.json
READABLE_VERSIONS = (1, 2, 3)  # a version-1 bundle is a mask-only one and loads as before; 1 and 2 have no index
BUNDLE_JSON = "diff4mm_bundle.json"
MODEL_INDEX = "model_index.json"  # diffusers' DiffusionPipeline index, listed in the bundle's hashed files
COMPONENTS = ("autoencoder", "unet", "scheduler")
_VERSIONED_PACKAGES = ("nnunetv2-diff4mm", "torch", "diffusers", "monai", "numpy", "safetensors")


class BundleError(ValueError):
    """A synthesis bundle is missing, incomplete, corrupted, of another format, or does not fit the data."""


@dataclass
class SynthesisBundle:
    path: Path
    phases: list[str]
    roi: ROISpec
    intensity_window_hu: tuple[float, float]
    blend_margin_mm: float
    ddim_steps: int
    mask_distribution: TumorMaskDistribution
    autoencoder: ROIAutoencoderKL
    unet: MaskConditionedUNet
    scheduler: object  # a diffusers scheduler (DDIMScheduler)
    info: dict = field(default_factory=dict)
    enhancement_bank: EnhancementBank | None = None  # set when the UNet is conditioned on enhancement patterns

    def check_phases(self, phases, where: str = "dataset") -> None:
        """Raise BundleError unless `phases` (a dataset's phase order) equals the bundle's."""
        if list(phases) != list(self.phases):
            raise BundleError(f"{self.path / BUNDLE_JSON}: trained on phases {list(self.phases)}, but the {where} "
                              f"has phases {list(phases)}; train a bundle on this dataset or reorder its phases")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


LOCAL_PATH_KEY = "_name_or_path"  # diffusers' from_pretrained records the folder it read in the config


def without_local_path(obj):
    """Drop ``_name_or_path`` from a diffusers model's/scheduler's config (in place; returns `obj`), so that
    ``save_pretrained`` writes no local path: a model loaded from a checkpoint and saved again gives the same
    config.json as one that was never reloaded."""
    internal = getattr(obj, "_internal_dict", None)
    if internal is not None and LOCAL_PATH_KEY in internal:
        from diffusers.configuration_utils import FrozenDict

        obj._internal_dict = FrozenDict({k: v for k, v in internal.items() if k != LOCAL_PATH_KEY})
    return obj


def hash_files(root: Path, folders=None, top_files=()) -> dict[str, str]:
    """sha256 of every file under `root` (or under its subfolders `folders`, plus those of the files `top_files`
    directly in `root` that exist), keyed by posix path relative to `root`."""
    root = Path(root)
    return {rel: _sha256(root / rel) for rel in _file_names(root, folders, top_files)}


def _file_names(root: Path, folders=None, top_files=()) -> list[str]:
    tops = [root / f for f in folders] if folders is not None else [root]
    names = [p.relative_to(root).as_posix() for top in tops for p in sorted(top.rglob("*")) if p.is_file()]
    extra = [name for name in top_files if folders is not None and (root / name).is_file()]
    return extra + names


def verify_files(root: Path, listed, listing: Path, error: type[Exception] = None, folders=None,
                 ignore=(), fix: str = "copy it again", top_files=()) -> None:
    """Raise `error` (default BundleError) unless the files under `root` (or its subfolders `folders`, plus those
    of the files `top_files` directly in `root` that exist) are exactly those `listed` ({relative path: sha256},
    from the manifest `listing`) with those hashes. `ignore`: relative paths not covered (the manifest itself)."""
    error = error or BundleError
    root = Path(root)
    if not isinstance(listed, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in listed.items()):
        raise error(f"{listing}: 'files' must map relative paths to sha256 strings, got "
                    f"{type(listed).__name__}; the manifest is damaged, {fix}")
    for rel in listed:
        parts = Path(rel).parts
        outside = folders is not None and (not parts or parts[0] not in folders) and rel not in top_files
        if Path(rel).is_absolute() or ".." in parts or outside:
            raise error(f"{listing}: lists {rel!r}, which is outside {root}"
                        f"{' ' + '/, '.join(folders) + '/' if folders is not None else ''}; {fix}")
    present = {rel for rel in _file_names(root, folders, top_files) if rel not in ignore}
    unlisted = sorted(present - set(listed))
    if unlisted:
        raise error(f"{root / unlisted[0]}: not listed in {listing.name} (added, or dropped from the list after an "
                    f"edit){f', and {len(unlisted) - 1} more' if len(unlisted) > 1 else ''}; remove it or {fix}")
    for rel, digest in listed.items():
        file = root / rel
        if not file.is_file():
            raise error(f"{file}: missing file (listed in {listing.name}); {fix}")
        if _sha256(file) != digest:
            raise error(f"{file}: sha256 mismatch with {listing.name} (corrupted or modified); {fix}")


def save_bundle(path, *, autoencoder: ROIAutoencoderKL, unet: MaskConditionedUNet, scheduler, phases,
                roi: ROISpec, intensity_window_hu, blend_margin_mm: float, ddim_steps: int,
                mask_distribution: TumorMaskDistribution, training: dict | None = None,
                enhancement_bank: EnhancementBank | None = None) -> Path:
    """Write a bundle folder (components and model_index.json first, the JSON with their hashes last and
    atomically)."""
    from .pipeline import TumorSynthesisPipeline  # the pipeline module imports this one
    path = Path(path)
    wanted = int(unet.config.get("enhancement_channels", 0))
    if wanted and (enhancement_bank is None or enhancement_bank.channels != wanted):
        raise ValueError(f"{path}: the UNet takes {wanted}-phase enhancement patterns; pass the enhancement_bank "
                         "of its training tumors")
    path.mkdir(parents=True, exist_ok=True)
    (path / BUNDLE_JSON).unlink(missing_ok=True)
    (path / MODEL_INDEX).unlink(missing_ok=True)
    for component in COMPONENTS:  # a folder reused from an older bundle may hold files this one does not write
        shutil.rmtree(path / component, ignore_errors=True)
    without_local_path(autoencoder).save_pretrained(path / "autoencoder", safe_serialization=True)
    without_local_path(unet).save_pretrained(path / "unet", safe_serialization=True)
    without_local_path(scheduler).save_pretrained(path / "scheduler")
    # diffusers' own writer: {"_class_name": "TumorSynthesisPipeline", "autoencoder": [module, class], ...}
    TumorSynthesisPipeline(autoencoder, unet, scheduler).save_config(path)
    files = hash_files(path, COMPONENTS, top_files=(MODEL_INDEX,))
    config = {
        "format_version": FORMAT_VERSION,
        "phases": list(phases),
        "spatial_dims": 3,
        "roi_size_vox": int(roi.size_vox),
        "working_spacing_mm": float(roi.spacing_mm),
        "intensity_window_hu": [float(v) for v in intensity_window_hu],
        "blend_margin_mm": float(blend_margin_mm),
        "ddim_steps": int(ddim_steps),
        "mask_distribution": mask_distribution.to_json(),
        "enhancement_bank": enhancement_bank.to_json() if enhancement_bank is not None else None,
        "files": files,
        "versions": _versions(),
        "training": training or {},
    }
    write_json_atomic(path / BUNDLE_JSON, config)
    return path


def read_bundle_config(path) -> dict:
    """The bundle JSON after checking the folder, the format version and every file hash (no weights read)."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle folder; train one with diff4mm_train_synthesizer")
    json_path = path / BUNDLE_JSON
    if not json_path.is_file():
        raise BundleError(f"{json_path}: missing; {path} is not a (finished) synthesis bundle")
    try:
        config = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{json_path}: not valid JSON ({err}); copy the bundle again or retrain it") from None
    if not isinstance(config, dict):
        raise BundleError(f"{json_path}: holds a JSON {type(config).__name__}, not an object; copy the bundle again "
                          "or retrain it")
    version = config.get("format_version")
    if version not in READABLE_VERSIONS:
        raise BundleError(f"{json_path}: format_version {version!r}, this package reads "
                          f"{' and '.join(map(str, READABLE_VERSIONS))}; "
                          "retrain the bundle with this version")
    missing = [k for k in ("phases", "roi_size_vox", "working_spacing_mm", "intensity_window_hu",
                           "blend_margin_mm", "ddim_steps", "mask_distribution", "files") if k not in config]
    if missing:
        raise BundleError(f"{json_path}: missing key(s) {', '.join(missing)}")
    for component in COMPONENTS:
        if not (path / component).is_dir():
            raise BundleError(f"{path / component}: missing folder of the bundle")
    if version >= 3 and MODEL_INDEX not in config["files"]:
        raise BundleError(f"{json_path}: format_version {version} but {MODEL_INDEX} is not listed in its files; "
                          "copy the bundle again or retrain it")
    verify_files(path, config["files"], json_path, BundleError, folders=COMPONENTS,
                 fix="copy the bundle again or retrain it", top_files=(MODEL_INDEX,))
    for component in ("autoencoder", "unet"):
        if not any(Path(rel).parts[0] == component and rel.endswith(".safetensors") for rel in config["files"]):
            raise BundleError(f"{path / component}: no .safetensors weights listed in {BUNDLE_JSON}")
    return config


def load_bundle(path, device: str | torch.device = "cpu") -> SynthesisBundle:
    """Verify and load a bundle; models are in eval mode on `device`."""
    from diffusers import DDIMScheduler

    path = Path(path)
    config = read_bundle_config(path)
    device = resolve_device(device)
    models = {}
    for name, cls in (("autoencoder", ROIAutoencoderKL), ("unet", MaskConditionedUNet)):
        try:
            models[name] = cls.from_pretrained(path / name, use_safetensors=True).to(device).eval()
        except (OSError, ValueError, RuntimeError, TypeError, KeyError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise BundleError(f"{path / name}: cannot load {cls.__name__} ({first})") from None
    wanted = int(models["unet"].config.get("enhancement_channels", 0))
    bank = None
    if wanted:
        try:
            bank = EnhancementBank.from_json(config["enhancement_bank"])
        except (KeyError, TypeError, ValueError) as err:
            raise BundleError(f"{path / BUNDLE_JSON}: the UNet takes enhancement patterns but the enhancement_bank "
                              f"is missing or malformed ({type(err).__name__}: {err})") from None
        if bank.channels != wanted or wanted != len(config["phases"]):
            raise BundleError(f"{path / BUNDLE_JSON}: enhancement_bank has {bank.channels} phases, the UNet takes "
                              f"{wanted}, the bundle lists {len(config['phases'])}; retrain the bundle")
    try:
        scheduler = DDIMScheduler.from_pretrained(path / "scheduler")
    except (OSError, ValueError) as err:
        raise BundleError(f"{path / 'scheduler'}: cannot load the scheduler ({err})") from None
    return SynthesisBundle(
        path=path, phases=list(config["phases"]),
        roi=ROISpec(int(config["roi_size_vox"]), float(config["working_spacing_mm"])),
        intensity_window_hu=tuple(config["intensity_window_hu"]), blend_margin_mm=float(config["blend_margin_mm"]),
        ddim_steps=int(config["ddim_steps"]),
        mask_distribution=TumorMaskDistribution.from_json(config["mask_distribution"]),
        autoencoder=models["autoencoder"], unet=models["unet"], scheduler=scheduler, info=config,
        enhancement_bank=bank,
    )
