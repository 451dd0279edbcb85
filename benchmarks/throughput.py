"""Throughput of stages 1-3 against worker count on the phantom: is the scaling measured, not assumed?

    python benchmarks/throughput.py --cases 8 -o /tmp/throughput      # ~10 min on 2 CPU cores

For each stage, the same cases are processed once by one worker and once by two, side by side in one run on
one machine, through the real commands (subprocesses, as a user or a scheduler starts them):

1. `diff4mm_register -np 1` vs `-np 2` (its own process pool over cases);
2. `diff4mm_inpaint` (a tiny learned inpainter) as one process vs two `--shard I/2` processes started together;
3. `diff4mm_synthesize` (a tiny bundle) as one process vs two `--shard I/2` processes started together.

Printed: wall seconds and cases per minute for each, and the speed-up (two workers / one). The two-worker
outputs are checked to be byte-identical to the one-worker outputs (a speed-up that changed the result would
not count). Every process gets one torch/ITK thread (`OMP_NUM_THREADS=1`, diff4mm_register is single-threaded
per case anyway) so that the worker count is the only thing that differs. Absolute seconds hold only for the
machine they were measured on: name it when you quote them.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env(raw: Path) -> dict:
    return {**os.environ, "nnUNet_raw": str(raw), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}


def _cmd(module: str, *args) -> list[str]:
    return [sys.executable, "-m", f"nnunetv2_diff4mm.cli.{module}", *map(str, args)]


def _run_together(commands: list[list[str]], env: dict) -> float:
    """Start every command at once, wait for all; the wall seconds. A failure stops the benchmark."""
    started = time.perf_counter()
    running = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                encoding="utf-8", errors="replace") for c in commands]
    for command, process in zip(commands, running):
        out, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed (exit {process.returncode}):\n{err[-2000:]}")
    return time.perf_counter() - started


def _same_files(a: Path, b: Path, subfolders) -> bool:
    for sub in subfolders:
        names = sorted(p.name for p in (a / sub).iterdir())
        if names != sorted(p.name for p in (b / sub).iterdir()):
            return False
        if any((a / sub / n).read_bytes() != (b / sub / n).read_bytes() for n in names):
            return False
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", required=True, help="work folder (phantom, datasets, models)")
    parser.add_argument("--cases", type=int, default=8, help="labelled phantom cases (default 8)")
    parser.add_argument("--synthetic", type=int, default=8, help="synthetic cases written in stage 3 (default 8)")
    parser.add_argument("--spacing", type=float, nargs=3, default=(3.0, 3.0, 5.0), help="phantom voxel size, mm")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    work = Path(args.output)
    work.mkdir(parents=True, exist_ok=True)
    raw = work / "nnUNet_raw"
    env = _env(raw)
    phantom = work / "phantom"
    _run_together([_cmd("phantom", "-o", phantom, "--cases", args.cases, "--seed", args.seed, "--spacing",
                        *args.spacing, "-np", 2)], env)
    rows = []

    # 1. registration: -np 1 vs -np 2 into two datasets
    for np_, (did, name) in ((1, (701, "ThroughputOne")), (2, (702, "ThroughputTwo"))):
        seconds = _run_together([_cmd("register", phantom, "-d", did, "-n", name, "-np", np_, "--no-montages")], env)
        rows.append(("1 register", f"-np {np_}", seconds, args.cases))
    one, two = raw / "Dataset701_ThroughputOne", raw / "Dataset702_ThroughputTwo"
    same_register = _same_files(one, two, ("imagesTr", "labelsTr"))

    # 2. inpainting with a tiny learned inpainter (trained once, on dataset 701; untimed)
    inpainter = work / "inpainter"
    _run_together([_cmd("train_inpainter", "-d", 701, "-o", inpainter, "--preset", "tiny", "-device", "cpu")], env)
    single, sharded = work / "normal_one", work / "normal_two"
    seconds = _run_together([_cmd("inpaint", "-d", 701, "--model", inpainter, "-o", single, "-device", "cpu")],
                            env)
    rows.append(("2 inpaint", "1 process", seconds, args.cases))
    seconds = _run_together([_cmd("inpaint", "-d", 701, "--model", inpainter, "-o", sharded, "-device", "cpu",
                                  "--shard", f"{i}/2") for i in range(2)], env)
    _run_together([_cmd("inpaint", "-d", 701, "--model", inpainter, "-o", sharded, "-device", "cpu")], env)
    rows.append(("2 inpaint", "2 shards", seconds, args.cases))
    same_inpaint = _same_files(single, sharded, ("imagesTr", "labelsTr"))

    # 3. synthesis with a tiny bundle painting into the normal CTs of stage 2 (trained once; untimed)
    bundle = work / "bundle"
    _run_together([_cmd("train_synthesizer", "-d", 701, "-o", bundle, "--normal", single, "--preset", "tiny",
                        "--epochs", 1, "-device", "cpu")], env)
    common = [bundle, "-d", 701, "--num-cases", args.synthetic, "--normal", single, "-device", "cpu"]
    seconds = _run_together([_cmd("synthesize", *common, "-o", work / "syn_one")], env)
    rows.append(("3 synthesize", "1 process", seconds, args.synthetic))
    seconds = _run_together([_cmd("synthesize", *common, "-o", work / "syn_two", "--shard", f"{i}/2")
                             for i in range(2)], env)
    _run_together([_cmd("synthesize", *common, "-o", work / "syn_two")], env)
    rows.append(("3 synthesize", "2 shards", seconds, args.synthetic))
    same_synth = _same_files(work / "syn_one", work / "syn_two", ("imagesTr", "labelsTr"))

    machine = f"{platform.node()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"
    print(f"\n## Throughput against worker count ({args.cases} phantom cases at {tuple(args.spacing)} mm; {machine})")
    print("| stage | workers | wall s | cases/min | speed-up vs 1 worker | output identical |")
    print("|---|---|---:|---:|---:|---|")
    same = {"1 register": same_register, "2 inpaint": same_inpaint, "3 synthesize": same_synth}
    for i, (stage, workers, seconds, n) in enumerate(rows):
        speedup = "1.00" if i % 2 == 0 else f"{rows[i - 1][2] / seconds:.2f}"
        identical = "-" if i % 2 == 0 else ("yes" if same[stage] else "NO")
        print(f"| {stage} | {workers} | {seconds:.1f} | {60 * n / seconds:.1f} | {speedup} | {identical} |")
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
