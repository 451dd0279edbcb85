"""``diff4mm_plan_cpu``: nnU-Net fingerprint + planning with the reduced CPU planner + preprocessing."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import add_common_arguments, reported_errors

# mirrors planning.CPU_PLANS_NAME (nnU-Net import), not imported so that --help stays fast;
# tests/test_cli_consistency.py checks that they agree
CPU_PLANS_NAME = "Diff4MMCPUPlans"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diff4mm_plan_cpu",
        description=f"Like nnUNetv2_plan_and_preprocess, but plans with Diff4MMCPUPlanner (nnU-Net's planner with "
                    f"a thin network and small memory target) for CPU training, tests and the demo. Writes "
                    f"{CPU_PLANS_NAME}.json next to nnU-Net's default plans, which stay untouched; train with "
                    f"-p {CPU_PLANS_NAME}. Verifies the dataset's integrity first.")
    parser.add_argument("-d", "--dataset", type=int, required=True, help="dataset ID under $nnUNet_raw")
    parser.add_argument("-c", "--configurations", nargs="+", default=["3d_fullres"],
                        help="configurations to preprocess (default 3d_fullres)")
    parser.add_argument("-np", "--num-processes", type=int, default=2, metavar="N",
                        help="processes for fingerprinting and preprocessing (default 2)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip nnU-Net's dataset integrity check (not recommended)")
    add_common_arguments(parser)
    return parser


@reported_errors("diff4mm_plan_cpu")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..planning import plan_and_preprocess_cpu

    plans = plan_and_preprocess_cpu(args.dataset, args.num_processes, not args.no_verify, tuple(args.configurations))
    print(f"plans {plans} ready: nnUNetv2_train {args.dataset} 3d_fullres FOLD -tr Diff4MMTrainer -p {plans}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
