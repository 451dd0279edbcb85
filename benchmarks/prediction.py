"""diff4mm_predict on held-out phantom cases from their raw folders: which liver mask the registration uses.

For each held-out case (``test_*`` of a phantom, unregistered phases with known motion) and each first-pass
mode, ``predict_case`` segments the case and this compares with the phantom's truth on the PVP grid:

  model  the trained model on the unregistered phases finds the liver (diff4mm_predict --refine-first-pass 0)
  refine model, then one refinement round: registered inside that liver, the model's liver on the registered
         phases is the mask of the final registration (diff4mm_predict's default, --refine-first-pass 1)
  label  the case's true label as the registration mask (the upper bound)
  body   no liver: the body-mask fallback (what diff4mm_register does for unlabelled cases)

Figures per mode: liver and tumor Dice (evaluation/metrics.py), registration MAE in the 10 mm-dilated true liver
registered / unregistered per phase (as evaluation/registration_error.py), TRE (mean distance in mm at the true
liver's voxels between the registration's displacement and the phantom's true one, as benchmarks/registration.py),
seconds per case.

``--split test`` (default) takes the phantom's held-out ``test_*`` cases; ``--split validation`` its labelled
``case_*`` cases that none of the model's folds trained on (``splits_final.json`` in nnUNet_preprocessed): choices
between modes are made there, the test split only reports them. Example (the evidence run's arm (b) model, 2d CPU
plans, fold 5 = labelled fraction 0.15 of fold 0):

    nnUNet_results=/path/to/nnUNet_results python benchmarks/prediction.py --phantom phantom -d 601 \\
        -tr nnUNetTrainer_Diff4MMEvidence -p Diff4MMCPUPlans -c 2d -f 5 --cases 4 -o prediction_bench
"""
from __future__ import annotations

import argparse
import dataclasses
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nnunetv2_diff4mm.evaluation.metrics import evaluate_case  # noqa: E402
from nnunetv2_diff4mm.inference.model import find_model_folder  # noqa: E402
from nnunetv2_diff4mm.inference.predict import Diff4MMModel, PredictionSettings, predict_case  # noqa: E402

MODES = ("model", "refine", "label", "body")
SETTINGS = {"model": PredictionSettings(first_pass="model", refine_first_pass=0),
            "refine": PredictionSettings(first_pass="model", refine_first_pass=1),
            "label": PredictionSettings(first_pass="label"), "body": PredictionSettings(first_pass="body")}
LIVER_MARGIN_MM = 10.0


def _on(image: sitk.Image, grid: sitk.Image, nearest: bool = False) -> np.ndarray:
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), interp,
                                                0.0 if nearest else -1024.0, sitk.sitkFloat32))


def mae(phantom: Path, case: str, registered: dict[str, sitk.Image], reference: str) -> dict[str, tuple[float, float]]:
    """{phase: (unregistered MAE, registered MAE)} in the 10 mm-dilated true liver (HU)."""
    from registration.masks import dilate_mm

    gt = phantom / "ground_truth" / case
    region = dilate_mm(sitk.ReadImage(str(gt / "label.nii.gz")) > 0, LIVER_MARGIN_MM)
    out = {}
    for phase, image in registered.items():
        if phase == reference:
            continue
        mask = _on(region, image, nearest=True) > 0
        truth = _on(sitk.ReadImage(str(gt / f"{phase}_aligned.nii.gz")), image)
        raw = _on(sitk.ReadImage(str(phantom / case / f"{phase}.nii.gz")), image)
        valid = mask & (truth > -1000)
        reg = sitk.GetArrayFromImage(image).astype(np.float32)
        out[phase] = (float(np.abs(raw - truth)[valid].mean()), float(np.abs(reg - truth)[valid].mean()))
    return out


