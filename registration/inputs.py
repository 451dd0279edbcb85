"""Reading and validating the multi-phase input layout that users bring.

Layout (phase names and the reference phase are options)::

    INPUT/
      case_001/
        NC.nii.gz  AP.nii.gz  PVP.nii.gz  DELAY.nii.gz   # any SimpleITK-readable file, or a DICOM folder AP/
        label.nii.gz          # optional, on the reference phase's grid: 0 background, 1 liver, 2 tumor
        AP_liver.nii.gz       # optional per-phase binary liver mask, on that phase's grid
      case_002/ ...

Every later stage calls :func:`validate_dataset` first so that bad inputs fail fast, with one message that names
the case, the file and the problem, before anything is written. A case without a label is a test case.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from .image_check import IncompleteImageError, check_complete, detached_data_file

DEFAULT_PHASES: tuple[str, ...] = ("NC", "AP", "PVP", "DELAY")
DEFAULT_REFERENCE = "PVP"
LABEL_STEM = "label"
LIVER_MASK_SUFFIX = "_liver"
# Accepted file extensions, in the order they are named in messages.
IMAGE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
# Folders of INPUT that are not cases: the phantom writes its evaluation ground truth here.
NON_CASE_FOLDERS = frozenset({"ground_truth"})
LABEL_VALUES = (0, 1, 2)
MASK_VALUES = (0, 1)
# Grid tolerances: spacing relative, origin in mm, direction cosines absolute.
SPACING_RTOL = 1e-3
ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-3
# Plausibility of a phase's extent (axis-aligned physical box, voxel edges included). No CT scanner reconstructs
# more than ~800 mm across (its bore), and no scan is longer than a patient: beyond these the header's spacing is
# wrong (e.g. a 10x spacing error), and registration would crash on it.
MAX_IN_PLANE_MM = 1000.0
MAX_LENGTH_MM = 2500.0
# Phases of one examination share the in-plane field of view (their lengths may differ, e.g. a liver-only
# arterial phase); an in-plane extent this many times larger or smaller than the reference's is a header error.
MAX_IN_PLANE_RATIO = 2.5
# A case without a label (and without a reference liver mask) is registered inside a body mask of the reference
# phase: voxels above RegistrationSettings.body_threshold_hu. Below this fraction of voxels there is no body.
BODY_THRESHOLD_HU = -500.0
MIN_BODY_FRACTION = 0.01


class InputError(ValueError):
    """A problem with the user's input data. The message is one line naming the case, the file and the fix."""


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case folder (paths are not checked for content; see :func:`validate_case`)."""

    name: str
    directory: Path
    phases: dict[str, Path]  # phase -> image file or DICOM folder, in phase order
    label: Path | None = None
    liver_masks: dict[str, Path] = field(default_factory=dict)  # phase -> optional binary liver mask

    @property
    def is_labelled(self) -> bool:
        """True for a training case (has a label), False for a test case."""
        return self.label is not None


@dataclass(frozen=True)
class _Header:
    """Geometry of an image as read from its header (or from the full image for DICOM folders)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]


# --------------------------------------------------------------------------------------------------- finding


def _display(path: Path, root: Path) -> str:
    """Path relative to the INPUT dir for messages (folders get a trailing '/')."""
    try:
        text = path.relative_to(root).as_posix()
    except ValueError:
        text = str(path)
    return text + "/" if path.is_dir() else text


def _find_entry(case_dir: Path, stem: str, root: Path) -> Path | None:
    """The file ``stem.<ext>`` or DICOM folder ``stem/`` in ``case_dir``; None if absent, InputError if several."""
    found = [case_dir / f"{stem}{ext}" for ext in IMAGE_EXTENSIONS if (case_dir / f"{stem}{ext}").is_file()]
    if (case_dir / stem).is_dir():
        found.append(case_dir / stem)
    if len(found) > 1:
        names = " and ".join(_display(p, root) for p in found)
        both = "both" if len(found) == 2 else "all"
        raise InputError(f"{case_dir.name}: ambiguous {stem}: {names} {both} exist; keep exactly one of them")
    return found[0] if found else None


def _stem(name: str) -> str | None:
    """The phase name a file or DICOM folder name would give (its stem), None for names with no image extension."""
    for ext in sorted(IMAGE_EXTENSIONS, key=len, reverse=True):
        if name.lower().endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return None


