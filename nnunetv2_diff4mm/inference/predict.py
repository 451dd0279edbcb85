"""Segment new patients from their raw phases: the library behind ``diff4mm_predict`` (issue #15).

Per case, in this order (every step's seconds go into the case's JSON):

1. **Inputs.** The case's phases are found in the model's channel order (``dataset.json`` "diff4mm" key) and
   validated like every other stage (registration/inputs.py:validate_case). A missing phase is an error naming
   the case and the phase unless ``fill_missing_phases``; then the nearest available phase in acquisition order
   is duplicated (case_inputs.py) and the JSON records which.
2. **First-pass liver on the reference phase.** The trained model itself, on the phases resampled onto the
   reference grid without registration (identity, as a scan arrives; mirroring TTA off: the liver is large and
   this pass only has to find it); its liver + tumor labels, largest component. A liver mask the user gives
   (``<REF>_liver.nii.gz`` in the case folder) is used instead. When the pass finds less than
   ``min_first_pass_liver_ml`` of liver the registration falls back to the body mask, and the JSON says so.
   With ``refine_first_pass`` = N, the case is then registered inside that liver, the model segments the
   registered phases (mirroring off) and its liver replaces the first pass, N times, before the final
   registration (docs/decisions.md, "Inference", has the validation figures that chose the default).
3. **Registration**, the same liver-focused registration as ``diff4mm_register`` (registration/register.py:
   prepare_fixed + register_phase + resample_to_reference, with ``<PHASE>_liver`` masks where given) inside
   that mask, with the same QA flags (registration/nnunet_raw.py:flag_reasons). Where a phase's scan does not
   reach the reference grid the network sees, by default, the nearest covering phase's registered values
   (``outside_fill``, registration/field_of_view.py); each phase's outside share goes into the JSON.
4. **Prediction** with nnU-Net's own ``nnUNetPredictor`` (the model's own plans and configuration, every
   requested fold averaged, mirroring TTA as the checkpoint allows unless ``tta=False``) on the registered
   phases, which lie on the reference phase's grid.
5. **Post-processing** (on by default): tumor components farther than ``dilation_mm`` from the predicted liver
   are removed (postprocessing.py).
6. **Output** on the reference phase's original grid: the registered phases are resampled onto the reference
   image as read from its file, so the prediction is on that grid already and gets its spacing, origin and
   direction copied; a prediction on any other grid would be resampled onto it (nearest neighbour).
   ``OUTPUT/<case>.nii.gz``, ``OUTPUT/<case>.png`` (the registered phases with the predicted contours) and
   ``OUTPUT/<case>.json`` last (its presence with a matching ``input_key`` marks the case done: a re-run skips
   it). Every file is written atomically.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from registration.field_of_view import OUTSIDE_FILLS, fill_outside_scans, inside_scan
from registration.image_io import write_image_atomic, write_json_atomic
from registration.inputs import InputError, _display, case_input_digests, read_image, validate_case
from registration.nnunet_raw import flag_reasons
from registration.register import (RegistrationSettings, prepare_fixed, register_phase, resample_to_reference,
                                   single_threaded_itk)

from .case_inputs import PredictionCase, case_from_folder, case_from_phase_files, find_prediction_cases
from .first_pass import MIN_FIRST_PASS_LIVER_ML, liver_from_model, liver_from_segmentation, stack_phases
from .model import Diff4MMModel, ModelInfo, model_identity
from .postprocessing import DEFAULT_DILATION_MM, remove_tumors_outside_liver, segmentation_summary, voxel_ml

FORMAT_VERSION = 1
FIRST_PASS_CHOICES = ("model", "label", "body")
QA_KEYS = ("similarity", "region_inside_fraction", "displacement_mean_mm", "displacement_max_mm", "metric_initial",
           "metric_final", "initialisation", "moving_mask", "seconds")


@dataclass(frozen=True)
class PredictionSettings:
    """Everything that changes a case's result besides its inputs and the model (recorded in its JSON)."""

    fill_missing_phases: bool = False
    first_pass: str = "model"  # "model": the trained model on unregistered phases; "label": the case's label
    #                            (an upper bound for evaluation); "body": no liver, the body mask
    min_first_pass_liver_ml: float = MIN_FIRST_PASS_LIVER_ML
    outside_fill: str = "phase"  # voxels outside a phase's scan: "phase" (the nearest covering phase's values,
    #                              chosen on validation cases) or "air" (registration/field_of_view.py)
    refine_first_pass: int = 1  # rounds of: register inside the liver, segment, that liver is the new mask
    #                             (only for a first pass by the model; 1 chosen on validation cases)
    postprocessing: bool = True
    dilation_mm: float = DEFAULT_DILATION_MM
    tta: bool = True
    registration: RegistrationSettings = RegistrationSettings()
    montage: bool = True

    def __post_init__(self) -> None:
        if self.first_pass not in FIRST_PASS_CHOICES:
            raise ValueError(f"first_pass must be one of {', '.join(FIRST_PASS_CHOICES)}, not {self.first_pass!r}")
        if self.outside_fill not in OUTSIDE_FILLS:
            raise ValueError(f"outside_fill must be one of {', '.join(OUTSIDE_FILLS)}, not {self.outside_fill!r}")
        if self.refine_first_pass < 0:
            raise ValueError(f"refine_first_pass must be 0 or more, not {self.refine_first_pass}")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["registration"] = self.registration.to_json()
        return data


