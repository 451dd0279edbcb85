"""Reading the synthesizer's training data from an nnU-Net raw dataset and writing synthetic cases.

Layout read (DATASET = $nnUNet_raw/DatasetXXX_Name):
    DATASET/dataset.json                       "diff4mm": {"phases": [...], "reference": "PVP"}, file_ending
    DATASET/imagesTr/<case>_0000..000k         registered phases (with tumors), in phase order
    DATASET/labelsTr/<case>                    0 background, 1 liver, 2 tumor
    DATASET/diff4mm/normal/imagesTr/<case>_0000..000k   normal (tumor-free) phases from diff4mm_inpaint
    DATASET/diff4mm/normal/labelsTr/<case>     liver mask of the normal case
Layout written (OUT): imagesTr/syn_XXXX_000k, labelsTr/syn_XXXX, dataset.json like the source's,
synthesis.json (bundle, seed, source case of each synthetic case), montages/syn_XXXX.png.

User masks (``masks_dir``): MASKS/<case><file_ending>, a binary tumor mask (0 background, 1 tumor) on the grid of
case <case>'s normal CT (the registered reference grid, i.e. that case's labelsTr file) and inside its liver; one
synthetic case per mask file, painted into that case's normal CT.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from registration.image_check import IncompleteImageError, check_complete
from registration.image_io import same_grid, write_image_atomic, write_json_atomic

NORMAL_SUBDIR = Path("diff4mm") / "normal"


class DatasetError(ValueError):
    """A dataset is missing, incomplete or not in the expected layout (one-line message naming the file)."""


def read_dataset_json(dataset_dir) -> dict:
    path = Path(dataset_dir) / "dataset.json"
    if not path.is_file():
        raise DatasetError(f"{path}: missing; not an nnU-Net raw dataset")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data.get("diff4mm"), dict) or not data["diff4mm"].get("phases"):
        raise DatasetError(f"{path}: no \"diff4mm\": {{\"phases\": [...]}} entry; register the dataset with "
                           "diff4mm_register")
    return data


def dataset_phases(dataset_dir) -> list[str]:
    return list(read_dataset_json(dataset_dir)["diff4mm"]["phases"])


def labelled_cases(dataset_dir) -> list[str]:
    data = read_dataset_json(dataset_dir)
    ending = data.get("file_ending", ".nii.gz")
    labels = sorted((Path(dataset_dir) / "labelsTr").glob(f"*{ending}"))
    if not labels:
        raise DatasetError(f"{Path(dataset_dir) / 'labelsTr'}: no labelled cases")
    return [p.name[: -len(ending)] for p in labels]


def _read(path: Path, what: str) -> sitk.Image:
    """Read an image of a dataset after proving it whole (ITK fills a truncated file with zeros)."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing {what}")
    try:
        check_complete(path)
    except IncompleteImageError as err:
        raise DatasetError(f"{path}: {what}: {err}") from None
    return sitk.ReadImage(str(path))


def _phase_files(folder: Path, case: str, n: int, ending: str) -> list[Path]:
    return [folder / f"{case}_{k:04d}{ending}" for k in range(n)]


def load_case(dataset_dir, case: str, normal: bool = True, normal_dir=None):
    """(target phases, normal phases or None, label, normal liver mask or None) of one case; the normal CT is read
    from `normal_dir` (default DATASET/diff4mm/normal)."""
    dataset_dir = Path(dataset_dir)
    data = read_dataset_json(dataset_dir)
    phases, ending = list(data["diff4mm"]["phases"]), data.get("file_ending", ".nii.gz")
    target = {p: _read(f, f"phase {p} of {case}")
              for p, f in zip(phases, _phase_files(dataset_dir / "imagesTr", case, len(phases), ending))}
    label = _read(dataset_dir / "labelsTr" / f"{case}{ending}", f"label of {case}")
    if not normal:
        return target, None, label, None
    normal_dir = Path(normal_dir) if normal_dir is not None else dataset_dir / NORMAL_SUBDIR
    files = _phase_files(normal_dir / "imagesTr", case, len(phases), ending)
    liver_file = normal_dir / "labelsTr" / f"{case}{ending}"
    missing = [f for f in (*files, liver_file) if not f.is_file()]
    if missing:
        raise DatasetError(f"{missing[0]}: missing normal (tumor-free) CT of {case}; run diff4mm_inpaint on "
                           "this dataset first")
    normal_images = {p: _read(f, f"normal phase {p} of {case}") for p, f in zip(phases, files)}
    for p, img in normal_images.items():
        if img.GetSize() != label.GetSize():
            raise DatasetError(f"{files[phases.index(p)]}: size {img.GetSize()} differs from the label's "
                               f"{label.GetSize()}; re-run diff4mm_inpaint")
    return target, normal_images, label, _read(liver_file, f"normal liver mask of {case}")


