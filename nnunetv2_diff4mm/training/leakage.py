"""No validation case may reach Diff4MMTrainer through its synthesis models.

A fold's validation cases must be unseen by everything the fold trains with. Besides nnU-Net's own network, arm (c)
uses the synthesis bundle (autoencoder, diffusion UNet, mask distribution and enhancement bank, all fitted on the
bundle's training cases and on normal CTs made by an inpainter) and the normal CTs the tumors are painted into
(made by an inpainter trained on some cases). Each records what it learnt from: the bundle JSON
``training.lineage_cases``, the normal CTs' ``normal.json`` ``settings.inpainter_cases``. This module compares them
with the fold's validation cases. A model that does not record its cases counts as a leak: nothing proves otherwise.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from synthesis.bundle import BUNDLE_JSON
from synthesis.normal_dataset import normal_lineage

ENV_ALLOW_LEAK = "DIFF4MM_ALLOW_LEAK"


class LeakError(RuntimeError):
    """A model of the synthesis path saw a validation case (one line naming the model and the fix)."""


@dataclass(frozen=True)
class LeakReport:
    leaked: dict[str, list[str]]  # model folder -> validation cases it saw
    unknown: list[str]  # model folders that do not record their cases

    @property
    def clean(self) -> bool:
        return not self.leaked and not self.unknown

    def message(self, fold) -> str:
        parts = [f"{m} was trained on {len(c)} of fold {fold}'s validation cases ({', '.join(c[:3])}"
                 f"{', ...' if len(c) > 3 else ''})" for m, c in self.leaked.items()]
        parts += [f"{m} does not record its training cases" for m in self.unknown]
        return "; ".join(parts)


def bundle_lineage(bundle: Path) -> set[str] | None:
    """Every case the bundle learnt from (its training cases and its normal CTs' inpainter's), or None."""
    path = Path(bundle) / BUNDLE_JSON
    training = json.loads(path.read_text(encoding="utf-8")).get("training") or {}
    lineage = training.get("lineage_cases")
    return set(lineage) if isinstance(lineage, list) else None


def check_models(bundle: Path, normal_dir: Path, validation: list[str]) -> LeakReport:
    """Which of `validation` the bundle and the normal CTs' inpainter were trained on."""
    val, leaked, unknown = set(validation), {}, []
    for folder, seen in ((Path(bundle), bundle_lineage(bundle)), (Path(normal_dir), normal_lineage(normal_dir))):
        if seen is None:
            unknown.append(str(folder))
        elif seen & val:
            leaked[str(folder)] = sorted(seen & val)
    return LeakReport(leaked, unknown)


def refuse_leak(bundle: Path, normal_dir: Path, validation: list[str], fold, log=print) -> LeakReport:
    """Raise LeakError unless the models are clean or $DIFF4MM_ALLOW_LEAK=1 (then log a warning)."""
    report = check_models(bundle, normal_dir, validation)
    if report.clean:
        return report
    if os.environ.get(ENV_ALLOW_LEAK) == "1":
        log(f"Diff4MM: WARNING, validation leak allowed by {ENV_ALLOW_LEAK}=1: {report.message(fold)}")
        return report
    raise LeakError(f"Diff4MMTrainer fold {fold}: {report.message(fold)}; train the inpainter, normal CTs and "
                    f"bundle on this fold's training cases (diff4mm_train_inpainter / diff4mm_inpaint / "
                    f"diff4mm_train_synthesizer -f {fold}), or set {ENV_ALLOW_LEAK}=1 to train anyway")
