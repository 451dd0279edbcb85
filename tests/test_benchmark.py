"""diff4mm_benchmark without training: report values, resume checks, splits, derived dataset, input errors."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_diff4mm import benchmark as B
from nnunetv2_diff4mm.cli.benchmark import main as cli_main
from nnunetv2_diff4mm.evaluation import evaluate_folder
from nnunetv2_diff4mm.evaluation import report as R
from nnunetv2_diff4mm.splits import SplitError

METHODS = {a.method: a.label for a in B.ARMS}
PAIRS = [(B.ARM_BY_KEY[x].method, B.ARM_BY_KEY[y].method) for x, y in B.PAIRS]
A, BM, C = (B.ARM_BY_KEY[k].method for k in "abc")


# --- report on predictions with hand-computed scores -----------------------------------------------------------
def _label(tumor_shift: int | None) -> sitk.Image:
    """Liver cube of 8³ voxels with a 4³ tumor inside (shifted by tumor_shift voxels along x; None: no tumor)."""
    array = np.zeros((10, 10, 10), np.uint8)
    array[1:9, 1:9, 1:9] = 1
    if tumor_shift is not None:
        array[3:7, 3:7, 3 + tumor_shift:7 + tumor_shift] = 2
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 2.0))
    return image


def _folder(path: Path, cases: dict[str, int | None]) -> Path:
    path.mkdir(parents=True)
    for case, shift in cases.items():
        sitk.WriteImage(_label(shift), str(path / f"{case}.nii.gz"))
    return path


def test_report_values_equal_hand_computed(tmp_path):
    refs = _folder(tmp_path / "refs", {"c1": 0, "c2": 0})
    # tumor Dice: shift by 1 voxel -> overlap 3x4x4 = 48 of 64 + 64 voxels -> 0.75; no tumor -> 0; same -> 1
    pred_b = _folder(tmp_path / "pred_b", {"c1": 1, "c2": None})  # tumor Dice 0.75, 0
    pred_c = _folder(tmp_path / "pred_c", {"c1": 0, "c2": 1})  # tumor Dice 1, 0.75
    rows = []
    for method, folder in ((BM, pred_b), (C, pred_c)):
        rows += [{"method": method, "fraction": 1.0, "fold": 0, **r} for r in evaluate_folder(folder, refs)]
    assert [r["tumor_dice"] for r in rows] == [0.75, 0.0, 1.0, 0.75]
    assert all(r["liver_dice"] == 1.0 for r in rows)  # liver = labels 1+2: unchanged by tumor errors
    # a smaller labelled fraction for the data-efficiency table: (b) at 0.5 scores 0.25 and 0.5
    rows += [{**r, "fraction": 0.5, "tumor_dice": d} for r, d in zip(rows[:2], (0.25, 0.5))]

    timings = {f"{BM}/frac1/fold0": {"nnunet_fold": 0, "train_s": 12.4, "train_status": "trained",
                                     "predict_s": 3.0, "predict_status": "predicted"},
               f"{C}/frac1/fold0": {"nnunet_fold": 0, "train_status": "reused", "predict_s": 2.0,
                                    "predict_status": "reused"}}
    summary = R.write_report(rows, tmp_path / "out", METHODS, PAIRS, {"dataset": "Dataset999_Toy"}, timings,
                             ["a warning"], {1.0: 8, 0.5: 4}, "Toy", 2.0)
    text = summary.read_text(encoding="utf-8")
    b_line = next(line for line in text.splitlines() if line.startswith(f"| {METHODS[BM]} |"))
    # (b) tumor Dice 0.75, 0: mean 0.375, sample std 0.75/sqrt(2) = 0.530; HD95 missing for c2; recall 1/2
    assert "| 0.375 ± 0.530 |" in b_line and "(1 missing)" in b_line and "0.500 (1/2)" in b_line
    c_line = next(line for line in text.splitlines() if line.startswith(f"| {METHODS[C]} |"))
    assert "| 0.875 ± 0.177 |" in c_line and "1.000 (2/2)" in c_line and "1.000 (2/2) | 2 |" in c_line
    # paired (c) - (b): tumor Dice differences 0.25, 0.75 -> +0.500 ± 0.354; liver Dice differences 0, 0
    diff_line = next(line for line in text.splitlines() if line.startswith("| (c) − (b) |"))
    cells = [c.strip() for c in diff_line.strip("|").split("|")]
    assert cells[1] == "+0.000 ± 0.000" and cells[4] == "+0.500 ± 0.354" and cells[-1] == "2"
    assert R.paired_differences(rows, C, BM, 1.0)["tumor_dice"]["mean"] == pytest.approx(0.5)
    # bootstrap of 2 pairs: resampled means 0.25, 0.5 or 0.75 -> 95 % interval [0.25, 0.75]; exact Wilcoxon p 0.5
    st = R.paired_statistics(rows, C, BM, 1.0, "tumor_dice")
    assert (st["mean"], st["ci_low"], st["ci_high"], st["p_wilcoxon"], st["n"]) == pytest.approx((0.5, 0.25, 0.75,
                                                                                                  0.5, 2))
    stats_lines = [line for line in text.splitlines() if line.startswith("| (c) − (b) | ")]
    assert "| tumor Dice | +0.500 | [+0.250, +0.750] | 0.5 | above 0 | 2 |" in stats_lines[1]
    assert "| tumor Dice, cases with a tumor | +0.500 | [+0.250, +0.750] | 0.5 | above 0 | 2 |" in stats_lines[2]
    # lesion recall per case: (c) 1/1, 1/1; (b) 1/1, 0/1 -> differences 0, 1
    assert "| tumor recall per case, cases with a tumor | +0.500 | [+0.000, +1.000] |" in stats_lines[3]
    assert "| liver Dice | +0.000 | [+0.000, +0.000] | 1 | includes 0 | 2 |" in stats_lines[5]
    # a tumor-free case where (b) predicts nothing (Dice 1) and (c) a false positive (Dice 0): it counts in the
    # tumor Dice (+0.25, +0.75, -1 -> 0), not in the tumor-case rows (+0.25, +0.75 -> +0.5)
    free = [{**rows[0], "case": "c3", "tumor_dice": 1.0, "n_ref_tumors": 0, "tumor_tp": 0},
            {**rows[2], "case": "c3", "tumor_dice": 0.0, "n_ref_tumors": 0, "tumor_tp": 0}]
    assert R.paired_statistics(rows + free, C, BM, 1.0, "tumor_dice")["mean"] == pytest.approx(0.0)
    st = R.paired_statistics(rows + free, C, BM, 1.0, "tumor_dice_tumor_cases")
    assert (st["mean"], st["n"]) == (pytest.approx(0.5), 2)
    assert R.paired_statistics(rows + free, C, BM, 1.0, "tumor_recall_tumor_cases")["n"] == 2
    # a second fold's models on the same two test cases (differences +0.75 and +0.25 there): each case counts
    # once, with its mean over the folds (+0.5, +0.5), not as four independent pairs
    fold1 = [{**r, "fold": 1, "tumor_dice": d} for r, d in zip(rows[:4], (0.25, 0.75, 1.0, 1.0))]
    st = R.paired_statistics(rows + fold1, C, BM, 1.0, "tumor_dice")
    assert (st["mean"], st["ci_low"], st["ci_high"], st["n"], st["runs"]) == pytest.approx((0.5, 0.5, 0.5, 2, 4))
    assert "1.000 (2/2) | 2 |" in c_line and "0.500 (1/2) | 2 |" in b_line  # recall of tumors < 20 mm
    # data efficiency, tumor Dice of (b): 0.375 ± 0.177 at fraction 0.5, 0.375 ± 0.530 at fraction 1
    efficiency = text.split("## Data efficiency")[1].split("##")[0]
    assert "| fraction 0.5 | fraction 1 |" in efficiency
    assert f"| {METHODS[BM]} | 0.375 ± 0.177 | 0.375 ± 0.530 |" in efficiency
    assert f"| {METHODS[C]} | n/a | 0.875 ± 0.177 |" in efficiency
    assert "| b_nnunet_allphases/frac1/fold0 | 0 | 12 | 3 |" in text
    assert "reused (time unknown)" in text and "a warning" in text
    out = tmp_path / "out"
    for png in (R.BOXPLOT_PNG, R.EFFICIENCY_PNG, R.RECALL_PNG):
        assert (out / png).stat().st_size > 10_000 and f"]({png})" in text
    # the recall plot's counts are the summary's: (c) found 2/2 small tumors at fraction 1, (b) 1/2
    assert R.recall_by_size(rows, C, 1.0)["< 20 mm"] == (2, 2) and R.recall_by_size(rows, BM, 1.0)["< 20 mm"] == (1, 2)
    back = R.read_csv(out / "per_case.csv")
    assert len(back) == len(rows) and back[1]["case"] == "c2" and math.isnan(back[1]["tumor_hd95_mm"])
    assert [r["tumor_dice"] for r in back] == [r["tumor_dice"] for r in rows]


def test_two_runs_side_by_side_are_paired_per_test_case(tmp_path):
    """benchmarks/compare_reports.py: the same arm on a registered and an unregistered dataset, one table each and
    the paired difference of the two runs per test case (Table 3's "unregistered" rows)."""
    import subprocess
    import sys

    script = str(Path(__file__).resolve().parents[1] / "benchmarks" / "compare_reports.py")
    refs = _folder(tmp_path / "refs", {"c1": 0, "c2": 0})
    runs = {"registered": {"c1": 0, "c2": 0}, "unregistered": {"c1": 1, "c2": None}}  # tumor Dice 1, 1 / 0.75, 0
    for tag, cases in runs.items():
        pred = _folder(tmp_path / f"pred_{tag}", cases)
        R.write_csv([{"method": BM, "fraction": 0.15, "fold": 0, **r} for r in evaluate_folder(pred, refs)],
                    tmp_path / tag / "per_case.csv")
        (tmp_path / tag / "summary.md").write_text("Per case ... NSD at 5 mm. Both masks empty", encoding="utf-8")
    out = tmp_path / "side_by_side"
    proc = subprocess.run([sys.executable, script, f"registered={tmp_path / 'registered'}",
                           f"unregistered={tmp_path / 'unregistered'}", "-o", str(out)],
                          capture_output=True, text=True, encoding="utf-8", errors="replace")
    assert proc.returncode == 0, proc.stderr
    text = (out / "summary.md").read_text(encoding="utf-8")
    assert "| (b@registered) nnU-Net, all registered phases | 1.000 ± 0.000 |" in text
    assert "NSD at 5 mm" in text and "| NSD tolerance | 5 mm |" in text  # the runs' own tolerance, not the default
    # registered - unregistered tumor Dice: 1 - 0.75, 1 - 0 -> +0.625; the two rows of one case are paired
    assert ("| (b@registered) − (b@unregistered) | tumor Dice | +0.625 | [+0.250, +1.000] | 0.5 | above 0 | 2 |"
            in text)
    # a tag missing its '=' is refused before anything is written
    bad = subprocess.run([sys.executable, script, str(tmp_path / "registered"), f"x={tmp_path / 'unregistered'}",
                          "-o", str(tmp_path / "bad")],
                         capture_output=True, text=True, encoding="utf-8", errors="replace")
    assert bad.returncode == 2 and "TAG=FOLDER" in bad.stderr and not (tmp_path / "bad").exists()


def test_arms_of_two_runs_combine_into_one_paired_report(tmp_path):
    """compare_reports.py --combine: arm (b) from one run and arm (c) from a later run of the same benchmark become
    one report with the benchmark's own (c) − (b) pair per test case; a row present in both runs is refused."""
    import subprocess
    import sys

    script = str(Path(__file__).resolve().parents[1] / "benchmarks" / "compare_reports.py")
    refs = _folder(tmp_path / "refs", {"c1": 0, "c2": 0})
    for method, cases in ((BM, {"c1": 1, "c2": None}), (C, {"c1": 0, "c2": 1})):  # (b) 0.75, 0; (c) 1, 0.75
        pred = _folder(tmp_path / f"pred_{method}", cases)
        R.write_csv([{"method": method, "fraction": 0.15, "fold": 0, **r} for r in evaluate_folder(pred, refs)],
                    tmp_path / method / "per_case.csv")

    def run(*args):
        return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, encoding="utf-8",
                              errors="replace")

    out = tmp_path / "combined"
    # per_case.csv files alone do not say at which tolerance NSD was measured: refused without it
    proc = run("--combine", "--unregistered", f"b={tmp_path / BM}", f"c={tmp_path / C}", "-o", str(out))
    assert proc.returncode == 2 and "--nsd-tolerance-mm" in proc.stderr and not out.exists()
    proc = run("--combine", "--unregistered", f"b={tmp_path / BM}", f"c={tmp_path / C}", "-o", str(out),
               "--nsd-tolerance-mm", "2")
    assert proc.returncode == 0, proc.stderr
    text = (out / "summary.md").read_text(encoding="utf-8")
    b_line = next(line for line in text.splitlines() if line.startswith("| (b) nnU-Net, all unregistered phases "
                                                                          "(identity resampling) |"))
    assert "| 0.375 ± 0.530 |" in b_line and "0.500 (1/2)" in b_line
    # (c) - (b) per case: 1 - 0.75, 0.75 - 0 -> +0.500, bootstrap [+0.250, +0.750], exact Wilcoxon p 0.5
    assert "| (c) − (b) | tumor Dice | +0.500 | [+0.250, +0.750] | 0.5 | above 0 | 2 |" in text
    assert len(R.read_csv(out / "per_case.csv")) == 4
    # runs measured at different NSD tolerances cannot be paired
    (tmp_path / BM / "summary.md").write_text("NSD at 5 mm.", encoding="utf-8")
    (tmp_path / C / "summary.md").write_text("NSD at 2 mm.", encoding="utf-8")
    mixed = run("--combine", f"b={tmp_path / BM}", f"c={tmp_path / C}", "-o", str(tmp_path / "mixed"))
    assert mixed.returncode == 2 and "different NSD tolerances" in mixed.stderr
    # the same arm in both runs would count its cases twice: refused, nothing written
    dup = run("--combine", f"b={tmp_path / BM}", f"again={tmp_path / BM}", "-o", str(tmp_path / "dup"),
              "--nsd-tolerance-mm", "5")
    assert dup.returncode == 1 and "combine runs of different arms only" in dup.stderr
    assert not (tmp_path / "dup").exists()


