"""Tests for registration.inputs (input layout), registration.image_io and the diff4mm_validate CLI.

All inputs are real, small SimpleITK images written into tmp_path.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from registration.image_io import write_image_atomic
from registration.inputs import (
    CaseFiles,
    InputError,
    find_cases,
    load_case,
    read_image,
    validate_case,
    validate_dataset,
)

PHASES = ("NC", "AP", "PVP", "DELAY")
FLIP_Y = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
# Per phase: (size, spacing, origin, direction, extension). Different grids, one field of view.
GEOMETRY = {
    "NC": ((14, 11, 7), (0.9, 0.9, 2.5), (-1.0, -1.0, 0.0), None, ".nii.gz"),
    "AP": ((10, 10, 9), (1.2, 1.1, 1.8), (1.0, 0.5, -1.0), None, ".nii.gz"),
    "PVP": ((12, 10, 8), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), None, ".nii.gz"),
    "DELAY": ((12, 10, 8), (1.0, 1.0, 2.0), (0.0, 9.0, 0.0), FLIP_Y, ".mha"),
}


# ------------------------------------------------------------------------------------------------ helpers


def make_image(
    size=(12, 10, 8),
    spacing=(1.0, 1.0, 2.0),
    origin=(0.0, 0.0, 0.0),
    direction=None,
    array: np.ndarray | None = None,
    dtype=np.int16,
    seed: int = 0,
) -> sitk.Image:
    """A 3D image of ``size`` (x, y, z) with the given geometry; random CT-like values unless ``array`` given
    (each phase of a case gets its own seed: validation refuses two phases with identical voxels)."""
    if array is None:
        array = np.random.default_rng(seed).integers(-200, 300, size=size[::-1]).astype(dtype)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def make_label(size=(12, 10, 8), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), dtype=np.uint8) -> sitk.Image:
    array = np.zeros(size[::-1], dtype)
    array[2:6, 2:8, 2:10] = 1
    array[3:5, 4:6, 4:6] = 2
    return make_image(size, spacing, origin, array=array)


def write_case(root: Path, name: str, labelled: bool = True) -> Path:
    case = root / name
    case.mkdir(parents=True)
    for k, (phase, (size, spacing, origin, direction, ext)) in enumerate(GEOMETRY.items()):
        sitk.WriteImage(make_image(size, spacing, origin, direction, seed=k), str(case / f"{phase}{ext}"))
    if labelled:
        sitk.WriteImage(make_label(), str(case / "label.nii.gz"))
    return case


def write_dicom_series(image: sitk.Image, folder: Path) -> None:
    """Write an int16 3D image as one CT DICOM file per slice, with the tags the series reader needs."""
    folder.mkdir(parents=True)
    series_uid, study_uid = f"2.25.{uuid.uuid4().int}", f"2.25.{uuid.uuid4().int}"
    d = image.GetDirection()
    orientation = "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    spacing = image.GetSpacing()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(image.GetDepth()):
        sl = image[:, :, z]
        position = image.TransformIndexToPhysicalPoint((0, 0, z))
        tags = {
            "0008|0060": "CT",
            "0020|000d": study_uid,
            "0020|000e": series_uid,
            "0020|0037": orientation,
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}",
            "0018|0050": f"{spacing[2]:.6f}",
            "0020|0013": str(z + 1),
            "0008|0018": f"2.25.{uuid.uuid4().int}",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice_{z:03d}.dcm"))
        writer.Execute(sl)


def snapshot(root: Path) -> list[tuple[str, int, int]]:
    """Every file and folder under root with its mtime and size: proves a command wrote nothing."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.stat()
            out.append((str(p.relative_to(root)), st.st_mtime_ns, st.st_size if p.is_file() else 0))
    return sorted(out)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nnunetv2_diff4mm.cli.validate", *map(str, args)],
        capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120,
    )


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """INPUT with case_001, case_002 (labelled) and case_003 (test case), plus things that must be ignored."""
    root = tmp_path / "INPUT"
    write_case(root, "case_001")
    write_case(root, "case_002")
    write_case(root, "case_003", labelled=False)
    (root / "ground_truth").mkdir()
    (root / ".cache").mkdir()
    (root / "notes.txt").write_text("not a case", encoding="utf-8")
    (root / "case_001" / "README.txt").write_text("ignored", encoding="utf-8")
    return root


# ------------------------------------------------------------------------------------------ bad inputs

C2 = "case_002"


