"""diff4mm_register's output: a drop-in nnU-Net raw dataset, validated first, resumable, never clobbering."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_diff4mm.evaluation.registration_error import case_errors
from nnunetv2_diff4mm.phantom import PhantomConfig, write_phantom_dataset
from nnunetv2_diff4mm.visualization import registration_montage
from registration.inputs import InputError
from registration.nnunet_raw import DatasetExistsError, write_registered_dataset
from registration.register import RegistrationSettings, register

DEFAULT = RegistrationSettings()


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    root = tmp_path_factory.mktemp("reg")
    write_phantom_dataset(root / "phantom", PhantomConfig(seed=2, spacing=(5.0, 5.0, 8.0)), cases=2, test_cases=1,
                          progress=False)
    # the QA montage comes from the plugin, passed in: registration/ never imports nnunetv2_diff4mm
    target = write_registered_dataset(root / "phantom", 503, "Reg", root / "raw", settings=DEFAULT, progress=False,
                                      num_processes=2, montage_fn=registration_montage)
    return root, target


def test_the_montage_function_passed_in_draws_every_cases_qa_picture(registered):
    root, target = registered
    pictures = sorted(p.parent.name for p in (target / "diff4mm" / "registration").glob("*/montage.png"))
    assert pictures == ["case_000", "case_001", "test_000"]
    # before and after registration: four rows of panels (axial, coronal each), one column per phase
    import matplotlib.image

    height, width = matplotlib.image.imread(str(target / "diff4mm/registration/case_000/montage.png")).shape[:2]
    assert height > 0.9 * width


def test_the_run_summary_line_names_the_median_and_the_worst_phase(registered):
    """diff4mm_register's last QA line (issue #20): median and worst final similarity over every registered phase,
    the worst's case and phase, the number flagged; the figures are those of summary.csv."""
    import csv
    import statistics

    from registration.nnunet_raw import run_summary

    _, target = registered
    summary = target / "diff4mm" / "registration" / "summary.csv"
    with open(summary, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    values = [float(r["similarity"]) for r in rows]
    worst = rows[values.index(min(values))]
    line = run_summary(summary)
    assert line.startswith(f"registration QA of {len(rows)} phases: final similarity median "
                           f"{statistics.median(values):.2f}, worst {min(values):.2f} "
                           f"({worst['case']} {worst['phase']}); 0 flagged")
    assert len(rows) == 9 and "\n" not in line  # 3 cases x 3 moving phases
    assert run_summary(target / "no_such_summary.csv") is None


def test_layout_and_dataset_json_follow_nnunet(registered):
    root, target = registered
    assert target.name == "Dataset503_Reg"
    data = json.loads((target / "dataset.json").read_text(encoding="utf-8"))
    assert data["channel_names"] == {"0": "CT", "1": "CT", "2": "CT", "3": "CT"}
    assert data["labels"] == {"background": 0, "liver": 1, "tumor": 2} and data["numTraining"] == 2
    assert data["diff4mm"]["phases"] == ["NC", "AP", "PVP", "DELAY"] and data["diff4mm"]["reference"] == "PVP"
    assert sorted(p.name for p in (target / "imagesTs").iterdir())[0] == "test_000_0000.nii.gz"
    pvp = sitk.ReadImage(str(root / "phantom" / "case_000" / "PVP.nii.gz"))
    for k in range(4):  # every phase on the reference grid
        img = sitk.ReadImage(str(target / "imagesTr" / f"case_000_{k:04d}.nii.gz"))
        assert img.GetSize() == pvp.GetSize() and img.GetSpacing() == pytest.approx(pvp.GetSpacing())
    qa = json.loads((target / "diff4mm" / "registration" / "test_000" / "qa.json").read_text(encoding="utf-8"))
    assert qa["mask"] == "body"  # unlabelled case: body-mask fallback, recorded
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(target), num_processes=1)  # raises on any problem


def test_registration_reduces_the_error_to_the_true_alignment(registered):
    root, target = registered
    phases = ["NC", "AP", "PVP", "DELAY"]
    errors = [case_errors(root / "phantom", target, case, phases) for case in ("case_000", "case_001")]
    for phase in ("NC", "AP", "DELAY"):
        before = np.mean([e[phase][0] for e in errors])
        after = np.mean([e[phase][1] for e in errors])
        assert after < 0.5 * before, (phase, before, after)  # acceptance goal 0.40 at the demo's resolution


