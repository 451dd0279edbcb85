"""diff4mm_predict (issue #15) on a real nnU-Net model folder, small enough for 2 CPU cores.

The model is nnU-Net's own: fingerprint and Diff4MMCPUPlans from nnU-Net's planner on a one-case phantom
dataset, the network nnU-Net builds from those plans, a checkpoint in nnUNetTrainer's format that
nnUNetPredictor loads. Its weights are not trained: training even 1 epoch of 2 iterations through
nnUNetv2_train took 2 min 20 s here (its final validation included), more than this file's budget, and a
network trained that briefly predicts noise anyway. Instead its output layer is set to a constant, so what it
predicts is known: "liver everywhere" (the first pass finds a liver) or "background everywhere" (it finds none,
the body fallback). What these tests check is the flow and the geometry, which do not depend on a good model.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

DATASET = 873
NAME = f"Dataset{DATASET}_PredictTest"
PLANS = "Diff4MMCPUPlans"
LIVER_MODEL = "nnUNetTrainerLiverEverywhere"  # model folder names; the checkpoints say nnUNetTrainer
NO_LIVER_MODEL = "nnUNetTrainerLiverNowhere"

BUILD_MODELS = r'''
import json, os, shutil, sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunetv2_diff4mm.planning import Diff4MMCPUPlanner

dataset_id, name = int(sys.argv[1]), sys.argv[2]
raw = Path(os.environ["nnUNet_raw"]) / name
pre = Path(os.environ["nnUNet_preprocessed"]) / name
# nnU-Net's fingerprint of the one case, computed as extract_fingerprints does (foreground = label > 0; no
# cropping, the phantom's body fills its grid), without its process pool (~40 s on a busy 2-core machine)
label = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / "case_000.nii.gz"))) > 0
channels = {}
for k in range(4):
    image = sitk.ReadImage(str(raw / "imagesTr" / f"case_000_{k:04d}.nii.gz"))
    v = sitk.GetArrayFromImage(image)[label].astype(np.float64)
    channels[str(k)] = {"max": v.max(), "mean": v.mean(), "median": np.median(v), "min": v.min(),
                        "percentile_00_5": np.percentile(v, 0.5), "percentile_99_5": np.percentile(v, 99.5),
                        "std": v.std()}
pre.mkdir(parents=True)
shutil.copy(raw / "dataset.json", pre / "dataset.json")
(pre / "dataset_fingerprint.json").write_text(json.dumps({
    "foreground_intensity_properties_per_channel": {c: {k: float(x) for k, x in d.items()} for c, d in channels.items()},
    "median_relative_size_after_cropping": 1.0, "shapes_after_crop": [list(label.shape)],
    "spacings": [list(image.GetSpacing())[::-1]]}))
_, plans_name = plan_experiment_dataset(dataset_id, Diff4MMCPUPlanner)
plans = json.loads((pre / f"{plans_name}.json").read_text())
dataset_json = json.loads((pre / "dataset.json").read_text())
manager = PlansManager(plans)
torch.manual_seed(0)
network = nnUNetTrainer.build_network_architecture(manager, manager.get_configuration("3d_fullres"), 4, 3,
                                                   enable_deep_supervision=False)
for folder_name, bias in zip(sys.argv[3:5], ([0.0, 8.0, -8.0], [8.0, -8.0, -8.0])):
    head = network.decoder.seg_layers[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor(bias))
    folder = Path(os.environ["nnUNet_results"]) / name / f"{folder_name}__{plans_name}__3d_fullres"
    (folder / "fold_all").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               folder / "fold_all" / "checkpoint_final.pth")
'''


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A one-case phantom (its aligned ground truth for nnU-Net's planner, its raw phases to predict) and the two
    model folders."""
    from nnunetv2_diff4mm.phantom import PHASES, REFERENCE_PHASE, PhantomConfig, write_phantom_dataset

    root = tmp_path_factory.mktemp("predict")
    env = {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "pre"),
           "nnUNet_results": str(root / "res")}
    write_phantom_dataset(root / "phantom", PhantomConfig(seed=5, spacing=(8.0, 8.0, 12.0), max_tumors=1), 0, 1,
                          progress=False)
    raw = root / "raw" / NAME
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True)
    truth = root / "phantom" / "ground_truth" / "test_000"  # its truly aligned phases: the planner's one case
    for k, phase in enumerate(PHASES):
        os.link(truth / f"{phase}_aligned.nii.gz", raw / "imagesTr" / f"case_000_{k:04d}.nii.gz")
    os.link(truth / "label.nii.gz", raw / "labelsTr" / "case_000.nii.gz")
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {str(k): "CT" for k in range(len(PHASES))},  # as diff4mm_register writes
        "labels": {"background": 0, "liver": 1, "tumor": 2}, "numTraining": 1, "file_ending": ".nii.gz",
        "diff4mm": {"phases": list(PHASES), "reference": REFERENCE_PHASE}}), encoding="utf-8")
    build = subprocess.run([sys.executable, "-c", BUILD_MODELS, str(DATASET), NAME, LIVER_MODEL, NO_LIVER_MODEL],
                           env={**os.environ, **env, "nnUNet_n_proc_DA": "1"}, capture_output=True, text=True, encoding="utf-8", errors="replace")
    assert build.returncode == 0, build.stderr[-3000:]

    # the case to predict, its reference phase with a non-trivial direction (same anatomy: flipped in x and y,
    # origin moved to the other corner), so that "the reference grid" is not the identity grid
    case = root / "input" / "patient_01"
    shutil.copytree(root / "phantom" / "test_000", case)
    reference = case / f"{REFERENCE_PHASE}.nii.gz"
    sitk.WriteImage(sitk.Flip(sitk.ReadImage(str(reference)), [True, True, False]), str(reference),
                    useCompression=True)
    return {"root": root, "env": env, "input": root / "input", "case": case, "reference": reference}