# --- resume: "is finished" checks on fake nnU-Net layouts -------------------------------------------------------
def _job(arm="b", fraction=1.0, fold=0, nnunet_fold=0) -> B.Job:
    return B.Job(B.ARM_BY_KEY[arm], fraction, fold, nnunet_fold, "Dataset999_Toy", "nnUNetTrainer_Diff4MMDemo",
                 "Diff4MMCPUPlans")


def _never(cmd, log, env):
    raise AssertionError(f"should not run {cmd}")


def test_test_case_montage_picks_cases_by_reference_tumor_volume_only(tmp_path):
    from nnunetv2_diff4mm.evaluation.contours import contour_montage, pick_cases

    refs = {}
    for i, size in enumerate([0, 3, 1, 5, 2, 4]):  # tumor edge in voxels; case_000 has none
        array = np.zeros((10, 12, 12), np.uint8)
        array[1:9, 1:11, 1:11] = 1
        array[4:4 + max(size, 1), 3:3 + size, 3:3 + size] = 2 if size else 1
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.0, 1.0, 2.0))
        refs[f"case_{i:03d}"] = tmp_path / f"case_{i:03d}.nii.gz"
        sitk.WriteImage(image, str(refs[f"case_{i:03d}"]))
    # tumor volumes 1, 8, 27, 64, 125 voxels (edges 1..5): spread evenly from the smallest to the largest
    assert pick_cases(refs, 3) == ["case_002", "case_001", "case_003"]
    assert pick_cases(refs, 10) == ["case_002", "case_004", "case_001", "case_005", "case_003"]
    ct = sitk.Cast(sitk.ReadImage(str(refs["case_003"])), sitk.sitkFloat32) * 100.0
    ct_path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(ct, str(ct_path))
    png = contour_montage([(c, ct_path, refs[c], {"(b)": refs["case_003"], "(c)": refs[c]})
                           for c in ("case_001", "case_003")], tmp_path / "m.png", "t")
    import matplotlib.image

    height, width = matplotlib.image.imread(str(png)).shape[:2]
    assert (height, width) == (520, 520)  # 2 cases x 2 methods, 2.6 inch panels at 100 dpi


