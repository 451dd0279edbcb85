"""Fidelity of synthetic tumors as a segmenter sees them: a nnU-Net model trained on real cases only, run on
synthetic samples made exactly as Diff4MMTrainer's producer makes them, beside its own training and validation cases.

    python benchmarks/detectability.py -d 601 -c 2d -p Diff4MMCPUPlans -tr nnUNetTrainer_Diff4MMEvidence -f 5 \\
        --bundle $nnUNet_results/Dataset601_EvPhantom/diff4mm/synthesizer_fold5 --samples 12 --seed 7

If the model finds synthetic tumors about as well as the real tumors of its validation cases, the synthetic tumors
look like real ones to it; if it misses them, they are too faint or too strange to teach it anything real. Besides
the tumor Dice per sample it counts, per tumor (26-connected component, hit by >= 1 predicted voxel, as the
benchmark's recall), how many tumors it finds, overall and under 20 mm. Each
synthetic sample is made twice from the same random state, with and without `match_enhancement` (the same masks and
requested patterns), so the two rows are paired. Everything is in preprocessed space (nnU-Net's sliding window, no
mirroring); the normal CTs are those of the fold's training cases (the trainer's cache). Validation cases only: no
test case is read.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True, help="nnU-Net dataset ID or name")
    parser.add_argument("-c", "--configuration", default="2d", help="nnU-Net configuration (default 2d)")
    parser.add_argument("-p", "--plans", default="Diff4MMCPUPlans", help="plans identifier (default Diff4MMCPUPlans)")
    parser.add_argument("-tr", "--trainer", required=True, help="trainer of the real-only model (e.g. arm (b)'s)")
    parser.add_argument("-f", "--fold", type=int, required=True, help="splits_final.json entry the model trained on")
    parser.add_argument("--bundle", type=Path, required=True, help="synthesis bundle trained on that fold's cases")
    parser.add_argument("--normal", type=Path, default=None,
                        help="normal CTs of the fold (default: the fold's own normal_foldF, as the trainer finds it)")
    parser.add_argument("--samples", type=int, default=12, help="synthetic samples per variant (default 12)")
    parser.add_argument("--seed", type=int, default=7, help="random state of the samples (default 7)")
    parser.add_argument("--matched-only", action="store_true",
                        help="make the synthetic samples with match_enhancement=True only (the trainer's default)")
    parser.add_argument("-o", "--output", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)

    import blosc2
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_diff4mm import conventions
    from nnunetv2_diff4mm.evaluation.metrics import SMALL_TUMOR_MM, detect_tumors
    from nnunetv2_diff4mm.training.normal_cases import cache_folder, intensity_mappings, preprocess_normal_cases
    from nnunetv2_diff4mm.training.synthetic_pool import make_sample
    from synthesis.pipeline import Synthesizer

    name = maybe_convert_to_dataset_name(args.dataset)
    pre = Path(nnUNet_preprocessed) / name
    plans = PlansManager(str(pre / f"{args.plans}.json"))
    config = plans.get_configuration(args.configuration)
    dataset_json = json.loads((pre / "dataset.json").read_text(encoding="utf-8"))
    split = json.loads((pre / "splits_final.json").read_text(encoding="utf-8"))[args.fold]
    raw = conventions.raw_dataset_folder(name)
    normal_dir = args.normal or conventions.fold_or_shared(conventions.normal_folder, raw, args.fold)
    cache = conventions.preprocessed_cache_folder(pre, args.plans, args.configuration)
    normals = preprocess_normal_cases(normal_dir, split["train"], len(dataset_json["channel_names"]),
                                      dataset_json["file_ending"], cache_folder(cache, normal_dir), plans, config,
                                      dataset_json)
    mappings = intensity_mappings(plans.plans, config)

    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    model = Path(nnUNet_results) / name / f"{args.trainer}__{args.plans}__{args.configuration}"
    predictor.initialize_from_trained_model_folder(str(model), (args.fold,), "checkpoint_final.pth")

    # voxel spacing of the preprocessed arrays (z, y, x); a 2d configuration keeps the original slice spacing
    spacing_zyx = list(config.spacing)
    if len(spacing_zyx) == 2:
        spacing_zyx = [plans.plans["original_median_spacing_after_transp"][0], *spacing_zyx]
    counts: dict[str, dict[str, int]] = {}

    def tumor_dice(data, seg, group: str) -> float:
        tensor = torch.from_numpy(np.ascontiguousarray(data, np.float32))
        pred = predictor.predict_sliding_window_return_logits(tensor).argmax(0).numpy() == 2
        found = detect_tumors(pred, seg == 2, spacing_zyx[::-1])
        total = counts.setdefault(group, {})
        for key, value in found.items():
            total[key] = total.get(key, 0) + value
        return dice(pred, seg == 2)

    rows = {}
    folder = pre / config.data_identifier
    for group in ("train", "val"):
        rows[f"real, {group} cases"] = [tumor_dice(blosc2.open(str(folder / f"{c}.b2nd"))[:],
                                                   blosc2.open(str(folder / f"{c}_seg.b2nd"))[:][0],
                                                   f"real, {group} cases")
                                        for c in split[group]]
    for match in (True,) if args.matched_only else (False, True):
        synth = Synthesizer.from_bundle(args.bundle, match_enhancement=match)
        rng = np.random.default_rng(args.seed)
        values = []
        for _ in range(args.samples):
            sample = make_sample(synth, str(normals[int(rng.integers(len(normals)))]), mappings,
                                 list(range(1, len(dataset_json["labels"]))), rng)
            values.append(tumor_dice(sample["data"], sample["seg"][0], f"synthetic, match_enhancement={match}"))
        rows[f"synthetic, match_enhancement={match}"] = values
    small = f"{SMALL_TUMOR_MM:g}"
    print(f"| {model.name} fold {args.fold} on | tumor Dice (mean ± std) | tumors found | found < {small} mm | "
          f"found >= {small} mm | false positive components | n |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key, values in rows.items():
        c = counts[key]
        n_small = c["tumor_tp_small"] + c["tumor_fn_small"]
        large_tp, large_n = c["tumor_tp"] - c["tumor_tp_small"], c["n_ref_tumors"] - n_small
        print(f"| {key} | {np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.3f} | "
              f"{c['tumor_tp']}/{c['n_ref_tumors']} | {c['tumor_tp_small']}/{n_small} | "
              f"{large_tp}/{large_n} | {c['tumor_fp']} | {len(values)} |")
    if args.output:
        args.output.write_text(json.dumps({"tumor_dice": rows, "detection": counts}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