def _replace(path: Path, image: sitk.Image) -> None:
    path.unlink()
    sitk.WriteImage(image, str(path))


def _nan_phase(root: Path) -> None:
    array = np.zeros((9, 10, 10), np.float32)
    array.flat[:5] = np.nan
    _replace(root / C2 / "AP.nii.gz", make_image(*GEOMETRY["AP"][:3], array=array))


def _nonfinite_mha_phase(root: Path) -> None:
    array = np.zeros((8, 10, 12), np.float32)
    array.flat[:3] = np.nan
    array.flat[3:5] = -np.inf
    size, spacing, origin, direction, _ = GEOMETRY["DELAY"]
    _replace(root / C2 / "DELAY.mha", make_image(size, spacing, origin, direction, array=array))


def _label_with(value: float, dtype=np.uint8) -> Callable[[Path], None]:
    def breaker(root: Path) -> None:
        label = sitk.GetArrayFromImage(make_label()).astype(dtype)
        label[0, 0, 0] = value
        _replace(root / C2 / "label.nii.gz", make_image(array=label))
    return breaker


BAD_INPUTS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # kind: (breaker applied to case_002, offending file, expected text)
    "missing_phase": (lambda r: (r / C2 / "AP.nii.gz").unlink(), "AP.nii.gz", "missing phase AP"),
    "unreadable": (lambda r: (r / C2 / "AP.nii.gz").write_text("not an image\n", encoding="utf-8"),
                   f"{C2}/AP.nii.gz", "cannot be read as an image"),
    "label_size": (lambda r: _replace(r / C2 / "label.nii.gz", make_label(size=(12, 10, 9))),
                   f"{C2}/label.nii.gz", "size 12x10x9 vs 12x10x8"),
    "label_spacing": (lambda r: _replace(r / C2 / "label.nii.gz", make_label(spacing=(1.0, 1.0, 2.5))),
                      f"{C2}/label.nii.gz", "spacing (1, 1, 2.5) vs (1, 1, 2)"),
    "label_origin": (lambda r: _replace(r / C2 / "label.nii.gz", make_label(origin=(0.0, 0.0, 0.5))),
                     f"{C2}/label.nii.gz", "origin (0, 0, 0.5) vs (0, 0, 0)"),
    "label_value_3": (_label_with(3), f"{C2}/label.nii.gz", "values outside {0, 1, 2}: 3 (1 voxel)"),
    "label_value_half": (_label_with(0.5, np.float32), f"{C2}/label.nii.gz", "values outside {0, 1, 2}: 0.5"),
    "nan_phase": (_nan_phase, f"{C2}/AP.nii.gz", "5 NaN"),
    "nonfinite_mha_phase": (_nonfinite_mha_phase, f"{C2}/DELAY.mha", "5 non-finite voxels (3 NaN, 2 inf)"),
    "empty_liver": (lambda r: _replace(r / C2 / "label.nii.gz", make_label(dtype=np.uint8) * 0),
                    f"{C2}/label.nii.gz", "no liver"),
    "ambiguous_files": (lambda r: shutil.copy(r / C2 / "AP.nii.gz", r / C2 / "AP.mha"),
                        f"{C2}/AP.mha", "ambiguous AP"),
    "ambiguous_folder": (lambda r: (r / C2 / "AP").mkdir(), f"{C2}/AP/", "ambiguous AP"),
    "non_overlapping": (lambda r: _replace(r / C2 / "AP.nii.gz", make_image((10, 10, 9), (1.2, 1.1, 1.8), (500, 0, 0))),
                        f"{C2}/AP.nii.gz", "does not overlap the reference phase PVP"),
    "not_3d": (lambda r: _replace(r / C2 / "AP.nii.gz", sitk.Image(10, 10, sitk.sitkInt16)),
               f"{C2}/AP.nii.gz", "image is 2D"),
    "vector": (lambda r: _replace(r / C2 / "AP.nii.gz", sitk.Image([10, 10, 9], sitk.sitkVectorFloat32, 3)),
               f"{C2}/AP.nii.gz", "3 components per voxel"),
    "mask_grid": (lambda r: sitk.WriteImage(make_label(size=(12, 10, 8)) > 0, str(r / C2 / "AP_liver.nii.gz")),
                  f"{C2}/AP_liver.nii.gz", "resample the mask onto AP.nii.gz"),
    "mask_values": (lambda r: sitk.WriteImage(make_label(*GEOMETRY["AP"][:3]), str(r / C2 / "AP_liver.nii.gz")),
                    f"{C2}/AP_liver.nii.gz", "values outside {0, 1}: 2"),
}


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_raises_one_line_error_naming_case_and_file(dataset: Path, kind: str) -> None:
    breaker, file_name, expected = BAD_INPUTS[kind]
    breaker(dataset)
    with pytest.raises(InputError) as info:
        validate_dataset(dataset)
    message = str(info.value)
    assert C2 in message and file_name in message and expected in message, message
    assert "\n" not in message


