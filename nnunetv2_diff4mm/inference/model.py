"""The trained model that ``diff4mm_predict`` uses: where it is, what it expects, and nnU-Net's predictor for it.

A model is nnU-Net's own results folder ``$nnUNet_results/DatasetXXX_NAME/<trainer>__<plans>__<configuration>/``
with ``dataset.json``, ``plans.json`` and ``fold_F/<checkpoint>`` per fold, exactly what ``nnUNetv2_predict``
reads. The phase order (the channel order ``_0000, _0001, ...``) and the reference phase come from the
``"diff4mm"`` key that ``diff4mm_register`` writes into ``dataset.json`` (nnU-Net copies it into the model
folder); every check here runs before any case is touched, so a wrong model fails in one line, not after the
first registration.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_TRAINER = "Diff4MMTrainer"
DEFAULT_PLANS = "nnUNetPlans"
DEFAULT_CONFIGURATION = "3d_fullres"
DEFAULT_CHECKPOINT = "checkpoint_final.pth"
DEFAULT_FOLDS: tuple[int | str, ...] = (0, 1, 2, 3, 4)  # nnUNetv2_predict's default
REQUIRED_LABELS = ("liver", "tumor")


class ModelError(ValueError):
    """The model folder is missing, incomplete, or does not fit the input. One line naming the file and the fix."""


def parse_folds(folds) -> tuple[int | str, ...]:
    """nnU-Net's fold arguments ('0', 3, 'all') as ints and 'all'."""
    out = []
    for f in folds:
        text = str(f).strip()
        if text == "all":
            out.append("all")
        elif text.isdigit():
            out.append(int(text))
        else:
            raise ModelError(f"invalid fold {f!r}: give fold numbers (0 1 2 3 4) or 'all'")
    if not out:
        raise ModelError("no folds given: pass -f 0 1 2 3 4 or -f all")
    return tuple(dict.fromkeys(out))


def _dataset_folders(root: Path, dataset: str) -> list[Path]:
    if not root.is_dir():
        return []
    if str(dataset).isdigit():
        prefix = f"Dataset{int(dataset):03d}_"
        return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix))
    return [root / str(dataset)] if (root / str(dataset)).is_dir() else []


def find_model_folder(dataset: str | int, trainer: str = DEFAULT_TRAINER, plans: str = DEFAULT_PLANS,
                      configuration: str = DEFAULT_CONFIGURATION, results: str | os.PathLike | None = None) -> Path:
    """``$nnUNet_results/DatasetXXX_NAME/<trainer>__<plans>__<configuration>`` for ``-d`` given as 501 or
    Dataset501_Name (nnUNetv2_predict's lookup, read from the environment at call time)."""
    root = results if results is not None else os.environ.get("nnUNet_results")
    if not root:
        raise ModelError("$nnUNet_results: not set, so no trained model can be found; export nnUNet_results=... "
                         "(the folder nnUNetv2_train wrote to)")
    root = Path(root)
    found = _dataset_folders(root, str(dataset))
    if not found:
        raise ModelError(f"{root}: no trained dataset {dataset!r} (no Dataset{int(dataset):03d}_* folder)"
                         if str(dataset).isdigit() else f"{root / str(dataset)}: no such trained dataset folder")
    if len(found) > 1:
        raise ModelError(f"{root}: dataset ID {dataset} matches {', '.join(p.name for p in found)}; pass the full "
                         "name with -d")
    folder = found[0] / f"{trainer}__{plans}__{configuration}"
    if not folder.is_dir():
        trained = sorted(p.name for p in found[0].iterdir() if p.is_dir() and p.name.count("__") == 2)
        hint = f"trained here: {', '.join(trained)}" if trained else "nothing trained there yet"
        raise ModelError(f"{folder}: no such model folder ({hint}); check -tr, -p and -c")
    return folder


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: missing; the model folder is incomplete (nnUNetv2_train writes it)") from None
    except (OSError, ValueError) as err:
        raise ModelError(f"{path}: cannot be read as JSON ({err}); the model folder is damaged") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: not a JSON object; the model folder is damaged")
    return data


@dataclass(frozen=True)
class ModelInfo:
    """Everything about a trained model that is known before any prediction (cheap: reads two JSON files)."""

    folder: Path
    phases: tuple[str, ...]  # channel order
    reference: str
    folds: tuple[int | str, ...]
    checkpoint: str
    labels: dict[str, int]
    dataset_json: dict = field(repr=False, default_factory=dict)

    @property
    def liver_label(self) -> int:
        return int(self.labels["liver"])

    @property
    def tumor_label(self) -> int:
        return int(self.labels["tumor"])

    def to_json(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "folds": list(self.folds), "checkpoint": self.checkpoint,
                "phases": list(self.phases), "reference": self.reference}


