"""Normal (tumor-free) CTs brought into the plans' preprocessed space with nnU-Net's own preprocessor.

The synthesizer paints tumors into these; doing it in preprocessed space means a synthetic sample enters
nnU-Net's data loader exactly like a real one (same spacing, crop and CT normalisation). Cached as .npz in
`$nnUNet_preprocessed/DatasetXXX/diff4mm/<plans>_<configuration>/normal/` and reused while the source files
and plans are unchanged.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


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
        if target.is_file():
            with np.load(target) as cached:
                if str(cached["fingerprint"]) == stamp:
                    out.append(target)
                    continue
        data, seg, properties = preprocessor.run_case([str(p) for p in images], str(liver), plans_manager,
                                                      configuration_manager, dataset_json)
        spacing = list(configuration_manager.spacing)
        if len(spacing) < data.ndim - 1:  # 2d: nnU-Net resamples in-plane only and keeps the slice spacing
            spacing = [float(properties["spacing"][plans_manager.transpose_forward[0]])] + spacing
        tmp = target.with_name(f".tmp-{target.name}")
        with open(tmp, "wb") as fh:
            np.savez(fh, data=data.astype(np.float32), seg=seg.astype(np.int16),
                     spacing=np.asarray(spacing, float), fingerprint=np.asarray(stamp))
        os.replace(tmp, target)
        out.append(target)
    (cache_dir / "cases.json").write_text(json.dumps([p.stem for p in out]), encoding="utf-8")
    return out