class TrainingCases(Sequence):
    """[(target phases, normal phases, label), ...] of a dataset, read from disk when indexed (a clinical
    dataset does not fit in memory at full resolution)."""

    def __init__(self, dataset_dir, names: list[str], normal_dir=None):
        self.dataset_dir, self.names, self.normal_dir = Path(dataset_dir), list(names), normal_dir

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        target, normal, label, _ = load_case(self.dataset_dir, self.names[i], normal_dir=self.normal_dir)
        return target, normal, label


def select_cases(dataset_dir, cases: list[str] | None = None) -> list[str]:
    """`cases` (sorted) after checking each is a labelled case of the dataset; every labelled case when None."""
    labelled = labelled_cases(dataset_dir)
    if cases is None:
        return labelled
    unknown = sorted(set(cases) - set(labelled))
    if unknown:
        raise DatasetError(f"{Path(dataset_dir) / 'labelsTr'}: no label for requested case {unknown[0]}"
                           f"{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}")
    return sorted(set(cases))


def load_training_cases(dataset_dir, cases: list[str] | None = None, normal_dir=None
                        ) -> tuple[list[str], TrainingCases]:
    """Names and the (lazily read) training cases of the labelled cases `cases` (default: all), with normal CTs
    from `normal_dir` (default DATASET/diff4mm/normal). Every file is checked to exist first, so a missing
    normal CT fails before anything is trained."""
    dataset_dir = Path(dataset_dir)
    data = read_dataset_json(dataset_dir)
    phases, ending = list(data["diff4mm"]["phases"]), data.get("file_ending", ".nii.gz")
    names = select_cases(dataset_dir, cases)
    normal = Path(normal_dir) if normal_dir is not None else dataset_dir / NORMAL_SUBDIR
    for name in names:
        files = [*_phase_files(dataset_dir / "imagesTr", name, len(phases), ending),
                 *_phase_files(normal / "imagesTr", name, len(phases), ending),
                 normal / "labelsTr" / f"{name}{ending}"]
        missing = [f for f in files if not f.is_file()]
        if missing:
            hint = ("run diff4mm_inpaint on this dataset (and these cases) first"
                    if str(normal) in str(missing[0]) else "the dataset is incomplete")
            raise DatasetError(f"{missing[0]}: missing ({name}); {hint}")
    return names, TrainingCases(dataset_dir, names, normal)


def read_user_masks(masks_dir, normal: Path, ending: str) -> list[tuple[str, np.ndarray]]:
    """[(source case, tumor mask (Z, Y, X) bool)] for every MASKS/<case><ending>, sorted by case, each checked
    (readable, binary, on the grid of the case's normal label, inside its liver, not empty) before anything is
    written; DatasetError names the file and the fix."""
    masks_dir = Path(masks_dir)
    if not masks_dir.is_dir():
        raise DatasetError(f"{masks_dir}: no such folder of tumor masks (<case>{ending}, 0 background, 1 tumor)")
    files = sorted(masks_dir.glob(f"*{ending}"))
    if not files:
        raise DatasetError(f"{masks_dir}: no tumor mask <case>{ending} in it; name each mask after the case whose "
                           "normal CT it is painted into")
    out = []
    for path in files:
        case = path.name[: -len(ending)]
        liver_path = normal / "labelsTr" / f"{case}{ending}"
        if not liver_path.is_file():
            raise DatasetError(f"{path}: no normal CT of a case {case!r} in {normal} (name a mask after a labelled "
                               "case with a normal CT, e.g. the stem of a file in its labelsTr)")
        mask_image, liver_image = _read(path, "tumor mask"), _read(liver_path, "liver mask of the normal CT")
        if not same_grid(mask_image, liver_image):
            raise DatasetError(f"{path}: not on the grid of {case}'s normal CT ({liver_path}: size "
                               f"{liver_image.GetSize()}, spacing {np.round(liver_image.GetSpacing(), 3).tolist()}); "
                               "resample the mask onto that file by nearest neighbour")
        mask = sitk.GetArrayFromImage(mask_image)
        values = np.unique(mask)
        if not set(values.tolist()) <= {0, 1}:
            raise DatasetError(f"{path}: values {values[:6].tolist()} in a tumor mask; expected 0 background and "
                               "1 tumor (for an nnU-Net label, keep only label 2 as 1)")
        mask = mask.astype(bool)
        if not mask.any():
            raise DatasetError(f"{path}: empty tumor mask; draw at least one tumor voxel or remove the file")
        outside = int((mask & (sitk.GetArrayFromImage(liver_image) == 0)).sum())
        if outside:
            raise DatasetError(f"{path}: {outside} tumor voxels lie outside {case}'s liver ({liver_path}); tumors "
                               "are painted and labelled inside the liver only: clip the mask to the liver")
        out.append((case, mask))
    return out


