"""The phantom: layout, determinism, resumability, enhancement physics, breathing motion and ground truth."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_diff4mm.phantom import (PHASES, PhantomConfig, PhantomFolderError, generate_case,
                                      write_phantom_dataset)
from nnunetv2_diff4mm.phantom.motion import as_transform
from nnunetv2_diff4mm.phantom.tissues import NOISE_HU
from registration.inputs import validate_dataset

COARSE = PhantomConfig(seed=0, spacing=(4.0, 4.0, 6.0))  # fast; the physics is spacing-independent


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(out, COARSE, cases=2, test_cases=1, progress=False)
    return out


def _array(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_layout_passes_input_validation(phantom):
    cases = validate_dataset(phantom)
    assert [c.name for c in cases] == ["case_000", "case_001", "test_000"]
    assert [c.is_labelled for c in cases] == [True, True, False]
    assert (phantom / "ground_truth" / "test_000" / "label.nii.gz").is_file()  # held-out labels kept aside
    label = _array(phantom / "case_000" / "label.nii.gz")
    assert set(np.unique(label)) <= {0, 1, 2} and (label == 1).sum() > 1000
    pvp = sitk.ReadImage(str(phantom / "case_000" / "PVP.nii.gz"))
    assert pvp.GetPixelID() == sitk.sitkInt16 and pvp.GetSpacing() == pytest.approx((4.0, 4.0, 6.0))


def test_phases_differ_in_grid_like_real_scans(phantom):
    images = {p: sitk.ReadImage(str(phantom / "case_000" / f"{p}.nii.gz")) for p in PHASES}
    spacings = {p: images[p].GetSpacing() for p in PHASES}
    assert len(set(spacings.values())) == len(PHASES)
    assert spacings["NC"][2] > spacings["PVP"][2]  # thicker unenhanced slices
    assert len({images[p].GetOrigin()[2] for p in PHASES}) > 1  # different cranio-caudal extent


def test_same_seed_gives_identical_files_and_other_seed_differs(phantom, tmp_path):
    write_phantom_dataset(tmp_path / "again", COARSE, cases=1, progress=False)
    first = _files(phantom / "case_000")
    assert _files(tmp_path / "again" / "case_000") == first
    other = PhantomConfig(seed=1, spacing=COARSE.spacing)
    write_phantom_dataset(tmp_path / "other", other, cases=1, progress=False)
    assert _files(tmp_path / "other" / "case_000")["PVP.nii.gz"] != first["PVP.nii.gz"]


def _liver_and_tumor_hu(phantom: Path, case: str):
    """Mean HU per phase of healthy liver and of each labelled tumor's core, on the reference grid."""
    info = json.loads((phantom / "ground_truth" / case / "case.json").read_text(encoding="utf-8"))
    label_img = sitk.ReadImage(str(phantom / "ground_truth" / case / "label.nii.gz"))
    label = sitk.GetArrayFromImage(label_img)
    tumor_free = sitk.GetArrayFromImage(sitk.BinaryErode(label_img == 1, [2, 2, 1])) > 0
    aligned = {p: _array(phantom / "ground_truth" / case / f"{p}_aligned.nii.gz") for p in PHASES}
    liver = {p: float(aligned[p][tumor_free].mean()) for p in PHASES}
    zyx = np.argwhere(label == 2)
    phys = np.array([label_img.TransformIndexToPhysicalPoint([int(v) for v in i[::-1]]) for i in zyx])
    tumors = []
    for t in info["tumors"]:
        near = np.linalg.norm(phys - np.asarray(t["center_mm"]), axis=1) < max(t["diameter_mm"] / 4, 6.0)
        if near.sum() >= 5:
            tumors.append((t, {p: float(aligned[p][tuple(zyx[near].T)].mean()) for p in PHASES}))
    return liver, tumors


