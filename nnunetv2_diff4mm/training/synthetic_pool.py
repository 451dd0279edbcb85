"""A ring of synthetic training samples on disk, refilled in the background so synthesis never stalls training.

The producer (a separate process) loads the synthesis bundle once, then repeatedly takes a normal CT in
preprocessed space, converts it back to HU, lets the `Synthesizer` paint tumors into every phase, normalises
the result the nnU-Net way and writes it to the next slot `sample_XXXX.npz` (atomically). nnU-Net's data
loader workers read random slots. The producer throttles itself to a duty cycle so that, on a CPU, it takes
only a bounded share of the machine; a failure is written to `status.json` and training goes on with real
samples only.
"""
from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from registration.image_io import write_atomic, write_json_atomic

SLOT_PATTERN = "sample_{:04d}.npz"


@dataclass
class PoolSettings:
    folder: str
    bundle: str
    normal_files: list[str]
    intensity: list[dict]  # IntensityMapping fields per channel
    foreground_labels: list[int]
    size: int = 32
    seed: int = 0
    device: str = "cpu"
    duty: float = 0.5  # fraction of wall time the producer may compute (sleeps the rest)
    torch_threads: int = 1


def slots(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("sample_*.npz"))


def read_status(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def make_sample(synthesizer, normal_file: str, mappings, foreground_labels, rng: np.random.Generator) -> dict:
    """One synthetic sample in preprocessed space from one cached normal CT."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    with np.load(normal_file) as cached:
        data, seg, spacing = cached["data"], cached["seg"], cached["spacing"]
    hu = np.stack([m.to_hu(data[c]) for c, m in enumerate(mappings)])
    liver = seg[0] > 0
    image_hu, label = synthesizer(hu, tuple(float(s) for s in spacing[::-1]), liver, rng)
    out = np.stack([m.to_normalized(image_hu[c]) for c, m in enumerate(mappings)]).astype(np.float32)
    new_seg = seg.copy()
    inside = seg[0] >= 0
    new_seg[0][inside] = label[inside]
    locations = DefaultPreprocessor._sample_foreground_locations(new_seg, foreground_labels,
                                                                 seed=int(rng.integers(2 ** 31)))
    return {"data": out, "seg": new_seg.astype(np.int16), "class_locations": locations,
            "source": Path(normal_file).stem}


def save_sample(folder: Path, index: int, sample: dict) -> Path:
    locations = {str(k): np.asarray(v) for k, v in sample["class_locations"].items()}
    return write_atomic(Path(folder) / SLOT_PATTERN.format(index), binary=True, write=lambda fh: np.savez(
        fh, data=sample["data"], seg=sample["seg"], source=np.asarray(sample["source"]),
        **{f"loc_{k}": v for k, v in locations.items()}))


def load_sample(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(data, seg, properties) as nnU-Net's datasets return them (properties carry class_locations)."""
    with np.load(path) as f:
        locations = {}
        for key in f.files:
            if key.startswith("loc_"):
                label = key[4:]
                locations[int(label) if label.lstrip("-").isdigit() else label] = f[key]
        return f["data"], f["seg"], {"class_locations": locations, "diff4mm_source": str(f["source"])}


def produce(settings: PoolSettings, stop_event=None, max_samples: int | None = None) -> None:
    """Producer loop (run in a background process, or inline for `max_samples` samples)."""
    import torch

    from synthesis.pipeline import Synthesizer

    from .normal_cases import IntensityMapping

    folder = Path(settings.folder)
    folder.mkdir(parents=True, exist_ok=True)
    # counts continue from the folder's status (the trainer's inline prefill, then this background producer), so
    # the trainer's per-epoch difference of "produced" is the number synthesised in that epoch
    previous = read_status(folder)
    status = {"produced": int(previous.get("produced", 0)), "seconds": float(previous.get("seconds", 0.0)),
              "error": None, "pid": os.getpid(), "device": settings.device}
    target = None if max_samples is None else status["produced"] + max_samples
    try:
        if stop_event is not None:  # own process only: the inline prefill runs in the trainer, whose threads stay
            torch.set_num_threads(settings.torch_threads)
        synthesizer = Synthesizer.from_bundle(settings.bundle, device=settings.device)
        mappings = [IntensityMapping(**m) for m in settings.intensity]
        rng = np.random.default_rng(settings.seed)
        index = len(slots(folder)) % settings.size
        while (stop_event is None or not stop_event.is_set()) and (target is None or status["produced"] < target):
            start = time.perf_counter()
            normal = settings.normal_files[int(rng.integers(len(settings.normal_files)))]
            save_sample(folder, index, make_sample(synthesizer, normal, mappings, settings.foreground_labels, rng))
            spent = time.perf_counter() - start
            status["produced"] += 1
            status["seconds"] += spent
            write_json_atomic(folder / "status.json", status)
            index = (index + 1) % settings.size
            if settings.duty < 1 and stop_event is not None:
                stop_event.wait(spent * (1 - settings.duty) / max(settings.duty, 1e-3))
    except Exception as exc:  # reported to the trainer, which falls back to real samples
        status["error"] = f"{type(exc).__name__}: {exc}"
        status["traceback"] = traceback.format_exc()
        write_json_atomic(folder / "status.json", status)


def settings_to_json(settings: PoolSettings) -> dict:
    return asdict(settings)