def synthesize_dataset(synthesizer, dataset_dir, count: int | None, out_dir, seed: int = 0, progress: bool = True,
                       montage_fn: Callable | None = None, normal_dir=None, shard=None, masks_dir=None,
                       enhancement_hu: Sequence[float] | None = None) -> list[str]:
    """Write `count` synthetic cases (normal CT of source case i % n + random tumors) in nnU-Net raw layout.

    Sources: every labelled case, with its normal CT in DATASET/diff4mm/normal; or, with `normal_dir` (e.g. a
    fold's normal_foldF), the labelled cases that have a normal CT there.

    Case i is drawn from np.random.default_rng([seed, i]), so any case can be (re)made alone: a re-run keeps
    finished cases (label written last) and completes the rest. `montage_fn(normal, synthetic, tumor mask, path,
    title=..., names=..., outline_after=False)` draws a PNG per case (the CLI passes
    nnunetv2_diff4mm.visualization.change_montage: normal / synthetic / difference per phase, zoomed on the tumor).

    ``shard`` (registration.sharding.Shard I/N): make only cases i with i % N == I, at the same time as the other
    shards, into the same folder; no dataset.json (the final run without a shard completes and writes it).

    ``masks_dir``: paint the user's tumor masks instead of random ones (:func:`read_user_masks`), one case per
    mask, `count` None (or the number of masks). ``enhancement_hu``: the mean change per phase (HU, the dataset's
    phase order) painted into every tumor, instead of one drawn from the bundle's bank for each.
    Returns the names of the cases this call is responsible for.
    """
    from tqdm import tqdm

    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    data = read_dataset_json(dataset_dir)
    phases, ending = list(data["diff4mm"]["phases"]), data.get("file_ending", ".nii.gz")
    synthesizer.bundle.check_phases(phases, where=f"dataset {dataset_dir.name}")
    normal = Path(normal_dir) if normal_dir is not None else dataset_dir / NORMAL_SUBDIR
    sources = labelled_cases(dataset_dir)
    if normal_dir is not None:
        sources = [c for c in sources if (normal / "labelsTr" / f"{c}{ending}").is_file()]
        if not sources:
            raise DatasetError(f"{normal / 'labelsTr'}: no normal CT of a labelled case; run diff4mm_inpaint")
    if enhancement_hu is not None:
        enhancement_hu = [float(v) for v in enhancement_hu]
        if len(enhancement_hu) != len(phases) or not np.all(np.isfinite(enhancement_hu)):
            raise DatasetError(f"{dataset_dir / 'dataset.json'}: the enhancement pattern needs one finite HU value "
                               f"per phase {phases}, got {enhancement_hu}")
    user_masks = None
    if masks_dir is not None:
        user_masks = read_user_masks(masks_dir, normal, ending)
        if count is not None and count != len(user_masks):
            raise DatasetError(f"{masks_dir}: {len(user_masks)} tumor masks, but {count} cases asked for; with user "
                               "masks every mask makes one case (leave the number of cases out)")
        count, sources = len(user_masks), [case for case, _ in user_masks]
    elif count is None or count < 1:
        raise DatasetError(f"{out_dir}: give the number of synthetic cases (>= 1), or a folder of tumor masks")
    for name in sources:  # fail before writing anything
        missing = [f for f in (*_phase_files(normal / "imagesTr", name, len(phases), ending),
                               normal / "labelsTr" / f"{name}{ending}") if not f.is_file()]
        if missing:
            raise DatasetError(f"{missing[0]}: missing normal (tumor-free) CT of {name}; run diff4mm_inpaint on "
                               "this dataset first")
    settings = {"bundle": str(Path(synthesizer.bundle.path).resolve()), "seed": seed,
                "source_dataset": str(dataset_dir.resolve()), "normal_dir": str(normal.resolve()),
                "masks_dir": None if masks_dir is None else str(Path(masks_dir).resolve()),
                "enhancement_hu": enhancement_hu}
    record_path = out_dir / "synthesis.json"
    if record_path.is_file():
        stored = json.loads(record_path.read_text(encoding="utf-8"))
        changed = [k for k in settings if stored.get(k) != settings[k]]
        if changed:
            raise DatasetError(f"{record_path}: made with another {changed[0]} ({stored.get(changed[0])}); choose "
                               "another output folder or delete this one")
    elif out_dir.is_dir() and any(not _synthesis_scaffold(p) for p in out_dir.iterdir()):
        raise DatasetError(f"{out_dir}: not empty and not a diff4mm_synthesize output; choose a new folder")
    for sub in ("imagesTr", "labelsTr", "montages"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    if shard is None or not record_path.is_file():
        write_json_atomic(record_path, {**settings, "cases": []})
    indices = list(range(count)) if shard is None else shard.select(range(count))
    names, record = [], []
    for i in tqdm(indices, desc="synthetic cases" + (f" (shard {shard})" if shard else ""), unit="case",
                  disable=not progress):
        name, source = f"syn_{i:04d}", sources[i % len(sources)]
        names.append(name)
        record.append({"case": name, "source": source} if user_masks is None
                      else {"case": name, "source": source, "mask": f"{source}{ending}"})
        label_path = out_dir / "labelsTr" / f"{name}{ending}"
        if label_path.is_file():
            continue
        _, normal_ct, label, liver = load_case(dataset_dir, source, normal_dir=normal)
        normal_hu = np.stack([sitk.GetArrayFromImage(normal_ct[p]).astype(np.float32) for p in phases])
        liver_mask = sitk.GetArrayFromImage(liver) > 0
        image, syn_label = synthesizer(normal_hu, label.GetSpacing(), liver_mask, np.random.default_rng([seed, i]),
                                       mask=None if user_masks is None else user_masks[i][1],
                                       enhancement_hu=enhancement_hu)
        images = {}
        for k, p in enumerate(phases):
            ref = normal_ct[p]
            arr = image[k]
            if ref.GetPixelID() in (sitk.sitkInt16, sitk.sitkInt32, sitk.sitkUInt16):
                arr = np.rint(arr).astype(sitk.GetArrayViewFromImage(ref).dtype)
            out = sitk.GetImageFromArray(arr)
            out.CopyInformation(ref)
            images[p] = out
            write_image_atomic(out, out_dir / "imagesTr" / f"{name}_{k:04d}{ending}")
        lab = sitk.GetImageFromArray(syn_label)
        lab.CopyInformation(label)
        if montage_fn is not None:
            montage_fn(normal_ct, images, lab == 2, out_dir / "montages" / f"{name}.png",
                       title=f"{name}: synthetic tumors in the normal CT of {source}", names=("normal", "synthetic"),
                       outline_after=False)
        write_image_atomic(lab, label_path)
    if shard is not None:
        return names
    dataset = {k: v for k, v in data.items() if k != "numTraining"}
    dataset["numTraining"] = count
    dataset["name"] = f"{data.get('name', dataset_dir.name)} synthetic"
    dataset["description"] = f"Diff4MM synthetic tumors in normal CTs of {dataset_dir.name}"
    write_json_atomic(record_path, {**settings, "cases": record})
    write_json_atomic(out_dir / "dataset.json", dataset)
    return names


def _synthesis_scaffold(entry: Path) -> bool:
    """What diff4mm_synthesize (or a concurrent shard of it) makes first: its folders and temporary files."""
    return entry.name in ("imagesTr", "labelsTr", "montages") or entry.name.startswith(".")