def test_contrast_phases_enhance_like_liver_ct(phantom):
    liver, _ = _liver_and_tumor_hu(phantom, "case_000")
    assert 40 < liver["NC"] < 70
    assert liver["NC"] < liver["AP"] < liver["PVP"]  # parenchyma peaks in the portal-venous phase
    assert liver["PVP"] > liver["DELAY"] > liver["NC"]
    pvp = _array(phantom / "case_000" / "PVP.nii.gz")
    assert (pvp > 400).sum() > 100 and (pvp < -800).sum() > 1000  # bone and air present as distractors


def test_tumor_types_have_their_enhancement_pattern(phantom):
    seen = set()
    for case in ("case_000", "case_001"):
        liver, tumors = _liver_and_tumor_hu(phantom, case)
        for spec, hu in tumors:
            diff = {p: hu[p] - liver[p] for p in PHASES}
            visible = [p for p in PHASES if p != spec["isodense_phase"]]
            if spec["kind"] == "hypervascular":
                assert diff["AP"] > 15 and diff["PVP"] < -5 and diff["DELAY"] < -5, (case, spec, diff)
            else:
                assert all(diff[p] < -8 for p in visible), (case, spec, diff)
            if spec["isodense_phase"]:
                assert abs(diff[spec["isodense_phase"]]) < 10, (case, spec, diff)  # near-invisible there
            seen.add(spec["kind"])
    assert seen == {"hypervascular", "hypovascular"}


def _dice(a, b) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_phases_are_misaligned_and_ground_truth_realigns_them(phantom):
    gt = phantom / "ground_truth" / "case_001"
    reference = sitk.ReadImage(str(gt / "label.nii.gz"))
    ref_liver = sitk.GetArrayFromImage(reference) > 0
    info = json.loads((gt / "case.json").read_text(encoding="utf-8"))
    for phase in ("NC", "AP", "DELAY"):
        phase_label = sitk.ReadImage(str(gt / f"{phase}_label.nii.gz"))
        as_is = sitk.Resample(phase_label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        true_field = sitk.ReadImage(str(gt / f"{phase}_displacement.nii.gz"))
        realigned = sitk.Resample(phase_label, reference, as_transform(true_field), sitk.sitkNearestNeighbor, 0)
        dice_before = _dice(sitk.GetArrayFromImage(as_is) > 0, ref_liver)
        dice_after = _dice(sitk.GetArrayFromImage(realigned) > 0, ref_liver)
        assert dice_after > 0.95, (phase, dice_after)
        shift = abs(info["motion"][phase]["organ_shift_mm"][2])
        if shift > 6:
            assert dice_before < dice_after - 0.02, (phase, dice_before, dice_after)
        assert 3.0 <= shift <= COARSE.max_shift_mm


def test_resume_keeps_finished_cases_and_redoes_missing_ones(tmp_path):
    out = tmp_path / "ph"
    write_phantom_dataset(out, COARSE, cases=2, progress=False)
    kept = (out / "case_000" / "PVP.nii.gz").stat().st_mtime_ns
    redo = _files(out / "case_001")

    shutil.rmtree(out / "case_001")
    (out / ".case_001.partial").mkdir()  # as left by an interrupted run
    (out / ".case_001.partial" / "NC.nii.gz").write_bytes(b"truncated")
    write_phantom_dataset(out, COARSE, cases=2, progress=False)
    assert (out / "case_000" / "PVP.nii.gz").stat().st_mtime_ns == kept
    assert _files(out / "case_001") == redo
    assert not (out / ".case_001.partial").exists()


def test_refuses_folder_of_other_settings_or_foreign_content(tmp_path):
    out = tmp_path / "ph"
    write_phantom_dataset(out, COARSE, cases=1, progress=False)
    before = _files(out)
    with pytest.raises(PhantomFolderError, match="seed"):
        write_phantom_dataset(out, PhantomConfig(seed=5, spacing=COARSE.spacing), cases=1, progress=False)
    assert _files(out) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "nnunetv2_diff4mm.cli.phantom", "-o", str(foreign),
                             "--cases", "1"], capture_output=True, text=True, encoding="utf-8", errors="replace")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "phantom.json" in result.stderr
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_tumors_lie_inside_the_liver_with_realistic_sizes():
    diameters = []
    for index in range(3):
        case = generate_case(PhantomConfig(seed=3, spacing=(5.0, 5.0, 8.0)), "train", index)
        for phase in PHASES:
            lab = sitk.GetArrayFromImage(case.ground_truth[f"{phase}_label"])
            assert (lab == 1).sum() > 0
        diameters += [t["diameter_mm"] for t in case.info["tumors"]]
        liver_ml = case.info["liver_volume_ml"]
        assert 900 < liver_ml < 2600  # adult liver volume range
    assert diameters and all(4.0 <= d <= 70.0 for d in diameters)