@pytest.fixture
def nnunet_env(world, monkeypatch):
    for var, value in world["env"].items():
        monkeypatch.setenv(var, value)
    return world


def _cli(argv):
    from nnunetv2_diff4mm.cli.predict import main

    return main(argv)


def _common(world, out: Path, trainer: str) -> list[str]:
    return ["-i", str(world["input"]), "-o", str(out), "-d", str(DATASET), "-f", "all", "-tr", trainer,
            "-p", PLANS, "-device", "cpu", "--disable_tta", "--no-bspline"]


def _geometry(image: sitk.Image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def test_prediction_on_the_reference_files_grid_with_json_montage_and_resume(nnunet_env, tmp_path, capsys):
    world = nnunet_env
    out = tmp_path / "out"
    assert _cli(_common(world, out, LIVER_MODEL)) == 0
    seg_file = out / "patient_01.nii.gz"
    seg, ref = sitk.ReadImage(str(seg_file)), sitk.ReadImage(str(world["reference"]))
    assert _geometry(seg) == _geometry(ref)  # exactly, as read back from both files
    assert ref.GetDirection()[0] == -1.0  # the flipped reference, not an identity grid
    record = json.loads((out / "patient_01.json").read_text(encoding="utf-8"))
    assert record["first_pass"]["source"] == "model" and record["first_pass"]["mask"] == "liver"
    assert record["registration"]["mask"] == "liver" and record["filled_phases"] == {}
    assert set(record["registration"]["phases"]) == {"NC", "AP", "PVP", "DELAY"}
    assert all("similarity" in qa for p, qa in record["registration"]["phases"].items() if p != "PVP")
    assert np.all(sitk.GetArrayViewFromImage(seg) == 1)  # the "liver everywhere" model
    voxels = np.prod(ref.GetSize()) * np.prod(ref.GetSpacing()) / 1000.0
    assert record["liver_volume_ml"] == pytest.approx(voxels, rel=1e-6) and record["tumors"] == 0
    assert record["postprocessing"]["enabled"] is True
    assert {"first_pass", "registration", "prediction", "postprocessing", "total"} <= set(record["seconds"])
    assert (out / "patient_01.png").stat().st_size > 10_000
    assert not list(out.glob(".tmp*"))

    # resumed: the finished case is skipped, nothing rewritten (through the Python API this time)
    from nnunetv2_diff4mm.inference import Diff4MMModel, PredictionSettings, predict_folder
    from nnunetv2_diff4mm.inference.model import find_model_folder
    from registration.register import RegistrationSettings

    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    settings = PredictionSettings(tta=False, registration=RegistrationSettings().without_bspline())
    model = Diff4MMModel.open(find_model_folder(DATASET, LIVER_MODEL, PLANS), ["all"], device="cpu", tta=False)
    results = predict_folder(world["input"], out, model, settings, progress=False)
    assert [r.skipped for r in results] == [True]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    assert "patient_01: done before, skipped" in capsys.readouterr().out

    # the record says what ran: a model opened with mirroring, asked to predict without, predicts without
    mirrored = Diff4MMModel.open(find_model_folder(DATASET, LIVER_MODEL, PLANS), ["all"], device="cpu", tta=True)
    predictor, seen = mirrored.predictor, []
    real_predict = predictor.predict_single_npy_array

    def record_mirroring(*args, **kwargs):  # nnU-Net's own prediction, with the mirroring it ran under noted
        seen.append(predictor.use_mirroring)
        return real_predict(*args, **kwargs)

    predictor.predict_single_npy_array = record_mirroring
    predict_folder(world["input"], tmp_path / "no_tta", mirrored, settings, progress=False)
    record = json.loads((tmp_path / "no_tta" / "patient_01.json").read_text(encoding="utf-8"))
    assert record["tta"] is False and seen == [False, False, False]  # first pass, refinement, final prediction


def test_missing_phase_fails_in_one_line_and_is_filled_on_request(nnunet_env, tmp_path, capsys):
    world = nnunet_env
    (world["case"] / "DELAY.nii.gz").rename(tmp_path / "DELAY.nii.gz")
    try:
        out = tmp_path / "out"
        args = _common(world, out, NO_LIVER_MODEL) + ["--no-montages"]
        assert _cli(args) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("diff4mm_predict: error: patient_01: missing phase DELAY")
        assert "--fill-missing-phases" in err and not out.exists()  # failed before any work

        assert _cli(args + ["--fill-missing-phases"]) == 0
        record = json.loads((out / "patient_01.json").read_text(encoding="utf-8"))
        assert record["filled_phases"] == {"DELAY": "PVP"}  # nearest in acquisition order
        assert record["phases"]["DELAY"] == "filled from PVP"
        assert record["registration"]["phases"]["DELAY"] == {"filled_from": "PVP"}
        # the "background everywhere" model finds no liver: the registration used the body mask, and says so
        assert record["first_pass"]["mask"] == "body" and "body mask" in record["first_pass"]["note"]
        assert record["registration"]["mask"] == "body"
        assert record["liver_volume_ml"] == 0 and record["tumors"] == 0
        assert "DELAY missing, filled with a copy of PVP" in capsys.readouterr().err
    finally:
        (tmp_path / "DELAY.nii.gz").rename(world["case"] / "DELAY.nii.gz")


def test_model_problems_are_one_line_before_any_case_is_read(nnunet_env, tmp_path, capsys):
    world = nnunet_env
    assert _cli(_common(world, tmp_path / "out", LIVER_MODEL)[:-4] + ["-f", "0", "-device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "fold_0/checkpoint_final.pth: missing" in err and "pass -f all" in err
    assert _cli(["-i", str(world["input"]), "-o", str(tmp_path / "o"), "-d", str(DATASET), "-tr", "Nope"]) == 1
    assert "no such model folder" in capsys.readouterr().err


def test_postprocessing_removes_only_tumors_away_from_the_liver():
    from nnunetv2_diff4mm.inference.postprocessing import remove_tumors_outside_liver, segmentation_summary

    array = np.zeros((10, 20, 20), np.uint8)
    array[2:8, 2:10, 2:10] = 1  # liver
    array[4:6, 4:6, 4:6] = 2  # tumor inside it
    array[4:6, 10:12, 4:6] = 2  # tumor touching its edge
    array[4:6, 16:19, 16:19] = 2  # tumor 6 voxels (12 mm) away
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 3.0))
    result = remove_tumors_outside_liver(image, dilation_mm=5.0)
    out = sitk.GetArrayFromImage(result.segmentation)
    assert result.removed_volumes_ml == [pytest.approx(18 * 12 / 1000.0)]
    assert (out[4:6, 16:19, 16:19] == 0).all() and (out[4:6, 4:6, 4:6] == 2).all() and (out[4:6, 10:12, 4:6] == 2).all()
    summary = segmentation_summary(result.segmentation)
    assert summary["tumors"] == 2 and summary["tumor_volumes_ml"] == [0.096, 0.096]


def test_fill_rule_is_the_nearest_phase_in_acquisition_order():
    from nnunetv2_diff4mm.inference.case_inputs import fill_source

    phases = ("NC", "AP", "PVP", "DELAY")
    assert fill_source("DELAY", phases, ["NC", "AP", "PVP"]) == "PVP"
    assert fill_source("NC", phases, ["AP", "PVP", "DELAY"]) == "AP"
    assert fill_source("AP", phases, ["NC", "PVP", "DELAY"]) == "PVP"  # tie: the later, enhanced phase
    assert fill_source("AP", phases, ["NC", "PVP"]) == "PVP"
    assert fill_source("NC", phases, ["PVP"]) == "PVP"


def test_help_lists_nnunet_flag_names():
    script = Path(sys.executable).parent / "diff4mm_predict"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, encoding="utf-8", errors="replace")
    assert result.returncode == 0, result.stderr
    for flag in ("-i INPUT", "-o OUTPUT", "-d ID", "-c CONFIG", "-f FOLD", "-tr", "-p", "-chk", "-device", "-np",
                 "--fill-missing-phases", "--no-postprocessing", "--disable_tta"):
        assert flag in result.stdout