@pytest.mark.parametrize("kind", ["missing_phase", "unreadable", "label_size", "nan_phase", "non_overlapping"])
def test_cli_bad_input_exits_nonzero_with_one_stderr_line_and_writes_nothing(dataset: Path, kind: str) -> None:
    breaker, file_name, expected = BAD_INPUTS[kind]
    breaker(dataset)
    before = snapshot(dataset)
    result = run_cli(dataset)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("diff4mm_validate: error: ")
    assert C2 in lines[0] and file_name in lines[0] and expected in lines[0]
    assert snapshot(dataset) == before


def test_label_not_on_grid_message_names_reference_and_fix(dataset: Path) -> None:
    BAD_INPUTS["label_spacing"][0](dataset)
    with pytest.raises(InputError, match=r"resample the label onto PVP\.nii\.gz$") as info:
        validate_dataset(dataset)
    assert "case_002/PVP.nii.gz" in str(info.value)


def test_label_annotated_on_another_phase_suggests_that_phase_as_reference(dataset: Path) -> None:
    """A label drawn on AP (its grid) while PVP is the reference: the fix is --reference AP, said in the line."""
    ap = sitk.ReadImage(str(dataset / C2 / "AP.nii.gz"))
    label = sitk.ReadImage(str(dataset / C2 / "label.nii.gz"))
    sitk.WriteImage(sitk.Resample(label, ap, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID()),
                    str(dataset / C2 / "label.nii.gz"))
    with pytest.raises(InputError, match=r"on the grid of phase AP \(case_002/AP\.nii\.gz\): did you mean "
                                         r"--reference AP\? Otherwise resample the label onto PVP\.nii\.gz$"):
        validate_dataset(dataset)


def test_missing_phase_message_format(dataset: Path) -> None:
    (dataset / C2 / "AP.nii.gz").rename(dataset / C2 / "ap.nii.gz")
    with pytest.raises(InputError) as info:
        find_cases(dataset)
    assert str(info.value).startswith(
        "case_002: missing phase AP: expected AP.nii.gz (or .nii, .mha, .mhd, .nrrd, .nhdr) or a DICOM folder AP/"
    )
    assert "found ap.nii.gz" in str(info.value)


def test_parallel_validation_raises_first_error_in_case_order(dataset: Path) -> None:
    _nan_phase(dataset)  # case_002
    (dataset / "case_003" / "NC.nii.gz").write_text("garbage", encoding="utf-8")
    with pytest.raises(InputError, match=r"^case_002/AP\.nii\.gz: "):
        validate_dataset(dataset, num_processes=2)


def test_dataset_level_errors(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        find_cases(tmp_path / "nope")
    empty = tmp_path / "EMPTY"
    (empty / "ground_truth").mkdir(parents=True)
    (empty / ".hidden").mkdir()
    with pytest.raises(InputError, match="no case folders"):
        find_cases(empty)
    with pytest.raises(InputError, match="reference phase XYZ is not one of the phases"):
        find_cases(dataset, reference="XYZ")


# ------------------------------------------------------------------------------------------ good inputs


def test_good_dataset_passes(dataset: Path) -> None:
    cases = validate_dataset(dataset)
    assert [c.name for c in cases] == ["case_001", "case_002", "case_003"]
    assert [c.is_labelled for c in cases] == [True, True, False]
    assert list(cases[0].phases) == list(PHASES)
    assert cases[0].phases["DELAY"] == dataset / "case_001" / "DELAY.mha"
    assert cases[0].liver_masks == {}


def test_custom_phases_and_reference(dataset: Path) -> None:
    cases = validate_dataset(dataset, phases=("AP", "PVP"), reference="PVP")
    assert list(cases[0].phases) == ["AP", "PVP"]


def test_cli_ok_prints_counts_and_writes_nothing(dataset: Path) -> None:
    before = snapshot(dataset)
    result = run_cli(dataset, "--phases", *PHASES, "--reference", "PVP", "-np", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"OK: 3 cases (2 labelled, 1 test) in {dataset}\n"
    assert result.stderr == ""
    assert snapshot(dataset) == before


def test_unlabelled_case_is_a_test_case(dataset: Path) -> None:
    case = next(c for c in find_cases(dataset) if c.name == "case_003")
    assert case.label is None and not case.is_labelled
    validate_case(case)
    images, label = load_case(case)
    assert label is None and list(images) == list(PHASES)


def test_liver_masks_are_recorded_and_validated(dataset: Path) -> None:
    size, spacing, origin, _, _ = GEOMETRY["AP"]
    mask = make_image(size, spacing, origin, array=(np.arange(900).reshape(9, 10, 10) % 2).astype(np.uint8))
    sitk.WriteImage(mask, str(dataset / "case_001" / "AP_liver.nii.gz"))
    cases = validate_dataset(dataset)
    assert cases[0].liver_masks == {"AP": dataset / "case_001" / "AP_liver.nii.gz"}
    assert cases[1].liver_masks == {}


def test_load_case_returns_phases_and_uint8_label(dataset: Path) -> None:
    _label_with(2.0, np.float32)(dataset)  # a float label with valid values is cast to UInt8
    case = validate_dataset(dataset)[1]
    images, label = load_case(case)
    assert list(images) == list(PHASES)
    assert images["AP"].GetSize() == GEOMETRY["AP"][0]
    assert label.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(label))) == {0, 1, 2}


