"""Where the plugin keeps its files, next to nnU-Net's own (nnU-Net conventions first).

Everything the plugin derives from a raw dataset lives INSIDE the dataset folder, under `diff4mm/`: nnU-Net
identifies datasets by the `DatasetXXX_` prefix of folders in nnUNet_raw, so a sibling folder such as
`Dataset501_X_normal` would make dataset 501 ambiguous, while a subfolder is ignored by nnU-Net.

    $nnUNet_raw/DatasetXXX_NAME/imagesTr, labelsTr, imagesTs, dataset.json   registered phases (diff4mm_register)
    $nnUNet_raw/DatasetXXX_NAME/diff4mm/registration/                        registration QA and transforms
    $nnUNet_raw/DatasetXXX_NAME/diff4mm/normal/imagesTr/<case>_000k.nii.gz   tumor-free phases (diff4mm_inpaint)
    $nnUNet_raw/DatasetXXX_NAME/diff4mm/normal/labelsTr/<case>.nii.gz        their liver masks (1 = liver)
    $nnUNet_raw/DatasetXXX_NAME/diff4mm/synthesizer/                         default synthesis bundle
    $nnUNet_preprocessed/DatasetXXX_NAME/diff4mm/<plans>_<configuration>/    normal CTs in preprocessed space, pool

Environment overrides: DIFF4MM_BUNDLE (a bundle folder), DIFF4MM_NORMAL_DIR (a normal/ folder).
"""
from __future__ import annotations

import os
from pathlib import Path

SUBFOLDER = "diff4mm"
ENV_BUNDLE = "DIFF4MM_BUNDLE"
ENV_NORMAL = "DIFF4MM_NORMAL_DIR"


def raw_dataset_folder(dataset: str | int) -> Path:
    """The nnU-Net raw folder of a dataset given as 501 / '501' / 'Dataset501_Name' (nnU-Net's own lookup)."""
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    name = maybe_convert_to_dataset_name(int(dataset) if str(dataset).isdigit() else str(dataset))
    return Path(nnUNet_raw.require()) / name


def registration_folder(raw_folder: Path) -> Path:
    return Path(raw_folder) / SUBFOLDER / "registration"


def normal_folder(raw_folder: Path) -> Path:
    env = os.environ.get(ENV_NORMAL)
    return Path(env) if env else Path(raw_folder) / SUBFOLDER / "normal"


def bundle_folder(raw_folder: Path) -> Path:
    env = os.environ.get(ENV_BUNDLE)
    return Path(env) if env else Path(raw_folder) / SUBFOLDER / "synthesizer"


def preprocessed_cache_folder(preprocessed_dataset_folder: Path, plans_identifier: str, configuration: str) -> Path:
    return Path(preprocessed_dataset_folder) / SUBFOLDER / f"{plans_identifier}_{configuration}"
