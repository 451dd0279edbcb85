"""`--shard I/N`: a batch scheduler runs the parts of diff4mm_register at the same time into one dataset, and the
final unsharded run checks completeness; the dataset is byte-identical to one unsharded run."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nnunetv2_diff4mm.phantom import PhantomConfig, write_phantom_dataset
from registration.nnunet_raw import write_registered_dataset
from registration.register import RegistrationSettings
from registration.sharding import Shard

FAST = RegistrationSettings().without_bspline()  # what --no-bspline runs: the partition is the point, not the fit


def _register_cli(phantom: Path, raw: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nnunetv2_diff4mm.cli.register", str(phantom), "-d", "504", "-n", "Sharded",
           "--nnunet-raw", str(raw), "--no-bspline", "--no-montages", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                            errors="replace")


def _finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=600)
    return process.returncode, out, err


def _dataset_bytes(target: Path) -> dict[str, bytes]:
    """Every file nnU-Net reads (images, labels, dataset.json), by path inside the dataset."""
    files = [p for sub in ("imagesTr", "labelsTr", "imagesTs") for p in sorted((target / sub).iterdir())]
    return {str(p.relative_to(target)): p.read_bytes() for p in [*files, target / "dataset.json"]}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_phantom_dataset(root / "phantom", PhantomConfig(seed=3, spacing=(5.0, 5.0, 8.0)), cases=3, test_cases=1,
                          progress=False)
    whole = write_registered_dataset(root / "phantom", 504, "Sharded", root / "raw_whole", settings=FAST,
                                     progress=False)
    return root, whole


def test_partition_is_disjoint_complete_and_the_same_for_every_order():
    names = [f"case_{i:03d}" for i in range(7)]
    parts = [Shard(i, 3).select(names[::-1]) for i in range(3)]
    assert sorted(sum(parts, [])) == names and parts[0] == ["case_000", "case_003", "case_006"]
    assert Shard.parse("1/3") == Shard(1, 3) and str(Shard(1, 3)) == "1/3"
    for bad in ("3/3", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError, match="expected I/N"):
            Shard.parse(bad)


def test_two_shards_at_once_then_the_final_run_give_the_unsharded_dataset_byte_for_byte(phantom):
    root, whole = phantom
    raw = root / "raw_sharded"
    runs = [_register_cli(root / "phantom", raw, "--shard", f"{i}/2") for i in range(2)]  # started together
    results = [_finish(r) for r in runs]
    target = raw / whole.name
    for i, (code, out, err) in enumerate(results):
        assert code == 0, err[-2000:]
        assert f"shard {i}/2: 2 cases registered (2 in this run)" in out and "without --shard" in out
    assert not (target / "dataset.json").exists()  # incomplete until the final run
    assert not list(target.glob(".diff4mm_register*.lock"))  # both released their locks
    code, out, err = _finish(_register_cli(root / "phantom", raw))
    assert code == 0, err[-2000:]
    assert "missing" not in out  # nothing left to do: every case came from a shard
    assert _dataset_bytes(target) == _dataset_bytes(whole)
    assert (target / "diff4mm" / "registration" / "summary.csv").is_file()


def test_the_final_run_registers_and_names_what_no_shard_did(phantom):
    root, whole = phantom
    raw = root / "raw_partial"
    code, out, err = _finish(_register_cli(root / "phantom", raw, "--shard", "1/2"))
    assert code == 0, err[-2000:]
    code, out, err = _finish(_register_cli(root / "phantom", raw))
    assert code == 0, err[-2000:]
    assert "2 cases registered already; registering the 2 missing: case_000, case_002" in out
    assert _dataset_bytes(raw / whole.name) == _dataset_bytes(whole)


def test_overwrite_with_a_shard_is_refused_before_anything_is_written(phantom):
    root, _ = phantom
    raw = root / "raw_refused"
    code, out, err = _finish(_register_cli(root / "phantom", raw, "--shard", "0/2", "--overwrite"))
    assert code == 1 and "--overwrite with --shard 0/2" in err.strip().splitlines()[-1]
    assert not raw.exists() or not any(raw.iterdir())


def _inpaint_cli(raw: Path, out: Path, *extra: str) -> subprocess.Popen:
    import os

    cmd = [sys.executable, "-m", "nnunetv2_diff4mm.cli.inpaint", "-d", "504", "--method", "harmonic+noise",
           "-o", str(out), "-device", "cpu", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                            errors="replace", env={**os.environ, "nnUNet_raw": str(raw)})


def test_inpaint_shards_at_once_then_the_final_run_give_the_unsharded_normal_cts(phantom):
    root, whole = phantom
    raw = whole.parent
    single, sharded = root / "normal_whole", root / "normal_sharded"
    code, _, err = _finish(_inpaint_cli(raw, single))
    assert code == 0, err[-2000:]
    results = [_finish(p) for p in [_inpaint_cli(raw, sharded, "--shard", f"{i}/2") for i in range(2)]]
    assert all(code == 0 for code, _, _ in results), [err[-1000:] for _, _, err in results]
    assert results[0][1].startswith("shard 0/2: 2 normal cases")
    assert not (sharded / "normal.json").exists() and len(list(sharded.glob("normal.shard-*.json"))) == 2
    code, out, err = _finish(_inpaint_cli(raw, sharded))
    assert code == 0, err[-2000:]
    assert not list(sharded.glob("normal.shard-*.json"))  # taken over into normal.json
    for sub in ("imagesTr", "labelsTr", "inpaint_regions"):
        for f in sorted((single / sub).iterdir()):
            assert (sharded / sub / f.name).read_bytes() == f.read_bytes(), f.name
    assert (sharded / "normal.json").read_text(encoding="utf-8") == (single / "normal.json").read_text(
        encoding="utf-8")
