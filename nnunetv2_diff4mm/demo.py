"""The end-to-end demo on the built-in phantom: every pipeline stage, run as the user would run it.

Each stage is the project's own console command (run with this interpreter), so the report doubles as a
recipe. Every command resumes, so re-running the demo redoes only unfinished work. The report, OUTPUT/report.md,
holds the time of each stage, its QA figures and montages, and the benchmark table against nnU-Net.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from registration.image_io import write_text_atomic

from . import conventions
from .benchmark.common import PRESETS as BENCHMARK_PRESETS

DATASET_ID = 501
DATASET_NAME = "Diff4MMPhantom"
PREDICTIONS = "predictions"  # diff4mm_predict's output folder in the demo's output


@dataclass
class DemoSettings:
    output: Path
    cases: int = 8
    test_cases: int = 2
    seed: int = 0
    spacing: tuple[float, float, float] = (3.0, 3.0, 5.0)
    num_processes: int = 2
    preset: str = "cpu"  # cpu: CPU-sized models and nnU-Net plans; gpu: the larger presets
    stop_after: str | None = None  # name of the last stage to run (for quick looks and tests)


@dataclass
class Stage:
    name: str
    command: list[str]  # as a user types it
    module: str  # python -m module ...
    args: list[str]
    seconds: float = 0.0
    result: str = ""


def _summary_line(log: Path, output: Path) -> str:
    """The last line a stage's command printed (every diff4mm_* command ends with a one-line summary), with
    absolute paths shortened to the demo folder's name, for the report's stage table."""
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
             .splitlines() if line.strip()]
    if not lines:
        return ""
    root = str(output.resolve().parent) + os.sep
    return lines[-1].replace(root, "").replace("|", "/")


@dataclass
class DemoRun:
    settings: DemoSettings
    stages: list[Stage] = field(default_factory=list)

    @property
    def env(self) -> dict:
        out = self.settings.output.resolve()
        return {**os.environ, "nnUNet_raw": str(out / "nnUNet_raw"),
                "nnUNet_preprocessed": str(out / "nnUNet_preprocessed"), "nnUNet_results": str(out / "nnUNet_results"),
                "nnUNet_n_proc_DA": str(self.settings.num_processes),
                "nnUNet_def_n_proc": str(self.settings.num_processes)}

    def run(self, name: str, module: str, *args: str, result=None) -> None:
        stage = Stage(name, [f"diff4mm_{module}", *args], f"nnunetv2_diff4mm.cli.{module}", list(args))
        print(f"[diff4mm demo] {name}: {' '.join(stage.command)}", flush=True)
        start = time.perf_counter()
        log = self.settings.output / "logs" / f"{len(self.stages):02d}_{module}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as fh:
            proc = subprocess.run([sys.executable, "-m", stage.module, *args], env=self.env, stdout=fh,
                                  stderr=subprocess.STDOUT)
        stage.seconds = time.perf_counter() - start
        if proc.returncode != 0:
            tail = log.read_text(encoding="utf-8").strip().splitlines()[-5:]
            raise RuntimeError(f"demo stage '{name}' failed (exit {proc.returncode}); see {log}:\n" + "\n".join(tail))
        stage.result = result() if result else _summary_line(log, self.settings.output)
        self.stages.append(stage)
        print(f"[diff4mm demo] {name}: done in {stage.seconds:.1f} s {stage.result}", flush=True)

    def done(self, name: str) -> bool:
        return self.settings.stop_after == name


def _raw(run: DemoRun) -> Path:
    return run.settings.output / "nnUNet_raw" / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"


def _registration_table(run: DemoRun) -> list[str]:
    """Mean absolute HU error in the dilated liver vs the phantom's ground truth, before and after."""
    from .evaluation.registration_error import registration_error_table

    return registration_error_table(run.settings.output / "phantom", _raw(run))


