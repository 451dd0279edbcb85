"""Benchmark of the tumor synthesizer (stage 3) on the phantom.

    python benchmarks/synthesis.py [--bundle DIR] [--work DIR] [--cases 8] [--eval-cases 4] [--samples 6]

Builds (once, cached in --work) two phantom datasets in nnU-Net raw layout: training cases and held-out
evaluation cases, each with registered phases = the phantom's ground-truth aligned phases and a normal version
(tumor voxels replaced by healthy-liver median + noise of the liver's spread). Trains the cpu preset
(unless --bundle) and a 1-epoch tiny bundle (for its speed only), then prints:
  * alignment: Dice between the smoothed, thresholded |image - normal| and the tumor mask, per phase, for
    every tumor visible in that phase (|mean contrast| >= 10 HU); synthetic vs real tumors;
  * fidelity: tumor HU and contrast to the surrounding liver, per phase, mean +- std over tumors: real per
    phantom tumor type; synthetic overall and per class by its AP-vs-PVP pattern (hypervascular-like =
    brighter than liver in AP and darker in PVP);
  * per-tumor spread: how many synthetic tumors are invisible or beyond the real contrasts (means hide both);
  * type score: whether each tumor paints one of the two real enhancement patterns or a blend of them, for
    tumors below and above 20 mm;
  * rendering (bundles conditioned on enhancement patterns): the pattern each synthetic tumor was asked for vs
    the one painted, per phase (correlation, slope);
  * autoencoder ceiling: each held-out real tumor's change (target - normal) before and after encode/decode,
    per phase and type: the most the diffusion model can paint through this autoencoder;
  * speed: synthetic cases per second on this CPU (random mask + synthesis + blending) at tiny and default;
and writes work/montage.png (each held-out case beside a synthetic one, 80 mm around the largest tumor).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nnunetv2_diff4mm.phantom import PHASES, PhantomConfig, generate_case  # noqa: E402
from registration.image_io import write_image_atomic  # noqa: E402
from synthesis.dataset_io import load_case, load_training_cases  # noqa: E402
from synthesis.enhancement import measure_patterns  # noqa: E402
from synthesis.pipeline import Synthesizer  # noqa: E402
from synthesis.intensity import normalize_hu  # noqa: E402
from synthesis.roi import component_centre, extract_roi  # noqa: E402
from synthesis.training import train_synthesizer  # noqa: E402
from synthesis.tumor_masks import equivalent_diameter_mm, label_tumors  # noqa: E402

VISIBLE_HU = 10.0


def normal_phases(aligned: dict, label: sitk.Image, rng) -> dict:
    """Tumor-free stand-in for stage 2: tumor (dilated 1 voxel) -> healthy-liver median + noise."""
    lab = sitk.GetArrayFromImage(label)
    fill = ndimage.binary_dilation(lab == 2)
    healthy = ndimage.binary_erosion(lab == 1, iterations=2) & ~ndimage.binary_dilation(lab == 2, iterations=3)
    out = {}
    for phase, img in aligned.items():
        a = sitk.GetArrayFromImage(img).astype(np.float32)
        med = np.median(a[healthy])
        spread = 1.4826 * np.median(np.abs(a[healthy] - med))
        a[fill] = med + spread * rng.standard_normal(int(fill.sum()))
        out[phase] = sitk.GetImageFromArray(np.rint(a).astype(np.int16))
        out[phase].CopyInformation(img)
    return out


def write_phantom_dataset(folder: Path, indices, seed: int) -> None:
    """nnU-Net raw dataset of phantom cases (+ diff4mm/normal, + info/<case>.json with the tumor types)."""
    if (folder / "dataset.json").exists():
        return
    for sub in ("imagesTr", "labelsTr", "diff4mm/normal/imagesTr", "diff4mm/normal/labelsTr", "info"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in indices:
        case = generate_case(PhantomConfig(seed=seed), "train", i)
        name, label = case.name, case.ground_truth["label"]
        aligned = {p: case.ground_truth[f"{p}_aligned"] for p in PHASES}
        for k, (p, img) in enumerate(normal_phases(aligned, label, np.random.default_rng(i)).items()):
            write_image_atomic(aligned[p], folder / "imagesTr" / f"{name}_{k:04d}.nii.gz")
            write_image_atomic(img, folder / "diff4mm/normal/imagesTr" / f"{name}_{k:04d}.nii.gz")
        write_image_atomic(label, folder / "labelsTr" / f"{name}.nii.gz")
        write_image_atomic(sitk.Cast(label > 0, sitk.sitkUInt8), folder / "diff4mm/normal/labelsTr" / f"{name}.nii.gz")
        (folder / "info" / f"{name}.json").write_text(json.dumps(case.info), encoding="utf-8")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {str(k): "CT" for k in range(len(PHASES))}, "labels": {"background": 0, "liver": 1,
                                                                                 "tumor": 2},
        "numTraining": len(indices), "file_ending": ".nii.gz", "diff4mm": {"phases": list(PHASES),
                                                                            "reference": "PVP"}}), encoding="utf-8")


def tumor_stats(image: np.ndarray, normal: np.ndarray, mask: np.ndarray, liver: np.ndarray, spacing_xyz):
    """Per tumor component: mean HU and contrast to the liver ring (3-10 mm outside) per phase, and Dice of
    the smoothed, thresholded |image - normal| with the component per phase (None where not visible)."""
    spacing_zyx = np.asarray(spacing_xyz, float)[::-1]
    comps, n = label_tumors(mask)
    diff = image - normal
    smooth = np.stack([ndimage.gaussian_filter(d, 3.0 / spacing_zyx) for d in diff])
    out = []
    for k, obj in enumerate(ndimage.find_objects(comps), start=1):
        pad = np.ceil(12.0 / spacing_zyx).astype(int)
        box = tuple(slice(max(s.start - p, 0), s.stop + p) for s, p in zip(obj, pad))
        comp = comps[box] == k
        dist = ndimage.distance_transform_edt(~comp, sampling=spacing_zyx)
        ring = (dist > 3) & (dist <= 10) & liver[box] & ~mask[box]
        if comp.sum() < 2 or ring.sum() < 5:
            continue
        hu = [float(image[c][box][comp].mean()) for c in range(len(image))]
        contrast = [float(image[c][box][comp].mean() - normal[c][box][ring].mean()) for c in range(len(image))]
        dice = []
        for c in range(len(image)):
            painted = float(diff[c][box][comp].mean())
            if abs(painted) < VISIBLE_HU:
                dice.append(None)
                continue
            pred = np.abs(smooth[c][box]) > abs(painted) / 2
            dice.append(float(2 * (pred & comp).sum() / (pred.sum() + comp.sum())))
        centre = np.argwhere(comps == k).mean(0)
        out.append({"hu": hu, "contrast": contrast, "dice": dice, "centre": centre, "voxels": int(comp.sum()),
                    "diameter_mm": float(equivalent_diameter_mm(comp.sum() * np.prod(spacing_zyx)))})
    return out


def hypervascular_like(contrast) -> bool:
    return contrast[PHASES.index("AP")] > 0 and contrast[PHASES.index("PVP")] < 0


def real_kind(info: dict, label: sitk.Image, centre_zyx) -> str:
    point = np.array(label.TransformContinuousIndexToPhysicalPoint([float(v) for v in centre_zyx[::-1]]))
    tumors = info["tumors"]
    nearest = min(tumors, key=lambda t: np.linalg.norm(np.asarray(t["center_mm"]) - point))
    return nearest["kind"]


def fmt(values) -> str:
    values = [v for v in values if v is not None]
    return f"{np.mean(values):6.1f} ± {np.std(values):5.1f}" if values else "      —       "


def table(title: str, groups: dict[str, list[dict]], key: str) -> None:
    print(f"\n{title}")
    print(f"{'group':34s} {'n':>3s} " + " ".join(f"{p:>15s}" for p in PHASES))
    for name, stats in groups.items():
        if stats:
            print(f"{name:34s} {len(stats):3d} " + " ".join(fmt([s[key][c] for s in stats]).rjust(15)
                                                        for c in range(len(PHASES))))


def dice_table(groups: dict[str, list[dict]]) -> None:
    print(f"\nalignment Dice (|image - normal| smoothed 3 mm, > half the tumor's contrast) vs mask, tumors "
          f"visible (|contrast| >= {VISIBLE_HU:g} HU) in that phase; mean ± std (n)")
    print(f"{'group':34s} " + " ".join(f"{p:>20s}" for p in PHASES))
    for name, stats in groups.items():
        cells = []
        for c in range(len(PHASES)):
            vals = [s["dice"][c] for s in stats if s["dice"][c] is not None]
            cells.append((f"{np.mean(vals):.2f} ± {np.std(vals):.2f} ({len(vals)})" if vals else "—").rjust(20))
        print(f"{name:34s} " + " ".join(cells))


def autoencoder_ceiling(synth: Synthesizer, dataset: Path, names: list[str]) -> dict[str, list[np.ndarray]]:
    """Per phantom tumor type: [(real contrast, round-trip contrast) per phase] for every real tumor.

    Contrast = mean of (target - normal) over the tumor in the tumor's ROI (working grid, HU); round trip =
    the same for decode(encode(target)) - decode(encode(normal)). The diffusion model generates latents that
    the decoder turns into tumors, so what the autoencoder loses here the synthesizer cannot produce."""
    import torch

    b, pipe = synth.bundle, synth.pipeline
    scale = (b.intensity_window_hu[1] - b.intensity_window_hu[0]) / 2.0
    out = {"hypervascular": [], "hypovascular": []}
    for name in names:
        target, normal, label, _, label_img = load_arrays(dataset, name)
        spacing = label_img.GetSpacing()
        info = json.loads((dataset / "info" / f"{name}.json").read_text(encoding="utf-8"))
        comps, n = label_tumors(label == 2)
        for k in range(1, n + 1):
            comp = comps == k
            centre = component_centre(comp)
            rois = [normalize_hu(extract_roi(a, spacing, centre, b.roi, cval=-1024.0), b.intensity_window_hu)
                    for a in (target, normal)]
            inside = extract_roi(comp.astype(np.float32), spacing, centre, b.roi, cval=0.0) > 0.5
            if inside.sum() < 2:
                continue
            with torch.no_grad():
                x = torch.from_numpy(np.stack(rois)).to(pipe.device, pipe.unet.dtype)
                decoded = pipe.decode(pipe.encode(x)).float().cpu().numpy()
            real = ((rois[0] - rois[1]) * scale)[:, inside].mean(1)
            trip = ((decoded[0] - decoded[1]) * scale)[:, inside].mean(1)
            out[real_kind(info, label_img, np.argwhere(comp).mean(0))].append(np.stack([real, trip]))
    return out


def spread_table(real: list[dict], synthetic: list[dict], invisible_hu: float = 5.0) -> None:
    """Per-tumor calibration, which means and stds hide: the share of tumors that are invisible (|contrast| <
    invisible_hu in every phase) and the share with a contrast outside the real tumors' range in some phase."""
    real_c = np.array([s["contrast"] for s in real])
    lo, hi = real_c.min(0), real_c.max(0)
    print(f"\nper-tumor spread: invisible = |contrast| < {invisible_hu:g} HU in every phase; outside = beyond the "
          f"real range in some phase (real range per phase: "
          + ", ".join(f"{p} {a:.0f}..{b:.0f}" for p, a, b in zip(PHASES, lo, hi)) + " HU)")
    for name, stats in (("real (all)", real), ("synthetic (all)", synthetic)):
        c = np.array([s["contrast"] for s in stats]).reshape(-1, len(PHASES))
        invisible = int(np.all(np.abs(c) < invisible_hu, axis=1).sum())
        outside = int(np.any((c < lo) | (c > hi), axis=1).sum())
        print(f"{name:34s} {len(c):3d}   invisible {invisible:3d}   outside {outside:3d}")