def test_model_folder_is_nnunets(tmp_path, monkeypatch):
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    job = _job()
    assert B.fold_folder(tmp_path, job) == Path(get_output_folder(job.dataset, job.trainer, job.plans,
                                                                  job.configuration, fold=0))


def test_finished_training_is_not_rerun(tmp_path):
    job = _job(nnunet_fold=5)
    fold_dir = B.fold_folder(tmp_path, job)
    assert fold_dir.name == "fold_5" and fold_dir.parent.name == "nnUNetTrainer_Diff4MMDemo__Diff4MMCPUPlans__3d_fullres"
    fold_dir.mkdir(parents=True)
    calls = []

    def fake_train(cmd, log, env):
        calls.append(cmd)
        (fold_dir / "checkpoint_final.pth").write_bytes(b"x")

    assert B.train_job(job, tmp_path, "cpu", tmp_path / "logs", fake_train) == "trained"
    assert calls[0][1:] == ["Dataset999_Toy", "3d_fullres", "5", "-tr", "nnUNetTrainer_Diff4MMDemo", "-p",
                            "Diff4MMCPUPlans", "-device", "cpu"]
    assert B.train_job(job, tmp_path, "cpu", tmp_path / "logs", _never) == "reused"
    # an interrupted training (checkpoint_latest only) continues with --c
    (fold_dir / "checkpoint_final.pth").unlink()
    (fold_dir / "checkpoint_latest.pth").write_bytes(b"x")
    B.train_job(job, tmp_path, "cpu", tmp_path / "logs", fake_train)
    assert calls[-1][-1] == "--c"

    def crashed(cmd, log, env):
        pass  # exits 0 but leaves no checkpoint_final.pth

    (fold_dir / "checkpoint_final.pth").unlink()
    with pytest.raises(B.BenchmarkError, match="checkpoint_final"):
        B.train_job(job, tmp_path, "cpu", tmp_path / "logs", crashed)