def _listing(folder: Path, limit: int = 12) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not p.name.startswith("."))
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _phase_stems(case_dir: Path, phases: Sequence[str]) -> list[str]:
    """The stems of the image files and DICOM folders in ``case_dir`` (label, liver masks left out), in the order
    of ``phases`` where a stem is one of them, the others in the remaining places, sorted: a --phases suggestion,
    e.g. NC ART PV DELAY for files NC, ART, PV, DELAY when NC AP PVP DELAY were asked for."""
    stems = sorted({stem for p in case_dir.iterdir() if not p.name.startswith(".")
                    for stem in [p.name if p.is_dir() else _stem(p.name)]
                    if stem and stem != LABEL_STEM and not stem.endswith(LIVER_MASK_SUFFIX)})
    slots: list[str | None] = [p if p in stems else None for p in phases]
    rest = iter(s for s in stems if s not in slots)
    ordered = [slot if slot is not None else next(rest, None) for slot in slots]
    return [s for s in ordered if s is not None] + list(rest)


def _nnunet_dataset_folder(folder: Path) -> bool:
    return (folder / "dataset.json").is_file() or (folder / "imagesTr").is_dir()


def _dataset_folder_message(folder: Path, what: str) -> str:
    has = ", ".join(n for n in ("imagesTr/", "labelsTr/", "dataset.json") if (folder / n.rstrip("/")).exists())
    return (f"{folder}: is an nnU-Net raw dataset folder ({has}), not {what}; pass the input folder that holds "
            f"one sub-folder per case with its phase files (e.g. INPUT/case_001/PVP{IMAGE_EXTENSIONS[0]})")


def _single_case_message(root: Path, phases: Sequence[str]) -> str | None:
    """The message for an input folder that holds phase files itself (one case folder passed instead of the
    folder of cases), None if it holds none."""
    present = [p for p in phases if (root / p).is_dir() or any((root / f"{p}{e}").is_file() for e in IMAGE_EXTENSIONS)]
    if len(present) < min(2, len(phases)):
        return None
    return (f"{root}: holds phase files itself ({_listing(root)}), so it looks like one case folder; pass its "
            f"parent folder, which holds one sub-folder per case")


def _missing_phase_message(case_dir: Path, phase: str, phases: Sequence[str] | None = None) -> str:
    """One line: what is missing, what the case folder holds and, given the ``phases`` asked for (commands with
    --phases), the --phases that would match its files."""
    if _nnunet_dataset_folder(case_dir):
        return _dataset_folder_message(case_dir, "a case folder")
    others = ", ".join(IMAGE_EXTENSIONS[1:])
    msg = (
        f"{case_dir.name}: missing phase {phase}: expected {phase}{IMAGE_EXTENSIONS[0]} (or {others}) "
        f"or a DICOM folder {phase}/"
    )
    wanted = {f"{phase}{ext}".lower() for ext in IMAGE_EXTENSIONS} | {phase.lower()}
    near = sorted(p.name for p in case_dir.iterdir() if p.name.lower() in wanted)
    if near:
        msg += f"; found {', '.join(near)} (names are case-sensitive)"
    listing = _listing(case_dir)
    msg += f"; the case folder holds {listing}" if listing else "; the case folder is empty"
    stems = _phase_stems(case_dir, phases) if phases is not None else []
    if stems and stems != list(phases or ()):
        msg += (f"; phase names are file stems: if these are your phases, pass them in channel order, e.g. "
                f"--phases {' '.join(stems)}")
    return msg


def _check_phase_options(phases: Sequence[str], reference: str) -> None:
    if not phases:
        raise InputError("no phases given; pass at least one phase name, e.g. NC AP PVP DELAY")
    duplicates = sorted({p for p in phases if list(phases).count(p) > 1})
    if duplicates:
        raise InputError(f"phase names given more than once: {', '.join(duplicates)}; list each phase once")
    for p in phases:
        if not p or "/" in p or p.startswith(".") or p == LABEL_STEM or p.endswith(LIVER_MASK_SUFFIX):
            raise InputError(
                f"invalid phase name {p!r}: must be a plain file stem, not '{LABEL_STEM}', "
                f"not ending in '{LIVER_MASK_SUFFIX}'"
            )
    if reference not in phases:
        raise InputError(
            f"reference phase {reference} is not one of the phases {', '.join(phases)}; choose one of them"
        )