def type_table(real_hyper: list[dict], real_hypo: list[dict], synthetic: list[dict], split_mm: float = 20.0
               ) -> None:
    """Does each synthetic tumor commit to one enhancement pattern, or paint a blend of both? Type score = where
    a tumor's contrast vector (4 phases) falls on the line from the mean real hypovascular (0) to the mean real
    hypervascular (1) pattern; a model that has not learnt the two modes paints scores between them. Split at
    an equivalent diameter of split_mm, since small tumors are the hard ones (a latent voxel is 6 mm)."""
    hyper = np.mean([s["contrast"] for s in real_hyper], 0)
    hypo = np.mean([s["contrast"] for s in real_hypo], 0)
    axis = hyper - hypo
    print("\ntype score (0 = mean real hypovascular pattern, 1 = mean real hypervascular pattern): share of tumors "
          "below 0.25, between, above 0.75; median")
    real = [*real_hyper, *real_hypo]
    for name, stats in (("real (all)", real), ("synthetic (all)", synthetic),
                        (f"real < {split_mm:g} mm", [s for s in real if s["diameter_mm"] < split_mm]),
                        (f"synthetic < {split_mm:g} mm", [s for s in synthetic if s["diameter_mm"] < split_mm]),
                        (f"real >= {split_mm:g} mm", [s for s in real if s["diameter_mm"] >= split_mm]),
                        (f"synthetic >= {split_mm:g} mm", [s for s in synthetic if s["diameter_mm"] >= split_mm])):
        if not stats:
            continue
        score = (np.array([s["contrast"] for s in stats]) - hypo) @ axis / (axis @ axis)
        low, high = float(np.mean(score < 0.25)), float(np.mean(score > 0.75))
        print(f"{name:34s} {len(score):3d}   {low:5.0%} {1 - low - high:5.0%} {high:5.0%}   median "
              f"{np.median(score):5.2f}")