def test_predictions_reused_only_when_complete(tmp_path):
    job, cases = _job(), ["t1", "t2"]
    pred_dir = tmp_path / "pred" / "fold0"
    seen = []

    def fake_predict(cmd, log, env, write=cases):
        seen.append(cmd)
        out = Path(cmd[cmd.index("-o") + 1])
        for case in write:
            (out / f"{case}.nii.gz").write_bytes(b"x")

    def half(cmd, log, env):
        Path(cmd[cmd.index("-o") + 1]).mkdir(parents=True)
        fake_predict(cmd, log, env, write=cases[:1])

    with pytest.raises(B.BenchmarkError, match="every test case"):
        B.predict_job(job, tmp_path / "in", pred_dir, cases, ".nii.gz", "cpu", False, 1, tmp_path, half)
    assert not pred_dir.exists()  # an incomplete run never looks finished

    def full(cmd, log, env):
        Path(cmd[cmd.index("-o") + 1]).mkdir(parents=True)
        fake_predict(cmd, log, env)

    assert B.predict_job(job, tmp_path / "in", pred_dir, cases, ".nii.gz", "cpu", False, 1, tmp_path, full) == \
        "predicted"
    assert "--disable_tta" in seen[-1] and seen[-1][seen[-1].index("-f") + 1] == "0"
    # one process: nnU-Net's sequential mode, no worker processes
    assert seen[-1][seen[-1].index("-npp") + 1] == seen[-1][seen[-1].index("-nps") + 1] == "0"
    assert sorted(p.name for p in pred_dir.parent.iterdir()) == ["fold0"]  # staging folder renamed away
    assert B.predict_job(job, tmp_path / "in", pred_dir, cases, ".nii.gz", "cpu", True, 1, tmp_path, _never) == \
        "reused"