def find_cases(
    input_dir: str | Path,
    phases: Sequence[str] = DEFAULT_PHASES,
    reference: str = DEFAULT_REFERENCE,
) -> list[CaseFiles]:
    """List the cases in ``input_dir`` (sorted by name) and locate their phase, label and liver-mask files.

    Every sub-folder is a case except hidden ones and ``ground_truth``; files other than phases, label and
    liver masks are ignored. Only names are checked here (missing or ambiguous files); contents are checked by
    :func:`validate_case`.
    """
    root = Path(input_dir)
    phases = tuple(phases)
    _check_phase_options(phases, reference)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise InputError(f"{root}: input folder {what}; pass the folder that holds one sub-folder per case")
    case_dirs = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in NON_CASE_FOLDERS),
        key=lambda p: p.name,
    )
    if not case_dirs:
        example = root / "case_001" / (reference + IMAGE_EXTENSIONS[0])
        raise InputError(_single_case_message(root, phases)
                         or f"{root}: no case folders found; expected one sub-folder per case, e.g. {example}")
    cases = []
    for case_dir in case_dirs:
        phase_paths: dict[str, Path] = {}
        masks: dict[str, Path] = {}
        for phase in phases:
            path = _find_entry(case_dir, phase, root)
            if path is None:
                if _nnunet_dataset_folder(root):
                    raise InputError(_dataset_folder_message(root, "an input folder of cases"))
                # a case folder passed as INPUT: its DICOM phase folders look like cases, or its files are here
                single_case = case_dir.name in phases or any((root / f"{phase}{e}").is_file() for e in IMAGE_EXTENSIONS)
                raise InputError(single_case and _single_case_message(root, phases)
                                 or _missing_phase_message(case_dir, phase, phases))
            phase_paths[phase] = path
            mask = _find_entry(case_dir, phase + LIVER_MASK_SUFFIX, root)
            if mask is not None:
                masks[phase] = mask
        label = _find_entry(case_dir, LABEL_STEM, root)
        cases.append(CaseFiles(case_dir.name, case_dir, phase_paths, label, masks))
    return cases


# --------------------------------------------------------------------------------------------------- reading


def _first_line(err: BaseException) -> str:
    """The reason in an ITK exception, whose text otherwise spans lines with C++ source locations."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in lines:  # e.g. "sitk::ERROR: Unable to determine ImageIO reader for ..."
        if "ERROR:" in ln:
            return ln.split("ERROR:", 1)[1].strip()
    reasons = [ln for ln in lines if not ln.startswith("Exception thrown")]
    return reasons[0] if reasons else (lines[0] if lines else type(err).__name__)


def _dicom_files(folder: Path, name: str) -> list[str]:
    """File names of the single DICOM series in ``folder``, in slice order (InputError if none or several)."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{name}: folder contains no DICOM series; put the phase's .dcm slices in it")
    if len(series) > 1:
        raise InputError(
            f"{name}: folder contains {len(series)} DICOM series ({', '.join(series)}); keep one series per phase folder"
        )
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))


# Files proven whole in this process: path -> what identifies the content of every file checked for it (the
# path itself and a detached data file), so a file rewritten or cut since is checked again. Proving a .nii.gz
# whole decompresses it: with this, validation's header and voxel reads (and registration after it) do that once.
_PROVEN_WHOLE: dict[str, tuple] = {}


def _identity(files) -> tuple | None:
    try:
        stats = [(str(f), os.stat(f)) for f in files]
    except OSError:
        return None
    return tuple((f, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) for f, st in stats)


def _prove_whole(path: Path, name: str) -> None:
    """InputError unless the image file at ``path`` is complete (see registration.image_check)."""
    key = str(path.resolve())
    known = _PROVEN_WHOLE.get(key)
    if known is not None and _identity(f for f, *_ in known) == known:
        return
    try:
        files = check_complete(path)
    except IncompleteImageError as err:
        raise InputError(f"{name}: {err}") from None
    except OSError as err:
        raise InputError(f"{name}: cannot be read: {err.strerror or err}; check the file's permissions") from None
    identity = _identity(files)
    if identity:
        _PROVEN_WHOLE[key] = identity


