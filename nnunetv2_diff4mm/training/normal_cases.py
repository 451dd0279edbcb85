"""Normal (tumor-free) CTs brought into the plans' preprocessed space with nnU-Net's own preprocessor.

The synthesizer paints tumors into these; doing it in preprocessed space means a synthetic sample enters
nnU-Net's data loader exactly like a real one (same spacing, crop and CT normalisation). Cached as .npz in
`$nnUNet_preprocessed/DatasetXXX/diff4mm/<plans>_<configuration>/normal_<source folder>_<hash>/` (one cache per
folder of normal CTs, `cache_folder`) and reused while the source files and plans are unchanged.

The cache is shared by every rank, fold and trainer variant of a plans/configuration, which nnU-Net users start
side by side, so any number of processes may fill it at once: each case is written once, under its own file lock
(`.<case>.lock`, fcntl/flock through the `filelock` package, released by the kernel if its holder dies), by
whoever gets the lock first; the others wait, then find it cached. Files are written to a unique temporary
name and moved into place with os.replace, so a reader sees either no file or a complete one, and `cases.json`
(every case the cache holds, whichever process cached it) is rewritten the same way under its own lock.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from registration.image_io import write_atomic, write_text_atomic

# How long a writer waits for another process that is preprocessing the same case (a few seconds per case on a
# CPU; minutes only for a huge CT on a loaded machine). On timeout filelock.Timeout reaches the trainer, which
# logs it and trains on real samples only.
LOCK_TIMEOUT_S = 1800.0
MANIFEST = "cases.json"


@dataclass(frozen=True)
class IntensityMapping:
    """nnU-Net's CTNormalization of one channel, and its inverse inside the clipping window."""

    mean: float
    std: float
    lower: float
    upper: float

    def to_hu(self, normalized: np.ndarray) -> np.ndarray:
        return normalized * max(self.std, 1e-8) + self.mean

    def to_normalized(self, hu: np.ndarray) -> np.ndarray:
        return (np.clip(hu, self.lower, self.upper) - self.mean) / max(self.std, 1e-8)

    @classmethod
    def from_plans(cls, plans: dict, channel: int) -> "IntensityMapping":
        p = plans["foreground_intensity_properties_per_channel"][str(channel)]
        return cls(float(p["mean"]), float(p["std"]), float(p["percentile_00_5"]), float(p["percentile_99_5"]))


def intensity_mappings(plans: dict, configuration_manager) -> list[IntensityMapping]:
    schemes = configuration_manager.normalization_schemes
    if any(s != "CTNormalization" for s in schemes):
        raise ValueError(f"Diff4MMTrainer needs CT normalisation on every channel (dataset.json channel_names "
                         f"'CT'); the plans use {schemes}")
    return [IntensityMapping.from_plans(plans, c) for c in range(len(schemes))]


def cache_folder(cache_root: Path, normal_dir: Path) -> Path:
    """The cache of one folder of normal CTs: `cache_root/normal_<folder name>_<sha256 of its path, 10 hex>`.

    One cache per source folder, because folds and ablations hold different normal CTs of the same cases (fold 5's
    inpainter vs fold 6's, a learned fill vs a median fill): cached by case name alone, two trainings started side by
    side would rewrite each other's files, and one would paint into the other's normal CTs."""
    key = hashlib.sha256(str(Path(normal_dir).resolve()).encode("utf-8")).hexdigest()[:10]
    return Path(cache_root) / f"normal_{Path(normal_dir).name}_{key}"


def _fingerprint(files: list[Path], plans_identifier: str, configuration: str) -> str:
    h = hashlib.sha256(f"{plans_identifier}/{configuration}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def preprocess_normal_cases(normal_dir: Path, case_ids: list[str], num_channels: int, file_ending: str,
                            cache_dir: Path, plans_manager, configuration_manager, dataset_json: dict
                            ) -> list[Path]:
    """Preprocess the normal CTs of `case_ids` (those found in normal_dir) into cache_dir; returns the .npz files.

    Each file holds `data` (C, Z, Y, X float32, nnU-Net-normalised), `seg` (1, Z, Y, X int16, 1 = liver,
    -1 outside the crop) and `spacing` (the preprocessed spacing in array axis order).
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    out = []
    for case in case_ids:
        images = [normal_dir / "imagesTr" / f"{case}_{c:04d}{file_ending}" for c in range(num_channels)]
        liver = normal_dir / "labelsTr" / f"{case}{file_ending}"
        if not all(p.is_file() for p in images + [liver]):
            continue  # no normal version of this case (e.g. inpainting skipped it): it is simply not used
        target = cache_dir / f"{case}.npz"
        stamp = _fingerprint(images + [liver], plans_manager.plans_name, configuration_manager.data_identifier)
        with FileLock(cache_dir / f".{case}.lock", timeout=LOCK_TIMEOUT_S):  # write once per case
            if not _cached(target, stamp):
                data, seg, properties = preprocessor.run_case([str(p) for p in images], str(liver), plans_manager,
                                                              configuration_manager, dataset_json)
                spacing = list(configuration_manager.spacing)
                if len(spacing) < data.ndim - 1:  # 2d: nnU-Net resamples in-plane only and keeps the slice spacing
                    spacing = [float(properties["spacing"][plans_manager.transpose_forward[0]])] + spacing
                write_atomic(target, binary=True, write=lambda fh: np.savez(
                    fh, data=data.astype(np.float32), seg=seg.astype(np.int16), spacing=np.asarray(spacing, float),
                    fingerprint=np.asarray(stamp)))
        out.append(target)
    with FileLock(cache_dir / f".{MANIFEST}.lock", timeout=LOCK_TIMEOUT_S):
        # what the cache holds, not what this caller asked for: folds sharing the cache list different cases
        held = sorted(p.stem for p in cache_dir.glob("*.npz"))
        write_text_atomic(cache_dir / MANIFEST, json.dumps(held))
    return out


def _cached(target: Path, stamp: str) -> bool:
    """True if target holds this fingerprint; a damaged file (e.g. left by an older version's crash) is not."""
    try:
        with np.load(target) as cached:
            return str(cached["fingerprint"]) == stamp
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # missing or damaged: (re)write it
        return False

