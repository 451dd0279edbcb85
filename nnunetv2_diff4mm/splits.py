"""nnU-Net's cross-validation splits and the plugin's labelled-fraction subsets of them.

A fraction f < 1 of fold k trains on the first max(1, ceil(f·n)) training cases of fold k in a fixed random order
(seeded by fold), so smaller subsets are nested in larger ones; its validation cases are fold k's. Each such subset
is an extra entry appended to ``splits_final.json`` (nnU-Net reads as many splits as the file holds; folds 0-4 stay
untouched), tagged with ``diff4mm_fraction``/``diff4mm_base_fold``/``diff4mm_subset_seed``. Every model of a
training job (nnU-Net's network, the inpainter, the synthesis bundle) is trained on the "train" list of one entry:
``fold_cases`` reads it.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from registration.image_io import write_json_atomic

NNUNET_SPLIT_SEED = 12345  # nnU-Net's own seed for its 5-fold split (nnUNetTrainer.do_split)
NNUNET_N_SPLITS = 5
FRACTION_TAG, BASE_FOLD_TAG, SEED_TAG = "diff4mm_fraction", "diff4mm_base_fold", "diff4mm_subset_seed"
SPLITS_FILE = "splits_final.json"


class SplitError(ValueError):
    """A split that does not exist or no longer matches; the message names the file and the fix."""


def base_splits(splits: list[dict]) -> list[dict]:
    return [s for s in splits if FRACTION_TAG not in s]


def nnunet_default_splits(cases: list[str]) -> list[dict]:
    """The split nnU-Net writes when splits_final.json is missing (5-fold KFold, seed 12345, sorted keys);
    fewer folds when there are fewer than 5 cases (where nnU-Net itself would fail)."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    if len(cases) < 2:
        raise SplitError(f"{len(cases)} labelled case(s): a train/validation split needs at least 2")
    splits = generate_crossval_split(sorted(cases), seed=NNUNET_SPLIT_SEED, n_splits=min(NNUNET_N_SPLITS, len(cases)))
    return [{"train": [str(c) for c in s["train"]], "val": [str(c) for c in s["val"]]} for s in splits]


def fraction_subset(train_cases: list[str], fraction: float, fold: int, seed: int = 0) -> list[str]:
    """The first max(1, ceil(fraction·n)) of fold `fold`'s training cases in a fixed random order (nested over
    fractions), returned sorted."""
    if not 0 < fraction <= 1:
        raise SplitError(f"fraction {fraction:g} is not in (0, 1]")
    ordered = sorted(train_cases)
    order = np.random.default_rng([seed, fold]).permutation(len(ordered))
    count = max(1, math.ceil(fraction * len(ordered) - 1e-9))
    return sorted(ordered[i] for i in order[:count])


def fraction_fold(splits: list[dict], fold: int, fraction: float, seed: int = 0) -> int:
    """Index in `splits` (appended in place if new) of fold `fold` at labelled `fraction`."""
    bases = base_splits(splits)
    if not 0 <= fold < len(bases):
        raise SplitError(f"fold {fold} does not exist: splits_final.json has {len(bases)} folds (0-"
                             f"{len(bases) - 1})")
    base = bases[fold]
    base_index = next(i for i, s in enumerate(splits) if s is base)
    if fraction >= 1:
        return base_index
    entry = {"train": fraction_subset(base["train"], fraction, fold, seed), "val": list(base["val"]),
             FRACTION_TAG: fraction, BASE_FOLD_TAG: fold, SEED_TAG: seed}
    for i, s in enumerate(splits):
        if s.get(FRACTION_TAG) == fraction and s.get(BASE_FOLD_TAG) == fold and s.get(SEED_TAG) == seed:
            if s["train"] != entry["train"] or s["val"] != entry["val"]:
                raise SplitError(f"split {i} (fold {fold}, fraction {fraction:g}) no longer matches fold {fold} "
                                     "of splits_final.json; remove that entry and the models trained on it")
            return i
    splits.append(entry)
    return len(splits) - 1