def tre(phantom: Path, case: str, fixed: sitk.Image, transforms: dict[str, sitk.Transform]) -> dict[str, float]:
    """{phase: mean distance (mm) at the true liver's voxels between the registration's and the true
    reference -> phase displacement}."""
    gt = phantom / "ground_truth" / case
    liver = _on(sitk.ReadImage(str(gt / "label.nii.gz")), fixed, nearest=True) > 0
    out = {}
    for phase, transform in transforms.items():
        true = sitk.Cast(sitk.ReadImage(str(gt / f"{phase}_displacement.nii.gz")), sitk.sitkVectorFloat64)
        true = sitk.GetArrayFromImage(sitk.Resample(true, fixed, sitk.Transform(), sitk.sitkLinear))[liver]
        ours = sitk.GetArrayFromImage(sitk.TransformToDisplacementField(
            transform, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(), fixed.GetSpacing(),
            fixed.GetDirection()))[liver]
        out[phase] = float(np.linalg.norm(ours - true, axis=1).mean())
    return out


def split_cases(phantom: Path, split: str, dataset: str, folds) -> list[str]:
    """The phantom's held-out test cases, or its labelled cases none of ``folds`` trained on."""
    if split == "test":
        return sorted(p.name for p in phantom.iterdir() if p.is_dir() and p.name.startswith("test_"))
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    import os

    splits_file = Path(os.environ["nnUNet_preprocessed"]) / maybe_convert_to_dataset_name(dataset) / "splits_final.json"
    if "all" in folds:
        raise SystemExit("--split validation needs numbered folds: fold 'all' trained on every labelled case")
    splits = json.loads(splits_file.read_text(encoding="utf-8"))
    trained = {c for f in folds for c in splits[int(f)]["train"]}
    return sorted(p.name for p in phantom.iterdir()
                  if p.is_dir() and (p / "label.nii.gz").is_file() and p.name not in trained)


