"""Diff4MMTrainer through nnU-Net's own commands on a small registered phantom dataset (real, tiny runs).

Covers: discovery by name, the synthetic mixing fraction (counted from the batch keys), the bundle hash in the
checkpoint, resume with --c, and fallback to real samples when the bundle is broken.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

TRAINERS = Path(__file__).parent / "nnunet_trainers"
DATASET = 502


@pytest.fixture(scope="module")
def nnunet_env(tmp_path_factory):
    """phantom -> diff4mm_register -> CPU plans -> normal CTs (classical fill) -> tiny bundle."""
    from nnunetv2_diff4mm.phantom import PhantomConfig, write_phantom_dataset
    from registration.nnunet_raw import write_registered_dataset
    from registration.register import RegistrationSettings

    root = tmp_path_factory.mktemp("nnunet")
    env = {**os.environ, "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "pre"),
           "nnUNet_results": str(root / "res"), "nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1",
           "nnUNet_extTrainer": str(TRAINERS)}
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    write_phantom_dataset(root / "phantom", PhantomConfig(seed=4, spacing=(5.0, 5.0, 8.0)), cases=3,
                          progress=False)
    raw = write_registered_dataset(root / "phantom", DATASET, "Trainer", root / "raw",
                                   settings=RegistrationSettings().without_bspline(), progress=False)
    subprocess.run([sys.executable, "-m", "nnunetv2_diff4mm.cli.plan_cpu", "-d", str(DATASET), "-np", "1"], env=env, check=True, capture_output=True)
    from synthesis.dataset_io import load_training_cases
    from synthesis.normal_dataset import inpaint_dataset
    from synthesis.training import train_synthesizer

    inpaint_dataset(raw, "median+noise", 8.0, progress=False)
    names, cases = load_training_cases(raw)
    # the shared bundle learnt from all three cases (a classical fill has no training cases of its own), where
    # diff4mm_train_synthesizer writes it by default and the trainer looks: nnUNet_results, as nnU-Net's models
    train_synthesizer(cases, _bundle(root, raw), preset="tiny", device="cpu", progress=False,
                      case_names=names, lineage_cases=[])
    return env, root, raw


def _bundle(root, raw):
    return root / "res" / raw.name / "diff4mm" / "synthesizer"


def _train(env, trainer, *extra, epochs=1, fold="all", check=True):
    cmd = [str(Path(sys.executable).parent / "nnUNetv2_train"), str(DATASET), "3d_fullres", fold, "-tr", trainer, "-p", "Diff4MMCPUPlans",
           "-device", "cpu", *extra]
    result = subprocess.run(cmd, env={**env, "DIFF4MM_TEST_EPOCHS": str(epochs)}, capture_output=True, text=True, encoding="utf-8", errors="replace")
    if not check:
        return result
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout + result.stderr


def _pool(root: Path, trainer: str) -> Path:
    return (root / "pre" / f"Dataset{DATASET:03d}_Trainer" / "diff4mm" / "Diff4MMCPUPlans_3d_fullres"
            / f"pool_{trainer}_foldall_rank0")


def _check_mixed_dataset(root: Path, pool: Path) -> None:
    """The wrapped dataset adds f/(1-f) * n synthetic identifiers and serves them from the pool."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    from nnunetv2_diff4mm.training.mixed_dataset import SyntheticMixDataset, is_synthetic, synthetic_count

    folder = root / "pre" / f"Dataset{DATASET:03d}_Trainer" / "Diff4MMCPUPlans_3d_fullres"
    real = infer_dataset_class(str(folder))(str(folder), ["case_000", "case_001", "case_002"])
    mixed = SyntheticMixDataset(real, pool, 0.75)
    assert synthetic_count(3, 0.75) == 9 and len(mixed.identifiers) == 12
    data, seg, _, props = mixed.load_case(next(i for i in mixed.identifiers if is_synthetic(i)))
    assert data.shape[0] == 4 and (seg == 2).any() and 2 in props["class_locations"]
    empty = SyntheticMixDataset(real, pool.parent / "no_pool_here", 0.5)  # no samples: a real case is served
    data, seg, _, _ = empty.load_case(next(i for i in empty.identifiers if is_synthetic(i)))
    assert data.shape[0] == 4


def _fold(root: Path, trainer: str) -> Path:
    return root / "res" / f"Dataset{DATASET:03d}_Trainer" / f"{trainer}__Diff4MMCPUPlans__3d_fullres" / "fold_all"


