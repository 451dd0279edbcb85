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

NNUNET_SPLIT_SEED = 12345  # nnU-Net's own seed for its 5-fold split (nnUNetTrainer.do_split)
NNUNET_N_SPLITS = 5
FRACTION_TAG, BASE_FOLD_TAG, SEED_TAG = "diff4mm_fraction", "diff4mm_base_fold", "diff4mm_subset_seed"
SPLITS_FILE = "splits_final.json"


class SplitError(ValueError):
    """A split that does not exist or no longer matches; the message names the file and the fix."""


def _write_json_atomic(path: Path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


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
        _write_json_atomic(path, splits)
    if mirror_to is not None:
        target = Path(mirror_to) / "splits_final.json"
        if not target.is_file() or json.loads(target.read_text(encoding="utf-8")) != splits:
            _write_json_atomic(target, splits)
    return index, splits