# --- labelled-fraction splits --------------------------------------------------------------------------------------
def test_fraction_splits_are_nested_extra_folds(tmp_path):
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    cases = [f"case_{i:03d}" for i in range(10)]
    source, derived = tmp_path / "src", tmp_path / "derived"
    source.mkdir()
    derived.mkdir()
    index, splits = B.prepare_splits(source, cases, [0, 1], [0.25, 0.5, 1.0], mirror_to=derived)
    nnunet = generate_crossval_split(cases, seed=12345, n_splits=5)  # what nnU-Net would have written
    assert [{"train": list(s["train"]), "val": list(s["val"])} for s in nnunet] == splits[:5]
    assert index[(1.0, 0)] == 0 and index[(1.0, 1)] == 1
    assert sorted(index[(f, k)] for f in (0.25, 0.5) for k in (0, 1)) == [5, 6, 7, 8]
    quarter, half = splits[index[(0.25, 0)]], splits[index[(0.5, 0)]]
    assert len(quarter["train"]) == 2 and len(half["train"]) == 4  # ceil(f * 8)
    assert set(quarter["train"]) <= set(half["train"]) <= set(splits[0]["train"])
    assert quarter["val"] == half["val"] == splits[0]["val"]
    stored = (source / "splits_final.json").read_text(encoding="utf-8")
    assert json.loads((derived / "splits_final.json").read_text(encoding="utf-8")) == json.loads(stored)
    # a re-run finds the same entries and leaves the file alone
    again, _ = B.prepare_splits(source, cases, [0, 1], [0.25, 0.5, 1.0], mirror_to=derived)
    assert again == index and (source / "splits_final.json").read_text(encoding="utf-8") == stored
    with pytest.raises(SplitError, match="fold 7"):
        B.prepare_splits(source, cases, [7], [1.0])


# --- derived reference-phase dataset and plans ----------------------------------------------------------------------
PHASES = ["NC", "AP", "PVP", "DELAY"]


def _fake_raw(root: Path, name="Dataset901_Toy", train=("case_000", "case_001"), test=("test_000",),
              channel_names=tuple(PHASES)) -> Path:
    raw = root / name
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (raw / sub).mkdir(parents=True)
    for case in train:
        for k in range(4):
            (raw / "imagesTr" / f"{case}_{k:04d}.nii.gz").write_text(f"{case} {k}", encoding="utf-8")
        (raw / "labelsTr" / f"{case}.nii.gz").write_text(f"{case} label", encoding="utf-8")
    for case in test:
        for k in range(4):
            (raw / "imagesTs" / f"{case}_{k:04d}.nii.gz").write_text(f"{case} {k}", encoding="utf-8")
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {str(k): p for k, p in enumerate(channel_names)}, "labels": {"background": 0, "liver": 1,
                                                                                      "tumor": 2},
        "numTraining": len(train), "file_ending": ".nii.gz", "diff4mm": {"phases": PHASES, "reference": "PVP"}}), encoding="utf-8")
    return raw


@pytest.mark.parametrize("channel_names", [tuple(PHASES), ("CT",) * 4], ids=["named_by_phase", "diff4mm_register"])
def test_derived_dataset_holds_the_reference_channel(tmp_path, channel_names):
    raw = _fake_raw(tmp_path, channel_names=channel_names)
    channel, phase = B.reference_channel(json.loads((raw / "dataset.json").read_text(encoding="utf-8")))
    assert (channel, phase) == (2, "PVP")
    target = tmp_path / B.derived_dataset_name(raw.name, 951)
    assert target.name == "Dataset951_ToyRefPhase"
    B.derive_reference_phase_dataset(raw, target, channel, phase)
    assert sorted(p.name for p in (target / "imagesTr").iterdir()) == ["case_000_0000.nii.gz", "case_001_0000.nii.gz"]
    assert os.path.samefile(target / "imagesTr" / "case_001_0000.nii.gz", raw / "imagesTr" / "case_001_0002.nii.gz")
    assert (target / "imagesTs" / "test_000_0000.nii.gz").read_text(encoding="utf-8") == "test_000 2"
    assert (target / "labelsTr" / "case_000.nii.gz").read_text(encoding="utf-8") == "case_000 label"
    data = json.loads((target / "dataset.json").read_text(encoding="utf-8"))
    assert data["channel_names"] == {"0": channel_names[2]} and data["numTraining"] == 2  # normalised as before
    assert data["diff4mm"]["derived_from"] == raw.name and data["diff4mm"]["phases"] == ["PVP"]
    # a case removed from the source disappears from the derived dataset on the next run
    for p in raw.glob("*/case_001*"):
        p.unlink()
    B.derive_reference_phase_dataset(raw, target, channel, phase)
    assert sorted(p.name for p in (target / "imagesTr").iterdir()) == ["case_000_0000.nii.gz"]


