"""The README's main command: the demo runs its stages on a tiny phantom and writes a complete report."""
from __future__ import annotations

import subprocess
import sys


def test_demo_writes_report_with_every_stage(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "nnunetv2_diff4mm.cli.demo", "-o", str(out), "--cases", "1", "--test-cases", "1",
           "--spacing", "5", "5", "8", "-np", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    report = (out / "report.md").read_text()
    for stage in ("| phantom |", "| input validation |", "| QA montages |"):
        assert stage in report
    assert "2 cases (1 labelled, 1 held-out)" in report
    assert (out / "qa" / "phantom_case_000.png").stat().st_size > 10_000
    # a second run resumes: the phantom is reused, not regenerated
    mtime = (out / "phantom" / "case_000" / "PVP.nii.gz").stat().st_mtime_ns
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert (out / "phantom" / "case_000" / "PVP.nii.gz").stat().st_mtime_ns == mtime
