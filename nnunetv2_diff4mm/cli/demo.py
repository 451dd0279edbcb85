"""``diff4mm_demo``: the end-to-end demo on the built-in phantom (the README's main command)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..demo import DemoSettings, run_demo
from .arg_types import positive_float
from .errors import add_common_arguments, reported_errors


def build_parser() -> argparse.ArgumentParser:
    d = DemoSettings(Path("demo_output"))
    parser = argparse.ArgumentParser(
        prog="diff4mm_demo",
        description="Run the Diff4MM pipeline end to end on the built-in multi-phase liver phantom and write "
                    "OUTPUT/report.md (stage times, data summary, QA montages). Re-running resumes: finished "
                    "stages are reused.")
    parser.add_argument("-o", "--output", default=str(d.output), metavar="DIR",
                        help=f"demo folder (default: {d.output})")
    parser.add_argument("--cases", type=int, default=d.cases, help=f"labelled phantom cases (default {d.cases})")
    parser.add_argument("--test-cases", type=int, default=d.test_cases,
                        help=f"held-out phantom cases (default {d.test_cases})")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"phantom seed (default {d.seed})")
    parser.add_argument("--spacing", type=positive_float, nargs=3, default=d.spacing, metavar=("X", "Y", "Z"),
                        help="reference-phase voxel size of the phantom in mm (default 3 3 5: CPU-sized)")
    parser.add_argument("--preset", choices=("cpu", "gpu"), default=d.preset,
                        help="cpu: CPU-sized models and nnU-Net plans, ~30 min on 2 cores (default); gpu: the "
                             "larger model presets and nnU-Net's default plans and trainers")
    parser.add_argument("--stop-after", choices=("QA montage", "registration", "normal CTs", "benchmark"),
                        default=None, help="stop after this stage (quick looks); default: run everything")
    parser.add_argument("-np", "--num-processes", type=int, default=d.num_processes, metavar="N",
                        help=f"worker processes (default {d.num_processes})")
    add_common_arguments(parser)
    return parser


@reported_errors("diff4mm_demo")
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cases < 1 or args.test_cases < 0 or args.num_processes < 1 or min(args.spacing) <= 0:
        parser.error("need --cases >= 1, --test-cases >= 0, -np >= 1 and positive --spacing")
    settings = DemoSettings(Path(args.output), args.cases, args.test_cases, args.seed, tuple(args.spacing),
                            args.num_processes, args.preset, args.stop_after)
    report = run_demo(settings)
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