def test_table2_inputs_hold_the_reference_phase_in_every_channel(tmp_path):
    raw = _fake_raw(tmp_path, channel_names=("CT",) * 4)
    target = tmp_path / "refcopy"
    target.mkdir()
    (target / "gone_0000.nii.gz").write_text("stale", encoding="utf-8")
    B.write_reference_copied_inputs(raw / "imagesTs", target, 2, 4, ".nii.gz", ["test_000"])
    assert sorted(p.name for p in target.iterdir()) == [f"test_000_{k:04d}.nii.gz" for k in range(4)]
    assert {(target / f"test_000_{k:04d}.nii.gz").read_text(encoding="utf-8") for k in range(4)} == {"test_000 2"}
    with pytest.raises(B.BenchmarkError, match="test_001_0002.nii.gz: missing"):
        B.write_reference_copied_inputs(raw / "imagesTs", target, 2, 4, ".nii.gz", ["test_001"])


def test_transferred_plans_keep_everything_but_name_and_channel_statistics():
    source = {"dataset_name": "Dataset901_Toy", "plans_name": "Diff4MMCPUPlans",
              "configurations": {"3d_fullres": {"patch_size": [32, 64, 64],
                                                "normalization_schemes": ["CTNormalization", "ZScoreNormalization",
                                                                          "RescaleTo01Normalization", "NoNormalization"],
                                                "use_mask_for_norm": [False, False, True, False]}},
              "foreground_intensity_properties_per_channel": {str(k): {"mean": float(k)} for k in range(4)}}
    plans = B.transferred_plans(source, "Dataset951_ToyRefPhase", 2)
    assert plans["foreground_intensity_properties_per_channel"] == {"0": {"mean": 2.0}}
    assert plans["dataset_name"] == "Dataset951_ToyRefPhase"
    config = plans["configurations"]["3d_fullres"]
    assert config["normalization_schemes"] == ["RescaleTo01Normalization"] and config["use_mask_for_norm"] == [True]
    assert config["patch_size"] == [32, 64, 64]
    assert source["dataset_name"] == "Dataset901_Toy" and len(source["configurations"]["3d_fullres"]
                                                               ["use_mask_for_norm"]) == 4  # source untouched


# --- inputs are checked before anything expensive -----------------------------------------------------------------
@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    roots = B.Roots(tmp_path / "raw", tmp_path / "pre", tmp_path / "res")
    for var, path in zip(("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"), (roots.raw, roots.preprocessed,
                                                                                   roots.results)):
        path.mkdir()
        monkeypatch.setenv(var, str(path))
    return roots


def test_shared_bundle_override_stops_before_training(tmp_path, nnunet_env, capsys, monkeypatch):
    """Arm (c) trains its own models per job: a bundle forced on every fold by $DIFF4MM_BUNDLE is refused."""
    _fake_raw(nnunet_env.raw)
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "test_000.nii.gz").write_text("ref", encoding="utf-8")
    common = ["-d", "901", "-o", str(tmp_path / "out"), "--test-labels", str(labels)]
    monkeypatch.setenv("DIFF4MM_BUNDLE", str(tmp_path / "some_bundle"))
    assert cli_main(common) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("diff4mm_benchmark: error: ") and "DIFF4MM_BUNDLE is set" in err and "\n" not in err
    assert not any(nnunet_env.preprocessed.iterdir())  # nothing was planned or preprocessed
    monkeypatch.delenv("DIFF4MM_BUNDLE")

    (labels / "test_000.nii.gz").unlink()
    assert cli_main(common + ["--arms", "a", "b"]) == 1
    assert "missing reference label of test case test_000" in capsys.readouterr().err
    assert cli_main(["-d", "902", "--test-labels", str(labels)]) == 1
    assert "no raw datasets with ID 902" in capsys.readouterr().err