def test_register_masks_unlabelled_cases_with_the_first_pass_and_resumes(nnunet_env, tmp_path, capsys):
    """diff4mm_register --first-pass-model (issue #15): an unlabelled case is registered inside the liver the model
    finds, recorded in its qa.json; the same model again redoes nothing; another model redoes the case."""
    from nnunetv2_diff4mm.cli.register import main as register
    from nnunetv2_diff4mm.inference.model import find_model_folder

    world = nnunet_env
    base = [str(world["input"]), "-d", "874", "-n", "FirstPass", "--no-bspline", "--no-montages"]
    qa_dir = Path(world["env"]["nnUNet_raw"]) / "Dataset874_FirstPass" / "diff4mm" / "registration"
    qa_file = qa_dir / "patient_01" / "qa.json"
    mask_file = qa_dir / "patient_01" / "first_pass_liver.nii.gz"

    # phases that are not the model's: one line naming its dataset.json, before anything is written
    mismatch = base + ["--phases", "NC", "PVP", "DELAY", "--first-pass-model",
                       str(find_model_folder(DATASET, LIVER_MODEL, PLANS)), "--first-pass-folds", "all"]
    assert register(mismatch) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "dataset.json: the first-pass model takes the phases NC AP PVP DELAY" in err
    assert not qa_dir.parent.parent.exists()

    assert register(base) == 0  # without a first pass: the body mask
    record = json.loads(qa_file.read_text(encoding="utf-8"))
    assert record["mask"] == "body" and "first_pass" not in record and not mask_file.exists()

    liver = base + ["--first-pass-model", str(find_model_folder(DATASET, LIVER_MODEL, PLANS)),
                    "--first-pass-folds", "all", "-device", "cpu"]
    capsys.readouterr()
    assert register(liver) == 0
    assert "patient_01: first-pass liver changed (model or none), re-registered" in capsys.readouterr().out
    record = json.loads(qa_file.read_text(encoding="utf-8"))
    assert record["mask"] == "liver" and record["split"] == "imagesTs"
    assert record["first_pass"]["source"] == "model" and record["first_pass"]["mask"] == "liver"
    mask, ref = sitk.ReadImage(str(mask_file)), sitk.ReadImage(str(world["reference"]))
    assert _geometry(mask) == _geometry(ref) and np.all(sitk.GetArrayViewFromImage(mask) == 1)  # liver everywhere
    assert "first_pass_liver_ml" in (qa_dir / "summary.csv").read_text(encoding="utf-8").splitlines()[0]

    stamp = qa_file.stat().st_mtime_ns
    assert register(liver) == 0  # same model: nothing to redo
    assert qa_file.stat().st_mtime_ns == stamp and "re-registered" not in capsys.readouterr().out

    none = base + ["--first-pass-model", str(find_model_folder(DATASET, NO_LIVER_MODEL, PLANS)),
                   "--first-pass-folds", "all", "-device", "cpu"]
    assert register(none) == 0  # another model, which finds no liver: the body mask, said and recorded
    out = capsys.readouterr()
    assert "patient_01: first-pass liver changed" in out.out and "registered inside the body mask" in out.err
    record = json.loads(qa_file.read_text(encoding="utf-8"))
    assert record["mask"] == "body" and record["first_pass"]["mask"] == "body" and not mask_file.exists()