def _read(path: Path, name: str, header_only: bool) -> sitk.Image | sitk.ImageFileReader:
    """The one reader of user input: every image, label and liver mask read in this package comes through here.

    SimpleITK does the reading. ITK's readers do not notice a file that is cut short (they fill the missing voxels
    with zeros), so this first proves the file whole (:func:`registration.image_check.check_complete`: gzip
    stream to its end with a valid trailer, payload as long as the header says). ``header_only`` returns a
    reader that has read the header (ReadImageInformation) instead of the image. DICOM folders are read as one
    series. ITK's RuntimeErrors become one-line InputErrors.
    """
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(_dicom_files(path, name))
            return reader.Execute()
        _prove_whole(path, name)
        if header_only:
            info = sitk.ImageFileReader()
            info.SetFileName(str(path))
            info.ReadImageInformation()
            return info
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise InputError(f"{name}: cannot be read as an image: {_first_line(err)}") from err


def read_image(path: str | Path, *, name: str | None = None) -> sitk.Image:
    """Read an image file or a DICOM series folder, proven complete first (see :func:`_read`).

    ``name`` is how the file is called in error messages (default: its last two path parts, e.g.
    ``case_001/AP.nii.gz``). Problems become one-line InputErrors.
    """
    path = Path(path)
    name = name if name is not None else _display(path, path.parent.parent)
    return _read(path, name, header_only=False)


def _read_header(path: Path, name: str) -> _Header:
    """Check that ``path`` is a readable, complete 3D scalar image and return its geometry (header-only where
    possible; DICOM geometry needs all slices)."""
    info = _read(path, name, header_only=True)
    if isinstance(info, sitk.Image):
        dim, comps = info.GetDimension(), info.GetNumberOfComponentsPerPixel()
    else:
        dim, comps = info.GetDimension(), info.GetNumberOfComponents()
    size = tuple(int(s) for s in info.GetSize())
    if dim != 3:
        raise InputError(
            f"{name}: image is {dim}D (size {'x'.join(map(str, size))}); expected a 3D volume"
        )
    if comps != 1:
        raise InputError(
            f"{name}: image has {comps} components per voxel; expected a scalar (grayscale) volume"
        )
    return _Header(size, tuple(info.GetSpacing()), tuple(info.GetOrigin()), tuple(info.GetDirection()))


def load_case(case: CaseFiles) -> tuple[dict[str, sitk.Image], sitk.Image | None]:
    """Read a (validated) case: the phases in phase order, and the label as UInt8 (None for a test case)."""
    root = case.directory.parent
    images = {phase: read_image(p, name=_display(p, root)) for phase, p in case.phases.items()}
    label = None
    if case.label is not None:
        label = sitk.Cast(read_image(case.label, name=_display(case.label, root)), sitk.sitkUInt8)
    return images, label


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def case_input_digests(case: CaseFiles) -> dict[str, str]:
    """sha256 of every input file of ``case``: {file name relative to the case folder: hex digest}.

    Phases, label and liver masks; a detached header's data file (``AP.mhd`` -> ``AP.raw``) under its own name;
    a DICOM folder as one digest over its files in sorted name order (names included, so a renamed or removed
    slice counts). What a resumed run compares to decide whether a case must be registered again: the content,
    not the paths or time stamps. Costs one read of each file (~1 GB/s), small next to registering it.
    """
    out: dict[str, str] = {}
    entries = [*case.phases.values(), *([case.label] if case.label is not None else []), *case.liver_masks.values()]
    for entry in entries:
        name = entry.relative_to(case.directory).as_posix()
        if entry.is_dir():
            digest = hashlib.sha256()
            for f in sorted(p for p in entry.rglob("*") if p.is_file()):
                digest.update(f.relative_to(entry).as_posix().encode("utf-8") + b"\0")
                digest.update(_sha256(f).encode("ascii"))
            out[name + "/"] = digest.hexdigest()
            continue
        out[name] = _sha256(entry)
        data_file = detached_data_file(entry)
        if data_file is not None and data_file.is_file():
            out[data_file.relative_to(case.directory).as_posix() if data_file.is_relative_to(case.directory)
                else str(data_file)] = _sha256(data_file)
    return out


# ------------------------------------------------------------------------------------------------ validation


