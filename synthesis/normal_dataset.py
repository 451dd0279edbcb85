"""Stage 2 over a whole nnU-Net raw dataset: write the normal (tumor-free) multi-phase CT of every labelled case.

Output, inside the dataset folder (nnU-Net ignores it; see nnunetv2_diff4mm/conventions.py):
    diff4mm/normal/imagesTr/<case>_000k.nii.gz   tumor-free phases, int16 HU, on the registered grid
    diff4mm/normal/labelsTr/<case>.nii.gz        liver mask of the normal case (1 = liver incl. former tumor)
    diff4mm/normal/inpaint_regions/<case>.nii.gz the dilated tumor region that was filled
    diff4mm/normal/qa/<case>.png                 before/after montage
    diff4mm/normal/normal.json                   settings and, per case and phase, the "no tumor remains" check
A case is finished when its liver mask exists (written last); re-running skips finished cases; other settings
than those in normal.json are refused unless `overwrite=True`.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from registration.image_io import write_image_atomic, write_json_atomic

from .dataset_io import NORMAL_SUBDIR, DatasetError, load_case, read_dataset_json, select_cases
from .inpainting import CLASSICAL_METHODS, _check_phases, inpaint_case, inpainter_training_cases, load_inpainter

RECORD = "normal.json"


def _model_identity(model_or_method) -> str:
    if isinstance(model_or_method, str) and model_or_method in CLASSICAL_METHODS:
        return f"classical:{model_or_method}"
    folder = Path(model_or_method)
    weights = sorted(folder.rglob("*.safetensors"))
    digest = hashlib.sha256(b"".join(w.read_bytes() for w in weights)).hexdigest() if weights else "none"
    return f"model:{digest}"


def tumor_removal_check(original: dict[str, sitk.Image], normal: dict[str, sitk.Image], label: sitk.Image,
                        region: sitk.Image) -> dict[str, dict]:
    """Per phase: mean HU inside the filled region before and after, and the healthy-liver mean and std.

    `ok` means the filled region's mean lies within the healthy liver's mean ± 2 std (no tumor remains).
    """
    lab = sitk.GetArrayViewFromImage(label)
    reg = sitk.GetArrayViewFromImage(region) > 0
    healthy = (lab == 1) & ~reg
    out = {}
    for phase, image in normal.items():
        after = sitk.GetArrayViewFromImage(image).astype(np.float32)
        before = sitk.GetArrayViewFromImage(original[phase]).astype(np.float32)
        mu, sd = float(after[healthy].mean()), float(after[healthy].std())
        inside_liver = reg & (lab > 0)
        fill = float(after[inside_liver].mean()) if inside_liver.any() else float("nan")
        out[phase] = {"region_mean_before": float(before[inside_liver].mean()) if inside_liver.any() else None,
                      "region_mean_after": fill, "healthy_mean": mu, "healthy_std": sd,
                      "ok": bool(not inside_liver.any() or abs(fill - mu) <= 2 * sd)}
    return out


def normal_lineage(normal_dir) -> set[str] | None:
    """Every case whose data went into the normal CTs of `normal_dir` besides each CT's own case: the training
    cases of the inpainter that made them (empty for a classical fill). None when normal.json does not say
    (made before it was recorded, or no normal.json)."""
    path = Path(normal_dir) / RECORD
    if not path.is_file():
        return None
    settings = json.loads(path.read_text(encoding="utf-8")).get("settings", {})
    if settings.get("method", "").startswith("classical:"):
        return set()
    cases = settings.get("inpainter_cases")
    return set(cases) if cases is not None else None


def inpaint_dataset(dataset_dir, model_or_method, dilation_mm: float, device: str = "cpu", overwrite: bool = False,
                    progress: bool = True, montage_fn: Callable | None = None, cases: list[str] | None = None,
                    out_dir=None, shard=None, grain: bool = True, structure: str = "membrane") -> dict:
    """Inpaint the labelled cases of a registered dataset (all, or `cases`) into `out_dir` (default
    DATASET/diff4mm/normal); returns the record written to normal.json. The record names the training cases of
    the inpainter (see `normal_lineage`).

    ``shard`` (registration.sharding.Shard): only that part of the cases, at the same time as the other shards,
    into the same folder; its record goes to normal.shard-I-of-N.json. The final run without a shard takes the
    shards' records over (same settings only), inpaints whatever is missing and writes normal.json.
    ``grain``, ``structure``: see :func:`synthesis.inpainting.fill_region` (learned model only; recorded).
    ``montage_fn(registered, normal, region, path, title=..., names=(...))`` (phase -> image dicts, the replaced
    region) draws each case's QA PNG; the CLI passes nnunetv2_diff4mm.visualization.change_montage."""
    from tqdm import tqdm

    dataset_dir = Path(dataset_dir)
    data = read_dataset_json(dataset_dir)
    phases, ending = list(data["diff4mm"]["phases"]), data.get("file_ending", ".nii.gz")
    cases = select_cases(dataset_dir, cases)
    if shard is not None:
        if overwrite:
            raise DatasetError(f"--overwrite with --shard {shard}: redoing the folder would delete the other "
                               "shards' work; run the --overwrite once without --shard, then the shards")
        cases = shard.select(cases)
    for case in cases:  # every input exists before anything is written
        for f in [dataset_dir / "imagesTr" / f"{case}_{k:04d}{ending}" for k in range(len(phases))]:
            if not f.is_file():
                raise DatasetError(f"{f}: missing phase {phases[int(f.name[-len(ending) - 4:-len(ending)])]} "
                                   f"of {case}")
    classical = isinstance(model_or_method, str) and model_or_method in CLASSICAL_METHODS
    model = model_or_method if classical else load_inpainter(model_or_method, device)  # fails now, not later
    if not classical:
        _check_phases(model.config.in_phases, phases)
    out = Path(out_dir) if out_dir is not None else dataset_dir / NORMAL_SUBDIR
    settings = {"method": _model_identity(model_or_method), "dilation_mm": float(dilation_mm), "phases": phases}
    if not classical:
        settings["inpainter_cases"] = inpainter_training_cases(model_or_method)
        settings["grain"] = "native" if grain else "none"  # synthesis/grain.py
        settings["structure"] = structure  # "membrane": coarse structure from the harmonic fill (fill_region)
    main_record = out / RECORD
    record_path = main_record if shard is None else out / f"normal.{shard.tag}.json"
    record = {"settings": settings, "cases": {}}
    if shard is not None and main_record.is_file():  # a finished folder made with other settings: refuse
        finished = json.loads(main_record.read_text(encoding="utf-8"))
        stored = finished.get("settings")
        if stored == settings:  # its cases of this shard are done
            record["cases"].update({c: v for c, v in finished.get("cases", {}).items() if c in cases})
        else:
            changed = next(k for k in settings if (stored or {}).get(k) != settings[k])
            raise DatasetError(f"{main_record}: normal CTs were made with {changed}={(stored or {}).get(changed)!r}, "
                               f"not {settings[changed]!r}; redo them once without --shard (--overwrite)")
    if record_path.is_file():
        stored = json.loads(record_path.read_text(encoding="utf-8"))
        if stored.get("settings") != settings:
            if not overwrite:
                changed = next(k for k in settings if stored["settings"].get(k) != settings[k])
                raise DatasetError(f"{record_path}: normal CTs were made with {changed}="
                                   f"{stored['settings'].get(changed)!r}, not {settings[changed]!r}; pass "
                                   "--overwrite to redo them")
            for sub in ("imagesTr", "labelsTr", "inpaint_regions", "qa"):
                for f in (out / sub).glob("*"):
                    f.unlink()
        else:
            record = stored
    for sub in ("imagesTr", "labelsTr", "inpaint_regions", "qa"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    shard_records = sorted(out.glob("normal.shard-*-of-*.json")) if shard is None else []
    for path in shard_records:  # the final run: take over what the shards finished
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("settings") != settings:
            raise DatasetError(f"{path}: a shard made these normal CTs with other settings than this run's; "
                               "re-run that shard with this run's settings, or delete the file and its cases")
        for case, checks in stored.get("cases", {}).items():
            if case in cases and (out / "labelsTr" / f"{case}{ending}").is_file():
                record["cases"].setdefault(case, checks)
    missing = [c for c in cases if c not in record["cases"]]
    if shard_records and missing:
        print(f"{len(cases) - len(missing)} cases inpainted by shards; inpainting the {len(missing)} missing: "
              f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
    if shard_records:
        _write_record(record_path, record)
        for path in shard_records:
            path.unlink()
    for case in tqdm(cases, desc="inpainting" + (f" (shard {shard})" if shard else ""), unit="case",
                     disable=not progress):
        liver_path = out / "labelsTr" / f"{case}{ending}"
        if liver_path.is_file() and case in record["cases"]:
            continue
        target, _, label, _ = load_case(dataset_dir, case, normal=False)
        normal, region, liver = inpaint_case(target, label, model, dilation_mm, device, grain=grain,
                                             structure=structure)
        for k, p in enumerate(phases):
            write_image_atomic(normal[p], out / "imagesTr" / f"{case}_{k:04d}{ending}")
        write_image_atomic(region, out / "inpaint_regions" / f"{case}{ending}")
        if montage_fn is not None:
            montage_fn(target, normal, region, out / "qa" / f"{case}.png",
                       title=f"{case}: the replaced region (tumors dilated by {dilation_mm:g} mm) per phase",
                       names=("registered", "normal"))
        record["cases"][case] = tumor_removal_check(target, normal, label, region)
        write_image_atomic(liver, liver_path)
        _write_record(record_path, record)
    return record


def _write_record(path: Path, record: dict) -> None:
    """Atomically, with the cases in name order (a sharded and an unsharded run write the same file)."""
    write_json_atomic(path, {**record, "cases": dict(sorted(record["cases"].items()))})