def paired_lines(rows: list[dict], modes, pairs=None) -> list[str]:
    """Markdown: paired differences between modes per case, 95 % bootstrap CI and Wilcoxon p
    (evaluation/report.py's paired_statistics, the case as unit)."""
    from nnunetv2_diff4mm.evaluation.report import paired_statistics

    table = [{"method": r["mode"], "fraction": 1.0, "fold": 0, **r} for r in rows]
    if pairs is None:
        pairs = (("refine", "model"), ("model", "label"), ("refine", "label"), ("model", "body"))
    pairs = [(x, y) for x, y in pairs if x in modes and y in modes]
    out = ["| difference | metric | mean | 95 % CI | Wilcoxon p | cases |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for x, y in pairs:
        for metric in ("liver_dice", "tumor_dice"):
            st = paired_statistics(table, x, y, 1.0, metric)
            out.append(f"| {x} − {y} | {metric} | {st['mean']:+.3f} | [{st['ci_low']:+.3f}, {st['ci_high']:+.3f}] | "
                       f"{st['p_wilcoxon']:.3g} | {st['n']} |")
    return out


def compare_runs(runs: list[str]) -> str:
    """Paired differences between runs of this benchmark on the same cases (e.g. --outside-fill air vs phase,
    or one phantom cut and uncut): ``TAG=OUTPUT_DIR`` each, every mode they share, first run minus the others."""
    rows, tags = [], []
    for run in runs:
        tag, _, folder = run.partition("=")
        if not folder:
            raise SystemExit(f"--compare {run!r}: write TAG=OUTPUT_DIR")
        tags.append(tag)
        with open(Path(folder) / "per_case.csv", newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                rows.append({"case": r["case"], "mode": f"{r['mode']}@{tag}",
                             **{k: float(r[k]) for k in ("liver_dice", "tumor_dice")}})
    modes = {r["mode"] for r in rows}
    pairs = [(f"{m}@{tags[0]}", f"{m}@{t}") for t in tags[1:] for m in sorted({r["mode"].split("@")[0] for r in rows})]
    return "\n".join(paired_lines(rows, modes, pairs)) + "\n"


def main() -> int:
    if sys.argv[1:2] == ["--compare"]:
        print(compare_runs(sys.argv[2:]), end="")
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="python benchmarks/prediction.py --compare TAG=OUTPUT_DIR TAG=OUTPUT_DIR "
                                            "...: paired differences between finished runs on the same cases")
    parser.add_argument("--phantom", required=True, type=Path)
    parser.add_argument("-d", required=True)
    parser.add_argument("-tr", default="Diff4MMTrainer")
    parser.add_argument("-p", default="nnUNetPlans")
    parser.add_argument("-c", default="3d_fullres")
    parser.add_argument("-f", nargs="+", default=["0"])
    parser.add_argument("-device", default="auto")
    parser.add_argument("--split", choices=("test", "validation"), default="test",
                        help="test_* cases (default) or the labelled cases the model's folds did not train on")
    parser.add_argument("--cases", type=int, default=4, help="N cases of the split (default 4)")
    parser.add_argument("--start", type=int, default=0, help="skip the first S held-out cases (default 0)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--outside-fill", choices=("air", "phase"), default="air",
                        help="what the model sees outside a phase's scan, every mode (default air)")
    parser.add_argument("-o", required=True, type=Path)
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    model = Diff4MMModel.open(find_model_folder(args.d, args.tr, args.p, args.c), args.f, device=args.device)
    ref = model.info.reference
    cases = split_cases(args.phantom, args.split, args.d, args.f)[args.start:args.start + args.cases]
    rows = []
    for case in cases:
        for mode in args.modes:
            # the raw phases; "label" mode also gets the true label beside them (the registration's mask)
            case_dir = args.o / "inputs" / mode / case
            case_dir.mkdir(parents=True, exist_ok=True)
            for phase in model.info.phases:
                link = case_dir / f"{phase}.nii.gz"
                if not link.exists():
                    link.symlink_to((args.phantom / case / f"{phase}.nii.gz").resolve())
            if mode == "label" and not (case_dir / "label.nii.gz").exists():
                (case_dir / "label.nii.gz").symlink_to((args.phantom / "ground_truth" / case / "label.nii.gz").resolve())
            start = time.perf_counter()
            settings = dataclasses.replace(SETTINGS[mode], outside_fill=args.outside_fill)
            result = predict_case(case_dir, model, args.o / mode, settings, resume=False)
            wall = time.perf_counter() - start
            truth = sitk.ReadImage(str(args.phantom / "ground_truth" / case / "label.nii.gz"))
            scores = evaluate_case(result.segmentation, truth, name=case)
            errors = mae(args.phantom, case, result.registered, ref)
            distances = tre(args.phantom, case, result.registered[ref], result.transforms)
            row = {"case": case, "mode": mode, "mask": result.record["registration"]["mask"],
                   "first_pass_liver_ml": result.record["first_pass"].get("liver_ml"),
                   "liver_dice": scores["liver_dice"], "tumor_dice": scores["tumor_dice"],
                   **{f"outside_{p}": qa.get("outside_scan_fraction")
                      for p, qa in result.record["registration"]["phases"].items() if p != ref},
                   "seconds": round(wall, 1),
                   **{f"{k}_s": v for k, v in result.record["seconds"].items()}}
            for phase, (raw, reg) in errors.items():
                row[f"mae_ratio_{phase}"] = round(reg / raw, 4) if raw > 0 else None
            for phase, distance in distances.items():
                row[f"tre_mm_{phase}"] = round(distance, 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.o.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(args.o / "per_case.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    phases = [p for p in model.info.phases if p != ref]
    lines = [f"| first pass | liver Dice | tumor Dice | MAE ratio {'/'.join(phases)} | TRE mm {'/'.join(phases)} "
             "| s/case |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for mode in args.modes:
        sel = [r for r in rows if r["mode"] == mode]
        if not sel:
            continue

        def m(key):
            values = [r[key] for r in sel if r.get(key) is not None and not np.isnan(r[key])]
            return (float(np.mean(values)), float(np.std(values))) if values else (float("nan"), 0.0)

        ratios = "/".join(f"{m(f'mae_ratio_{p}')[0]:.3f}" for p in phases)
        distances = "/".join(f"{m(f'tre_mm_{p}')[0]:.2f}" for p in phases)
        lines.append(f"| {mode} | {m('liver_dice')[0]:.3f} ± {m('liver_dice')[1]:.3f} | "
                     f"{m('tumor_dice')[0]:.3f} ± {m('tumor_dice')[1]:.3f} | {ratios} | {distances} | "
                     f"{m('seconds')[0]:.0f} |")
    lines += ["", *paired_lines(rows, args.modes)]
    text = "\n".join(lines) + "\n"
    (args.o / "summary.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