def test_refined_first_pass_registers_again_inside_the_models_liver_and_returns_the_transforms(nnunet_env):
    from nnunetv2_diff4mm.inference import Diff4MMModel, PredictionSettings, predict_case
    from nnunetv2_diff4mm.inference.model import find_model_folder
    from registration.register import RegistrationSettings

    world = nnunet_env
    rigid = RegistrationSettings().without_bspline()
    liver = Diff4MMModel.open(find_model_folder(DATASET, LIVER_MODEL, PLANS), ["all"], device="cpu", tta=False)
    once = predict_case(world["case"], liver, settings=PredictionSettings(tta=False, registration=rigid,
                                                                          refine_first_pass=0, outside_fill="air"))
    refined = predict_case(world["case"], liver, settings=PredictionSettings(tta=False, registration=rigid))
    assert PredictionSettings().refine_first_pass == 1  # the default, chosen on validation cases
    rounds = refined.record["first_pass"]["refinements"]
    assert len(rounds) == 1 and rounds[0]["used"] is True and rounds[0]["tta"] is False
    # "liver everywhere" on the registered phases: the whole reference grid is the refined liver
    assert rounds[0]["liver_ml"] == pytest.approx(refined.record["liver_volume_ml"], abs=0.06)  # 0.1 ml rounding
    assert "refinement" in refined.record["seconds"] and "refinements" not in once.record["first_pass"]
    assert set(refined.transforms) == {"NC", "AP", "DELAY"}
    assert all(isinstance(t, sitk.Transform) for t in refined.transforms.values())
    # the returned transform is the one the registered phase was resampled with (air outside its scan)
    from registration.register import resample_to_reference

    fixed = sitk.ReadImage(str(world["reference"]))
    again = resample_to_reference(sitk.ReadImage(str(world["case"] / "AP.nii.gz")), fixed, once.transforms["AP"])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(once.registered["AP"]))

    # outside a phase's scan: air, or the nearest phase's registered values with outside_fill="phase" (default)
    assert once.record["registration"]["outside_fill"] == "air"
    assert refined.record["registration"]["outside_fill"] == "phase"
    fractions = {p: qa["outside_scan_fraction"] for p, qa in once.record["registration"]["phases"].items() if p != "PVP"}
    phase = max(fractions, key=fractions.get)
    assert fractions[phase] > 0.001  # the phantom's phases differ in length: some of the grid is outside one
    filled = predict_case(world["case"], liver, settings=PredictionSettings(tta=False, registration=rigid,
                                                                            refine_first_pass=0, outside_fill="phase"))
    from registration.field_of_view import inside_scan

    outside = sitk.GetArrayFromImage(inside_scan(sitk.ReadImage(str(world["case"] / f"{phase}.nii.gz")), fixed,
                                                 filled.transforms[phase])) == 0
    got = sitk.GetArrayFromImage(filled.registered[phase])
    assert np.all(sitk.GetArrayFromImage(once.registered[phase])[outside] == -1024)
    assert not np.all(got[outside] == -1024)
    inner = ~outside
    np.testing.assert_array_equal(got[inner], sitk.GetArrayFromImage(once.registered[phase])[inner])

    # no liver on the unregistered nor on the body-registered phases: one round, not used, the body mask stays
    nowhere = Diff4MMModel.open(find_model_folder(DATASET, NO_LIVER_MODEL, PLANS), ["all"], device="cpu", tta=False)
    body = predict_case(world["case"], nowhere, settings=PredictionSettings(tta=False, registration=rigid,
                                                                            refine_first_pass=2))
    assert [r["used"] for r in body.record["first_pass"]["refinements"]] == [False]
    assert body.record["first_pass"]["mask"] == "body" and body.record["registration"]["mask"] == "body"
    with pytest.raises(ValueError, match="refine_first_pass"):
        PredictionSettings(refine_first_pass=-1)
