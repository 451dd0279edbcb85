"""The benchmark report: per_case.csv, summary.md (tables of mean ± std, paired differences, data efficiency,
time) and PNG plots, from rows of `metrics.evaluate_case` tagged with method, fraction and fold.

Methods are passed as an ordered {method: label} mapping and comparisons as (x, y) method pairs, so this module
knows nothing about which arms a benchmark runs.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from registration.image_io import write_atomic, write_text_atomic

from .metrics import DEFAULT_NSD_TOLERANCE_MM, METRICS, SMALL_TUMOR_MM, mean_std, summarize

ID_COLUMNS = ("method", "fraction", "fold", "case")
COUNT_COLUMNS = ("tumor_tp", "tumor_fn", "tumor_fp", "tumor_tp_pred", "n_ref_tumors", "n_pred_tumors",
                 "tumor_tp_small", "tumor_fn_small")
# the paired statistics table; the two "tumor cases" metrics are computed per row from the others (derived_value)
STAT_METRICS = ("tumor_dice", "tumor_dice_tumor_cases", "tumor_recall_tumor_cases", "tumor_nsd", "liver_dice")
N_BOOTSTRAP, BOOTSTRAP_SEED = 10000, 0
CSV_COLUMNS = (*ID_COLUMNS, *METRICS, *COUNT_COLUMNS)
METRIC_TITLES = {"liver_dice": "liver Dice", "liver_hd95_mm": "liver HD95 (mm)", "liver_nsd": "liver NSD",
                 "tumor_dice": "tumor Dice", "tumor_hd95_mm": "tumor HD95 (mm)", "tumor_nsd": "tumor NSD",
                 "tumor_dice_tumor_cases": "tumor Dice, cases with a tumor",
                 "tumor_recall_tumor_cases": "tumor recall per case, cases with a tumor"}


def derived_value(row: dict, metric: str) -> float:
    """A per-row metric, including two read on the test cases that hold a tumor only (NaN on the others, so the
    pair drops out): the tumor Dice there, and the case's lesion recall (detected / reference tumors). On a
    tumor-free case an empty prediction scores Dice 1, so an arm that never predicts a tumor gains over one that
    does on every such case; these two say what the arm does where there is a tumor to find."""
    if metric == "tumor_dice_tumor_cases":
        return row["tumor_dice"] if row["n_ref_tumors"] > 0 else math.nan
    if metric == "tumor_recall_tumor_cases":
        return row["tumor_tp"] / row["n_ref_tumors"] if row["n_ref_tumors"] > 0 else math.nan
    return row[metric]
BOXPLOT_PNG, EFFICIENCY_PNG = "dice_boxplots.png", "tumor_dice_vs_fraction.png"
RECALL_PNG = "tumor_recall_by_size.png"


def write_csv(rows: Sequence[dict], path) -> Path:
    """One line per row; NaN written as `nan`, fractions as %g."""
    path = Path(path)
    def write(handle):
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{row[k]:g}" if k == "fraction" else
                                 "nan" if isinstance(row[k], float) and math.isnan(row[k]) else row[k])
                             for k in CSV_COLUMNS})

    return write_atomic(path, write, make_parents=True)


def read_csv(path) -> list[dict]:
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for raw in csv.DictReader(handle):
            row = {"method": raw["method"], "fraction": float(raw["fraction"]), "fold": int(raw["fold"]),
                   "case": raw["case"]}
            row.update({k: float(raw[k]) for k in METRICS})
            row.update({k: int(raw[k]) for k in COUNT_COLUMNS})
            rows.append(row)
    return rows


def merge_reports(reports: Mapping[str, object], methods: Mapping[str, str]
                  ) -> tuple[list[dict], dict[str, str], list[tuple[str, str]]]:
    """Rows of several benchmark runs side by side, e.g. the same arms on a registered and on an unregistered
    dataset (Table 3's "unregistered" rows): {tag: per_case.csv}. Each row's method becomes "<method>@<tag>" and
    its label "(<short label>@<tag>) ..." so that short labels stay distinct. Returns (rows, labels, pairs), the
    pairs being every method present in the first report and another, first tag minus other tag: the paired test
    cases must be the same (same fold, same case names), which is the case for one phantom registered two ways.
    """
    if len(reports) < 2:
        raise ValueError("merge_reports needs at least two reports ({tag: per_case.csv})")
    rows, labels, present = [], {}, {}
    for tag, path in reports.items():
        if not tag or "@" in tag or " " in tag:
            raise ValueError(f"report tag {tag!r}: use a short word without '@' or spaces (e.g. registered)")
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such per_case.csv (a diff4mm_benchmark output folder holds one)")
        own = read_csv(path)
        present[tag] = {r["method"] for r in own}
        for r in own:
            method = f"{r['method']}@{tag}"
            rows.append({**r, "method": method})
            label = methods.get(r["method"], r["method"])
            short, _, rest = label.partition(" ")
            labels[method] = (f"{short[:-1]}@{tag}) {rest}" if short.startswith("(") and short.endswith(")")
                              else f"{label}@{tag}")
    order = list(methods)
    first, *others = reports
    pairs = [(f"{m}@{first}", f"{m}@{tag}") for tag in others
             for m in sorted(present[first] & present[tag],
                             key=lambda m: (order.index(m) if m in order else len(order), m))]
    return rows, labels, pairs


def combine_reports(reports: Sequence[object]) -> list[dict]:
    """The rows of several runs of one benchmark (one dataset, one test set) that trained different arms, e.g. arm
    (c) run later beside an earlier arm (b) run: one report, so the benchmark's own pairs ((c) − (b), ...) are taken
    per test case. A (method, fraction, fold, case) present in two runs is refused: it would be counted twice."""
    rows, seen = [], {}
    for path in reports:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such per_case.csv (a diff4mm_benchmark output folder holds one)")
        for r in read_csv(path):
            key = tuple(r[k] for k in ID_COLUMNS)
            if key in seen:
                raise ValueError(f"{path}: {r['method']} fraction {r['fraction']:g} fold {r['fold']} {r['case']} is "
                                 f"also in {seen[key]}; combine runs of different arms only")
            seen[key] = path
            rows.append(r)
    return rows


def select(rows, method: str | None = None, fraction: float | None = None) -> list[dict]:
    return [r for r in rows if (method is None or r["method"] == method)
            and (fraction is None or math.isclose(r["fraction"], fraction))]


def paired_differences(rows, method_x: str, method_y: str, fraction: float) -> dict[str, dict]:
    """Per metric, mean ± std of (x − y) over the (fold, case) pairs both methods have at one fraction.
    Pairs with a missing (NaN) value on either side are left out and counted in n_missing."""
    xs = {(r["fold"], r["case"]): r for r in select(rows, method_x, fraction)}
    ys = {(r["fold"], r["case"]): r for r in select(rows, method_y, fraction)}
    keys = sorted(set(xs) & set(ys))
    out = {}
    for metric in METRICS:
        mean, std, n, missing = mean_std([xs[k][metric] - ys[k][metric] for k in keys])
        out[metric] = {"mean": mean, "std": std, "n": n, "n_missing": missing}
    return out


def paired_statistics(rows, method_x: str, method_y: str, fraction: float, metric: str) -> dict:
    """Mean of the paired differences x − y of one metric over the test cases, with a 95 % bootstrap confidence
    interval (scipy.stats.bootstrap, percentile method, 10000 resamples of the cases, fixed seed) and the two-sided
    Wilcoxon signed-rank p-value (scipy.stats.wilcoxon; 1.0 when every difference is 0). NaN interval and p for
    fewer than 2 cases.

    The unit is the test case: a case tested by the models of several folds (the benchmark predicts the same
    imagesTs with every fold's model) contributes the mean of its per-fold differences, once. Resampling its
    (fold, case) pairs as if independent would count each test case once per fold and narrow the interval
    without new patients. ``n`` is the number of cases, ``runs`` the number of (fold, case) pairs."""
    from scipy import stats

    xs = {(r["fold"], r["case"]): derived_value(r, metric) for r in select(rows, method_x, fraction)}
    ys = {(r["fold"], r["case"]): derived_value(r, metric) for r in select(rows, method_y, fraction)}
    per_case: dict[str, list[float]] = {}
    for key in sorted(set(xs) & set(ys)):
        diff = xs[key] - ys[key]
        if not math.isnan(diff):
            per_case.setdefault(key[1], []).append(diff)
    d = np.asarray([np.mean(v) for v in per_case.values()], float)
    out = {"mean": float(d.mean()) if d.size else math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "p_wilcoxon": math.nan, "n": int(d.size), "runs": sum(len(v) for v in per_case.values())}
    if d.size < 2:
        return out
    if np.all(d == d[0]):  # no spread: the bootstrap distribution is that one value
        out["ci_low"] = out["ci_high"] = float(d[0])
    else:
        ci = stats.bootstrap((d,), np.mean, confidence_level=0.95, n_resamples=N_BOOTSTRAP, method="percentile",
                             random_state=np.random.default_rng(BOOTSTRAP_SEED)).confidence_interval
        out["ci_low"], out["ci_high"] = float(ci.low), float(ci.high)
    out["p_wilcoxon"] = 1.0 if np.all(d == 0) else float(stats.wilcoxon(d).pvalue)
    return out


def statistics_table(rows, fraction: float, methods: Mapping[str, str], pairs: Sequence[tuple[str, str]]
                     ) -> list[str]:
    """Markdown: per (x, y) pair and metric of STAT_METRICS, mean difference, 95 % bootstrap CI, Wilcoxon p and
    whether the interval includes 0."""
    present = {r["method"] for r in select(rows, fraction=fraction)}
    body = []
    for x, y in pairs:
        if x not in present or y not in present:
            continue
        for metric in STAT_METRICS:
            st = paired_statistics(rows, x, y, fraction, metric)
            verdict = ("n/a" if math.isnan(st["ci_low"]) else "includes 0" if st["ci_low"] <= 0 <= st["ci_high"]
                       else "above 0" if st["ci_low"] > 0 else "below 0")
            body.append([f"{short_label(methods, x)} − {short_label(methods, y)}", METRIC_TITLES[metric],
                         f"{st['mean']:+.3f}", f"[{st['ci_low']:+.3f}, {st['ci_high']:+.3f}]",
                         f"{st['p_wilcoxon']:.3g}", verdict, str(st["n"])])
    return _table(["comparison", "metric", "mean difference", "95 % CI (bootstrap)", "Wilcoxon p", "interval",
                   "pairs"], body) if body else []


def _digits(metric: str) -> int:
    return 1 if metric.endswith("_mm") else 3


def format_mean_std(stats: Mapping, digits: int, signed: bool = False) -> str:
    """'0.812 ± 0.034', with ' (k missing)' when values were NaN; 'n/a' without values."""
    if stats["n"] == 0:
        text = "n/a"
    else:
        std = "n/a" if math.isnan(stats["std"]) else f"{stats['std']:.{digits}f}"
        text = f"{stats['mean']:{'+' if signed else ''}.{digits}f} ± {std}"
    if stats.get("n_missing"):
        text += f" ({stats['n_missing']} missing)"
    return text


def _ratio(value: float, num: int, den: int) -> str:
    return "n/a" if den == 0 else f"{value:.3f} ({num}/{den})"


def _ordered_methods(rows, methods: Mapping[str, str]) -> list[str]:
    present = {r["method"] for r in rows}
    return [m for m in methods if m in present] + sorted(present - set(methods))


def _table(header: list[str], body: list[list[str]], numeric: bool = True) -> list[str]:
    """Markdown table; all columns but the first right-aligned when numeric."""
    align = ["---"] + ["---:" if numeric else "---"] * (len(header) - 1)
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(cells) + " |" for cells in body)]


def short_label(methods: Mapping[str, str], method: str) -> str:
    """The label's first word (labels start with a tag such as '(a)'), for plots and comparisons."""
    return methods.get(method, method).split(" ")[0]


def results_table(rows, fraction: float, methods: Mapping[str, str]) -> list[str]:
    """Markdown: one line per method, mean ± std of every metric, pooled detection recall and precision."""
    body = []
    for method in _ordered_methods(rows, methods):
        selected = select(rows, method, fraction)
        if not selected:
            continue
        s = summarize(selected)
        det = s["detection"]
        body.append([methods.get(method, method), *(format_mean_std(s["metrics"][m], _digits(m)) for m in METRICS),
                     _ratio(det["recall"], det["tp"], det["tp"] + det["fn"]),
                     _ratio(det["precision"], det["tp_pred"], det["tp_pred"] + det["fp"]),
                     _ratio(det["recall_small"], det["tp_small"], det["tp_small"] + det["fn_small"]),
                     str(s["n_cases"])])
    return _table(["method", *(METRIC_TITLES[m] for m in METRICS), "tumor recall", "tumor precision",
                   "recall < 20 mm", "rows"], body)


def differences_table(rows, fraction: float, methods: Mapping[str, str],
                      pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Markdown: one line per (x, y) pair present in rows, mean ± std of the paired per-case difference x − y."""
    present = {r["method"] for r in select(rows, fraction=fraction)}
    body = []
    for x, y in pairs:
        if x in present and y in present:
            diff = paired_differences(rows, x, y, fraction)
            n_pairs = max(d["n"] + d["n_missing"] for d in diff.values())
            body.append([f"{short_label(methods, x)} − {short_label(methods, y)}",
                         *(format_mean_std(diff[m], _digits(m), signed=True) for m in METRICS), str(n_pairs)])
    return _table(["comparison", *(METRIC_TITLES[m] for m in METRICS), "pairs"], body) if body else []


def data_efficiency_table(rows, fractions: Sequence[float], methods: Mapping[str, str]) -> list[str]:
    body = []
    for method in _ordered_methods(rows, methods):
        cells = []
        for f in fractions:
            mean, std, n, missing = mean_std([r["tumor_dice"] for r in select(rows, method, f)])
            cells.append(format_mean_std({"mean": mean, "std": std, "n": n, "n_missing": missing}, 3))
        body.append([methods.get(method, method), *cells])
    return _table(["method", *(f"fraction {f:g}" for f in fractions)], body)


def timing_table(timings: Mapping[str, Mapping], methods: Mapping[str, str]) -> list[str]:
    """Markdown: seconds per run ('<method>/frac<f>/fold<k>' keys) and totals per method."""
    body, totals, unknown = [], {}, set()
    for key in sorted(timings):
        t = timings[key]
        cells = [key, str(t.get("nnunet_fold", ""))]
        for what in ("train", "predict"):
            seconds = t.get(f"{what}_s")
            cell = "reused (time unknown)" if seconds is None else f"{seconds:.0f}"
            if seconds is not None and t.get(f"{what}_status") == "reused":
                cell += " (earlier run)"
            cells.append(cell)
        body.append(cells)
        method = key.split("/")[0]
        total = totals.setdefault(method, [0.0, 0.0])
        for i, what in enumerate(("train", "predict")):
            if t.get(f"{what}_s") is None:
                unknown.add((method, i))
            total[i] += t.get(f"{what}_s") or 0.0
    lines = _table(["run", "nnU-Net fold", "training (s)", "prediction (s)"], body)
    totals_body = [[methods.get(m, m), *(f"{v[i]:.0f}" + (" + reused runs of unknown time" if (m, i) in unknown
                                                          else "") for i in (0, 1))] for m, v in totals.items()]
    return lines + [""] + _table(["method", "training total (s)", "prediction total (s)"], totals_body)


def _save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Write fig as PNG at path atomically (temporary name, os.replace) and close it."""
    import matplotlib.pyplot as plt

    try:
        return write_atomic(path, lambda handle: fig.savefig(handle, dpi=dpi, format="png"), binary=True,
                            make_parents=True)
    finally:
        plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_dice_boxplots(rows, fraction: float, path, methods: Mapping[str, str]) -> Path:
    """Box plots (means as triangles, individual values as dots) of liver and tumor Dice per method."""
    plt = _pyplot()
    names = [m for m in _ordered_methods(rows, methods) if select(rows, m, fraction)]
    fig, axes = plt.subplots(1, 2, figsize=(4.0 + 1.6 * len(names), 4.4), squeeze=False)
    for ax, metric in zip(axes[0], ("liver_dice", "tumor_dice")):
        data = [[r[metric] for r in select(rows, m, fraction)] for m in names]
        ax.boxplot(data, showmeans=True)
        for i, values in enumerate(data, start=1):
            offsets = np.linspace(-0.08, 0.08, len(values)) if len(values) > 1 else np.zeros(1)
            ax.scatter(offsets + i, values, s=12, alpha=0.6, color="black", zorder=3)
        ax.set_xticks(range(1, len(names) + 1))
        ax.set_xticklabels([short_label(methods, m) for m in names])
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{METRIC_TITLES[metric]}, labelled fraction {fraction:g}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("\n".join(methods.get(m, m) for m in names), fontsize=7)
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_data_efficiency(rows, fractions: Sequence[float], path, methods: Mapping[str, str],
                         n_train: Mapping[float, int] | None = None) -> Path:
    """Tumor Dice (mean ± std over test cases and folds) against the labelled fraction, one line per method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    names = _ordered_methods(rows, methods)
    dodge = 0.008 * (max(fractions) - min(fractions) or 1.0)  # keep error bars of one fraction apart
    for i, method in enumerate(names):
        xs, means, stds = [], [], []
        for f in fractions:
            mean, std, n, _ = mean_std([r["tumor_dice"] for r in select(rows, method, f)])
            if n:
                xs.append(f + dodge * (i - (len(names) - 1) / 2))
                means.append(mean)
                stds.append(0.0 if math.isnan(std) else std)
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=methods.get(method, method))
    ax.set_xticks(list(fractions))
    ax.set_xticklabels([f"{f:g}" + (f"\n({n_train[f]} cases)" if n_train and f in n_train else "")
                        for f in fractions], fontsize=8)
    ax.set_xlabel("labelled fraction of the training cases")
    ax.set_ylabel("tumor Dice on the test set")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save_figure(fig, path)


def recall_by_size(rows, method: str, fraction: float) -> dict[str, tuple[int, int]]:
    """{"< 20 mm": (found, total), ">= 20 mm": (found, total)} of the reference tumors, pooled over the rows."""
    det = summarize(select(rows, method, fraction))["detection"]
    small = (det["tp_small"], det["tp_small"] + det["fn_small"])
    total = (det["tp"], det["tp"] + det["fn"])
    return {f"< {SMALL_TUMOR_MM:g} mm": small, f">= {SMALL_TUMOR_MM:g} mm": (total[0] - small[0], total[1] - small[1])}


def plot_recall_by_size(rows, fraction: float, path, methods: Mapping[str, str]) -> Path:
    """Per-lesion recall of small and large reference tumors, one bar per method, counts on the bars."""
    plt = _pyplot()
    names = [m for m in _ordered_methods(rows, methods) if select(rows, m, fraction)]
    fig, ax = plt.subplots(figsize=(3.0 + 1.1 * len(names), 3.8))
    width = 0.8 / 2
    for k, size in enumerate((f"< {SMALL_TUMOR_MM:g} mm", f">= {SMALL_TUMOR_MM:g} mm")):
        for i, method in enumerate(names):
            found, total = recall_by_size(rows, method, fraction)[size]
            value = found / total if total else float("nan")
            ax.bar(i + (k - 0.5) * width, 0 if math.isnan(value) else value, width,
                   color=("tab:orange", "tab:blue")[k], label=size if i == 0 else None)
            ax.text(i + (k - 0.5) * width, (0 if math.isnan(value) else value) + 0.02, f"{found}/{total}",
                    ha="center", fontsize=7)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([short_label(methods, m) for m in names])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("tumors found (recall)")
    ax.set_title(f"per-lesion recall by reference diameter, labelled fraction {fraction:g}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save_figure(fig, path)


def summary_markdown(rows, methods: Mapping[str, str], pairs: Sequence[tuple[str, str]] = (),
                     settings: Mapping[str, str] | None = None, timings: Mapping | None = None,
                     figures: Sequence[str] = (), warnings: Sequence[str] = (), title: str = "Benchmark",
                     nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> str:
    fractions = sorted({r["fraction"] for r in rows}, reverse=True)
    lines = [f"# {title}", ""]
    if settings:
        lines += _table(["setting", "value"], [[k, str(v)] for k, v in settings.items()], numeric=False) + [""]
    lines += [f"Per case and structure (liver = labels 1+2, tumor = label 2): Dice, HD95 in mm, NSD at "
              f"{nsd_tolerance_mm:g} mm. Both masks empty: Dice 1, HD95 0, NSD 1; exactly one empty: Dice 0, "
              "NSD 0, HD95 missing (left out of its mean, counted). Tumor detection: 26-connected components; a "
              "reference tumor is detected when a predicted component overlaps it by >= 1 voxel; recall and "
              "precision are pooled over all rows (numerator/denominator in brackets). Values are mean ± sample "
              "std over test cases x folds.", ""]
    for f in fractions:
        lines += [f"## Labelled fraction {f:g}", "", *results_table(rows, f, methods), ""]
        diff = differences_table(rows, f, methods, pairs)
        if diff:
            lines += [f"Paired differences at fraction {f:g} (same test case and fold; mean ± std of the per-case "
                      "difference; for HD95 negative is better):", "", *diff, ""]
            lines += ["With 95 % bootstrap confidence intervals of the mean difference and Wilcoxon signed-rank "
                      "p-values over the test cases (a case predicted by several folds' models counts once, with "
                      "its mean difference; \"pairs\" counts cases). Where the interval includes 0 the data do "
                      "not show a difference. \"Cases with a "
                      "tumor\" leaves out the tumor-free test cases, where an empty prediction scores Dice 1: read "
                      "those rows for what an arm does where there is a tumor to find:", "",
                      *statistics_table(rows, f, methods, pairs), ""]
    if len(fractions) > 1:
        lines += ["## Data efficiency: tumor Dice by labelled fraction", "",
                  *data_efficiency_table(rows, sorted(fractions), methods), ""]
    if timings:
        lines += ["## Time", "", *timing_table(timings, methods), ""]
    if figures:
        lines += ["## Figures", "", *(f"![{Path(p).stem}]({p})" for p in figures), ""]
    if warnings:
        lines += ["## Warnings", "", *(f"- {w}" for w in warnings), ""]
    return "\n".join(lines)


def write_report(rows, out_dir, methods: Mapping[str, str], pairs: Sequence[tuple[str, str]] = (),
                 settings: Mapping[str, str] | None = None, timings: Mapping | None = None,
                 warnings: Sequence[str] = (), n_train: Mapping[float, int] | None = None,
                 title: str = "Benchmark", nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
                 extra_figures: Sequence[str] = ()) -> Path:
    """per_case.csv, the two PNG plots and summary.md in out_dir (which also links `extra_figures`, files the
    caller wrote there); returns the summary.md path.

    The box plots show labelled fraction 1 (else the largest fraction present)."""
    if not rows:
        raise ValueError("no evaluated rows to report")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out_dir / "per_case.csv")
    fractions = sorted({r["fraction"] for r in rows})
    box_fraction = 1.0 if any(math.isclose(f, 1.0) for f in fractions) else fractions[-1]
    plot_dice_boxplots(rows, box_fraction, out_dir / BOXPLOT_PNG, methods)
    plot_data_efficiency(rows, fractions, out_dir / EFFICIENCY_PNG, methods, n_train)
    plot_recall_by_size(rows, box_fraction, out_dir / RECALL_PNG, methods)
    summary = out_dir / "summary.md"
    figures = (BOXPLOT_PNG, EFFICIENCY_PNG, RECALL_PNG, *(f for f in extra_figures if (out_dir / f).is_file()))
    return write_text_atomic(summary, summary_markdown(rows, methods, pairs, settings, timings, figures, warnings,
                                                       title, nsd_tolerance_mm), make_parents=True)
