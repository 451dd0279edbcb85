"""The README's "Use it on your data" block, run as written on a fresh phantom (issue #19). Opt-in (29 min on the
2-core VM beside an nnU-Net training, beyond the suite's 20-minute budget):
``bash scripts/test.sh --run-readme-pipeline tests/test_readme_pipeline.py``.

Every command of the block runs as the console script a user types, in the block's order, with only these
substitutions, each one the README's own CPU advice or a test size:

- the placeholders: INPUT = a fresh phantom (6 labelled + 1 held-out case), NEW = a folder holding the held-out
  case, LABELS = its reference label, PRED = an output folder; the ``export`` line = the test's own three folders;
- ``nnUNetv2_plan_and_preprocess ...`` -> ``diff4mm_plan_cpu -d 501`` (the line's own comment: "on a CPU");
- every nnU-Net line gets ``-p Diff4MMCPUPlans`` and ``nnUNetv2_train`` ``-device cpu`` (the README: "On a CPU
  every nnU-Net line takes ..."), and ``-tr Diff4MMTrainer`` (1000 epochs) becomes the CPU schedule
  ``Diff4MMTrainer_Demo`` (8 x 20 iterations);
- ``--preset gpu`` -> ``--preset tiny --epochs 1`` for the two model trainers, ``--preset cpu --fractions 1`` for
  the benchmark (whose arm (c) then reuses the block's models and training, as the demo's does).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
from readme_blocks import ROOT, shell_commands

pytestmark = pytest.mark.readme_pipeline
HEADING = "## Use it on your data (the pipeline)"


def pipeline_block() -> list[list[str]]:
    readme = ROOT / "README.md"
    lines = readme.read_text(encoding="utf-8").splitlines()
    start = lines.index(HEADING) + 1
    end = next(k for k in range(start + 2, len(lines)) if lines[k].strip() == "```") + 1
    return [argv for number, argv in shell_commands(readme) if start < number <= end]


def substituted(argv: list[str], places: dict[str, str]) -> list[str] | None:
    """The command as this test runs it (module docstring), or None for the export line."""
    if argv[0] == "export":
        return None
    if argv[0] == "nnUNetv2_plan_and_preprocess":
        return ["diff4mm_plan_cpu", "-d", argv[argv.index("-d") + 1]]
    out = [places.get(token, token) for token in argv]
    out = ["Diff4MMTrainer_Demo" if token == "Diff4MMTrainer" else token for token in out]
    if "--preset" in out:
        k = out.index("--preset")
        out[k + 1:k + 2] = ["cpu", "--fractions", "1"] if out[0] == "diff4mm_benchmark" else ["tiny", "--epochs", "1"]
    if out[0] in ("nnUNetv2_train", "diff4mm_predict"):
        out += ["-p", "Diff4MMCPUPlans"]
    if out[0] == "nnUNetv2_train":
        out += ["-device", "cpu"]
    return out


def test_the_readme_pipeline_block_runs_as_written(tmp_path):
    block = pipeline_block()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(diff4mm_plan_cpu -d 501 on a CPU)" in readme and "every nnU-Net line takes `-p Diff4MMCPUPlans`" in readme
    assert "`nnUNetv2_train` also `-device cpu`" in readme
    assert [argv[0] for argv in block] == [
        "export", "diff4mm_validate", "diff4mm_register", "nnUNetv2_plan_and_preprocess", "diff4mm_train_inpainter",
        "diff4mm_inpaint", "diff4mm_train_synthesizer", "nnUNetv2_train", "diff4mm_benchmark", "diff4mm_predict"]

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "nnUNet_raw": str(tmp_path / "raw"), "nnUNet_preprocessed": str(tmp_path / "pre"),
           "nnUNet_results": str(tmp_path / "res"), "nnUNet_n_proc_DA": "2", "nnUNet_def_n_proc": "2"}
    phantom = tmp_path / "phantom"
    subprocess.run([str(bin_dir / "diff4mm_phantom"), "-o", str(phantom), "--cases", "6", "--test-cases", "1",
                    "--seed", "0", "--spacing", "6", "6", "10", "-np", "2"], check=True, env=env,
                   capture_output=True)
    new, labels = tmp_path / "new", tmp_path / "labels"
    shutil.copytree(phantom / "test_000", new / "test_000")
    labels.mkdir()
    shutil.copy(phantom / "ground_truth" / "test_000" / "label.nii.gz", labels / "test_000.nii.gz")
    places = {"INPUT": str(phantom), "NEW": str(new), "LABELS": str(labels), "PRED": str(tmp_path / "pred")}

    for argv in block:
        command = substituted(argv, places)
        if command is None:
            continue
        result = subprocess.run([str(bin_dir / command[0]), *command[1:]], env=env, capture_output=True, text=True,
                                encoding="utf-8", errors="replace", cwd=tmp_path)
        assert result.returncode == 0, f"{' '.join(command)}:\n{(result.stdout + result.stderr)[-3000:]}"

    summary = (tmp_path / "pred" / "test_000.json")
    record = json.loads(summary.read_text(encoding="utf-8"))
    seg = sitk.ReadImage(str(tmp_path / "pred" / "test_000.nii.gz"))
    reference = sitk.ReadImage(str(new / "test_000" / "PVP.nii.gz"))
    assert (seg.GetSize(), seg.GetSpacing(), seg.GetOrigin()) == (reference.GetSize(), reference.GetSpacing(),
                                                                   reference.GetOrigin())
    assert record["registration"]["mask"] in ("liver", "body")
    benchmark = next(tmp_path.glob("**/summary.md"))
    assert "(c)" in benchmark.read_text(encoding="utf-8")