def requested_patterns(synth: Synthesizer, components: np.ndarray, n: int, spacing_xyz,
                       rng: np.random.Generator) -> np.ndarray:
    """The enhancement patterns the Synthesizer drew for the n labelled tumors of its mask, replayed from `rng`
    = a copy of the generator's state right after the mask draw (consumed): the noise seed first, then one
    pattern per tumor, as Synthesizer.__call__ draws them."""
    rng.integers(0, 2**63 - 1)  # the Synthesizer's noise seed
    return synth.enhancement_patterns(components, n, spacing_xyz, rng)


def rendering_table(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Enhancement-conditioned bundles: per phase, the mean change the Synthesizer was asked to paint inside
    each tumor vs the one it painted (image - normal), their correlation over tumors and the least-squares
    slope painted = slope x requested (1 = rendered at full strength)."""
    if not pairs:
        return
    req, got = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    print(f"\nrequested vs painted enhancement pattern (mean change inside the tumor, HU), {len(req)} synthetic tumors")
    print(f"{'':22s}" + "".join(f"{p:>16s}" for p in PHASES))
    print(f"{'requested mean ± std':22s}" + "".join(f"{fmt(req[:, c]):>16s}" for c in range(len(PHASES))))
    print(f"{'painted mean ± std':22s}" + "".join(f"{fmt(got[:, c]):>16s}" for c in range(len(PHASES))))
    r = [np.corrcoef(req[:, c], got[:, c])[0, 1] for c in range(len(PHASES))]
    slope = [float(req[:, c] @ got[:, c] / (req[:, c] @ req[:, c])) for c in range(len(PHASES))]
    print(f"{'correlation r':22s}" + "".join(f"{v:16.2f}" for v in r))
    print(f"{'slope painted/requested':22s}" + "".join(f"{v:16.2f}" for v in slope))


def load_arrays(dataset: Path, name: str):
    target, normal, label, liver = load_case(dataset, name)
    t = np.stack([sitk.GetArrayFromImage(target[p]).astype(np.float32) for p in PHASES])
    n = np.stack([sitk.GetArrayFromImage(normal[p]).astype(np.float32) for p in PHASES])
    return t, n, sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(liver) > 0, label


def montage_png(path: Path, rows: list[tuple[str, np.ndarray, np.ndarray, tuple]], field_mm: float = 80.0) -> None:
    """One row per case: the axial slice through the centre of its largest tumor, cropped to field_mm x field_mm
    around that tumor (physical size, so real and synthetic rows show tissue at one scale), all phases, one
    CT window; the mask is outlined beside the image, not over it, so the tumor itself is what one judges."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), len(PHASES) + 1, figsize=(2.2 * (len(PHASES) + 1), 2.3 * len(rows)),
                             squeeze=False)
    for r, (title, image, label, spacing) in enumerate(rows):
        comps, _ = ndimage.label(label == 2)
        sizes = np.bincount(comps.ravel())
        sizes[0] = 0
        if sizes.any():
            z, y, x = np.rint(np.argwhere(comps == sizes.argmax()).mean(0)).astype(int)
        else:
            z, y, x = np.asarray(label.shape) // 2
        half = np.rint(field_mm / 2 / np.asarray(spacing[1:])).astype(int)  # (y, x) voxels
        ys = slice(max(y - half[0], 0), y + half[0] + 1)
        xs = slice(max(x - half[1], 0), x + half[1] + 1)
        seg = label[z, ys, xs] == 2
        for c, phase in enumerate(PHASES):
            ax = axes[r, c]
            ax.imshow(image[c, z, ys, xs], cmap="gray", vmin=-100, vmax=250, aspect=spacing[1] / spacing[2])
            ax.set_title(f"{title} {phase}", fontsize=7)
            ax.set_axis_off()
        ax = axes[r, len(PHASES)]
        ax.imshow(seg, cmap="Reds", vmin=0, vmax=1.5, aspect=spacing[1] / spacing[2])
        ax.set_title("tumor mask", fontsize=7)
        ax.set_axis_off()
    fig.suptitle(f"real phantom tumors and synthetic tumors painted into normal CTs ({field_mm:.0f} mm field, "
                 "L75/W350)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="evaluate this bundle instead of training the default preset")
    parser.add_argument("--work", type=Path, default=Path("/tmp/diff4mm_synthesis_benchmark"))
    parser.add_argument("--cases", type=int, default=24, help="phantom training cases (default 24)")
    parser.add_argument("--eval-cases", type=int, default=4, help="held-out phantom cases (default 4)")
    parser.add_argument("--samples", type=int, default=6, help="synthetic samples per held-out case (default 6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (on a shared, oversubscribed machine 1 is ~9x faster than 2)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    work = args.work
    train_ds, eval_ds = work / "Dataset990_PhantomTrain", work / "Dataset991_PhantomEval"
    t0 = time.time()
    write_phantom_dataset(train_ds, range(args.cases), args.seed)
    write_phantom_dataset(eval_ds, range(args.cases, args.cases + args.eval_cases), args.seed)
    print(f"phantom datasets: {time.time() - t0:.0f} s ({args.cases} training, {args.eval_cases} held-out cases)")

    bundles = {}
    names, cases = load_training_cases(train_ds)
    for preset, epochs in (("tiny", 1), ("cpu", None)):
        if preset == "cpu" and args.bundle:
            bundles[preset] = args.bundle
            continue
        t0 = time.time()
        bundles[preset] = train_synthesizer(cases, work / f"bundle_{preset}", preset=preset, device="cpu",
                                            epochs=epochs, seed=args.seed, case_names=names)
        record = json.loads((bundles[preset] / "diff4mm_bundle.json").read_text(encoding="utf-8"))["training"]
        print(f"train {preset}: {time.time() - t0:.0f} s this run; recorded stage seconds {record['seconds']}")
    log = bundles["cpu"] / "training" / "log.csv"
    if log.exists():
        lines = log.read_text(encoding="utf-8").splitlines()
        print("training log (last epoch of each stage):")
        for stage in ("autoencoder", "unet"):
            rows = [line for line in lines if line.startswith(stage)]
            if rows:
                print("  " + lines[0] + "\n  " + rows[-1] if stage == "autoencoder" else "  " + rows[-1])

    synth = {p: Synthesizer.from_bundle(b) for p, b in bundles.items()}
    eval_names = sorted(p.name[:-7] for p in (eval_ds / "labelsTr").glob("*.nii.gz"))
    real_groups = {"real hypervascular": [], "real hypovascular": []}
    syn_stats, speed = [], {"tiny": [], "cpu": []}
    rows_real, rows_syn, rendering = [], [], []
    for name in [*names, *eval_names]:  # real tumors of all cases
        ds = train_ds if name in names else eval_ds
        target, normal, label, liver, label_img = load_arrays(ds, name)
        info = json.loads((ds / "info" / f"{name}.json").read_text(encoding="utf-8"))
        for s in tumor_stats(target, normal, label == 2, label > 0, label_img.GetSpacing()):
            real_groups[f"real {real_kind(info, label_img, s['centre'])}"].append(s)
        if name in eval_names:
            rows_real.append((f"real {name}", target, label, label_img.GetSpacing()[::-1]))
    for name in eval_names:
        target, normal, label, liver, label_img = load_arrays(eval_ds, name)
        spacing = label_img.GetSpacing()
        for preset, s in synth.items():
            for j in range(args.samples if preset == "cpu" else 1):
                rng = np.random.default_rng([args.seed, eval_names.index(name), j])
                t = time.time()
                mask = s.random_mask(liver, spacing, rng)
                after_mask = copy.deepcopy(rng)
                image, syn_label = s(normal, spacing, liver, rng, mask=mask)
                speed[preset].append(time.time() - t)
                if preset == "cpu":
                    syn_stats += tumor_stats(image, normal, syn_label == 2, liver, spacing)
                    if s.bundle.enhancement_bank is not None:
                        components, n = label_tumors(mask)
                        requested = requested_patterns(s, components, n, spacing, after_mask)
                        rendering += list(zip(requested, measure_patterns(image - normal, components, n)))
                    if j == 0:
                        rows_syn.append((f"synthetic {name}", image, syn_label, spacing[::-1]))
    syn_groups = {"synthetic (all)": syn_stats,
                  "synthetic hypervascular-like": [s for s in syn_stats if hypervascular_like(s["contrast"])],
                  "synthetic hypovascular-like": [s for s in syn_stats if not hypervascular_like(s["contrast"])]}
    real_all = [*real_groups["real hypervascular"], *real_groups["real hypovascular"]]
    correct = sum(hypervascular_like(s["contrast"]) == (s in real_groups["real hypervascular"]) for s in real_all)

    print(f"\nheld-out cases {len(eval_names)}, {args.samples} synthetic samples each (cpu preset); "
          f"real tumors from all {len(names) + len(eval_names)} cases")
    dice_table({**real_groups, **syn_groups})
    table("tumor HU per phase, mean ± std over tumors", {**real_groups, **syn_groups}, "hu")
    table("tumor contrast to liver 3-10 mm around it (HU), mean ± std over tumors", {**real_groups, **syn_groups},
          "contrast")
    print(f"\nAP-vs-PVP rule on real tumors: {correct}/{len(real_all)} classified as their phantom type")
    spread_table(real_all, syn_stats)
    type_table(real_groups["real hypervascular"], real_groups["real hypovascular"], syn_stats)
    rendering_table(rendering)
    ceiling = autoencoder_ceiling(synth["cpu"], eval_ds, eval_names)
    print("\nautoencoder ceiling: mean tumor change (target - normal) on the ROI grid, real vs after encode/decode "
          "(HU), held-out tumors; the synthesizer cannot paint what the autoencoder cannot decode")
    print(f"{'type':15s} {'n':>3s} " + " ".join(f"{p + ' real -> decoded':>24s}" for p in PHASES))
    for kind, pairs in ceiling.items():
        if pairs:
            mean = np.mean(pairs, axis=0)
            print(f"{kind:15s} {len(pairs):3d} " + " ".join(f"{mean[0, c]:9.1f} -> {mean[1, c]:6.1f}".rjust(24)
                                                           for c in range(len(PHASES))))
    shape = normal.shape
    for preset, times in speed.items():
        print(f"speed {preset:8s}: {1.0 / np.mean(times):.2f} synthetic cases/s on CPU "
              f"({np.mean(times):.2f} s per case of {shape[1:]} voxels, {len(times)} cases)")
    rows = [r for pair in zip(rows_real, rows_syn) for r in pair]
    montage_png(work / "montage.png", rows)
    print(f"montage: {work / 'montage.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