def test_dicom_series_folder_phase_round_trips(tmp_path: Path) -> None:
    root = tmp_path / "INPUT"
    case = write_case(root, "case_001")
    size, spacing, origin = (12, 10, 8), (0.75, 0.8, 2.0), (-0.5, 0.25, 1.0)
    pvp = make_image(size, spacing, origin)
    (case / "PVP.nii.gz").unlink()
    write_dicom_series(pvp, case / "PVP")
    _replace(case / "label.nii.gz", make_label(size, spacing, origin))

    cases = validate_dataset(root)
    assert cases[0].phases["PVP"] == case / "PVP"
    image = read_image(case / "PVP")
    assert image.GetSize() == size
    np.testing.assert_allclose(image.GetSpacing(), spacing, atol=1e-2)
    np.testing.assert_allclose(image.GetOrigin(), origin, atol=1e-2)
    np.testing.assert_allclose(image.GetDirection(), pvp.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(pvp))


def test_dicom_folder_with_two_series_is_an_error(dataset: Path) -> None:
    (dataset / C2 / "PVP.nii.gz").unlink()
    write_dicom_series(make_image(), dataset / C2 / "PVP")
    write_dicom_series(make_image(), dataset / "tmp_series")
    for f in (dataset / "tmp_series").iterdir():
        f.rename(dataset / C2 / "PVP" / f"b_{f.name}")
    (dataset / "tmp_series").rmdir()
    with pytest.raises(InputError, match=r"^case_002/PVP/: folder contains 2 DICOM series \(.*\); keep one series"):
        validate_dataset(dataset)


def test_empty_dicom_folder_is_an_error(dataset: Path) -> None:
    (dataset / C2 / "PVP.nii.gz").unlink()
    (dataset / C2 / "PVP").mkdir()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        with pytest.raises(InputError, match=r"^case_002/PVP/: folder contains no DICOM series"):
            validate_dataset(dataset)
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(True)


# ------------------------------------------------------------------------------------------ image_io


def test_write_image_atomic_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "out.nii.gz"
    write_image_atomic(make_image(), target)
    first = sitk.ReadImage(str(target))
    write_image_atomic(make_image(size=(5, 6, 7)), target)
    assert sitk.ReadImage(str(target)).GetSize() == (5, 6, 7) != first.GetSize()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def test_write_image_atomic_failure_keeps_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.xyz"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError):
        write_image_atomic(make_image(), target)
    assert target.read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.xyz"]
    with pytest.raises(ValueError, match="single-file format"):
        write_image_atomic(make_image(), tmp_path / "out.mhd")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.xyz"]


def test_dicom_folder_digest_covers_every_slice(tmp_path):
    from registration.inputs import case_input_digests

    folder = tmp_path / "case" / "AP"
    folder.mkdir(parents=True)
    for k in range(3):
        (folder / f"{k}.dcm").write_bytes(bytes([k]) * 10)
    case = CaseFiles("case", tmp_path / "case", {"AP": folder})
    first = case_input_digests(case)
    assert list(first) == ["AP/"]
    (folder / "1.dcm").write_bytes(b"\x09" * 10)
    assert case_input_digests(case) != first
    (folder / "1.dcm").write_bytes(b"\x01" * 10)
    assert case_input_digests(case) == first
    (folder / "2.dcm").unlink()
    assert case_input_digests(case) != first