def read_model(folder: str | os.PathLike, folds=DEFAULT_FOLDS, checkpoint: str = DEFAULT_CHECKPOINT,
               phases=None, reference: str | None = None) -> ModelInfo:
    """Check a model folder and read its phase order; ModelError (one line) on anything missing.

    ``phases``/``reference``: only for a model whose dataset.json has no ``"diff4mm"`` key (not made from a
    diff4mm_register dataset); given for one that has it, they must agree with it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"{folder}: model folder does not exist")
    dataset_json = _load_json(folder / "dataset.json")
    _load_json(folder / "plans.json")
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    meta = dataset_json.get("diff4mm") if isinstance(dataset_json.get("diff4mm"), dict) else {}
    model_phases = tuple(meta.get("phases") or ())
    model_reference = meta.get("reference")
    if model_phases:
        if phases is not None and tuple(phases) != model_phases:
            raise ModelError(f"{folder / 'dataset.json'}: the model's phase order is {' '.join(model_phases)}, not "
                             f"{' '.join(phases)}; drop --phases (it is read from the model)")
        if reference is not None and reference != model_reference:
            raise ModelError(f"{folder / 'dataset.json'}: the model's reference phase is {model_reference}, not "
                             f"{reference}; drop --reference")
    else:
        if phases is None or reference is None:
            raise ModelError(f"{folder / 'dataset.json'}: has no 'diff4mm' phase order (the model was not trained "
                             "on a diff4mm_register dataset); pass --phases in channel order and --reference")
        model_phases, model_reference = tuple(phases), reference
    if len(channels) != len(model_phases):
        raise ModelError(f"{folder / 'dataset.json'}: {len(channels)} input channels but {len(model_phases)} "
                         f"phases ({' '.join(model_phases)}); the model does not take these phases")
    if model_reference not in model_phases:
        raise ModelError(f"{folder / 'dataset.json'}: reference phase {model_reference} is not one of its phases "
                         f"{' '.join(model_phases)}")
    labels = dataset_json.get("labels") or {}
    missing = [name for name in REQUIRED_LABELS if name not in labels]
    if missing or any(not isinstance(labels[n], int) for n in REQUIRED_LABELS):
        raise ModelError(f"{folder / 'dataset.json'}: labels {labels} lack an integer "
                         f"{' and '.join(missing or REQUIRED_LABELS)}; diff4mm_predict needs a liver and a tumor "
                         "label (0 background, 1 liver, 2 tumor as diff4mm_register writes)")
    folds = parse_folds(folds)
    for f in folds:
        path = folder / f"fold_{f}" / checkpoint
        if not path.is_file():
            available = sorted(p.name[5:] for p in folder.glob("fold_*") if (p / checkpoint).is_file())
            hint = (f"folds with {checkpoint}: {' '.join(available)}; pass -f {' '.join(available)}" if available
                    else f"no fold has {checkpoint} yet (train it, or choose another -chk)")
            raise ModelError(f"{path}: missing ({hint})")
    return ModelInfo(folder, model_phases, str(model_reference), folds, checkpoint,
                     {k: v for k, v in labels.items() if isinstance(v, int)}, dataset_json)


def resolve_device(device: str = "auto"):
    """'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'mps' as a torch.device (synthesis.devices), its
    refusal as a ModelError (one line from diff4mm_predict)."""
    from synthesis.devices import DeviceError, resolve_device as resolve

    try:
        return resolve(device)
    except DeviceError as err:
        raise ModelError(str(err)) from None


def load_predictor(info: ModelInfo, device: str = "auto", tta: bool = True):
    """nnU-Net's own ``nnUNetPredictor`` for the model, every requested fold loaded (their predictions are
    averaged, as nnUNetv2_predict does), mirroring TTA as the checkpoint allows unless ``tta`` is False."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch_device = resolve_device(device)
    # nnU-Net prints its trainer search and a CPU notice on stdout: not the command's output (errors still raise)
    with contextlib.redirect_stdout(io.StringIO()):
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                                    perform_everything_on_device=torch_device.type == "cuda", device=torch_device,
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(info.folder), list(info.folds), info.checkpoint)
    return predictor


def model_identity(info: ModelInfo) -> dict:
    """The model's checkpoints by size and modification time: a retrained model is another model (what a
    resumed prediction or first pass compares)."""
    files = {}
    for f in info.folds:
        st = os.stat(info.folder / f"fold_{f}" / info.checkpoint)
        files[f"fold_{f}"] = [st.st_size, st.st_mtime_ns]
    return {**info.to_json(), "checkpoints": files}


class Diff4MMModel:
    """A checked model folder (:class:`ModelInfo`) and, loaded on first use, nnU-Net's predictor for it."""

    def __init__(self, info: ModelInfo, device: str = "auto", tta: bool = True):
        self.info = info
        self.device = device
        self.tta = tta
        self._predictor = None

    @classmethod
    def open(cls, folder, folds=DEFAULT_FOLDS, checkpoint: str = DEFAULT_CHECKPOINT, device: str = "auto",
             tta: bool = True, phases=None, reference: str | None = None) -> "Diff4MMModel":
        return cls(read_model(folder, folds, checkpoint, phases, reference), device, tta)

    @property
    def predictor(self):
        if self._predictor is None:
            self._predictor = load_predictor(self.info, self.device, self.tta)
        return self._predictor

    def predict(self, channels: np.ndarray, spacing_xyz: Sequence[float], tta: bool | None = None) -> np.ndarray:
        """Label array (z, y, x) for ``channels`` (phases in channel order, each (z, y, x) on one grid of
        spacing ``spacing_xyz``), on the same grid. ``tta``: mirroring on/off for this call (default: the
        model's setting)."""
        predictor = self.predictor
        previous = predictor.use_mirroring
        predictor.use_mirroring = self.tta if tta is None else (tta and self.tta)
        try:
            seg = predictor.predict_single_npy_array(np.ascontiguousarray(channels, dtype=np.float32),
                                                     {"spacing": [abs(float(s)) for s in spacing_xyz][::-1]})
        finally:
            predictor.use_mirroring = previous
        return np.asarray(seg).astype(np.uint8)
