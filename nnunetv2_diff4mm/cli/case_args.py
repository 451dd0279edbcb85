"""The case-selection flags of the commands that train a model of the plugin (inpainter, normal CTs, bundle).

nnU-Net trains fold F on the "train" list of entry F of splits_final.json; a model that arm (c) of a segmentation
experiment uses must see no other case, so each training command takes the same fold (or an explicit list).
"""
from __future__ import annotations

import argparse


def add_case_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-f", "--fold", metavar="FOLD", default=None,
                       help=f"{what} only on the training cases of nnU-Net fold FOLD: entry FOLD of "
                            "$nnUNet_preprocessed/DatasetXXX/splits_final.json (0-4 are nnU-Net's folds, higher "
                            "ones diff4mm_benchmark's labelled-fraction subsets; created as nnU-Net would if "
                            "missing), or 'all'. Default outputs then end in _foldFOLD, where Diff4MMTrainer on "
                            "that fold looks first. Default: every labelled case")
    group.add_argument("--cases", metavar="FILE", default=None,
                       help=f"{what} only on the case IDs listed in FILE (one per line, # comments)")