# --- the real thing, small: nnU-Net trains and predicts arms (a) and (b) on a 3-case phantom ----------------------
TINY_TRAINER = '''
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_diff4mm.training.trainer import Diff4MMTrainer


class nnUNetTrainer_BenchmarkTest(nnUNetTrainer):
    """1 epoch of 2 iterations: tests the benchmark's plumbing, not the network. nnUNetTrainer records its
    constructor arguments by name (inspect.signature), so the signature is spelled out."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1

    def perform_actual_validation(self, save_probabilities: bool = False):
        """The benchmark scores test-set predictions, not nnU-Net's final validation (~25 s per training here)."""
        self.print_to_log_file("final validation skipped (test trainer)")


class Diff4MMTrainer_BenchmarkTest(Diff4MMTrainer):
    """Diff4MMTrainer on the same 1 x 2 schedule, with a small pool."""

    pool_size = 2
    prefill = 1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("final validation skipped (test trainer)")


class Diff4MMTrainer_BenchmarkTestMedianFill(Diff4MMTrainer_BenchmarkTest):
    """The ablation arm (m)'s name for the same trainer."""
'''


def _raw_from_phantom(phantom: Path, raw: Path, train: list[str], test: list[str]) -> None:
    """An nnU-Net raw dataset from the phantom's perfectly aligned phases (what an ideal diff4mm_register writes)."""
    from nnunetv2_diff4mm.phantom import PHASES as PHANTOM_PHASES, REFERENCE_PHASE

    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (raw / sub).mkdir(parents=True)
    for case in train + test:
        truth = phantom / "ground_truth" / case
        sub = "imagesTr" if case in train else "imagesTs"
        for k, phase in enumerate(PHANTOM_PHASES):
            os.link(truth / f"{phase}_aligned.nii.gz", raw / sub / f"{case}_{k:04d}.nii.gz")
        if case in train:
            os.link(truth / "label.nii.gz", raw / "labelsTr" / f"{case}.nii.gz")
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {str(k): "CT" for k in range(len(PHANTOM_PHASES))},  # as diff4mm_register writes
        "labels": {"background": 0, "liver": 1, "tumor": 2}, "numTraining": len(train), "file_ending": ".nii.gz",
        "diff4mm": {"phases": list(PHANTOM_PHASES), "reference": REFERENCE_PHASE}}), encoding="utf-8")


@pytest.mark.slow
def test_cpu_preset_end_to_end_on_tiny_phantom(tmp_path, nnunet_env, monkeypatch):
    from nnunetv2_diff4mm.phantom import PhantomConfig, write_phantom_dataset

    trainers = tmp_path / "trainers"
    trainers.mkdir()
    (trainers / "benchmark_test_trainer.py").write_text(TINY_TRAINER, encoding="utf-8")
    monkeypatch.setenv("nnUNet_extTrainer", str(trainers))  # the plugin's start-up hook adds its own folder
    phantom = tmp_path / "phantom"
    names = write_phantom_dataset(phantom, PhantomConfig(spacing=(8.0, 8.0, 12.0), max_tumors=2), 3, 1,
                                  progress=False)
    _raw_from_phantom(phantom, nnunet_env.raw / "Dataset850_Tiny", names[:3], names[3:])
    out = tmp_path / "out"
    args = ["-d", "850", "-o", str(out), "--phantom", str(phantom), "--arms", "a", "b", "--fractions", "0.5",
            "--trainers", "nnUNetTrainer_BenchmarkTest", "Diff4MMTrainer_Demo", "-np", "1", "--reference-copy-eval"]
    assert cli_main(args) == 0, [p.read_text(encoding="utf-8")[-3000:] for p in (out / "logs").glob("*")]

    rows = R.read_csv(out / "per_case.csv")
    # Table 2's protocol: the multi-phase model (b) is also tested with PVP in every channel; (a) has one channel
    assert {(r["method"], r["fraction"]) for r in rows} == {(A, 0.5), (BM, 0.5), (B.refcopy_method(BM), 0.5)}
    assert os.path.samefile(out / "inputs_reference_copied" / "test_000_0000.nii.gz",
                            nnunet_env.raw / "Dataset850_Tiny" / "imagesTs" / "test_000_0002.nii.gz")
    assert all(r["case"] == "test_000" and 0.0 <= r["liver_dice"] <= 1.0 for r in rows)
    splits = json.loads((nnunet_env.preprocessed / "Dataset850_Tiny" / "splits_final.json").read_text(encoding="utf-8"))
    assert len(splits) == 4 and len(splits[3]["train"]) == 1  # 3 folds (3 cases) + the fraction-0.5 subset
    derived = "Dataset950_TinyRefPhase"  # ID + 100
    assert json.loads((nnunet_env.preprocessed / derived / "splits_final.json").read_text(encoding="utf-8")) == splits
    plans = {name: json.loads((nnunet_env.preprocessed / name / "Diff4MMCPUPlans.json").read_text(encoding="utf-8"))
             for name in ("Dataset850_Tiny", derived)}
    assert plans[derived] == B.transferred_plans(plans["Dataset850_Tiny"], derived, 2)  # PVP = channel 2
    assert (nnunet_env.results / derived / "nnUNetTrainer_BenchmarkTest__Diff4MMCPUPlans__3d_fullres" / "fold_3" /
            "checkpoint_final.pth").is_file()
    assert "This split has 1 training" in (out / "logs" / f"train_{A}_frac0.5_fold0.log").read_text(encoding="utf-8")
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "| (b) − (a) |" in summary and "## Labelled fraction 0.5" in summary

    # a re-run trains and predicts nothing: it only re-evaluates
    stamp = (out / "per_case.csv").stat().st_mtime_ns
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert cli_main(args) == 0
    assert sorted(p.name for p in (out / "logs").iterdir()) == logs
    assert all((out / "logs" / n).read_text(encoding="utf-8").count("\n$ ") == 1 for n in logs)  # one command each, run once
    assert (out / "per_case.csv").stat().st_mtime_ns > stamp
    timings = json.loads((out / "timings.json").read_text(encoding="utf-8"))
    assert {t["train_status"] for t in timings.values()} == {"reused"}
    assert {t["predict_status"] for t in timings.values()} == {"reused"}


