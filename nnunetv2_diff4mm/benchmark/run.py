"""The benchmark behind `diff4mm_benchmark`: Diff4MMTrainer against two nnU-Net baselines on one dataset.

Arms (same plans, schedule, folds and labelled subsets; only input channels or trainer differ):

- **(a)** nnU-Net on the reference (annotated) phase alone. It trains on a derived raw dataset
  ``Dataset<ID+100>_<NAME>RefPhase`` holding channel ``_000r`` of the source as ``_0000`` (hard links where the
  file system allows, copies otherwise). Its plans are the source's plans moved over the way
  ``nnUNetv2_move_plans_between_datasets`` does it (after ``nnUNetv2_extract_fingerprint`` on the target), with
  channel r's intensity statistics and normalisation settings as its only channel, so that patch size, network,
  spacing and intensity normalisation equal arm (b)'s; then nnU-Net preprocesses it.
- **(b)** nnU-Net on all registered phases (the source dataset).
- **(c)** Diff4MMTrainer on all registered phases. Its inpainter, normal CTs and synthesis bundle are trained per
  job on that job's training cases only (``synthesis_models``), so they never see a validation or test case nor a
  labelled case withheld from (a) and (b) at a fraction < 1.

Labelled fractions: fraction 1 trains on nnU-Net fold k of ``splits_final.json`` (created exactly as
nnU-Net would if missing). A fraction f < 1 trains on the first max(1, ceil(f·n)) training cases of fold k in
a fixed random order (seeded by fold), so smaller subsets are nested in larger ones; its validation cases are
fold k's. Each such subset is an extra entry appended to ``splits_final.json`` (nnU-Net reads as many splits as
the file holds; folds 0-4 stay untouched) and tagged with ``diff4mm_fraction``/``diff4mm_base_fold``; the
derived dataset gets the identical file, so arm (a) sees the same case lists.

Training and inference run nnU-Net's own commands as subprocesses (``nnUNetv2_train``, ``nnUNetv2_predict`` on
``imagesTs``), logged under OUT/logs. The cpu preset predicts with ``--disable_tta`` (mirroring TTA costs 8x
the forward passes on a CPU); the gpu preset keeps nnU-Net's TTA unless told otherwise.

Worker counts: ``-np`` also sets nnU-Net's ``nnUNet_n_proc_DA`` and ``nnUNet_def_n_proc`` for the subprocesses
unless already set (nnU-Net's final validation otherwise spawns 8 export workers; measured on the shared 2-core
machine: 160 s instead of 45 s for a 1-epoch training on a 3-case phantom).

Resumable: a fold with ``checkpoint_final.pth`` is not retrained (one with only ``checkpoint_latest.pth``
continues with ``--c``); a predictions folder is only renamed into place once every test case is predicted, so
an existing one is reused. A re-run of a finished benchmark only re-evaluates and rewrites the report.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from registration.image_io import write_json_atomic

from .. import conventions
from ..evaluation import metrics as M
from ..evaluation import report
from ..splits import prepare_splits
from .common import (ARM_BY_KEY, DERIVED_ID_OFFSET, LEGACY_PRESETS, PRESETS, BenchmarkError, BenchmarkSettings,
                     Job, Roots, arm_trainer, dataset_id_and_name, dataset_is_registered, method_labels, read_dataset_json,
                     reference_channel, refcopy_method, reported_pairs, test_cases, training_cases)
from .derived import (_check_id_free, derive_reference_phase_dataset, derived_dataset_name, plan_and_preprocess,
                      prepare_derived_preprocessed, preprocessing_complete, write_reference_copied_inputs)
from .nnunet_runs import fold_folder, predict_job, run_logged, synthesis_disabled, train_job
from .references import collect_references
from .synthesis_models import prepare_classical_normals, prepare_synthesis_models


def _resolve_device(device: str) -> str:
    """The device the benchmark's nnU-Net commands get (-device cpu or cuda: nnU-Net's own choices)."""
    from synthesis.devices import DeviceError, resolve_device

    if device not in ("cpu", "cuda", "auto"):
        raise BenchmarkError(f"--device {device}: choose cpu, cuda or auto")
    try:
        return resolve_device(device).type
    except DeviceError as err:
        raise BenchmarkError(str(err)) from None


def _log(message: str) -> None:
    print(f"[diff4mm benchmark] {message}", flush=True)


def run_benchmark(settings: BenchmarkSettings, roots: Roots | None = None, runner=run_logged) -> Path:
    """Prepare datasets, train and predict every job (resumably), evaluate and write the report; returns the
    summary.md path. All inputs are checked before anything expensive starts."""
    from tqdm import tqdm

    roots = roots or Roots.from_env()
    s = settings
    name = LEGACY_PRESETS.get(s.preset, s.preset)
    if name not in PRESETS:
        raise BenchmarkError(f"--preset {s.preset}: choose one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    baseline_trainer, diff4mm_trainer = s.trainers or (preset.baseline_trainer, preset.diff4mm_trainer)
    arms = [ARM_BY_KEY[k] for k in ARM_BY_KEY if k in s.arms]
    unknown = set(s.arms) - set(ARM_BY_KEY)
    if unknown or not arms:
        raise BenchmarkError(f"--arms {' '.join(s.arms)}: choose from {', '.join(ARM_BY_KEY)}")
    fractions = sorted(set(float(f) for f in s.fractions))
    if any(not 0 < f <= 1 for f in fractions):
        raise BenchmarkError(f"--fractions {' '.join(f'{f:g}' for f in s.fractions)}: each must be in (0, 1]")
    device = _resolve_device(s.device or preset.device)
    tta = preset.tta if s.tta is None else s.tta
    reference_copy = preset.reference_copy_eval if s.reference_copy_eval is None else s.reference_copy_eval
    configuration = s.configuration or preset.configuration
    synthesis_args = (tuple(s.inpainter_args if s.inpainter_args is not None else preset.inpainter_args),
                      tuple(s.synthesizer_args if s.synthesizer_args is not None else preset.synthesizer_args))
    out = Path(s.output)

    # inputs, checked before any expensive step
    source_id, source_name = dataset_id_and_name(s.dataset, roots)
    source_raw = roots.raw / source_name
    data = read_dataset_json(source_raw)
    ending = data.get("file_ending", ".nii.gz")
    channel, phase = reference_channel(data, s.reference_phase)
    cases_tr = training_cases(source_raw, ending)
    cases_ts = test_cases(source_raw, ending)
    if not cases_ts:
        raise BenchmarkError(f"{source_raw / 'imagesTs'}: no held-out test images (<case>_0000{ending})")
    references = collect_references(cases_ts, ending, out / "references", s.test_labels, s.phantom)
    if any(a.role == "diff4mm" for a in arms):
        for var in (conventions.ENV_BUNDLE, conventions.ENV_NORMAL):
            if os.environ.get(var):
                raise BenchmarkError(f"${var} is set, but arm (c) trains its own inpainter, normal CTs and bundle "
                                     "on each job's training cases; unset it")
    derived_id = s.derived_id if s.derived_id is not None else source_id + DERIVED_ID_OFFSET
    derived_name = derived_dataset_name(source_name, derived_id)
    use_derived = any(a.derived for a in arms)
    if use_derived:
        if not 1 <= derived_id <= 999 or derived_id == source_id:
            raise BenchmarkError(f"derived dataset ID {derived_id} must be in 1..999 and differ from {source_id}; "
                                 "choose one with --derived-id")
        _check_id_free(roots, derived_id, derived_name)

    # datasets, plans, preprocessing, splits
    t0 = time.perf_counter()
    source_pre = roots.preprocessed / source_name
    if not preprocessing_complete(source_pre, preset.plans, configuration, cases_tr):
        _log(f"planning and preprocessing {source_name} ({preset.plans})")
        plan_and_preprocess(source_id, preset, configuration, s.num_processes,
                            plans_exist=(source_pre / f"{preset.plans}.json").is_file())
    if use_derived:
        _log(f"reference-phase dataset {derived_name} ({phase} = channel {channel} of {source_name})")
        derive_reference_phase_dataset(source_raw, roots.raw / derived_name, channel, phase)
        prepare_derived_preprocessed(source_name, derived_name, derived_id, preset.plans, channel, configuration,
                                     cases_tr, roots, s.num_processes)
    fold_index, splits = prepare_splits(source_pre, cases_tr, s.folds, fractions, s.subset_seed,
                                        mirror_to=roots.preprocessed / derived_name if use_derived else None)
    refcopy_inputs = None
    if reference_copy and any(not a.derived for a in arms):
        n_channels = len(data.get("channel_names", data.get("modality", {})))
        refcopy_inputs = write_reference_copied_inputs(source_raw / "imagesTs", out / "inputs_reference_copied",
                                                       channel, n_channels, ending, cases_ts)
    prep_seconds = time.perf_counter() - t0

    jobs = [Job(arm, f, k, fold_index[(f, k)], derived_name if arm.derived else source_name,
                arm_trainer(arm, baseline_trainer, diff4mm_trainer), preset.plans, configuration)
            for arm in arms for f in fractions for k in s.folds]
    n_train = {f: len(splits[fold_index[(f, s.folds[0])]]["train"]) for f in fractions}

    # train, predict, evaluate
    env = dict(os.environ)
    # nnU-Net's worker counts (augmentation; export pool of the final validation, 8 by default)
    env.setdefault("nnUNet_n_proc_DA", str(s.num_processes))
    env.setdefault("nnUNet_def_n_proc", str(s.num_processes))
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text(encoding="utf-8")) if timings_path.is_file() else {}
    warnings, finished = [], []
    bar = tqdm(jobs, desc="benchmark runs", unit="run")
    for job in bar:
        bar.set_postfix_str(job.key)
        record = timings.setdefault(job.key, {})
        record["nnunet_fold"] = job.nnunet_fold
        if job.arm.role == "diff4mm":
            start = time.perf_counter()
            status = prepare_synthesis_models(job, source_raw, synthesis_args, device, out / "logs", runner, env,
                                              roots.results)
            if status == "trained":
                record["synthesis_models_s"] = time.perf_counter() - start
            record["synthesis_models_status"] = status
        job_env = env
        if job.arm.normal_fill:  # the ablation's own normal CTs, where its trainer reads them
            job_env = {**env, conventions.ENV_NORMAL: str(prepare_classical_normals(
                job, source_raw, job.arm.normal_fill, out / "logs", runner, env))}
        start = time.perf_counter()
        status = train_job(job, roots.results, device, out / "logs", runner, job_env)
        if status == "trained":
            record["train_s"] = time.perf_counter() - start
        record["train_status"] = status
        write_json_atomic(timings_path, timings, make_parents=True)
        if job.arm.role == "diff4mm" and synthesis_disabled(roots.results, job):
            warnings.append(f"{job.key}: Diff4MMTrainer logged 'synthesis disabled' (trained on real samples "
                            f"only); see {fold_folder(roots.results, job)}")
        input_dir = roots.raw / job.dataset / "imagesTs"
        pred_dir = out / "predictions" / job.arm.method / f"frac{job.fraction:g}" / f"fold{job.fold}"
        start = time.perf_counter()
        status = predict_job(job, input_dir, pred_dir, cases_ts, ending, device, tta, s.num_processes,
                             out / "logs", runner, env)
        if status == "predicted":
            record["predict_s"] = time.perf_counter() - start
        record["predict_status"] = status
        write_json_atomic(timings_path, timings, make_parents=True)
        finished.append((job.arm.method, job, M.folder_pairs(pred_dir, references, ending, cases_ts)))
        if refcopy_inputs is not None and not job.arm.derived:  # Table 2: reference phase in every channel
            method = refcopy_method(job.arm.method)
            pred_dir = out / "predictions" / method / f"frac{job.fraction:g}" / f"fold{job.fold}"
            start = time.perf_counter()
            status = predict_job(job, refcopy_inputs, pred_dir, cases_ts, ending, device, tta, s.num_processes,
                                 out / "logs", runner, env,
                                 log_name=f"predict_{method}_frac{job.fraction:g}_fold{job.fold}")
            if status == "predicted":
                record["predict_reference_copied_s"] = time.perf_counter() - start
            write_json_atomic(timings_path, timings, make_parents=True)
            finished.append((method, job, M.folder_pairs(pred_dir, references, ending, cases_ts)))
    bar.close()
    _log(f"evaluating {len(finished)} x {len(cases_ts)} predictions")
    scores = iter(M.evaluate_pairs([p for _, _, pairs in finished for p in pairs], s.nsd_tolerance_mm,
                                   s.num_processes))
    rows = [{"method": method, "fraction": job.fraction, "fold": job.fold, **next(scores)}
            for method, job, pairs in finished for _ in pairs]

    registered = dataset_is_registered(source_raw)
    settings_table = {
        "dataset": source_name + ("" if registered else " (unregistered: diff4mm_register --no-registration)"),
        "reference phase": f"{phase} (channel {channel})",
        "arm (a) dataset": derived_name if use_derived else "not run",
        "preset": f"{preset.name}: plans {preset.plans}, configuration {configuration}",
        "trainers": f"baseline {baseline_trainer}, Diff4MM {diff4mm_trainer}",
        "folds": ", ".join(str(k) for k in s.folds),
        f"labelled fractions (training cases in fold {s.folds[0]})":
            ", ".join(f"{f:g} ({n_train[f]})" for f in fractions),
        "test cases": f"{len(cases_ts)} (imagesTs; references from "
                      f"{s.test_labels or Path(s.phantom) / 'ground_truth'})",
        "NSD tolerance": f"{s.nsd_tolerance_mm:g} mm",
        "inference": f"device {device}, test-time mirroring {'on' if tta else 'off (--disable_tta)'}",
        "Table 2 protocol": (f"multi-phase models also tested with {phase} copied into every channel "
                             f"({'_refcopy' if refcopy_inputs is not None else 'off'})"),
        "dataset preparation (this run)": f"{prep_seconds:.0f} s",
    }
    montage = _test_case_montage(finished, references, source_raw / "imagesTs", channel, phase, ending, out)
    return report.write_report(
        rows, out, method_labels(registered), reported_pairs(), settings_table,
        {job.key: timings[job.key] for job in jobs}, warnings, n_train, f"Diff4MM benchmark: {source_name}",
        s.nsd_tolerance_mm, extra_figures=(montage.name,))


def _test_case_montage(finished, references: Path, images_ts: Path, channel: int, phase: str, ending: str,
                       out: Path) -> Path:
    """test_cases.png: four test cases (chosen by reference tumor volume only) with every method's tumor contour
    at the smallest labelled fraction and first fold."""
    from ..evaluation.contours import contour_montage, pick_cases

    fraction = min(job.fraction for _, job, _ in finished)
    fold = min(job.fold for _, job, _ in finished if job.fraction == fraction)
    labels = method_labels(dataset_is_registered(images_ts.parent))
    columns = {}
    for method, job, pairs in finished:
        if job.fraction == fraction and job.fold == fold:
            columns[report.short_label(labels, method)] = {case: pred for pred, _, case in pairs}
    cases = pick_cases({case: references / f"{case}{ending}" for case in next(iter(columns.values()))})
    rows = [(case, images_ts / f"{case}_{channel:04d}{ending}", references / f"{case}{ending}",
             {tag: preds[case] for tag, preds in columns.items()}) for case in cases]
    title = f"test cases, labelled fraction {fraction:g}, fold {fold}, {phase}"
    return contour_montage(rows, out / "test_cases.png", title) if rows else out / "test_cases.png"