def test_trains_with_counted_synthetic_fraction_and_records_bundle_then_resumes(nnunet_env):
    env, root, raw = nnunet_env
    out = _train(env, "Diff4MMTrainer_Test")
    counts = [tuple(map(int, m)) for m in re.findall(r"synthetic fraction used [\d.]+ \((\d+)/(\d+) samples\)", out)]
    assert len(counts) == 1
    synthetic, total = counts[0]
    assert total == 8 and 0 < synthetic < total  # 3 real + 3 synthetic identifiers: p = 0.5 per sample
    # progress inside the epoch on a CPU (stderr; nnU-Net logs once per epoch): 4 iterations
    assert re.search(r"epoch 0: +100%\|[#]+\| 4/4", out), out[-2000:]
    fold = _fold(root, "Diff4MMTrainer_Test")
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    logging = checkpoint["logging"]
    from nnunetv2_diff4mm.training.trainer import bundle_fingerprint

    assert logging["diff4mm_bundle_sha256"] == [bundle_fingerprint(_bundle(root, raw))]
    assert logging["diff4mm_synthetic_fraction"] == [pytest.approx(synthetic / total)]
    pool = _pool(root, "Diff4MMTrainer_Test")
    with np.load(sorted(pool.glob("sample_*.npz"))[0]) as sample:
        assert (sample["seg"] == 2).any()  # pooled samples carry synthesised tumors
    _check_mixed_dataset(root, pool)

    # resume: drop the final checkpoint and continue one more epoch from checkpoint_latest
    (fold / "checkpoint_final.pth").unlink()
    out = _train(env, "Diff4MMTrainer_Test", "--c", epochs=2)
    assert "Epoch 1" in out and "Epoch 0\n" not in out
    logging = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["logging"]
    assert len(logging["diff4mm_synthetic_fraction"]) == 2 and len(logging["diff4mm_bundle_sha256"]) == 2


def test_broken_bundle_falls_back_to_real_samples(nnunet_env, tmp_path):
    env, root, raw = nnunet_env
    broken = tmp_path / "bundle"
    shutil.copytree(_bundle(root, raw), broken)
    weights = next(broken.rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated file: hash mismatch
    out = _train({**env, "DIFF4MM_BUNDLE": str(broken)}, "Diff4MMTrainer_TestFallback")
    assert "Diff4MM: synthesis disabled, training on real samples only" in out
    assert "synthetic fraction used 0.000 (0/8 samples)" in out
    assert (_fold(root, "Diff4MMTrainer_TestFallback") / "checkpoint_final.pth").is_file()


def test_inline_prefill_keeps_the_trainers_threads_and_status_counts_continue(tmp_path):
    """The prefill runs produce() inside the trainer: it must not set the trainer's torch threads (one thread
    cost a 2-core CPU training ~25 % epoch time), and a producer continues the folder's counts."""
    import json

    from nnunetv2_diff4mm.training.synthetic_pool import PoolSettings, produce, read_status

    (tmp_path / "status.json").write_text(json.dumps({"produced": 3, "seconds": 1.5}), encoding="utf-8")
    settings = PoolSettings(folder=str(tmp_path), bundle=str(tmp_path / "no_bundle"), normal_files=[],
                            intensity=[], foreground_labels=[2])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        produce(settings, max_samples=1)  # fails to load the bundle, and reports it in status.json
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    status = read_status(tmp_path)
    assert status["produced"] == 3 and status["seconds"] == 1.5
    assert status["error"] and "no_bundle" in status["error"] + status["traceback"]


def test_refuses_a_bundle_trained_on_the_folds_validation_cases(nnunet_env):
    """Fold F must not train with the shared bundle (it learnt from fold F's validation case): one line, exit 1,
    nothing trained. (That a bundle trained with `diff4mm_train_synthesizer -f F` is found in synthesizer_foldF
    and used is proved by tests/test_benchmark.py::test_arm_c_models_see_only_the_jobs_training_cases, which
    trains one through the same command.)"""
    import json

    from nnunetv2_diff4mm.splits import nnunet_default_splits

    env, root, raw = nnunet_env
    pre = root / "pre" / f"Dataset{DATASET:03d}_Trainer"
    splits = nnunet_default_splits(["case_000", "case_001", "case_002"])  # 3 folds (nnU-Net needs 5 cases)
    (pre / "splits_final.json").write_text(json.dumps(splits), encoding="utf-8")
    fold = next(i for i, s in enumerate(splits) if "case_000" in s["train"])  # case_000 has this phantom's tumor
    result = _train(env, "Diff4MMTrainer_Test", fold=str(fold), check=False)
    assert result.returncode == 1, (result.stdout + result.stderr)[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: Diff4MMTrainer fold {fold}: ") and str(_bundle(root, raw)) in last
    assert f"({splits[fold]['val'][0]})" in last and "DIFF4MM_ALLOW_LEAK" in last and f"-f {fold}" in last
    assert "Traceback" not in result.stderr
    folder = (root / "res" / f"Dataset{DATASET:03d}_Trainer" / "Diff4MMTrainer_Test__Diff4MMCPUPlans__3d_fullres"
              / f"fold_{fold}")
    assert not list(folder.glob("checkpoint_*.pth"))
