"""Where the plugin keeps its files, next to nnU-Net's own (nnU-Net conventions first).

nnU-Net keeps data in nnUNet_raw, derived arrays in nnUNet_preprocessed and trained models in nnUNet_results;
the plugin follows it. Its files for a dataset live in a `diff4mm/` subfolder of the dataset's folder in each
root: nnU-Net identifies datasets by the `DatasetXXX_` prefix of folders, so a sibling folder such as
`Dataset501_X_normal` would make dataset 501 ambiguous, while a subfolder is ignored by nnU-Net.

    $nnUNet_raw/DatasetXXX_NAME/imagesTr, labelsTr, imagesTs, dataset.json   registered phases (diff4mm_register)
    $nnUNet_raw/DatasetXXX_NAME/diff4mm/registration/                        registration QA and transforms
    $nnUNet_raw/DatasetXXX_NAME/diff4mm/normal/imagesTr/<case>_000k.nii.gz   tumor-free phases (diff4mm_inpaint)
    $nnUNet_raw/DatasetXXX_NAME/diff4mm/normal/labelsTr/<case>.nii.gz        their liver masks (1 = liver)
    $nnUNet_results/DatasetXXX_NAME/diff4mm/inpainter/                       trained inpainter
    $nnUNet_results/DatasetXXX_NAME/diff4mm/synthesizer/                     default synthesis bundle
    ..._foldF/ (inpainter, normal, synthesizer)                              the same, trained only on the
                                                                             training cases of nnU-Net fold F
    $nnUNet_preprocessed/DatasetXXX_NAME/diff4mm/<plans>_<configuration>/    normal CTs in preprocessed space, pool

The normal CTs stay in nnUNet_raw: they are images in the raw dataset's own layout and grid (channels, spacing,
names), read by the synthesizer's training and by the trainer's cache, and a user inspects them beside the phases
they were made from; nnUNet_preprocessed holds nnU-Net's arrays of them. Models that version 0.1 wrote into
`$nnUNet_raw/DatasetXXX_NAME/diff4mm/{inpainter,synthesizer}[_foldF]` are still found there, with a one-line
notice, when the new location does not exist.

Environment overrides: DIFF4MM_BUNDLE (a bundle folder), DIFF4MM_NORMAL_DIR (a normal/ folder).
Diff4MMTrainer on fold F uses the `_foldF` folders where they exist, else the shared ones, and refuses models that
were trained on any of fold F's validation cases (DIFF4MM_ALLOW_LEAK=1 overrides; see training/leakage.py).
"""
from __future__ import annotations

import os
import sys
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


_NOTICED: set[Path] = set()


def models_folder(raw_folder: Path, results_root: Path | None = None) -> Path:
    """`$nnUNet_results/DatasetXXX_NAME/diff4mm` (or `results_root/...`): where the plugin's trained models of a
    dataset go."""
    name = Path(raw_folder).name
    if results_root is None:
        from nnunetv2.paths import nnUNet_results

        if not nnUNet_results.is_set():
            raise RuntimeError(f"nnUNet_results is not set: the trained models of {name} go to "
                               f"$nnUNet_results/{name}/{SUBFOLDER}; set it as for nnU-Net "
                               "(documentation/setting_up_paths.md) or pass -o/--output")
        results_root = nnUNet_results.require()
    return Path(results_root) / name / SUBFOLDER


def _model_folder(raw_folder: Path, name: str, results_root: Path | None = None) -> Path:
    """The model folder `name` under nnUNet_results, or its version-0.1 location in nnUNet_raw when only that
    exists (one notice per folder and process)."""
    from nnunetv2.paths import nnUNet_results

    legacy = Path(raw_folder) / SUBFOLDER / name
    if not legacy.exists():
        return models_folder(raw_folder, results_root) / name
    # a version-0.1 model: used until the new location exists (and found even without nnUNet_results)
    root_known = results_root is not None or nnUNet_results.is_set()
    current = models_folder(raw_folder, results_root) / name if root_known else None
    if current is not None and current.exists():
        return current
    if legacy not in _NOTICED:
        _NOTICED.add(legacy)
        target = current or f"$nnUNet_results/{Path(raw_folder).name}/{SUBFOLDER}/{name}"
        print(f"Diff4MM: using {legacy}, a model in nnUNet_raw where version 0.1 wrote it; move it to {target} "
              "to silence this", file=sys.stderr)
    return legacy


def inpainter_folder(raw_folder: Path, fold=None, results_root: Path | None = None) -> Path:
    return _model_folder(raw_folder, f"inpainter{_fold_suffix(fold)}", results_root)


def normal_folder(raw_folder: Path, fold=None) -> Path:
    env = os.environ.get(ENV_NORMAL)
    return Path(env) if env else Path(raw_folder) / SUBFOLDER / f"normal{_fold_suffix(fold)}"


def bundle_folder(raw_folder: Path, fold=None, results_root: Path | None = None) -> Path:
    env = os.environ.get(ENV_BUNDLE)
    return Path(env) if env else _model_folder(raw_folder, f"synthesizer{_fold_suffix(fold)}", results_root)


def fold_or_shared(folder_fn, raw_folder: Path, fold) -> Path:
    """`folder_fn(raw, fold)` if that folder exists, else the shared `folder_fn(raw)` (what the trainer uses)."""
    own = folder_fn(raw_folder, fold)
    return own if own.exists() else folder_fn(raw_folder)


def preprocessed_cache_folder(preprocessed_dataset_folder: Path, plans_identifier: str, configuration: str) -> Path:
    return Path(preprocessed_dataset_folder) / SUBFOLDER / f"{plans_identifier}_{configuration}"
