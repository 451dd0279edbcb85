"""Two or more diff4mm_benchmark runs side by side, paired on their common test cases: e.g. the same arms on the
registered and on the unregistered dataset of one phantom (the paper's Table 3, "unregistered" rows).

    python benchmarks/compare_reports.py registered=benchmarks/results/evidence_frac0.15_fold0 \\
        unregistered=/work/ev/report602 -o benchmarks/results/evidence_registration_frac0.15_fold0

Each run is TAG=FOLDER (a benchmark output folder holding per_case.csv, or the CSV itself). Every method of the first
run that another run also has is compared first minus other, per test case and fold, with the benchmark's own
tables (mean ± std, pooled recall/precision, paired difference with a 95 % bootstrap interval and Wilcoxon p).
Only per_case.csv files are read: no model runs, no test image is opened.

With --combine the runs are different arms of one benchmark (same dataset, test cases and folds), e.g. arm (c)
trained in a later session beside an earlier arm (b) run: their rows become one report with the benchmark's own
pairs ((c) − (b), (b) − (a), ...), as if one diff4mm_benchmark run had trained every arm:

    python benchmarks/compare_reports.py --combine b=benchmarks/results/evidence_unregistered_frac0.15_fold0 \\
        c=/work/ev/report602c -o benchmarks/results/evidence_unregistered_bc_frac0.15_fold0
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _tagged(text: str) -> tuple[str, Path]:
    tag, sep, path = text.partition("=")
    if not sep or not tag or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected TAG=FOLDER, e.g. registered=benchmarks/results/x")
    path = Path(path)
    return tag, path / "per_case.csv" if path.is_dir() else path


def nsd_tolerance(path: Path) -> float | None:
    """The NSD tolerance (mm) a benchmark run used, from the summary.md beside its per_case.csv (the CSV does not
    record it); None if there is no summary to read it from."""
    summary = path.parent / "summary.md"
    if not summary.is_file():
        return None
    found = re.search(r"NSD at ([0-9.]+) mm", summary.read_text(encoding="utf-8"))
    return float(found.group(1)) if found else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=_tagged, metavar="TAG=FOLDER",
                        help="benchmark output folder (or its per_case.csv) with a short tag; the first is compared "
                             "against each of the others")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for summary.md, per_case.csv, plots")
    parser.add_argument("--title", default=None, help="summary.md heading")
    parser.add_argument("--combine", action="store_true",
                        help="the runs trained different arms of one benchmark: one report with the benchmark's pairs "
                             "((c) − (b), ...) instead of each method paired across runs")
    parser.add_argument("--nsd-tolerance-mm", type=float, default=None, metavar="MM",
                        help="the NSD tolerance of the runs, needed only when a run's summary.md (which states it) "
                             "is not beside its per_case.csv")
    parser.add_argument("--unregistered", action="store_true",
                        help="with --combine: label the arms as trained on unregistered phases "
                             "(a dataset from diff4mm_register --no-registration)")
    args = parser.parse_args(argv)
    tags = [t for t, _ in args.runs]
    if len(set(tags)) != len(tags) or len(tags) < 2:
        parser.error(f"give at least two runs with distinct tags (got {', '.join(tags)})")

    if args.unregistered and not args.combine:
        parser.error("--unregistered labels the arms of a --combine report; side by side, the tags name the runs")
    # the NSD columns of runs at different tolerances are different metrics: refuse to pair them, and label the
    # report with the runs' own tolerance (it said the default, 2 mm, for runs at 5 mm before)
    tolerances = {tag: nsd_tolerance(path) for tag, path in args.runs}
    known = {t for t in tolerances.values() if t is not None}
    if len(known) > 1:
        parser.error("the runs used different NSD tolerances (" + ", ".join(f"{tag}: {t:g} mm" for tag, t in
                     tolerances.items() if t is not None) + "); their NSD values cannot be paired")
    if args.nsd_tolerance_mm is not None and known and known != {args.nsd_tolerance_mm}:
        parser.error(f"--nsd-tolerance-mm {args.nsd_tolerance_mm:g} disagrees with the runs' summary.md "
                     f"({known.pop():g} mm)")
    if None in tolerances.values() and args.nsd_tolerance_mm is None:
        missing = ", ".join(tag for tag, t in tolerances.items() if t is None)
        parser.error(f"no summary.md beside the per_case.csv of {missing}: give the runs' --nsd-tolerance-mm")
    tolerance = args.nsd_tolerance_mm if args.nsd_tolerance_mm is not None else known.pop()
    from nnunetv2_diff4mm.benchmark.common import method_labels, reported_pairs
    from nnunetv2_diff4mm.evaluation import report as R

    try:
        if args.combine:
            rows = R.combine_reports([path for _, path in args.runs])
            labels = method_labels(registered=not args.unregistered)
            present = {r["method"] for r in rows}
            pairs = [(x, y) for x, y in reported_pairs() if x in present and y in present]
        else:
            rows, labels, pairs = R.merge_reports(dict(args.runs), method_labels())
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    settings = {f"run {tag}": str(path) for tag, path in args.runs}
    title = args.title or ("Diff4MM benchmark, arms combined from several runs" if args.combine
                           else "Diff4MM benchmark runs side by side")
    settings["NSD tolerance"] = f"{tolerance:g} mm"
    summary = R.write_report(rows, args.output, labels, pairs, settings, title=title, nsd_tolerance_mm=tolerance)
    print(f"[diff4mm] {len(pairs)} paired comparisons of {len(rows)} rows: {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