def _inpainting_table(run: DemoRun) -> list[str]:
    record = json.loads((_raw(run) / "diff4mm" / "normal_fold0" / "normal.json").read_text(encoding="utf-8"))
    lines = ["| case | phase | region HU before | after | healthy liver HU (mean ± std) | no tumor left |",
             "| --- | --- | ---: | ---: | ---: | --- |"]
    for case, phases in record["cases"].items():
        for phase, r in phases.items():
            before = "–" if r["region_mean_before"] is None else f"{r['region_mean_before']:.0f}"
            after = "–" if r["region_mean_before"] is None else f"{r['region_mean_after']:.0f}"  # no tumor
            lines.append(f"| {case} | {phase} | {before} | {after} | "
                         f"{r['healthy_mean']:.0f} ± {r['healthy_std']:.0f} | {'yes' if r['ok'] else 'NO'} |")
    return lines


def run_demo(settings: DemoSettings) -> Path:
    """Run (or resume) every stage into settings.output and write report.md; returns its path."""
    s = settings
    s.output.mkdir(parents=True, exist_ok=True)
    run = DemoRun(s)
    phantom = str(s.output / "phantom")
    run.run("phantom", "phantom", "-o", phantom, "--cases", str(s.cases), "--test-cases", str(s.test_cases),
            "--seed", str(s.seed), "--spacing", *map(str, s.spacing), "-np", str(s.num_processes))
    run.run("input validation", "validate", phantom, "-np", str(s.num_processes))
    run.run("QA montage", "montage", f"{phantom}/case_000", "-o", str(s.output / "qa" / "phantom_case_000.png"))
    if not run.done("QA montage"):
        _pipeline(run, phantom)
    return _write_report(run)


def _pipeline(run: DemoRun, phantom: str) -> None:
    s = run.settings
    big = s.preset != "cpu"
    dataset = str(DATASET_ID)
    run.run("registration", "register", phantom, "-d", dataset, "-n", DATASET_NAME, "-np", str(s.num_processes))
    if run.done("registration"):
        return
    run.run("nnU-Net planning (CPU preset)" if not big else "nnU-Net planning", "plan_cpu", "-d", dataset,
            "-np", str(s.num_processes))
    # CPU demo: the tiny inpainter (seconds) and a third of the default synthesizer's steps, to fit the demo's
    # 30 minutes; the default presets take ~4 and ~37 minutes of one core (docs/decisions.md)
    # Every model of arm (c) is trained on nnU-Net fold 0's training cases only (-f 0), so the benchmark's fold-0
    # job reuses them and none of them has seen a validation or test case (docs/trainer.md). The arguments equal
    # the benchmark preset's, which is what lets the benchmark find these models finished.
    preset = BENCHMARK_PRESETS["gpu" if big else "cpu"]
    run.run("inpainter training", "train_inpainter", "-d", dataset, "-f", "0", *preset.inpainter_args)
    run.run("normal CTs", "inpaint", "-d", dataset, "-f", "0")
    if run.done("normal CTs"):
        return
    bundle = str(conventions.bundle_folder(_raw(run), 0, results_root=run.env["nnUNet_results"]))
    run.run("synthesizer training", "train_synthesizer", "-d", dataset, "-f", "0", *preset.synthesizer_args)
    run.run("synthetic samples", "synthesize", bundle, "-d", dataset, "--num-cases", "4", "--normal",
            str(_raw(run) / "diff4mm" / "normal_fold0"), "-o", str(s.output / "synthetic"))
    # fraction 1 only: a smaller fraction is another fold entry and would train a second inpainter and bundle
    run.run("benchmark", "benchmark", "-d", dataset, "--phantom", phantom, "-o", str(s.output / "benchmark"),
            "--preset", preset.name, "--fractions", "1.0", "--nsd-tolerance-mm", str(max(s.spacing)),
            "-np", str(s.num_processes))
    if run.done("benchmark"):
        return
    # New patients: arm (c)'s fold-0 model on each held-out case's raw, unregistered phases (diff4mm_predict takes
    # one case folder; the held-out cases share the phantom folder with the training cases)
    flags = ["-d", dataset, "-c", preset.configuration, "-f", "0", "-tr", preset.diff4mm_trainer, "-p", preset.plans,
             "-device", preset.device, "-np", str(s.num_processes), *([] if preset.tta else ["--disable_tta"])]
    for k in range(s.test_cases):
        case = f"{phantom}/test_{k:03d}"
        run.run(f"prediction test_{k:03d}", "predict", "-i", case, "-o", str(s.output / PREDICTIONS), *flags)


