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
