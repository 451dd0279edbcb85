"""The README's main command: the demo runs its stages on a tiny phantom and writes a complete report."""
from __future__ import annotations

import subprocess
import sys


def test_demo_runs_its_first_stages_as_commands_and_resumes(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "nnunetv2_diff4mm.cli.demo", "-o", str(out), "--cases", "1", "--test-cases", "1",
           "--spacing", "5", "5", "8", "-np", "1", "--stop-after", "QA montage"]
    result = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace")
    assert result.returncode == 0, result.stderr[-2000:]
    report = (out / "report.md").read_text(encoding="utf-8")
    for stage in ("| phantom | `diff4mm_phantom -o", "| input validation | `diff4mm_validate", "| QA montage |"):
        assert stage in report
    assert "registration" not in report.split("## Stages")[1]  # stopped where asked
    assert (out / "qa" / "phantom_case_000.png").stat().st_size > 10_000
    # a second run resumes: the phantom is reused, not regenerated
    mtime = (out / "phantom" / "case_000" / "PVP.nii.gz").stat().st_mtime_ns
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert (out / "phantom" / "case_000" / "PVP.nii.gz").stat().st_mtime_ns == mtime


def test_the_prediction_table_scores_diff4mm_predict_outputs_against_the_truth(tmp_path):
    """The demo's "new patients" section: each held-out case's prediction against the phantom's truth."""
    import json

    import numpy as np
    import SimpleITK as sitk

    from nnunetv2_diff4mm.demo import prediction_table

    truth = np.zeros((12, 20, 20), np.uint8)
    truth[2:10, 3:17, 3:17] = 1
    truth[4:7, 5:8, 5:8] = 2
    truth[4:7, 12:15, 12:15] = 2
    predicted = truth.copy()
    predicted[4:7, 12:15, 12:15] = 1  # one of the two tumors missed
    (tmp_path / "phantom" / "ground_truth" / "test_000").mkdir(parents=True)
    (tmp_path / "pred").mkdir()
    for array, path in ((truth, tmp_path / "phantom" / "ground_truth" / "test_000" / "label.nii.gz"),
                        (predicted, tmp_path / "pred" / "test_000.nii.gz")):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((3.0, 3.0, 5.0))
        sitk.WriteImage(image, str(path))
    (tmp_path / "pred" / "test_000.json").write_text(json.dumps({
        "registration": {"mask": "liver"}, "first_pass": {"source": "model"}, "seconds": {"total": 12.4}}))
    rows = prediction_table(tmp_path / "phantom", tmp_path / "pred", 5.0)
    assert rows[2] == "| test_000 | 1.000 | 0.667 | 1 / 2 | liver (model) | 12 |"
