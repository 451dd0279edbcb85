"""Acceptance check for issue #18 ("nothing silently wrong, nothing lost"): feed the real commands broken inputs
and bad flags, as subprocesses, and check that each is rejected with one line (no traceback).

A small phantom (2 labelled cases, 8 x 8 x 12 mm) is made with ``diff4mm_phantom``; each trial copies one case
and corrupts it in one of the issue's ways. An input trial passes when the pipeline rejects it before anything
is built on it: ``diff4mm_validate`` exits non-zero, or else ``diff4mm_register`` does (1: bad input, 3:
registration QA flagged a phase and no dataset.json was written). A clean copy must be accepted (control). Flag
and dataset trials run ``diff4mm_inpaint`` / ``diff4mm_register`` with bad arguments or a damaged registered
dataset and expect their documented exit code. Every rejection must be one stderr line without "Traceback".

Prints a markdown table (trial, command, exit code, first stderr line, files written, verdict) and the totals.
It is a script, not a test (~2-3 min on one core)::

    python benchmarks/fault_injection.py [--work DIR] [--keep]
"""
from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

BIN = Path(sys.executable).parent
PHASES = ("NC", "AP", "PVP", "DELAY")


def command(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


def run(args, env) -> tuple[int, str]:
    done = subprocess.run([command(args[0]), *map(str, args[1:])], env=env, capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=600)
    return done.returncode, done.stderr


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


# ---- corruptions of one case folder (in place) -------------------------------------------------------------------

def truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def edit_image(path: Path, fn) -> None:
    image = sitk.ReadImage(str(path))
    out = fn(image)
    sitk.WriteImage(out, str(path), True)


def constant(image):
    out = sitk.Image(image.GetSize(), image.GetPixelID()) + 40
    out.CopyInformation(image)
    return sitk.Cast(out, image.GetPixelID())


def spacing_x10(image):
    image.SetSpacing([s * 10 for s in image.GetSpacing()])
    return image


def origin_200(image):
    image.SetOrigin([image.GetOrigin()[0] + 200.0, *image.GetOrigin()[1:]])
    return image


def nan_voxels(image):
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    array.flat[:: max(1, array.size // 50)] = np.nan
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def wrong_ending(path: Path) -> None:
    """A plain .nii file under a .nii.gz name."""
    image = sitk.ReadImage(str(path))
    plain = path.with_name("plain.nii")
    sitk.WriteImage(image, str(plain), False)
    os.replace(plain, path)


def header_lies(path: Path) -> None:
    """The NIfTI header claims twice the slices the (well-formed, gzip-complete) file holds."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    (slices,) = struct.unpack_from("<h", raw, 46)  # dim[3]
    struct.pack_into("<h", raw, 46, slices * 2)
    path.write_bytes(gzip.compress(bytes(raw)))


def duplicate(case: Path) -> None:
    shutil.copy(case / "AP.nii.gz", case / "DELAY.nii.gz")


INPUT_TRIALS = {
    "clean copy (control, must be accepted)": None,
    "truncated phase .nii.gz (50 %)": lambda c: truncate(c / "AP.nii.gz"),
    "truncated label (50 %)": lambda c: truncate(c / "label.nii.gz"),
    "constant phase": lambda c: edit_image(c / "AP.nii.gz", constant),
    "spacing x10 on one phase": lambda c: edit_image(c / "NC.nii.gz", spacing_x10),
    "origin +200 mm on one phase": lambda c: edit_image(c / "DELAY.nii.gz", origin_200),
    "NaN voxels": lambda c: edit_image(c / "NC.nii.gz", nan_voxels),
    "phase duplicated under two names": duplicate,
    ".nii file named .nii.gz": lambda c: wrong_ending(c / "AP.nii.gz"),
    "header lies (dim[3] doubled)": lambda c: header_lies(c / "NC.nii.gz"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="diff4mm_faults_"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (work / key).mkdir(exist_ok=True)
        env[key] = str(work / key)
    env.pop("DIFF4MM_DEBUG", None)
    started = time.time()
    rows = []

    phantom = work / "phantom"
    if not (phantom / "case_000").is_dir():
        code, err = run(["diff4mm_phantom", "-o", phantom, "--cases", "1", "--spacing", 8, 8, 12], env)
        if code:
            print(f"phantom failed: {err}", file=sys.stderr)
            return 1

    def record(trial, cmd, code, err, files, ok):
        # tqdm progress bars are not messages; argparse (exit 2) prints its usage block above its one error line
        lines = [line for line in err.splitlines() if line.strip() and not re.search(r"\d+%\|", line)]
        if code == 2:
            lines = [line for line in lines if ": error: " in line]
        lines = [line for line in lines if not line.startswith("warning: ")] or lines  # per-case QA warnings
        one_line = len(lines) <= 1 and "Traceback" not in err
        first = lines[0] if lines else ""
        verdict = "pass" if ok and (code == 0 or one_line) else ("FAIL (traceback/multi-line)" if ok else "FAIL")
        rows.append((trial, cmd, code, first, files, verdict))

    registered = None
    for n, (trial, corrupt) in enumerate(INPUT_TRIALS.items()):
        folder = work / f"input_{n:02d}"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(phantom / "case_000", folder / "case_000")
        if corrupt is not None:
            corrupt(folder / "case_000")
        code, err = run(["diff4mm_validate", folder], env)
        if code:  # rejected before anything is written
            record(trial, "diff4mm_validate", code, err, 0, corrupt is not None and code == 1)
            continue
        raw = work / f"raw_{n:02d}"
        code, err = run(["diff4mm_register", folder, "-d", 900 + n, "-n", "Fault", "--nnunet-raw", raw,
                         "--no-montages"], env)
        files = count_files(raw)
        if corrupt is None:
            record(trial, "diff4mm_validate + diff4mm_register", code, err, files, code == 0)
            registered = (raw, 900 + n) if code == 0 else None
        else:
            dataset_json = list(raw.glob("Dataset*/dataset.json"))
            record(trial, "diff4mm_register (validate accepted it)", code, err, files,
                   code in (1, 3) and not dataset_json)

    # ---- flags and damaged registered datasets -------------------------------------------------------------
    flag_env = dict(env)
    if registered is not None:
        raw, dataset_id = registered
        flag_env["nnUNet_raw"] = str(raw)
        dataset = next(raw.glob(f"Dataset{dataset_id}_*"))
        trials = [
            ("--dilation-mm nan", ["diff4mm_inpaint", "-d", dataset_id, "--method", "median", "--dilation-mm", "nan"],
             2, flag_env),
            ("-d abc (not a number)", ["diff4mm_inpaint", "-d", "abc", "--method", "median"], 1, flag_env),
            ("-d 777 (no such dataset)", ["diff4mm_inpaint", "-d", 777, "--method", "median"], 1, flag_env),
            ("nnUNet_raw unset", ["diff4mm_inpaint", "-d", dataset_id, "--method", "median"], 1,
             {k: v for k, v in flag_env.items() if k != "nnUNet_raw"}),
            ("register -d abc", ["diff4mm_register", work / "input_00", "-d", "abc", "-n", "X"], 2, flag_env),
        ]
        damaged = raw / f"Dataset{dataset_id + 50}_Damaged"
        shutil.copytree(dataset, damaged)
        image = sorted((damaged / "imagesTr").glob("*_0001.nii.gz"))[0]
        truncate(image)
        trials.append(("truncated imagesTr file of a registered dataset",
                       ["diff4mm_inpaint", "-d", dataset_id + 50, "--method", "median"], 1, flag_env))
        nojson = raw / f"Dataset{dataset_id + 51}_BadJson"
        shutil.copytree(dataset, nojson)
        (nojson / "dataset.json").write_text("{ not json", encoding="utf-8")
        trials.append(("dataset.json not JSON", ["diff4mm_inpaint", "-d", dataset_id + 51, "--method", "median"], 1,
                       flag_env))
        for trial, cmd, expected, trial_env in trials:
            out = Path(trial_env.get("nnUNet_raw", raw))
            before = count_files(out)
            code, err = run(cmd, trial_env)
            record(trial, " ".join(map(str, cmd[:1])), code, err, count_files(out) - before, code == expected)

    print("| trial | command | exit | first line of stderr | files written | verdict |")
    print("| --- | --- | ---: | --- | ---: | --- |")
    for trial, cmd, code, first, files, verdict in rows:
        first = first.replace(str(work), "WORK").replace("|", "\\|")
        if len(first) > 220:
            first = first[:217] + "..."
        print(f"| {trial} | {cmd} | {code} | {first} | {files} | {verdict} |")
    passed = sum(r[-1] == "pass" for r in rows)
    print(f"\n{len(rows)} trials, {passed} as expected ({time.time() - started:.0f} s)")
    if not args.keep and not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if passed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
