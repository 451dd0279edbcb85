"""Benchmark of the normal-CT generator (stage 2) on the phantom, where the truth under every hole is known.

    python benchmarks/inpainting.py                 # trains the cpu preset (a few CPU minutes), then tables
    python benchmarks/inpainting.py --model DIR     # evaluate a trained inpainter (DIR from train_inpainter)

Tables (per phase, all on ground-truth aligned phases, i.e. perfectly registered):
1. dilation coverage: fraction of each phase's OWN tumor voxels, pulled onto the PVP grid through the true motion
   (= perfect registration) or through the identity (= no registration), covered by the PVP tumor mask dilated
   by r mm. Chooses the default dilation radius.
2. healthy-liver holes: random lobulated blobs of tumor-free liver in held-out cases are hidden and filled by the
   learned model (its default: coarse structure from the membrane fill and native grain; and the network's fill
   alone, with and without grain; synthesis/inpainting.py, synthesis/grain.py), the classical fallbacks and
   scikit-image's biharmonic fill (slice by slice, the anchor of issue #21). Columns per phase: MAE (HU) inside
   the holes, structure MAE (both images smoothed with a 1.5-voxel Gaussian) and texture ratio (std of the
   high-pass residual, fill / truth; a flat fill scores 0, goal 0.8-1.2). Two oracle rows that know the
   phantom's noise-free anatomy are references: the true structure alone, and the true structure plus fresh CT
   noise (what a fill with perfect anatomy and realistic, independent noise would score). `--spacing 0.8 0.8
   2.5` renders the phantom at a clinical resolution (its noise and grain at that voxel size).
3. no tumor remains: real tumors of held-out cases inpainted (default dilation); mean HU inside the dilated
   tumor masks (liver part) vs the healthy liver's mean +- 2 std of that phase.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnunetv2_diff4mm.phantom import PHASES, REFERENCE_PHASE, PhantomConfig, generate_case  # noqa: E402
from nnunetv2_diff4mm.phantom.acquisition import ct_noise  # noqa: E402
from synthesis.inpainting import (CLASSICAL_METHODS, DEFAULT_DILATION_MM, fill_region, get_preset,  # noqa: E402
                                  inpaint_case, load_inpainter, train_inpainter)
from synthesis.grain import highpass  # noqa: E402
from registration.masks import dilate_mm  # noqa: E402
from synthesis.masks import random_liver_blob_masks  # noqa: E402

RADII_MM = (0, 3, 5, 8, 10, 15)
HOLE_RADIUS_MM = (5.0, 20.0)
HOLES_PER_CASE = 8
MIN_HOLE_VOXELS = 30


def _generate(args):
    config, split, index, motion = args
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)
    case = generate_case(config, split, index, noise_free=split == "test")
    # the per-phase motion fields only serve the coverage table (3 float64 per voxel: ~1 GB a case at 0.8 mm)
    ends = ("_aligned", "_aligned_noise_free", "_label") + (("_displacement",) if motion else ())
    keep = {k: v for k, v in case.ground_truth.items() if k.endswith(ends) or k == "label"}
    return split, index, keep


def generate(config: PhantomConfig, jobs, processes: int, motion: bool = True) -> dict:
    out = {}
    tasks = [(config, s, i, motion) for s, i in jobs]
    if processes > 1:
        with mp.get_context("spawn").Pool(processes) as pool:
            for split, index, truth in pool.imap_unordered(_generate, tasks):
                out[(split, index)] = truth
    else:
        for task in tasks:
            out[task[1:3]] = _generate(task)[2]
    return out


def phases_of(truth: dict) -> dict[str, sitk.Image]:
    return {p: truth[f"{p}_aligned"] for p in PHASES}


def array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


# ------------------------------------------------------------------------------------------ coverage


def coverage_table(truths: list[dict]) -> dict:
    """{(mode, phase): [covered fraction per radius]} pooled over cases."""
    counts = {}
    for truth in truths:
        label = truth["label"]
        dilated = {r: array(dilate_mm(label == 2, r)) > 0 for r in RADII_MM}
        for phase in PHASES:
            own = truth[f"{phase}_label"]
            if phase == REFERENCE_PHASE:
                motion = sitk.Transform()
            else:
                field = sitk.Cast(truth[f"{phase}_displacement"], sitk.sitkVectorFloat64)
                motion = sitk.DisplacementFieldTransform(field)
            for mode, transform in (("perfect registration", motion), ("no registration", sitk.Transform())):
                pulled = array(sitk.Resample(own, label, transform, sitk.sitkNearestNeighbor, 0)) == 2
                row = counts.setdefault((mode, phase), np.zeros((len(RADII_MM), 2)))
                for j, r in enumerate(RADII_MM):
                    row[j] += ((pulled & dilated[r]).sum(), pulled.sum())
    return {k: v[:, 0] / np.maximum(v[:, 1], 1) for k, v in counts.items()}


# --------------------------------------------------------------------------------------------- holes


STRUCTURE_SIGMA_VOXELS = 1.5  # the definition: both images smoothed with this Gaussian (native voxels)


def smooth(image: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_filter(np.asarray(image, np.float32), STRUCTURE_SIGMA_VOXELS, mode="nearest")


def biharmonic_fill(phases: dict[str, sitk.Image], region: sitk.Image, label: sitk.Image | None = None,
                    **_) -> dict[str, sitk.Image]:
    """scikit-image's biharmonic inpainting, slice by slice (axial), over the region's bounding box + 8 voxels:
    the anchor of issue #21 (a classical fill with structure, no learning)."""
    from skimage.restoration import inpaint_biharmonic

    hole = array(region) > 0
    lo, hi = np.argwhere(hole).min(0), np.argwhere(hole).max(0) + 1
    lo, hi = np.maximum(lo - [0, 8, 8], 0), np.minimum(hi + [0, 8, 8], hole.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    out = {}
    for phase, image in phases.items():
        values = array(image).astype(np.float64)
        sub = values[box]
        for z in range(sub.shape[0]):
            if hole[box][z].any():
                sub[z] = inpaint_biharmonic(sub[z], hole[box][z])
        result = sitk.GetImageFromArray(np.rint(values).astype(np.int16))
        result.CopyInformation(image)
        out[phase] = result
    return out


# Reference rows that know the truth (not methods a user could run): what the MAE goal allows.
ORACLE_FLAT = "oracle: noise-free truth"
ORACLE_TEXTURED = "oracle: noise-free truth + CT noise"
ORACLES = (ORACLE_FLAT, ORACLE_TEXTURED)


def oracle_fill(truth: dict, region: sitk.Image, kind: str, rng: np.random.Generator) -> dict[str, sitk.Image]:
    """The true structure under the hole (the phantom without CT noise), alone or with fresh noise of the
    phase's own amplitude (std of image - noise-free in the healthy liver) and the phantom's correlation: what
    a fill that knew the anatomy, and added realistic but necessarily independent noise, would score."""
    hole = array(region) > 0
    liver = array(truth["label"]) == 1
    out = {}
    for phase in PHASES:
        image = array(truth[f"{phase}_aligned"]).astype(np.float32)
        clean = array(truth[f"{phase}_aligned_noise_free"])
        fill = clean.copy()
        if kind == ORACLE_TEXTURED:  # the phantom's own noise model, at the amplitude measured in this phase
            fill += ct_noise(clean.shape, (image - clean)[liver & ~hole].std(), rng)
        result = sitk.GetImageFromArray(np.where(hole, fill, image))
        result.CopyInformation(region)
        out[phase] = result
    return out


def hole_benchmark(truths: list[dict], methods: dict, seed: int, device: str) -> dict:
    """{method: {phase: (mae, structure mae, texture ratio)} | {"_seconds": s}}; holes are blobs of tumor-free
    liver. MAE (HU) inside the holes; structure MAE = MAE of both images smoothed (Gaussian, 1.5 voxels);
    texture ratio = std of the high-pass residual (image - that smoothing) inside the holes, fill / truth, the
    smoothing a normalised convolution over the hole's own voxels: a plain one also counts the step at the rim
    of a flat fill as texture (on the 3 x 3 x 5 mm phantom, whose holes are 2-7 voxels in radius, it scores the
    flat median fill 1.04-1.19).

    ``methods`` maps a row name to a ``fill_region`` method, a (model, grain, structure) triple, a callable with
    ``fill_region``'s signature, or one of ORACLES."""
    rng = np.random.default_rng(seed)
    errors = {m: {p: [] for p in PHASES} for m in methods}
    smooth_errors = {m: {p: [] for p in PHASES} for m in methods}
    high = {m: {p: [[], []] for p in PHASES} for m in methods}
    timings = {m: 0.0 for m in methods}
    for truth in truths:
        label = truth["label"]
        lab = array(label)
        spacing_zyx = np.asarray(label.GetSpacing())[::-1]
        tumor = lab == 2
        far = ndimage.distance_transform_edt(~tumor, sampling=spacing_zyx) > 10 if tumor.any() else ~tumor
        phases = phases_of(truth)
        seen = np.all([array(img) > -200 for img in phases.values()], axis=0)  # inside every phase's view
        healthy = (lab == 1) & far & seen
        blobs = random_liver_blob_masks(healthy, label.GetSpacing(), rng, HOLES_PER_CASE, HOLE_RADIUS_MM)
        holes = blobs > 0
        region = sitk.GetImageFromArray(holes.astype(np.uint8))
        region.CopyInformation(label)
        seed_case = int(rng.integers(1 << 30))
        for name, method in methods.items():
            started = time.perf_counter()
            if isinstance(method, str) and method in ORACLES:
                filled = oracle_fill(truth, region, method, np.random.default_rng(seed_case))
            elif callable(method) and not isinstance(method, torch.nn.Module):
                filled = method(phases, region, label=label, device=device, seed=seed_case)
            else:
                model, grain, structure = method if isinstance(method, tuple) else (method, True, "membrane")
                filled = fill_region(phases, region, model, label=label, device=device, seed=seed_case,
                                     grain=grain, structure=structure)
            timings[name] += time.perf_counter() - started
            for phase in PHASES:
                fill, true = array(filled[phase]).astype(np.float32), array(phases[phase]).astype(np.float32)
                errors[name][phase].append(np.abs(fill - true)[holes])
                smooth_errors[name][phase].append(np.abs(smooth(fill) - smooth(true))[holes])
                high[name][phase][0].append(highpass(fill, STRUCTURE_SIGMA_VOXELS, mask=holes)[holes])
                high[name][phase][1].append(highpass(true, STRUCTURE_SIGMA_VOXELS, mask=holes)[holes])
    return {m: {p: (float(np.concatenate(errors[m][p]).mean()), float(np.concatenate(smooth_errors[m][p]).mean()),
                    float(np.concatenate(high[m][p][0]).std() / np.concatenate(high[m][p][1]).std()))
                for p in PHASES} | {"_seconds": timings[m]} for m in methods}


# -------------------------------------------------------------------------------------- tumor removal


def removal_check(truths: list[dict], method, dilation_mm: float, device: str) -> dict:
    """Per phase: mean HU inside the dilated tumors (liver part) before/after, and healthy mean +- 2 std."""
    rows = {p: {"before": [], "after": [], "healthy": []} for p in PHASES}
    for truth in truths:
        label = truth["label"]
        if not (array(label) == 2).any():
            continue
        phases = phases_of(truth)
        normal, region, _ = inpaint_case(phases, label, method, dilation_mm, device)
        lab, reg = array(label), array(region) > 0
        seen = np.all([array(img) > -200 for img in phases.values()], axis=0)  # inside every phase's view
        inside = reg & (lab > 0) & seen
        core = ndimage.binary_erosion(lab == 1, iterations=1) & ~reg & seen  # away from partial volume
        for p in PHASES:
            before, after = array(phases[p]).astype(float), array(normal[p]).astype(float)
            rows[p]["before"].append(before[inside])
            rows[p]["after"].append(after[inside])
            rows[p]["healthy"].append(before[core])
    out = {}
    for p, r in rows.items():
        healthy = np.concatenate(r["healthy"])
        out[p] = (float(np.concatenate(r["before"]).mean()), float(np.concatenate(r["after"]).mean()),
                  float(healthy.mean()), float(healthy.std()))
    return out


# ------------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="trained inpainter folder (skips training)")
    parser.add_argument("--out", help="where to train the model (default: a temporary folder)")
    parser.add_argument("--train-cases", type=int, default=8)
    parser.add_argument("--test-cases", type=int, default=6)
    parser.add_argument("--test-start", type=int, default=0, help="first held-out case (test_000..): choose on one "
                        "range of held-out cases (a development split), confirm on another")
    parser.add_argument("--coverage-cases", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spacing", type=float, nargs=3, default=(3.0, 3.0, 5.0), help="phantom PVP voxel size")
    parser.add_argument("--preset", default="cpu", help="inpainter preset (tiny, cpu, gpu; default cpu)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--steps-per-epoch", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dilation-mm", type=float, default=DEFAULT_DILATION_MM)
    parser.add_argument("-np", "--processes", type=int, default=2)
    parser.add_argument("--skip-coverage", action="store_true")
    parser.add_argument("--montage", help="write a PNG: AP and PVP of a held-out case before/after inpainting")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; use 1 when other "
                                                    "jobs share the cores: oversubscribed threads spin-wait)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    config = PhantomConfig(seed=args.seed, spacing=tuple(args.spacing))
    started = time.perf_counter()
    n_train = 0 if args.model else args.train_cases
    jobs = [("train", i) for i in range(max(n_train, 0 if args.skip_coverage else args.coverage_cases))]
    test_ids = range(args.test_start, args.test_start + args.test_cases)
    jobs += [("test", i) for i in test_ids]
    data = generate(config, jobs, args.processes, motion=not args.skip_coverage)
    print(f"phantom: {len(jobs)} cases at {tuple(args.spacing)} mm in {time.perf_counter() - started:.0f} s")
    tests = [data[("test", i)] for i in test_ids]

    if not args.skip_coverage:
        cov = coverage_table([data[("train", i)] for i in range(args.coverage_cases)])
        print(f"\n## Dilation coverage: % of each phase's own tumor voxels inside the PVP tumor mask dilated by r "
              f"({args.coverage_cases} cases)")
        print("| registration | phase | " + " | ".join(f"r={r} mm" for r in RADII_MM) + " |")
        print("|---|---|" + "---|" * len(RADII_MM))
        for (mode, phase), row in sorted(cov.items(), key=lambda kv: (kv[0][0] != "perfect registration",
                                                                        PHASES.index(kv[0][1]))):
            print(f"| {mode} | {phase} | " + " | ".join(f"{100 * v:.1f}" for v in row) + " |")

    if args.model:
        model = load_inpainter(args.model, args.device)
        train_note = f"model {args.model}"
    else:
        out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="inpainter-"))
        cases = [(phases_of(data[("train", i)]), data[("train", i)]["label"]) for i in range(n_train)]
        preset = get_preset(args.preset)
        t0 = time.perf_counter()
        model = train_inpainter(cases, out, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                                device=args.device, seed=args.seed, preset=preset)
        train_note = (f"trained: preset {args.preset}, {n_train} phantom cases, {time.perf_counter() - t0:.0f} s "
                      f"on {args.device} ({out})")
    print(f"\n{train_note}")

    methods = ({"learned (FFC), default: membrane structure + native grain": (model, True, "membrane"),
                "learned (FFC), network only (+ native grain)": (model, True, "learned"),
                "learned (FFC), network only, no grain": (model, False, "learned")}
               | {m: m for m in CLASSICAL_METHODS} | {"scikit-image biharmonic, slice by slice": biharmonic_fill}
               | {m: m for m in ORACLES})
    result = hole_benchmark(tests, methods, args.seed + 1, args.device)
    print(f"\n## Healthy-liver holes: {len(tests)} held-out cases at {tuple(args.spacing)} mm, "
          f"{HOLES_PER_CASE} holes per case (radius {HOLE_RADIUS_MM} mm)")
    print("Per phase: MAE inside the holes (HU) / structure MAE (both smoothed, Gaussian 1.5 voxels; HU) / texture "
          "ratio (std of the high-pass residual, fill / truth; goal 0.8-1.2). Oracle rows know the noise-free "
          "anatomy (references, not methods).")
    print("| method | " + " | ".join(f"{p} MAE / structure / texture" for p in PHASES) + " | s/case |")
    print("|---|" + "---|" * len(PHASES) + "---|")
    for name, row in result.items():
        cells = " | ".join(f"{row[p][0]:.1f} / {row[p][1]:.1f} / {row[p][2]:.2f}" for p in PHASES)
        seconds = f"{row['_seconds'] / len(tests):.2f}" if name not in ORACLES else "-"
        print(f"| {name} | {cells} | {seconds} |")
    best = {p: min((r[p][1], n) for n, r in result.items() if n in CLASSICAL_METHODS or "biharmonic" in n)
            for p in PHASES}
    learned = result["learned (FFC), default: membrane structure + native grain"]
    print("Goal (issue #21): learned structure MAE <= the best classical fill's, texture 0.8-1.2: "
          + ", ".join(f"{p} {learned[p][1]:.1f} vs {best[p][0]:.1f} ({best[p][1]}), texture {learned[p][2]:.2f}"
                      for p in PHASES))

    print(f"\n## No tumor remains: mean HU inside the tumors dilated by {args.dilation_mm:g} mm (liver part), "
          f"{len(tests)} held-out cases")
    print("| method | " + " | ".join(f"{p} before -> after (healthy mean ± 2 std)" for p in PHASES) + " |")
    print("|---|" + "---|" * len(PHASES))
    for name in ("learned (FFC), default: membrane structure + native grain", "median", "harmonic+noise"):
        rows = removal_check(tests, methods[name][0] if isinstance(methods[name], tuple) else methods[name],
                             args.dilation_mm, args.device)
        cells = []
        for p in PHASES:
            before, after, mean, std = rows[p]
            ok = "ok" if abs(after - mean) <= 2 * std else "OUT"
            cells.append(f"{before:.0f} -> {after:.0f} ({mean:.0f} ± {2 * std:.0f}) {ok}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.montage:
        from nnunetv2_diff4mm.visualization import montage

        truth = next(t for t in tests if (array(t["label"]) == 2).any())
        normal, _, _ = inpaint_case(phases_of(truth), truth["label"], model, args.dilation_mm, args.device)
        shown = {p: phases_of(truth)[p] for p in ("AP", "PVP")} | {f"{p} normal": normal[p] for p in ("AP", "PVP")}
        print(f"montage: {montage(shown, truth['label'], args.montage, 'tumor removed by the learned inpainter')}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