def prediction_table(phantom: Path, predictions: Path, tolerance_mm: float) -> list[str]:
    """diff4mm_predict's outputs of the held-out cases against the phantom's truth (on the reference phase's
    grid, where the prediction is written): liver and tumor Dice, tumors found, the mask the registration used."""
    from .evaluation.metrics import evaluate_case_files

    lines = ["| case | liver Dice | tumor Dice | tumors found / true | registration mask | seconds |",
             "| --- | ---: | ---: | ---: | --- | ---: |"]
    for record_file in sorted(predictions.glob("*.json")):
        case = record_file.stem
        record = json.loads(record_file.read_text(encoding="utf-8"))
        row = evaluate_case_files(predictions / f"{case}.nii.gz", phantom / "ground_truth" / case / "label.nii.gz",
                                  tolerance_mm, name=case)
        lines.append(f"| {case} | {row['liver_dice']:.3f} | {row['tumor_dice']:.3f} | "
                     f"{row['tumor_tp']} / {row['n_ref_tumors']} | {record['registration']['mask']} "
                     f"({record['first_pass']['source']}) | {record['seconds']['total']:.0f} |")
    if len(lines) == 2:
        raise ValueError(f"{predictions}: no predictions")
    return lines


def _predictions_table(run: DemoRun) -> list[str]:
    out = run.settings.output
    return ["Arm (c)'s fold-0 model on each held-out case's raw phases (first-pass liver, registration, prediction, "
            "post-processing), scored against the phantom's truth on the reference phase's grid.", "",
            *prediction_table(out / "phantom", out / PREDICTIONS, max(run.settings.spacing))]


def _sections(run: DemoRun, sections) -> list[str]:
    """The report sections whose stage ran: (title, table(run) -> lines); a stage not run (stop_after) raises
    OSError, ValueError or KeyError and its section is left out."""
    lines: list[str] = []
    for title, table in sections:
        try:
            body = table(run)
        except (OSError, ValueError, KeyError):
            continue
        lines += [f"## {title}", "", *body, ""]
    return lines


def _write_report(run: DemoRun) -> Path:
    s = run.settings
    out = s.output
    lines = ["# Diff4MM demo report", "",
             f"Built-in phantom (seed {s.seed}, {s.cases} labelled + {s.test_cases} held-out cases, reference "
             f"voxel size {' x '.join(f'{v:g}' for v in s.spacing)} mm), preset `{s.preset}`. Phantom data and a "
             "short CPU schedule: the numbers show that the pipeline works end to end, not what it achieves on "
             "real CT.", "", "## Stages", "", "| stage | command | seconds | result |", "| --- | --- | ---: | --- |"]
    lines += [f"| {st.name} | `{' '.join(st.command)}` | {st.seconds:.1f} | {st.result} |" for st in run.stages]
    lines += ["", f"Total: {sum(st.seconds for st in run.stages) / 60:.1f} min.", ""]
    lines += _sections(run, [("Registration (stage 1)", _registration_table),
                             ("Normal CTs (stage 2)", _inpainting_table)])
    bench = out / "benchmark" / "summary.md"
    if bench.is_file():
        # the summary's figure links are relative to the benchmark folder: point them there from the report
        summary = re.sub(r"\]\((?![a-z]+:|/)([^)]+)\)", lambda m: f"]({os.path.relpath(bench.parent / m.group(1), out)})",
                         bench.read_text(encoding="utf-8").strip())
        lines += ["## Benchmark against nnU-Net (stage 4)", "", summary, ""]
    lines += _sections(run, [("New patients: diff4mm_predict on the held-out cases", _predictions_table)])
    montages = sorted((out / "qa").glob("*.png"))
    montages += sorted((_raw(run) / "diff4mm" / "registration").glob("*/montage.png"))[:2]
    montages += sorted((_raw(run) / "diff4mm" / "normal_fold0" / "qa").glob("*.png"))[:2]
    montages += sorted((out / "synthetic" / "montages").glob("*.png"))[:2]
    montages += sorted((out / PREDICTIONS).glob("*.png"))
    if montages:
        lines += ["", "## QA montages", ""] + [f"![{p.parent.name}/{p.stem}]({os.path.relpath(p, out)})"
                                             for p in montages]
    report = out / "report.md"
    return write_text_atomic(report, "\n".join(lines) + "\n")