@dataclass
class CaseResult:
    case: str
    record: dict
    segmentation: sitk.Image | None = None  # None when the case was skipped (done before)
    skipped: bool = False
    output: Path | None = None
    registered: dict[str, sitk.Image] | None = None  # the phases as the model saw them (reference grid)
    transforms: dict[str, sitk.Transform] | None = None  # registered moving phase -> its transform (reference
    #                                                      point -> moving point, as SimpleITK resamples)


# ------------------------------------------------------------------------------------------------- helpers


def _as_model(model, device: str = "auto", tta: bool = True) -> Diff4MMModel:
    if isinstance(model, Diff4MMModel):
        return model
    if isinstance(model, ModelInfo):
        return Diff4MMModel(model, device, tta)
    return Diff4MMModel.open(model, device=device, tta=tta)


def _as_case(case, info: ModelInfo, fill_missing: bool) -> PredictionCase:
    if isinstance(case, PredictionCase):
        return case
    if isinstance(case, Mapping):
        return case_from_phase_files(case, info.phases, info.reference, fill_missing)
    return case_from_folder(case, info.phases, info.reference, fill_missing)


def on_reference_grid(segmentation: np.ndarray | sitk.Image, reference: sitk.Image) -> sitk.Image:
    """The segmentation as a UInt8 image with exactly ``reference``'s size, spacing, origin and direction: an
    array on that grid (or an image whose grid equals it) gets the geometry copied; an image on another grid is
    resampled onto it by nearest neighbour."""
    if isinstance(segmentation, np.ndarray):
        if segmentation.shape != tuple(reference.GetSize())[::-1]:
            raise ValueError(f"segmentation shape {segmentation.shape} is not the reference grid's "
                             f"{tuple(reference.GetSize())[::-1]}")
        out = sitk.GetImageFromArray(segmentation.astype(np.uint8))
        out.CopyInformation(reference)
        return out
    same = (segmentation.GetSize() == reference.GetSize()
            and np.allclose(segmentation.GetSpacing(), reference.GetSpacing(), rtol=0, atol=1e-6)
            and np.allclose(segmentation.GetOrigin(), reference.GetOrigin(), rtol=0, atol=1e-4)
            and np.allclose(segmentation.GetDirection(), reference.GetDirection(), rtol=0, atol=1e-6))
    if same:
        out = sitk.Cast(segmentation, sitk.sitkUInt8)
        out.CopyInformation(reference)
        return out
    return sitk.Resample(sitk.Cast(segmentation, sitk.sitkUInt8), reference, sitk.Transform(),
                         sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


# Settings added after format 1, with the value that gives what ran before they existed: they key a case only
# when set otherwise, so a case predicted before them stays done.
_LATER_SETTINGS = {"outside_fill": "air", "refine_first_pass": 0}


def _input_key(inputs: dict, case: PredictionCase, info: ModelInfo, settings: PredictionSettings) -> str:
    keyed = {k: v for k, v in settings.to_json().items() if _LATER_SETTINGS.get(k, object()) != v}
    made_from = {"format_version": FORMAT_VERSION, "inputs": inputs, "filled": case.filled,
                 "model": model_identity(info), "settings": keyed}
    return hashlib.sha256(json.dumps(made_from, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def output_paths(output_dir: Path, case: str) -> dict[str, Path]:
    return {"segmentation": output_dir / f"{case}.nii.gz", "json": output_dir / f"{case}.json",
            "montage": output_dir / f"{case}.png"}


def finished_record(output_dir: Path, case: str, key: str) -> dict | None:
    """The JSON of a case finished with these inputs, model and settings (its segmentation present), else None."""
    paths = output_paths(output_dir, case)
    try:
        record = json.loads(paths["json"].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("input_key") != key or not paths["segmentation"].is_file():
        return None
    return record


# ---------------------------------------------------------------------------------------------- the steps


def _first_pass(case: PredictionCase, images: dict[str, sitk.Image], masks: dict[str, sitk.Image],
                model: Diff4MMModel, settings: PredictionSettings) -> tuple[sitk.Image | None, dict]:
    """(liver mask on the reference grid or None for the body fallback, its JSON record)."""
    info = model.info
    ref = info.reference
    fixed = images[ref]
    ml = voxel_ml(fixed)
    if ref in masks:
        mask = sitk.Cast(masks[ref] > 0, sitk.sitkUInt8)
        return mask, {"source": "given", "mask": "liver", "file": case.files.liver_masks[ref].name,
                      "liver_ml": round(_count(mask) * ml, 1)}
    if settings.first_pass == "body":
        return None, {"source": "body", "mask": "body", "note": "first pass off (first_pass='body'): registered "
                                                                "inside the body mask"}
    if settings.first_pass == "label":
        if case.files.label is None:
            raise InputError(f"{case.name}: first pass 'label' needs a label.nii.gz in the case folder; it has none")
        label = sitk.Cast(read_image(case.files.label), sitk.sitkUInt8)
        mask = sitk.Cast(label > 0, sitk.sitkUInt8)
        return mask, {"source": "label", "mask": "liver", "file": case.files.label.name,
                      "liver_ml": round(_count(mask) * ml, 1)}
    return liver_from_model(model, images, case.filled, settings.min_first_pass_liver_ml, settings.outside_fill)


def _count(mask: sitk.Image) -> int:
    return int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))


def _register_worker(job):
    setup, moving, moving_liver, settings = job
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    result = register_phase(setup, moving, moving_liver, settings)
    return result.transform, result.qa


def _register(case: PredictionCase, images: dict[str, sitk.Image], masks: dict[str, sitk.Image],
              liver: sitk.Image | None, info: ModelInfo, settings: RegistrationSettings, num_processes: int,
              outside_fill: str = "air") -> tuple[dict[str, sitk.Image], dict, dict[str, sitk.Transform]]:
    """The phases registered onto the reference grid (filled phases as copies), the registration record and
    each registered moving phase's transform."""
    ref = info.reference
    fixed = images[ref]
    with single_threaded_itk():
        setup = prepare_fixed(fixed, liver, settings)
    moving = [p for p in info.phases if p in images and p != ref]
    jobs = [(setup, images[p], masks.get(p), settings) for p in moving]
    if num_processes > 1 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
            results = pool.map(_register_worker, jobs)
    else:
        results = [_register_worker(job) for job in jobs]
    registered = {ref: resample_to_reference(fixed, fixed)}
    record: dict[str, Any] = {"mask": setup.mask_kind, "mask_volume_ml": setup.info.get("mask_volume_ml"),
                              "phases": {ref: {"reference": True}}}
    transforms, inside = {}, {}
    for phase, (transform, qa) in zip(moving, results):
        transforms[phase] = transform
        registered[phase] = resample_to_reference(images[phase], fixed, transform)
        inside[phase] = inside_scan(images[phase], fixed, transform)
        record["phases"][phase] = {k: qa[k] for k in QA_KEYS if k in qa}
    registered, outside = fill_outside_scans(registered, inside, info.phases, ref, outside_fill)
    for phase in moving:
        record["phases"][phase]["outside_scan_fraction"] = outside[phase]
    record["outside_fill"] = outside_fill
    for missing, source in case.filled.items():
        registered[missing] = registered[source]
        record["phases"][missing] = {"filled_from": source}
    record["flagged"] = flag_reasons({"mask": setup.mask_kind, "phases": {
        p: qa for p, qa in record["phases"].items() if "filled_from" not in qa}})
    return {p: registered[p] for p in info.phases}, record, transforms


# -------------------------------------------------------------------------------------------------- public


def predict_case(case, model, output_dir: str | os.PathLike | None = None,
                 settings: PredictionSettings = PredictionSettings(), *, num_processes: int = 1,
                 validate: bool = True, device: str = "auto", resume: bool = True) -> CaseResult:
    """Segment one case: ``case`` is a case folder, a {phase: file} mapping or a :class:`PredictionCase`;
    ``model`` a model folder, :class:`ModelInfo` or :class:`Diff4MMModel` (reuse one across cases: its weights
    load once). With ``output_dir`` the segmentation, montage and JSON are written there (and a case finished
    with the same inputs, model and settings is skipped when ``resume``); without, nothing is written.
    ``num_processes``: phases registered in parallel processes. Returns the segmentation on the reference
    phase's original grid and the JSON record."""
    start = time.perf_counter()
    model = _as_model(model, device, settings.tta)
    info = model.info
    case = _as_case(case, info, settings.fill_missing_phases)
    seconds: dict[str, float] = {}
    root = case.files.directory.parent
    if validate:
        validate_case(case.files, info.reference, root, body_threshold_hu=settings.registration.body_threshold_hu)
    inputs = case_input_digests(case.files)
    key = _input_key(inputs, case, info, settings)
    paths = output_paths(Path(output_dir), case.name) if output_dir is not None else None
    if paths is not None and resume:
        done = finished_record(Path(output_dir), case.name, key)
        if done is not None:
            return CaseResult(case.name, done, None, True, paths["segmentation"])
    seconds["validation"] = round(time.perf_counter() - start, 3)

    step = time.perf_counter()
    images = {p: read_image(f, name=_display(f, root)) for p, f in case.files.phases.items()}
    masks = {p: read_image(f, name=_display(f, root)) for p, f in case.files.liver_masks.items()}
    seconds["reading"] = round(time.perf_counter() - step, 3)

    step = time.perf_counter()
    liver, first = _first_pass(case, images, masks, model, settings)
    seconds["first_pass"] = first["seconds"] = round(time.perf_counter() - step, 3)

    step = time.perf_counter()
    registered, registration, transforms = _register(case, images, masks, liver, info, settings.registration,
                                                     num_processes, settings.outside_fill)
    seconds["registration"] = round(time.perf_counter() - step, 3)

    if first["source"] == "model" and settings.refine_first_pass:
        step = time.perf_counter()
        first["refinements"] = []
        for _ in range(settings.refine_first_pass):
            seg = model.predict(stack_phases(registered, info.phases), images[info.reference].GetSpacing(),
                                tta=False)
            refined, found = liver_from_segmentation(seg, images[info.reference], info,
                                                     settings.min_first_pass_liver_ml)
            first["refinements"].append({"tta": False, **found, "used": refined is not None})
            if refined is None:  # no liver on the registered phases either: keep what the last round used
                break
            liver = refined
            registered, registration, transforms = _register(case, images, masks, liver, info,
                                                             settings.registration, num_processes,
                                                             settings.outside_fill)
        if first["mask"] == "body" and registration["mask"] == "liver":
            first["note"] = (f"{first.get('note', 'no liver on the unregistered phases')}; the refinement found the "
                             "liver on the body-registered phases and the case was registered inside it")
        first["mask"] = registration["mask"]
        seconds["refinement"] = round(time.perf_counter() - step, 3)

    step = time.perf_counter()
    fixed = images[info.reference]
    tta = settings.tta and model.tta  # what runs: an opened model's own setting can only switch mirroring off
    seg = model.predict(stack_phases(registered, info.phases), fixed.GetSpacing(), tta=tta)
    segmentation = on_reference_grid(seg, fixed)
    seconds["prediction"] = round(time.perf_counter() - step, 3)

    step = time.perf_counter()
    post: dict[str, Any] = {"enabled": False}
    if settings.postprocessing:
        result = remove_tumors_outside_liver(segmentation, info.liver_label, info.tumor_label, settings.dilation_mm)
        segmentation = result.segmentation
        post = result.to_json(settings.dilation_mm)
    seconds["postprocessing"] = round(time.perf_counter() - step, 3)

    record: dict[str, Any] = {
        "case": case.name, "format_version": FORMAT_VERSION,
        "phases": {p: (_display(case.files.phases[p], root) if p in case.files.phases
                       else f"filled from {case.filled[p]}") for p in info.phases},
        "reference": info.reference, "filled_phases": dict(case.filled),
        "first_pass": first, "registration": registration, "postprocessing": post,
        **segmentation_summary(segmentation, info.liver_label, info.tumor_label),
        "geometry": {"size": list(segmentation.GetSize()), "spacing": list(segmentation.GetSpacing()),
                     "origin": list(segmentation.GetOrigin()), "direction": list(segmentation.GetDirection())},
        "model": info.to_json(), "tta": tta, "settings": settings.to_json(),
    }
    if paths is not None:
        step = time.perf_counter()
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        write_image_atomic(segmentation, paths["segmentation"])
        if settings.montage:
            from ..visualization import montage

            filled = f", {', '.join(f'{m} = copy of {s}' for m, s in case.filled.items())}" if case.filled else ""
            montage(registered, segmentation, paths["montage"], reference=info.reference,
                    title=f"{case.name}: predicted, phases registered to {info.reference}{filled}")
        seconds["writing"] = round(time.perf_counter() - step, 3)
    seconds["total"] = round(time.perf_counter() - start, 3)
    record["seconds"] = seconds
    record["inputs"] = inputs
    record["input_key"] = key
    if paths is not None:
        write_json_atomic(paths["json"], record)  # last: marks the case done
    return CaseResult(case.name, record, segmentation, False, paths["segmentation"] if paths else None, registered,
                      transforms)


def predict_folder(input_dir, output_dir, model, settings: PredictionSettings = PredictionSettings(), *,
                   num_processes: int = 1, device: str = "auto", progress: bool = True) -> list[CaseResult]:
    """Segment every case of ``input_dir`` (or the single case folder ``input_dir``) into ``output_dir``.

    Every case is found and validated against the model's phases before any is segmented (the first problem
    stops the run in one line); finished cases are skipped; the model is loaded once, and only if a case needs
    it. One line on stderr per registration QA flag and per filled phase."""
    from tqdm import tqdm

    model = _as_model(model, device, settings.tta)
    info = model.info
    output_dir = Path(output_dir)
    cases = find_prediction_cases(input_dir, info.phases, info.reference, settings.fill_missing_phases)
    if output_dir.resolve().parent == Path(input_dir).resolve():
        cases = [c for c in cases if c.files.directory.resolve() != output_dir.resolve()]
    for case in tqdm(cases, desc="validating", unit="case", disable=None if progress else True, leave=False):
        validate_case(case.files, info.reference, case.files.directory.parent,
                      body_threshold_hu=settings.registration.body_threshold_hu)
    results = []
    bar = tqdm(cases, desc="predicting", unit="case", disable=None if progress else True)
    for case in bar:
        result = predict_case(case, model, output_dir, settings, num_processes=num_processes, validate=False)
        results.append(result)
        if result.skipped:
            tqdm.write(f"{case.name}: done before, skipped ({output_paths(output_dir, case.name)['json']})",
                       file=sys.stdout)
            continue
        for missing, source in case.filled.items():
            tqdm.write(f"{case.name}: phase {missing} missing, filled with a copy of {source}", file=sys.stderr)
        for reason in result.record["registration"].get("flagged", []):
            tqdm.write(f"warning: {case.name} {reason}: registration QA flagged this phase; check "
                       f"{output_paths(output_dir, case.name)['montage']}", file=sys.stderr)
        if result.record["first_pass"].get("mask") == "body":
            tqdm.write(f"warning: {case.name}: {result.record['first_pass'].get('note', 'no liver found')}",
                       file=sys.stderr)
    return results


__all__ = ["CaseResult", "Diff4MMModel", "PredictionSettings", "on_reference_grid", "predict_case",
           "predict_folder"]