def test_without_registration_is_identity_resampling_the_unregistered_control(registered):
    root, _ = registered
    target = write_registered_dataset(root / "phantom", 504, "Unreg", root / "raw", progress=False,
                                      settings=DEFAULT.without_registration(), allow_failed=True)
    phases = ["NC", "AP", "PVP", "DELAY"]
    for case in ("case_000", "case_001"):
        errors = case_errors(root / "phantom", target, case, phases)
        for phase in ("NC", "AP", "DELAY"):
            unregistered, written = errors[phase]
            assert unregistered > 5.0  # the phantom's phases are misaligned ...
            assert abs(written - unregistered) < 0.5, (case, phase, errors[phase])  # ... and stay so (int16 rounding)
        qa = json.loads((target / "diff4mm" / "registration" / case / "qa.json").read_text(encoding="utf-8"))
        assert {p["initialisation"] for p in qa["phases"].values() if "initialisation" in p} == {
            "identity (scanner coordinates)"}
    settings = json.loads((target / "diff4mm" / "registration" / "settings.json").read_text(encoding="utf-8"))
    assert settings["settings"]["rigid"] is settings["settings"]["affine"] is settings["settings"]["bspline"] is None
    # the benchmark labels its arms from that record ("all unregistered phases" in the report)
    from nnunetv2_diff4mm.benchmark.common import dataset_is_registered

    assert not dataset_is_registered(target) and dataset_is_registered(registered[1])


def test_without_registration_ignores_moving_liver_masks(registered):
    """A <PHASE>_liver mask would start a registration at the mask centroids (10 mm here); unregistered keeps
    the scanner coordinates."""
    root, _ = registered
    fixed = sitk.ReadImage(str(root / "phantom" / "case_000" / "PVP.nii.gz"))
    liver = sitk.ReadImage(str(root / "phantom" / "case_000" / "label.nii.gz")) > 0
    origin = np.add(fixed.GetOrigin(), (0.0, 0.0, 10.0))
    moving, moving_liver = (sitk.Image(img) for img in (fixed, liver))
    for img in (moving, moving_liver):
        img.SetOrigin(tuple(origin))
    result = register(fixed, moving, liver, moving_liver, settings=DEFAULT.without_registration())
    assert result.qa["initialisation"] == "identity (scanner coordinates)"
    assert result.qa["displacement_max_mm"] == 0.0


def test_finished_cases_are_skipped_and_an_interrupted_case_is_redone(registered):
    root, target = registered
    kept = (target / "imagesTr" / "case_000_0000.nii.gz").stat().st_mtime_ns
    (target / "diff4mm" / "registration" / "case_001" / "qa.json").unlink()  # as if killed mid-case
    redone = (target / "imagesTr" / "case_001_0000.nii.gz").stat().st_mtime_ns
    write_registered_dataset(root / "phantom", 503, "Reg", root / "raw", settings=DEFAULT, progress=False)
    assert (target / "imagesTr" / "case_000_0000.nii.gz").stat().st_mtime_ns == kept
    assert (target / "imagesTr" / "case_001_0000.nii.gz").stat().st_mtime_ns != redone
    assert (target / "diff4mm" / "registration" / "case_001" / "qa.json").is_file()


def test_refuses_other_settings_and_taken_ids(registered):
    root, target = registered
    with pytest.raises(DatasetExistsError, match="settings"):
        write_registered_dataset(root / "phantom", 503, "Reg", root / "raw", progress=False,
                                 settings=DEFAULT.without_bspline())
    with pytest.raises(DatasetExistsError, match="taken"):
        write_registered_dataset(root / "phantom", 503, "Other", root / "raw", settings=DEFAULT, progress=False)


def test_bad_input_fails_before_anything_is_written(registered, tmp_path):
    root, _ = registered
    bad = tmp_path / "bad"
    case = bad / "case_000"
    case.mkdir(parents=True)
    for f in (root / "phantom" / "case_000").iterdir():
        (case / f.name).write_bytes(f.read_bytes())
    label = sitk.ReadImage(str(case / "label.nii.gz"))
    arr = sitk.GetArrayFromImage(label)
    arr[0, 0, 0] = 3
    broken = sitk.GetImageFromArray(arr)
    broken.CopyInformation(label)
    sitk.WriteImage(broken, str(case / "label.nii.gz"))
    with pytest.raises(InputError, match="case_000/label.nii.gz"):
        write_registered_dataset(bad, 504, "Bad", tmp_path / "raw", settings=DEFAULT, progress=False)
    assert not (tmp_path / "raw").exists()
    result = subprocess.run([sys.executable, "-m", "nnunetv2_diff4mm.cli.register", str(bad), "-d", "504", "-n",
                             "Bad", "--nnunet-raw", str(tmp_path / "raw")], capture_output=True, text=True, encoding="utf-8", errors="replace")
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "values outside" in result.stderr
    assert not (tmp_path / "raw").exists()