@pytest.mark.slow
def test_arm_c_models_see_only_the_jobs_training_cases(tmp_path, nnunet_env, monkeypatch):
    """The benchmark trains arm (c)'s inpainter, normal CTs and bundle per job through the plugin's commands with
    -f F; each records exactly the job's training cases, none of its validation or test cases, and
    Diff4MMTrainer accepts them (its leak check passes and synthesis runs)."""
    from nnunetv2_diff4mm.phantom import PhantomConfig, write_phantom_dataset
    from synthesis.inpainting import inpainter_training_cases
    from synthesis.normal_dataset import normal_lineage

    trainers = tmp_path / "trainers"
    trainers.mkdir()
    (trainers / "benchmark_test_trainer.py").write_text(TINY_TRAINER, encoding="utf-8")
    monkeypatch.setenv("nnUNet_extTrainer", str(trainers))
    phantom = tmp_path / "phantom"
    names = write_phantom_dataset(phantom, PhantomConfig(seed=1, spacing=(8.0, 8.0, 12.0), max_tumors=3), 4, 1,
                                  progress=False)
    raw = nnunet_env.raw / "Dataset851_Leak"
    _raw_from_phantom(phantom, raw, names[:4], names[4:])
    settings = B.BenchmarkSettings(
        dataset="851", output=tmp_path / "out", folds=(0,), fractions=(1.0,), arms=("c", "m"), phantom=phantom,
        trainers=("nnUNetTrainer_BenchmarkTest", "Diff4MMTrainer_BenchmarkTest"), num_processes=1,
        inpainter_args=("--preset", "tiny", "--epochs", "1"), synthesizer_args=("--preset", "tiny"))
    B.run_benchmark(settings)

    splits = json.loads((nnunet_env.preprocessed / raw.name / "splits_final.json").read_text(encoding="utf-8"))
    train, val, test = set(splits[0]["train"]), set(splits[0]["val"]), set(names[4:])
    assert train and val and not train & (val | test)
    models = nnunet_env.results / raw.name / "diff4mm"  # trained models go where nnU-Net keeps its own
    assert set(inpainter_training_cases(models / "inpainter_fold0")) == train
    assert normal_lineage(raw / "diff4mm" / "normal_fold0") == train  # derived images stay with the raw data
    normal_cases = {p.name[: -len(".nii.gz")] for p in (raw / "diff4mm" / "normal_fold0" / "labelsTr").iterdir()}
    assert normal_cases == train
    record = json.loads((models / "synthesizer_fold0" / "diff4mm_bundle.json").read_text(encoding="utf-8"))
    assert set(record["training"]["cases"]) == train and set(record["training"]["lineage_cases"]) == train
    assert not (models / "synthesizer").exists()  # nothing shared across folds was made
    assert sorted(p.name for p in (raw / "diff4mm").iterdir()) == ["normal_fold0", "normal_median_fold0"]
    log = next((nnunet_env.results / raw.name / "Diff4MMTrainer_BenchmarkTest__Diff4MMCPUPlans__3d_fullres" /
                "fold_0").glob("training_log_*.txt")).read_text(encoding="utf-8")
    assert "synthesizer_fold0" in log and "synthesis disabled" not in log
    # the Table 5 ablation (m): the same fold's bundle painting into median-filled normal CTs of the same cases
    median = raw / "diff4mm" / "normal_median_fold0"
    assert normal_lineage(median) == set()  # a classical fill learns from no case
    assert {p.name[: -len(".nii.gz")] for p in (median / "labelsTr").iterdir()} == train
    log = next((nnunet_env.results / raw.name / "Diff4MMTrainer_BenchmarkTestMedianFill__Diff4MMCPUPlans__3d_fullres" /
                "fold_0").glob("training_log_*.txt")).read_text(encoding="utf-8")
    assert "synthesizer_fold0" in log and f"normal CTs of {median} cached" in log and "synthesis disabled" not in log
    assert {r["method"] for r in R.read_csv(tmp_path / "out" / "per_case.csv")} == {C, "m_diff4mm_medianfill"}