def prepare_splits(source_preprocessed: Path, cases: list[str], folds, fractions, seed: int = 0,
                   mirror_to: Path | None = None) -> tuple[dict[tuple[float, int], int], list[dict]]:
    """Make sure splits_final.json holds every (fraction, fold) subset; copy the file to `mirror_to` (the
    derived dataset's preprocessed folder). Returns {(fraction, fold): nnU-Net fold index} and the splits."""
    path = Path(source_preprocessed) / SPLITS_FILE
    splits = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else nnunet_default_splits(cases)
    before = json.dumps(splits)
    index = {(f, k): fraction_fold(splits, k, f, seed) for f in fractions for k in folds}
    if json.dumps(splits) != before or not path.is_file():
        write_json_atomic(path, splits, make_parents=True)
    if mirror_to is not None:
        target = Path(mirror_to) / "splits_final.json"
        if not target.is_file() or json.loads(target.read_text(encoding="utf-8")) != splits:
            write_json_atomic(target, splits, make_parents=True)
    return index, splits


def read_case_list(path: Path) -> list[str]:
    """Case IDs from a text file, one per line (blank lines and lines starting with # are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"{path}: no such case-list file (one case ID per line)")
    cases = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.strip().startswith("#")]
    if not cases:
        raise SplitError(f"{path}: lists no case IDs (one per line)")
    return cases


def fold_cases(preprocessed_dataset_folder: Path, fold: int | str, labelled: list[str]) -> tuple[list[str], list[str]]:
    """(training, validation) cases of nnU-Net fold `fold`, as nnUNetTrainer.do_split gives them.

    `fold` is an index into ``splits_final.json`` (0-4 are nnU-Net's folds, higher ones the labelled-fraction
    subsets the benchmark appends) or "all" (every labelled case, no validation). A missing splits file is created
    exactly as nnU-Net creates it at its first training (5-fold KFold, seed 12345, over `labelled`), so that models
    trained before nnU-Net itself see the same split.
    """
    labelled = sorted(labelled)
    if str(fold) == "all":
        return labelled, []
    try:
        index = int(fold)
    except ValueError:
        raise SplitError(f"fold {fold!r}: give an index into splits_final.json (0-4 are nnU-Net's folds) "
                         "or 'all'") from None
    folder = Path(preprocessed_dataset_folder)
    path = folder / SPLITS_FILE
    if path.is_file():
        try:
            splits = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise SplitError(f"{path}: not valid JSON ({err})") from None
    else:
        if not folder.is_dir():
            raise SplitError(f"{folder}: no preprocessed dataset, so no {SPLITS_FILE}; run "
                             "nnUNetv2_plan_and_preprocess (or diff4mm_plan_cpu) first")
        splits = nnunet_default_splits(labelled)
        write_json_atomic(path, splits, make_parents=True)
    if not 0 <= index < len(splits):
        raise SplitError(f"{path}: has {len(splits)} splits (0-{len(splits) - 1}), no fold {index}")
    train, val = list(splits[index]["train"]), list(splits[index]["val"])
    unknown = sorted(set(train) - set(labelled))
    if unknown:
        raise SplitError(f"{path}: fold {index} trains on {unknown[0]}, which has no label in labelsTr; the split "
                         "belongs to another version of the dataset")
    return sorted(train), sorted(val)


def selected_training_cases(raw_folder: Path, labelled: list[str], fold: str | None = None,
                            cases_file: Path | None = None) -> list[str] | None:
    """The cases a model of the plugin is trained on: fold `fold`'s training cases (its splits_final.json in
    $nnUNet_preprocessed, see `fold_cases`), the IDs in `cases_file`, or None (every labelled case)."""
    if fold is not None and cases_file is not None:
        raise SplitError("give at most one of --fold and --cases")
    if cases_file is not None:
        return sorted(set(read_case_list(cases_file)))
    if fold is None:
        return None
    root = os.environ.get("nnUNet_preprocessed")
    if not root:
        raise SplitError("$nnUNet_preprocessed is not set; --fold reads its DatasetXXX/splits_final.json "
                         "(export nnUNet_preprocessed=/path/to/nnUNet_preprocessed)")
    return fold_cases(Path(root) / Path(raw_folder).name, fold, labelled)[0]