def test_montage_cli_draws_four_phases_with_label_contours(phantom, tmp_path):
    png = tmp_path / "case.png"
    result = subprocess.run([sys.executable, "-m", "nnunetv2_diff4mm.cli.montage", str(phantom / "case_001"),
                             "-o", str(png)], capture_output=True, text=True, encoding="utf-8", errors="replace")
    assert result.returncode == 0, result.stderr
    import matplotlib.image

    rgb = matplotlib.image.imread(str(png))[..., :3]
    assert rgb.shape[1] > 2 * rgb.shape[0]  # four columns side by side
    red = (rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)
    green = (rgb[..., 1] > 0.8) & (rgb[..., 0] < 0.3)
    assert red.sum() > 50 and green.sum() > 200  # tumor and liver contours drawn
    assert rgb.std() > 0.1  # an image, not a blank canvas

    # --prediction: a segmentation drawn beside the label, in its own colours (magenta tumor, yellow liver)
    prediction = tmp_path / "pred.nii.gz"
    shutil.copy(phantom / "case_001" / "label.nii.gz", prediction)
    with_pred = tmp_path / "case_pred.png"
    result = subprocess.run([sys.executable, "-m", "nnunetv2_diff4mm.cli.montage", str(phantom / "case_001"),
                             "-o", str(with_pred), "--prediction", str(prediction)],
                            capture_output=True, text=True, encoding="utf-8", errors="replace")
    assert result.returncode == 0, result.stderr
    both = matplotlib.image.imread(str(with_pred))[..., :3]
    magenta = (both[..., 0] > 0.8) & (both[..., 1] < 0.3) & (both[..., 2] > 0.8)
    yellow = (both[..., 0] > 0.8) & (both[..., 1] > 0.8) & (both[..., 2] < 0.3)
    no_pred_magenta = (rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.3) & (rgb[..., 2] > 0.8)
    assert magenta.sum() > 20 and yellow.sum() > 100 and no_pred_magenta.sum() == 0
    bad = subprocess.run([sys.executable, "-m", "nnunetv2_diff4mm.cli.montage", str(phantom / "case_001"),
                          "-o", str(tmp_path / "x.png"), "--prediction", str(tmp_path / "missing.nii.gz")],
                         capture_output=True, text=True, encoding="utf-8", errors="replace")
    assert bad.returncode == 1 and "missing.nii.gz" in bad.stderr and not (tmp_path / "x.png").exists()


def test_noise_free_ground_truth_is_the_aligned_phase_without_its_ct_noise():
    config = PhantomConfig(seed=3, spacing=(5.0, 5.0, 8.0))
    plain = generate_case(config, "train", 0)
    case = generate_case(config, "train", 0, noise_free=True)
    assert not any(key.endswith("_noise_free") for key in plain.ground_truth)
    liver = sitk.GetArrayFromImage(case.ground_truth["label"]) == 1
    for phase in PHASES:
        noisy = sitk.GetArrayFromImage(case.ground_truth[f"{phase}_aligned"]).astype(float)
        # asking for the noise-free truth does not change the noisy images (same random stream)
        assert np.array_equal(noisy, sitk.GetArrayFromImage(plain.ground_truth[f"{phase}_aligned"]))
        clean = sitk.GetArrayFromImage(case.ground_truth[f"{phase}_aligned_noise_free"])
        residual = (noisy - clean)[liver]
        assert abs(residual.mean()) < 1.0  # zero-mean noise (plus int16 rounding)
        # the PVP grid is the reference: its residual is the CT noise itself; the others are smoothed a little by
        # the resampling onto it
        expected = NOISE_HU[phase]
        assert (0.95 if phase == "PVP" else 0.6) * expected < residual.std() < 1.05 * expected


