"""Benchmark stage 1 (liver-focused registration) on phantom cases with known motion.

For every labelled phantom case and every moving phase, the phase is put on the reference (PVP) grid by
(a) identity resampling (unregistered), (b) ``registration.register`` (ours) and (c) itk-elastix with rigid +
affine + B-spline default parameter maps (AdvancedMattesMutualInformation only, the same fixed mask, the same
control-point spacing and iterations per resolution as ours, elastix's default 3 resolutions and 2048 random
samples per iteration, final linear interpolation like ours and like the ground truth). Reported per phase:

* MAE: mean absolute HU difference to ``ground_truth/<case>/<PHASE>_aligned.nii.gz`` (the phase pulled through
  the true motion) inside the reference liver dilated by 10 mm; ratio = registered / unregistered.
* TRE: mean distance (mm) at the liver voxels between the method's displacement and the true PVP->phase
  displacement ``ground_truth/<case>/<PHASE>_displacement.nii.gz``.
* seconds per case, wall clock and CPU (ours includes the fixed-phase preparation, both include resampling the
  phases onto the reference grid; reading files is excluded). Both run single-threaded (ours must, to be
  deterministic; diff4mm_register parallelises over cases instead) and interleaved, case by case, in one
  process, so that machine load affects both alike.

Usage::

    python benchmarks/registration.py --cases 6 --seed 1            # generates the phantom under --work
    python benchmarks/registration.py --phantom /tmp/reg_ph         # an existing phantom folder
    python benchmarks/registration.py --cases 2 --no-elastix --mask body   # the unlabelled-case fallback

Acceptance (printed at the end): for every phase ours <= 0.40 x unregistered MAE, ours MAE <= elastix MAE, and
ours no more CPU time than elastix.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
# This file is called registration.py: its own folder must not shadow the ``registration`` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

from registration.inputs import find_cases, load_case  # noqa: E402
from registration.masks import dilate_mm  # noqa: E402
from registration.register import (  # noqa: E402
    RegistrationSettings,
    prepare_fixed,
    register_phase,
    resample_to_reference,
)

EVAL_MARGIN_MM = 10.0
TARGET_RATIO = 0.40


def _to_itk(image: sitk.Image, dtype=np.float32):
    import itk

    out = itk.GetImageFromArray(sitk.GetArrayFromImage(image).astype(dtype))
    out.SetOrigin(image.GetOrigin())
    out.SetSpacing(image.GetSpacing())
    out.SetDirection(itk.matrix_from_array(np.asarray(image.GetDirection()).reshape(3, 3)))
    return out


def elastix_parameters(settings: RegistrationSettings):
    """rigid + affine + B-spline default maps, adapted to match our stages (see the module docstring)."""
    import itk

    parameters = itk.ParameterObject.New()
    stages = (("rigid", settings.rigid), ("affine", settings.affine), ("bspline", settings.bspline))
    for name, stage in stages:
        if stage is None:
            continue
        m = parameters.GetDefaultParameterMap(name, 3)
        m["MaximumNumberOfIterations"] = [str(stage.iterations)]
        m["DefaultPixelValue"] = ["-1024"]
        m["ResultImagePixelType"] = ["float"]
        m["ErodeMask"] = ["false"]
        # linear like ours and like the ground truth, so that MAE compares registrations, not interpolators
        m["ResampleInterpolator"] = ["FinalLinearInterpolator"]
        if name == "bspline":
            m["Registration"] = ["MultiResolutionRegistration"]
            m["Metric"] = ["AdvancedMattesMutualInformation"]
            for key in ("Metric0Weight", "Metric1Weight"):
                m.pop(key, None)
            m["FinalGridSpacingInPhysicalUnits"] = [str(settings.control_point_spacing_mm)]
        parameters.AddParameterMap(m)
    return parameters


def run_elastix(fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image, parameters, want_field: bool,
                threads: int = 1):
    """Elastix result on the fixed grid (int16 HU, like ours), (wall, cpu) seconds, and optionally its
    displacement field (numpy)."""
    import itk

    fixed_itk, moving_itk, mask_itk = _to_itk(fixed), _to_itk(moving), _to_itk(mask, np.uint8)
    start, cpu = time.perf_counter(), time.process_time()
    result, transform_parameters = itk.elastix_registration_method(
        fixed_itk, moving_itk, parameter_object=parameters, fixed_mask=mask_itk, log_to_console=False,
        number_of_threads=threads)
    array = np.clip(np.rint(itk.GetArrayFromImage(result)), -32768, 32767).astype(np.int16)
    seconds = (time.perf_counter() - start, time.process_time() - cpu)
    field = None
    if want_field:
        field = itk.GetArrayFromImage(itk.transformix_deformation_field(moving_itk, transform_parameters))
    return array, seconds, field


def _displacement_on(reference: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, reference.GetSize(),
                                              reference.GetOrigin(), reference.GetSpacing(),
                                              reference.GetDirection())
    return sitk.GetArrayFromImage(field)


def evaluate_case(case, gt_dir: Path, phases, reference: str, settings: RegistrationSettings, mask_mode: str,
                  elastix, order: int) -> list[dict]:
    images, label = load_case(case)
    if label is None:
        label = sitk.ReadImage(str(gt_dir / "label.nii.gz"))
    fixed = images[reference]
    liver = sitk.GetArrayFromImage(label) > 0
    region = sitk.GetArrayFromImage(dilate_mm(label > 0, EVAL_MARGIN_MM)) > 0
    rows = {p: {"case": case.name, "phase": p} for p in phases if p != reference}
    truth = {}
    for phase, row in rows.items():
        aligned = sitk.GetArrayFromImage(sitk.ReadImage(str(gt_dir / f"{phase}_aligned.nii.gz"))).astype(float)
        true_field = sitk.Cast(sitk.ReadImage(str(gt_dir / f"{phase}_displacement.nii.gz")), sitk.sitkVectorFloat64)
        true_field = sitk.GetArrayFromImage(sitk.Resample(true_field, fixed, sitk.Transform(), sitk.sitkLinear))
        truth[phase] = (aligned, true_field[liver])
        unregistered = sitk.GetArrayFromImage(resample_to_reference(images[phase], fixed)).astype(float)
        row["mae_unreg"] = float(np.abs(unregistered - aligned)[region].mean())
        row["tre_unreg"] = float(np.linalg.norm(truth[phase][1], axis=1).mean())

    def ours():
        start, cpu = time.perf_counter(), time.process_time()
        setup = prepare_fixed(fixed, label if mask_mode == "liver" else None, settings)
        seconds = np.array([time.perf_counter() - start, time.process_time() - cpu])
        for phase, row in rows.items():
            t, c = time.perf_counter(), time.process_time()
            result = register_phase(setup, images[phase], None, settings)
            registered = sitk.GetArrayFromImage(resample_to_reference(images[phase], fixed, result.transform))
            seconds += (time.perf_counter() - t, time.process_time() - c)
            row["mae_ours"] = float(np.abs(registered - truth[phase][0])[region].mean())
            field = _displacement_on(fixed, result.transform)[liver]
            row["tre_ours"] = float(np.linalg.norm(field - truth[phase][1], axis=1).mean())
            row["mask"] = result.qa["mask"]
        for row in rows.values():
            row["seconds_ours"], row["cpu_ours"] = seconds  # per case
        return setup

    def with_elastix(setup):
        # the same metric mask as ours, on the reference grid
        mask = sitk.Resample(setup.mask, fixed, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        seconds = np.zeros(2)
        for phase, row in rows.items():
            array, s, field = run_elastix(fixed, images[phase], mask, elastix, want_field=True)
            seconds += s
            row["mae_elastix"] = float(np.abs(array - truth[phase][0])[region].mean())
            row["tre_elastix"] = float(np.linalg.norm(field[liver] - truth[phase][1], axis=1).mean())
        for row in rows.values():
            row["seconds_elastix"], row["cpu_elastix"] = seconds

    if elastix is None:
        ours()
    elif order % 2 == 0:
        with_elastix(ours())
    else:  # elastix first on odd cases; it needs our mask, which is cheap to prepare again
        with_elastix(prepare_fixed(fixed, label if mask_mode == "liver" else None, settings))
        ours()
    return list(rows.values())


def print_table(rows: list[dict], phases, with_elastix: bool) -> bool:
    def mean(key, sel):
        return float(np.mean([r[key] for r in sel]))

    header = f"{'phase':<8}{'MAE unreg':>10}{'MAE ours':>10}{'ratio':>7}"
    if with_elastix:
        header += f"{'MAE elx':>9}{'ratio':>7}"
    header += f"{'TRE unreg':>11}{'TRE ours':>10}" + (f"{'TRE elx':>9}" if with_elastix else "")
    header += f"{'s/case ours':>12}" + (f"{'s/case elx':>11}" if with_elastix else "")
    print(header)
    print("-" * len(header))
    failures = []
    cases = {r["case"]: r for r in rows}  # one row per case carries the per-case seconds
    for phase in [p for p in phases if any(r["phase"] == p for r in rows)] + ["all"]:
        sel = rows if phase == "all" else [r for r in rows if r["phase"] == phase]
        unreg, reg = mean("mae_unreg", sel), mean("mae_ours", sel)
        line = f"{phase:<8}{unreg:>10.2f}{reg:>10.2f}{reg / unreg:>7.3f}"
        if phase != "all":
            if reg > TARGET_RATIO * unreg:
                failures.append(f"{phase}: ratio {reg / unreg:.3f} > {TARGET_RATIO:.2f}")
        if with_elastix:
            elx = mean("mae_elastix", sel)
            line += f"{elx:>9.2f}{elx / unreg:>7.3f}"
            if phase != "all" and reg > elx:
                failures.append(f"{phase}: MAE {reg:.2f} > elastix {elx:.2f} HU ({100 * (reg / elx - 1):+.1f} %)")
        line += f"{mean('tre_unreg', sel):>11.2f}{mean('tre_ours', sel):>10.2f}"
        if with_elastix:
            line += f"{mean('tre_elastix', sel):>9.2f}"
        if phase == "all":
            line += f"{mean('seconds_ours', list(cases.values())):>12.1f}"
            if with_elastix:
                line += f"{mean('seconds_elastix', list(cases.values())):>11.1f}"
        print(line)
    cpu = f"CPU s/case: ours {mean('cpu_ours', list(cases.values())):.1f}"
    if with_elastix:
        cpu += f", elastix {mean('cpu_elastix', list(cases.values())):.1f}"
    print(cpu + " (both single-threaded; s/case above is wall clock)")
    if with_elastix:
        # CPU seconds: robust to other processes on the machine (wall clock is printed as well)
        ours_s = mean("cpu_ours", list(cases.values()))
        elx_s = mean("cpu_elastix", list(cases.values()))
        if ours_s > elx_s:
            failures.append(f"CPU {ours_s:.1f} > elastix {elx_s:.1f} s/case")
    return failures


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantom", type=Path, help="existing phantom folder (diff4mm_phantom output); default: "
                        "generate --cases cases with --seed under --work")
    parser.add_argument("--cases", type=int, default=6, help="phantom cases to generate (default 6)")
    parser.add_argument("--seed", type=int, default=1, help="phantom seed (default 1)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/diff4mm_benchmark_registration"),
                        help="folder for the generated phantom (default /tmp/diff4mm_benchmark_registration)")
    parser.add_argument("-np", "--num-processes", type=int, default=2, help="processes to generate the phantom")
    parser.add_argument("--mask", choices=("liver", "body"), default="liver",
                        help="ours with the reference liver label (default) or the unlabelled-case body fallback")
    parser.add_argument("--no-bspline", action="store_true", help="rigid + affine only (both methods)")
    parser.add_argument("--no-elastix", action="store_true", help="skip the itk-elastix comparison")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    # Ours registers single-threaded (deterministic); elastix gets one thread too (run_elastix), and so do the
    # resampling filters: both methods get the same CPU, as in diff4mm_register's one-process-per-case pool.
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    if args.phantom is None:
        from nnunetv2_diff4mm.phantom import PhantomConfig, write_phantom_dataset

        args.phantom = args.work / f"phantom_seed{args.seed}"
        write_phantom_dataset(args.phantom, PhantomConfig(seed=args.seed), args.cases,
                              num_processes=args.num_processes)
    phases, reference = ("NC", "AP", "PVP", "DELAY"), "PVP"
    cases = [c for c in find_cases(args.phantom, phases, reference) if c.is_labelled][: args.cases]
    settings = RegistrationSettings()
    if args.no_bspline:
        settings = settings.without_bspline()
    elastix = None if args.no_elastix else elastix_parameters(settings)
    rows = []
    for i, case in enumerate(cases):
        case_rows = evaluate_case(case, args.phantom / "ground_truth" / case.name, phases, reference, settings,
                                  args.mask, elastix, i)
        for r in case_rows:
            text = (f"{r['case']} {r['phase']:<6} MAE unreg {r['mae_unreg']:6.2f} ours {r['mae_ours']:6.2f} "
                    f"TRE {r['tre_unreg']:5.2f} -> {r['tre_ours']:5.2f}")
            if elastix is not None:
                text += f" | elastix MAE {r['mae_elastix']:6.2f} TRE {r['tre_elastix']:5.2f}"
            print(text, flush=True)
        text = f"{case.name}: {case_rows[0]['seconds_ours']:.1f} s ours (CPU {case_rows[0]['cpu_ours']:.1f})"
        if elastix is not None:
            text += f", {case_rows[0]['seconds_elastix']:.1f} s elastix (CPU {case_rows[0]['cpu_elastix']:.1f})"
        print(text, flush=True)
        rows.extend(case_rows)
    print(f"\n{len(cases)} cases from {args.phantom}; MAE (HU) inside the liver dilated by {EVAL_MARGIN_MM:g} mm, "
          f"TRE (mm) at liver voxels; mask={args.mask}, bspline={'off' if args.no_bspline else 'on'}")
    failures = print_table(rows, phases, elastix is not None)
    target = f"ours <= {TARGET_RATIO:.2f} x unregistered for every phase"
    if elastix is not None:
        target += ", ours MAE <= elastix MAE per phase, ours CPU s/case <= elastix"
    print(f"acceptance ({target}): {'PASS' if not failures else 'FAIL: ' + '; '.join(failures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
