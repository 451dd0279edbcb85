"""Where the plugin keeps its files, next to nnU-Net's own (nnU-Net conventions first).

Everything the plugin derives from a raw dataset lives INSIDE the dataset folder, under `diff4mm/`: nnU-Net
identifies datasets by the `DatasetXXX_` prefix of folders in nnUNet_raw, so a sibling folder such as
`Dataset501_X_normal` would make dataset 501 ambiguous, while a subfolder is ignored by nnU-Net.

    $nnUNet_raw/DatasetXXX_NAME/imagesTr, labelsTr, imagesTs, dataset.json   registered phases (diff4mm_register)
    $nnUNet_raw/DatasetXXX_NAME/diff4mm/registration/                        registration QA and transforms
    $nnUNet_raw/DatasetXXX_NAME/diff4mm/normal/imagesTr/<case>_000k.nii.gz   tumor-free phases (diff4mm_inpaint)
    $nnUNet_raw/DatasetXXX_NAME/diff4mm/normal/labelsTr/<case>.nii.gz        their liver masks (1 = liver)
    $nnUNet_raw/DatasetXXX_NAME/diff4mm/synthesizer/                         default synthesis bundle
    $nnUNet_raw/DatasetXXX_NAME/diff4mm/{inpainter,normal,synthesizer}_foldF/ the same, trained only on the
                                                                             training cases of nnU-Net fold F
    $nnUNet_preprocessed/DatasetXXX_NAME/diff4mm/<plans>_<configuration>/    normal CTs in preprocessed space, pool

Environment overrides: DIFF4MM_BUNDLE (a bundle folder), DIFF4MM_NORMAL_DIR (a normal/ folder).
Diff4MMTrainer on fold F uses the `_foldF` folders where they exist, else the shared ones, and refuses models that
were trained on any of fold F's validation cases (DIFF4MM_ALLOW_LEAK=1 overrides; see training/leakage.py).
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


def _fold_suffix(fold) -> str:
    return "" if fold is None else f"_fold{fold}"


def inpainter_folder(raw_folder: Path, fold=None) -> Path:
    return Path(raw_folder) / SUBFOLDER / f"inpainter{_fold_suffix(fold)}"


def normal_folder(raw_folder: Path, fold=None) -> Path:
    env = os.environ.get(ENV_NORMAL)
    return Path(env) if env else Path(raw_folder) / SUBFOLDER / f"normal{_fold_suffix(fold)}"


def bundle_folder(raw_folder: Path, fold=None) -> Path:
    env = os.environ.get(ENV_BUNDLE)
    return Path(env) if env else Path(raw_folder) / SUBFOLDER / f"synthesizer{_fold_suffix(fold)}"


def fold_or_shared(folder_fn, raw_folder: Path, fold) -> Path:
    """`folder_fn(raw, fold)` if that folder exists, else the shared `folder_fn(raw)` (what the trainer uses)."""
    own = folder_fn(raw_folder, fold)
    return own if own.exists() else folder_fn(raw_folder)


def preprocessed_cache_folder(preprocessed_dataset_folder: Path, plans_identifier: str, configuration: str) -> Path:
    return Path(preprocessed_dataset_folder) / SUBFOLDER / f"{plans_identifier}_{configuration}"
