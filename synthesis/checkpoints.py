"""One checkpoint mechanism for the package's trainers (issue #17): the inpainter and both synthesizer stages.

A checkpoint is a folder ``root/<name>/``: each model saved with diffusers' ``save_pretrained`` (safetensors) in a
subfolder, each optimizer/EMA state with ``torch.save`` in a file. It is written into ``root/.partial`` and renamed
into place; only then does the trainer record it in its progress JSON (written atomically) and remove the previous
one. So the progress record always names a complete checkpoint of the epoch it counts: an interruption at any
point resumes from the last recorded epoch with exactly that epoch's weights and optimizer state. (The synthesizer
used to overwrite its weights in place before updating its progress: interrupted between the two, it resumed an
epoch's count with the next epoch's weights.)

Written by hand rather than with accelerate's ``save_state``/``load_state``: the inpainter does not run under
accelerate, the UNet's EMA would have to be registered for checkpointing, which accelerate loads with
``torch.load(weights_only=False)`` (never done in this package: every file here loads with weights_only), and
accelerate's RNG snapshot is not needed because every epoch's random streams derive from (seed, stage, epoch).
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

STAGING = ".partial"


def write_checkpoint(root, name: str, models: Mapping[str, object], states: Mapping[str, dict]) -> Path:
    """``root/name`` holding ``models`` ({subfolder: diffusers model}) and ``states`` ({file name: state dict}),
    complete or not at all. Returns its path."""
    import torch

    from .bundle import without_local_path

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    staging, target = root / STAGING, root / name
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for folder, model in models.items():
        without_local_path(model).save_pretrained(staging / folder, safe_serialization=True)
    for file, state in states.items():
        torch.save(state, staging / file)
    shutil.rmtree(target, ignore_errors=True)  # a complete checkpoint of the same name no record points to
    os.replace(staging, target)
    return target


def remove_checkpoint(root, name: str | None, keep: str | None = None) -> None:
    """Remove ``root/name`` once a newer checkpoint ``keep`` is recorded (nothing when they are the same)."""
    if name and name != keep:
        shutil.rmtree(Path(root) / name, ignore_errors=True)


def load_state(path, error: type[Exception], fix: str) -> dict:
    """A checkpoint's optimizer/EMA state (weights_only: no pickled code); a missing, truncated or rejected file is
    ``error`` naming it and ``fix``, not a traceback."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises pickle, zip, EOF and runtime errors alike
        raise error(f"{path}: cannot resume from it ({first_line(err)}); {fix}") from None


def first_line(err: BaseException) -> str:
    """An exception as one line for an error message: its type and the first non-empty line of its text."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0].strip()}" if lines else type(err).__name__
