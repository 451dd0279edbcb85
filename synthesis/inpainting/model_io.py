"""A trained inpainter's folder: writing it (config, safetensors weights, sha256 manifest), checking and loading
it, and reading what it was trained on."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch


from ..bundle import hash_files, verify_files, without_local_path
from ..devices import resolve_device
from ..models.ffc_inpainter import FFCInpainter
from .presets import CLASSICAL_METHODS, InpaintingError, MANIFEST_FILE, MODEL_FOLDER, STATE_FILE, WEIGHTS_FILE


def _save_model_folder(model: FFCInpainter, folder: Path, extra: dict[str, object] | None = None) -> None:
    """save_pretrained into a hidden staging folder, then rename into place (readers never see half a model)."""
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    without_local_path(model).save_pretrained(staging, safe_serialization=True)
    for name, obj in (extra or {}).items():
        torch.save(obj, staging / name)
    (staging / MANIFEST_FILE).write_text(json.dumps({"files": hash_files(staging)}, indent=1), encoding="utf-8")
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(staging, folder)
    shutil.rmtree(old, ignore_errors=True)


def _read_state(out_dir: Path) -> dict | None:
    path = out_dir / STATE_FILE
    if not path.is_file():
        return None
    fix = f"delete {out_dir} to train afresh, or choose another folder"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InpaintingError(f"{path}: not valid JSON ({err}); {fix}") from None
    if not isinstance(state, dict) or not isinstance(state.get("settings"), dict) or not all(
            k in state for k in ("epochs_done", "checkpoint", "history")):
        raise InpaintingError(f"{path}: not a train_inpainter training record (settings, epochs_done, checkpoint, "
                              f"history); {fix}")
    return state


def inpainter_training_cases(path) -> list[str] | None:
    """The IDs of the cases an inpainter (a train_inpainter out_dir) was trained on; None when its training
    record does not say (trained before the IDs were recorded, or by a caller that gave no names)."""
    state = _read_state(Path(path))
    if state is None and Path(path).name == MODEL_FOLDER:
        state = _read_state(Path(path).parent)
    cases = (state or {}).get("settings", {}).get("cases")
    return list(cases) if cases is not None else None


def load_inpainter(path, device: str | torch.device = "cpu") -> FFCInpainter:
    """Load a trained inpainter from its folder (config.json + safetensors) or a train_inpainter out_dir."""
    path = Path(path)
    folder = path / MODEL_FOLDER if (path / MODEL_FOLDER).is_dir() else path
    missing = [n for n in ("config.json", WEIGHTS_FILE) if not (folder / n).is_file()]
    if missing:
        raise InpaintingError(f"{folder}: no trained inpainter ({', '.join(missing)} missing); train one with "
                              "train_inpainter (it writes OUT/model) or use a classical method "
                              f"({', '.join(CLASSICAL_METHODS)})")
    manifest = folder / MANIFEST_FILE
    fix = "copy the model folder again or retrain it with train_inpainter"
    if not manifest.is_file():
        raise InpaintingError(f"{manifest}: missing, so the weights cannot be checked (saved by an older version "
                              f"or not by train_inpainter); {fix}")
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InpaintingError(f"{manifest}: not valid JSON ({err}); {fix}") from None
    verify_files(folder, listed.get("files") if isinstance(listed, dict) else listed, manifest, InpaintingError,
                 ignore=(MANIFEST_FILE,), fix=fix)
    try:
        model = FFCInpainter.from_pretrained(folder, use_safetensors=True)
    except (OSError, ValueError, RuntimeError, TypeError) as err:
        raise InpaintingError(f"{folder}: cannot load the inpainter: {str(err).splitlines()[0]}") from err
    return model.to(resolve_device(device)).eval()