def test_digest_of_a_detached_header_covers_its_data_file(tmp_path):
    from registration.inputs import case_input_digests

    case_dir = tmp_path / "case"
    case_dir.mkdir()
    image = sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    sitk.WriteImage(image, str(case_dir / "AP.mhd"))
    case = CaseFiles("case", case_dir, {"AP": case_dir / "AP.mhd"})
    first = case_input_digests(case)
    assert sorted(first) == ["AP.mhd", "AP.raw"]
    data = bytearray((case_dir / "AP.raw").read_bytes())
    data[10] ^= 1  # a voxel changes, the header does not
    (case_dir / "AP.raw").write_bytes(bytes(data))
    changed = case_input_digests(case)
    assert changed["AP.mhd"] == first["AP.mhd"] and changed["AP.raw"] != first["AP.raw"]



def test_an_nnunet_dataset_of_unregistered_phases_becomes_the_input_layout(dataset: Path, tmp_path: Path) -> None:
    """diff4mm_from_nnunet (issue #15): channels -> phases as links, nothing copied, the source never written; the
    layout passes diff4mm_validate; normalisation-scheme channel names and other label values are refused first."""
    import json

    from nnunetv2_diff4mm.cli.from_nnunet import main as from_nnunet

    src = tmp_path / "Dataset500_Multi"
    for case, split in (("case_001", "imagesTr"), ("case_002", "imagesTr"), ("case_003", "imagesTs")):
        (src / split).mkdir(parents=True, exist_ok=True)
        for k, phase in enumerate(GEOMETRY):
            image = sitk.ReadImage(str(next((dataset / case).glob(f"{phase}.*"))))
            sitk.WriteImage(image, str(src / split / f"{case}_{k:04d}.nii.gz"))
        if split == "imagesTr":
            (src / "labelsTr").mkdir(exist_ok=True)
            shutil.copy(dataset / case / "label.nii.gz", src / "labelsTr" / f"{case}.nii.gz")
    dataset_json = {"channel_names": {str(k): "CT" for k in range(len(GEOMETRY))},
                    "labels": {"background": 0, "liver": 1, "tumor": 2}, "numTraining": 2, "file_ending": ".nii.gz"}
    (src / "dataset.json").write_text(json.dumps(dataset_json), encoding="utf-8")
    before = snapshot(src)
    out = tmp_path / "INPUT_FROM_NNUNET"

    def run(*argv):
        return subprocess.run([sys.executable, "-m", "nnunetv2_diff4mm.cli.from_nnunet", *argv], capture_output=True,
                              text=True, encoding="utf-8", errors="replace")

    refused = run("-d", str(src), "-o", str(out))  # channel names "CT": which phase is which is not known
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "name normalisation schemes, not phases" in refused.stderr and "--phases NC AP PVP DELAY" in refused.stderr
    assert not out.exists()
    phases = list(GEOMETRY)
    assert from_nnunet(["-d", str(src), "-o", str(out), "--phases", *phases]) == 0
    cases = validate_dataset(out)
    assert [c.name for c in cases] == ["case_001", "case_002", "case_003"]
    assert [c.label is not None for c in cases] == [True, True, False]
    assert cases[0].phases["AP"].resolve() == (src / "imagesTr" / "case_001_0001.nii.gz").resolve()
    assert cases[2].phases["DELAY"].resolve() == (src / "imagesTs" / "case_003_0003.nii.gz").resolve()
    assert from_nnunet(["-d", str(src), "-o", str(out), "--phases", *phases]) == 0  # a re-run refreshes its own folder
    assert snapshot(src) == before  # the user's dataset is never written to

    other = tmp_path / "someone_elses"
    other.mkdir()
    assert run("-d", str(src), "-o", str(other), "--phases", *phases).returncode == 1
    dataset_json["labels"] = {"background": 0, "tumor": 1}
    (src / "dataset.json").write_text(json.dumps(dataset_json), encoding="utf-8")
    wrong = run("-d", str(src), "-o", str(tmp_path / "x"), "--phases", *phases)
    assert wrong.returncode == 1 and "not background 0, liver 1, tumor 2" in wrong.stderr
    assert not (tmp_path / "x").exists()