def _fmt(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _grid_differences(a: _Header, b: _Header) -> list[str]:
    """Human-readable list of what differs between grid ``a`` and grid ``b`` (empty if the same grid)."""
    diffs = []
    if a.size != b.size:
        diffs.append(f"size {'x'.join(map(str, a.size))} vs {'x'.join(map(str, b.size))}")
    if not np.allclose(a.spacing, b.spacing, rtol=SPACING_RTOL, atol=0):
        diffs.append(f"spacing {_fmt(a.spacing)} vs {_fmt(b.spacing)}")
    if not np.allclose(a.origin, b.origin, rtol=0, atol=ORIGIN_ATOL_MM):
        diffs.append(f"origin {_fmt(a.origin)} vs {_fmt(b.origin)}")
    if not np.allclose(a.direction, b.direction, rtol=0, atol=DIRECTION_ATOL):
        diffs.append(f"direction {_fmt(a.direction)} vs {_fmt(b.direction)}")
    return diffs


def _bounds(h: _Header) -> np.ndarray:
    """Axis-aligned physical bounding box (2x3: min, max) of the voxel extent, voxel edges included."""
    corners = np.array(np.meshgrid(*[(-0.5, s - 0.5) for s in h.size], indexing="ij")).reshape(3, -1)
    direction = np.asarray(h.direction, dtype=float).reshape(3, 3)
    points = np.asarray(h.origin)[:, None] + direction @ (np.asarray(h.spacing)[:, None] * corners)
    return np.stack([points.min(axis=1), points.max(axis=1)])


def _fmt_bounds(b: np.ndarray) -> str:
    return " x ".join(f"[{lo:.1f}, {hi:.1f}]" for lo, hi in b.T) + " mm"


def _voxels(path: Path, name: str) -> np.ndarray:
    return sitk.GetArrayFromImage(read_image(path, name=name))  # a copy: a view would outlive the image


def _check_finite(path: Path, array: np.ndarray, name: str) -> None:
    if array.dtype.kind != "f":
        return  # integer voxels are always finite
    if path.is_file() and path.name.lower().endswith((".nii", ".nii.gz")):
        # ITK's NIfTI reader silently turns NaN/inf into 0, so count them in the stored data instead.
        import nibabel  # a dependency of nnunetv2; only needed for float NIfTI files

        array = np.asanyarray(nibabel.load(str(path)).dataobj)
    if np.isfinite(array).all():
        return
    n_nan = int(np.isnan(array).sum())
    n_inf = int(np.isinf(array).sum())
    raise InputError(
        f"{name}: contains {n_nan + n_inf} non-finite voxels ({n_nan} NaN, {n_inf} inf); "
        f"replace them with finite values"
    )


def _check_values(array: np.ndarray, allowed: tuple[int, ...], name: str, what: str, meaning: str) -> None:
    if array.dtype.kind in "iub" and array.min() >= min(allowed) and array.max() <= max(allowed):
        return  # integer data within range: fast path, no per-value test needed
    bad = ~np.isin(array, allowed)
    if not bad.any():
        return
    values = np.unique(array[bad])
    shown = ", ".join(f"{v:g}" for v in values[:10].tolist())
    if len(values) > 10:
        shown += f", ... ({len(values)} distinct)"
    allowed_text = "{" + ", ".join(map(str, allowed)) + "}"
    count = int(bad.sum())
    raise InputError(
        f"{name}: {what} has values outside {allowed_text}: {shown} ({count} voxel{'s' * (count != 1)}); "
        f"expected {meaning}"
    )


def _extent(h: _Header) -> np.ndarray:
    box = _bounds(h)
    return box[1] - box[0]


def _check_extents(case: CaseFiles, headers: dict[str, _Header], reference: str, names: dict[Path, str]) -> None:
    """Every phase's physical extent is one a CT can have, and its in-plane extent is close to the reference's."""
    for phase, p in case.phases.items():
        ext = _extent(headers[phase])
        if max(ext[0], ext[1]) > MAX_IN_PLANE_MM or ext[2] > MAX_LENGTH_MM:
            raise InputError(
                f"{names[p]}: phase {phase} spans {' x '.join(f'{e:.0f}' for e in ext)} mm, more than any CT "
                f"(at most {MAX_IN_PLANE_MM:.0f} mm across, {MAX_LENGTH_MM:.0f} mm long); check the voxel spacing "
                f"{_fmt(headers[phase].spacing)} mm in its header"
            )
    ref_path = case.phases[reference]
    ref_ext = _extent(headers[reference])
    for phase, p in case.phases.items():
        if phase == reference:
            continue
        ratio = _extent(headers[phase])[:2] / np.maximum(ref_ext[:2], 1e-6)
        worst = float(max(ratio.max(), (1.0 / np.maximum(ratio, 1e-12)).max()))
        if worst > MAX_IN_PLANE_RATIO:
            ext = _extent(headers[phase])
            raise InputError(
                f"{names[p]}: phase {phase} covers {ext[0]:.0f} x {ext[1]:.0f} mm in-plane, {worst:.1f}x "
                f"{'larger' if ratio.max() > 1 else 'smaller'} than the reference phase {reference} "
                f"({names[ref_path]}: {ref_ext[0]:.0f} x {ref_ext[1]:.0f} mm), but phases of one examination share "
                f"the field of view; check the voxel spacing {_fmt(headers[phase].spacing)} mm in its header "
                f"(reference {_fmt(headers[reference].spacing)} mm)"
            )


def _check_body(case: CaseFiles, array: np.ndarray, name: str, reference: str, threshold_hu: float) -> None:
    """An unlabelled case is registered inside the body of its reference phase: there must be one."""
    fraction = float(np.count_nonzero(array > threshold_hu)) / array.size
    if fraction < MIN_BODY_FRACTION:
        raise InputError(
            f"{name}: {case.name} has no label, so it is registered inside the body of its reference phase "
            f"{reference}, but only {100 * fraction:.2g} % of its voxels are above {threshold_hu:g} HU (no body); "
            f"check that it is a CT in HU, or add {LABEL_STEM}.nii.gz or {reference}{LIVER_MASK_SUFFIX}.nii.gz"
        )


def validate_case(case: CaseFiles, reference: str = DEFAULT_REFERENCE, input_root: Path | None = None, *,
                  body_threshold_hu: float = BODY_THRESHOLD_HU) -> None:
    """Read every file of ``case`` and raise InputError on the first problem.

    Checks, in this order: headers (readable, complete, 3D, one component); each phase overlaps the reference
    phase; each phase's extent is plausible (at most MAX_IN_PLANE_MM across and MAX_LENGTH_MM long, in-plane
    within MAX_IN_PLANE_RATIO of the reference's); label on the reference grid; liver masks on their phase's
    grid; then voxels: no NaN/inf, no constant phase, a body in the reference phase of an unlabelled case
    (MIN_BODY_FRACTION of its voxels above ``body_threshold_hu``) unless it has a reference liver mask, label
    values in {0,1,2} with at least one liver voxel (1 or 2), liver masks binary. ``input_root`` is the folder
    that file names in messages are relative to (default: the case folder's parent, i.e. INPUT).
    """
    root = Path(input_root) if input_root is not None else case.directory.parent
    if reference not in case.phases:
        raise InputError(f"{case.name}: reference phase {reference} is not one of its phases {', '.join(case.phases)}")
    names = {path: _display(path, root) for path in [*case.phases.values(), *case.liver_masks.values()]}
    if case.label is not None:
        names[case.label] = _display(case.label, root)
    ref_path = case.phases[reference]

    # Header checks: cheap, and catch wrong files before any voxel is read.
    headers = {phase: _read_header(p, names[p]) for phase, p in case.phases.items()}
    ref_box = _bounds(headers[reference])
    for phase, p in case.phases.items():
        box = _bounds(headers[phase])
        if np.any(np.maximum(box[0], ref_box[0]) >= np.minimum(box[1], ref_box[1])):
            raise InputError(
                f"{names[p]}: phase {phase} does not overlap the reference phase {reference} "
                f"({names[ref_path]}) at all: {phase} spans {_fmt_bounds(box)}, {reference} spans "
                f"{_fmt_bounds(ref_box)}; check the origin and direction in the header"
            )
    _check_extents(case, headers, reference, names)
    if case.label is not None:
        label_header = _read_header(case.label, names[case.label])
        diffs = _grid_differences(label_header, headers[reference])
        if diffs:
            # the label is annotated on another phase's grid: the likely fix is naming that phase the reference
            match = next((phase for phase in case.phases
                          if phase != reference and not _grid_differences(label_header, headers[phase])), None)
            fix = (f"it is on the grid of phase {match} ({names[case.phases[match]]}): did you mean --reference "
                   f"{match}? Otherwise resample the label onto {ref_path.name}" if match is not None
                   else f"resample the label onto {ref_path.name}")
            raise InputError(
                f"{names[case.label]}: label is not on the grid of the reference phase {names[ref_path]}: "
                f"{', '.join(diffs)} (label vs {reference}); {fix}"
            )
    for phase, p in case.liver_masks.items():
        diffs = _grid_differences(_read_header(p, names[p]), headers[phase])
        if diffs:
            phase_path = case.phases[phase]
            raise InputError(
                f"{names[p]}: liver mask is not on the grid of phase {phase} ({names[phase_path]}): "
                f"{', '.join(diffs)} (mask vs {phase}); resample the mask onto {phase_path.name}"
            )

    # Voxel checks: one image in memory at a time.
    body_fallback = case.label is None and reference not in case.liver_masks
    seen: dict[tuple, str] = {}  # (shape, voxel digest) -> phase: the same scan exported under two phase names
    for phase, p in case.phases.items():
        array = _voxels(p, names[p])
        _check_finite(p, array, names[p])
        key = (array.shape, hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest())
        if key in seen:
            first = case.phases[seen[key]]
            raise InputError(
                f"{names[p]}: phase {phase} has exactly the voxels of phase {seen[key]} ({names[first]}); the same "
                f"scan was exported under two phase names: replace it with the real {phase} series"
            )
        seen[key] = phase
        lo, hi = array.min(), array.max()
        if lo == hi:
            raise InputError(
                f"{names[p]}: phase {phase} has the same value ({float(lo):g}) in every voxel, so it is not a CT "
                f"scan that can be registered; re-export the phase from the original scan"
            )
        if phase == reference and body_fallback:
            _check_body(case, array, names[p], reference, body_threshold_hu)
        del array
    if case.label is not None:
        label = _voxels(case.label, names[case.label])
        _check_finite(case.label, label, names[case.label])
        _check_values(label, LABEL_VALUES, names[case.label], "label", "0 background, 1 liver, 2 tumor")
        if label.max() < 1:
            raise InputError(
                f"{names[case.label]}: label contains no liver (no voxel with value 1 or 2); use the right label "
                f"file, or remove it to treat {case.name} as a test case"
            )
        del label
    for p in case.liver_masks.values():
        mask = _voxels(p, names[p])
        _check_finite(p, mask, names[p])
        _check_values(mask, MASK_VALUES, names[p], "liver mask", "a binary mask (0 background, 1 liver)")


def _validate_worker(args: tuple[CaseFiles, str, Path, bool, float]) -> InputError | None:
    """Pool worker: validate one case and return its InputError instead of raising it (keeps case order)."""
    case, reference, root, itk_warnings, body_threshold_hu = args
    sitk.ProcessObject.SetGlobalWarningDisplay(itk_warnings)  # spawned workers do not inherit the parent's
    try:
        validate_case(case, reference, root, body_threshold_hu=body_threshold_hu)
    except InputError as err:
        return err
    return None


def validate_dataset(
    input_dir: str | Path,
    phases: Sequence[str] = DEFAULT_PHASES,
    reference: str = DEFAULT_REFERENCE,
    num_processes: int = 1,
    *,
    body_threshold_hu: float = BODY_THRESHOLD_HU,
    shard=None,
) -> list[CaseFiles]:
    """Find and validate every case; return the cases or raise the first InputError in case order.

    ``shard`` (a registration.sharding.Shard): only that part of the cases is validated and returned.

    With ``num_processes > 1`` cases are validated in a process pool; the error raised is still the one of the
    first bad case by name, so the result does not depend on scheduling. A progress bar is shown on a terminal.
    """
    root = Path(input_dir)
    cases = find_cases(root, phases, reference)
    if shard is not None:
        cases = shard.select(cases, key=lambda c: c.name)
    itk_warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    jobs = [(case, reference, root, itk_warnings, body_threshold_hu) for case in cases]
    progress = dict(total=len(cases), desc="validating", unit="case", disable=None, leave=False)
    if num_processes > 1 and len(cases) > 1:
        # spawn: forking a process that already runs ITK's thread pool can deadlock.
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(num_processes, len(cases))) as pool:
            for error in tqdm(pool.imap(_validate_worker, jobs), **progress):
                if error is not None:
                    raise error
    else:
        for error in tqdm(map(_validate_worker, jobs), **progress):
            if error is not None:
                raise error
    return cases