def test_liver_only_phase_is_a_slab_of_the_same_scan_cutting_the_liver():
    cut = generate_case(PhantomConfig(seed=0, spacing=COARSE.spacing, liver_only_phases=("AP",),
                                      liver_only_extent_mm=60.0), "train", 0)
    full = generate_case(COARSE, "train", 0)
    for phase in ("NC", "PVP", "DELAY"):  # the other phases: the same random stream, identical scans
        np.testing.assert_array_equal(sitk.GetArrayFromImage(cut.images[phase]),
                                      sitk.GetArrayFromImage(full.images[phase]))
    ap, whole = cut.images["AP"], full.images["AP"]
    assert ap.GetSize()[:2] == whole.GetSize()[:2] and ap.GetSize()[2] * ap.GetSpacing()[2] <= 60.0 + ap.GetSpacing()[2]
    start = whole.TransformPhysicalPointToIndex(ap.GetOrigin())  # the slab's voxels are the full scan's
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ap),
                                  sitk.GetArrayFromImage(whole)[start[2]:start[2] + ap.GetSize()[2]])
    # part of the liver is outside the slab: air in the aligned ground truth there, and only there
    liver = sitk.GetArrayFromImage(cut.ground_truth["label"]) > 0
    air = sitk.GetArrayFromImage(cut.ground_truth["AP_aligned"]) <= -1000
    assert 0.05 < (air & liver).sum() / liver.sum() < 0.8
    assert not (sitk.GetArrayFromImage(full.ground_truth["AP_aligned"]) <= -1000)[liver].any()
    # recorded only when used: a phantom without liver-only phases reads as one made before the option existed
    assert "liver_only_phases" not in COARSE.to_json()
    assert PhantomConfig(liver_only_phases=("AP",)).to_json()["liver_only_phases"] == ["AP"]
    with pytest.raises(ValueError, match="moving phases"):
        PhantomConfig(liver_only_phases=("PVP",))


def test_local_deformation_adds_organ_part_scale_motion_and_leaves_the_rest_unchanged():
    local = generate_case(PhantomConfig(seed=0, spacing=COARSE.spacing, local_deformation_mm=3.0,
                                        local_deformation_scale_mm=15.0), "train", 0)
    plain = generate_case(COARSE, "train", 0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(local.images["PVP"]), sitk.GetArrayFromImage(plain.images["PVP"]))
    assert local.info["tumors"] == plain.info["tumors"] and local.info["motion"] == plain.info["motion"]
    label = plain.ground_truth["label"]
    liver = sitk.GetArrayFromImage(label) > 0

    def on_label_grid(field):  # the true displacement lives on the motion field's own 6 mm grid
        return sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(field, sitk.sitkVectorFloat64), label))

    extra = (on_label_grid(local.ground_truth["AP_displacement"])
             - on_label_grid(plain.ground_truth["AP_displacement"]))[liver]
    # 3 mm std per axis in the abdominal cavity: a few mm of extra motion across the liver, varying within it
    length = np.linalg.norm(extra, axis=1)
    assert 1.5 < float(np.sqrt((extra ** 2).sum(axis=1).mean() / 3)) < 6.0 and length.max() - length.min() > 3.0
    assert "local_deformation_mm" not in COARSE.to_json()
    with pytest.raises(ValueError, match="local deformation"):
        PhantomConfig(local_deformation_mm=3.0, local_deformation_scale_mm=2.0)
