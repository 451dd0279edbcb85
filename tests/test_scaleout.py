"""Scale-out (issue #16): the multi-process paths, run for real on the CPU with tiny inputs.

- the producer gets the trainer's full device string (cuda:1 under DDP rank 1), checked without a GPU;
- two processes filling one cold normal-CT cache at the same time both succeed, the cache intact and complete;
- forked/spawned augmentation workers draw different synthetic slot streams, reproducible per (seed, rank, worker);
- under `accelerate launch` the configured synthesizer batch is the global batch (per-process share);
- `--c` refuses to continue a checkpoint that recorded another bundle's hash.
"""
from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import torch

# ---- helpers: a minimal but real nnU-Net plan (nnU-Net's own PlansManager and DefaultPreprocessor run on it) ----

DATASET_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "file_ending": ".nii.gz",
                "numTraining": 1}


def _plans() -> dict:
    resample = "resample_data_or_seg_to_shape"
    return {
        "dataset_name": "Dataset990_Scaleout", "plans_name": "TinyPlans", "image_reader_writer": "SimpleITKIO",
        "original_median_spacing_after_transp": [2.0, 2.0, 2.0], "original_median_shape_after_transp": [16, 16, 16],
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "experiment_planner_used": "test",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {"mean": 100.0, "std": 50.0, "percentile_00_5": -100.0,
                                                              "percentile_99_5": 300.0, "max": 400.0, "min": -200.0,
                                                              "median": 100.0}},
        "configurations": {"3d_fullres": {
            "data_identifier": "TinyPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
            "patch_size": [16, 16, 16], "median_image_size_in_voxels": [16, 16, 16], "spacing": [2.0, 2.0, 2.0],
            "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False], "batch_dice": False,
            "resampling_fn_data": resample, "resampling_fn_seg": resample, "resampling_fn_probabilities": resample,
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                   "force_separate_z": None},
            "architecture": {"network_class_name": "unused", "arch_kwargs": {}, "_kw_requires_import": []}}},
    }


def _write_normal_cases(folder: Path, n: int) -> list[str]:
    import SimpleITK as sitk

    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        rng = np.random.default_rng(i)
        image = sitk.GetImageFromArray(rng.normal(100, 50, (20, 24, 24)).astype(np.float32))
        image.SetSpacing((1.5, 1.5, 2.5))
        liver = np.zeros((20, 24, 24), np.uint8)
        liver[4:16, 5:19, 5:19] = 1
        label = sitk.GetImageFromArray(liver)
        label.CopyInformation(image)
        sitk.WriteImage(image, str(folder / "imagesTr" / f"case_{i:03d}_0000.nii.gz"))
        sitk.WriteImage(label, str(folder / "labelsTr" / f"case_{i:03d}.nii.gz"))
        names.append(f"case_{i:03d}")
    return names


def _fill_cache(normal_dir: str, cases: list[str], cache: str, barrier, result: str) -> None:
    """One writer (a spawned process: its own interpreter, as a second fold's trainer would be)."""
    torch.set_num_threads(1)
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_diff4mm.training.normal_cases import preprocess_normal_cases

    plans = PlansManager(_plans())
    configuration = plans.get_configuration("3d_fullres")
    barrier.wait(timeout=120)  # both start writing at the same moment
    out = preprocess_normal_cases(Path(normal_dir), cases, 1, ".nii.gz", Path(cache), plans, configuration,
                                  DATASET_JSON)
    Path(result).write_text(json.dumps([str(p) for p in out]), encoding="utf-8")


# ---- 1. the producer runs on the trainer's own device ----------------------------------------------------------

def test_pool_settings_keep_the_ranks_cuda_index_without_a_gpu(tmp_path):
    """nnU-Net's DDP rank 1 trains on cuda:1; its background producer must synthesise there too (not on cuda:0,
    which `device.type` alone gave), with the GPU duty cycle; the CPU keeps the CPU duty."""
    from nnunetv2_diff4mm.training.synthetic_pool import PoolSettings
    from nnunetv2_diff4mm.training.trainer import Diff4MMTrainer, pool_settings
    from synthesis.devices import resolve_device

    common = dict(folder=tmp_path, bundle=tmp_path / "bundle", normal_files=[tmp_path / "a.npz"], intensity=[],
                  foreground_labels=[2], size=4, seed=7, duty_cpu=Diff4MMTrainer.synthesis_duty_cpu,
                  duty_gpu=Diff4MMTrainer.synthesis_duty_gpu)
    gpu = pool_settings(device=torch.device("cuda", 1), **common)
    assert isinstance(gpu, PoolSettings) and gpu.device == "cuda:1"
    assert gpu.duty == Diff4MMTrainer.synthesis_duty_gpu and gpu.seed == 7
    cpu = pool_settings(device=torch.device("cpu"), **common)
    assert cpu.device == "cpu" and cpu.duty == Diff4MMTrainer.synthesis_duty_cpu
    # the string survives the trip to the spawned producer and is what Synthesizer.from_bundle -> load_bundle
    # parses: it names GPU 1, not GPU 0
    import pickle

    assert torch.device(pickle.loads(pickle.dumps(gpu)).device) == torch.device("cuda", 1)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            resolve_device(gpu.device)


# ---- 2. one cold cache, two writers ------------------------------------------------------------------------------

def test_two_processes_fill_one_cold_normal_cache_at_once(tmp_path):
    names = _write_normal_cases(tmp_path / "normal", 5)
    cache = tmp_path / "cache"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    # two folds: overlapping but different training cases, as nnU-Net's folds are
    subsets = [names[:4], names[1:]]
    procs = [ctx.Process(target=_fill_cache, args=(str(tmp_path / "normal"), subset, str(cache), barrier,
                                                    str(tmp_path / f"result{i}.json")))
             for i, subset in enumerate(subsets)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0]
    for i, subset in enumerate(subsets):
        returned = json.loads((tmp_path / f"result{i}.json").read_text(encoding="utf-8"))
        assert [Path(p).stem for p in returned] == subset
    # intact: every case loads, and equals what one writer alone makes of it
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_diff4mm.training.normal_cases import preprocess_normal_cases

    plans = PlansManager(_plans())
    alone = preprocess_normal_cases(tmp_path / "normal", names[:1], 1, ".nii.gz", tmp_path / "alone", plans,
                                    plans.get_configuration("3d_fullres"), DATASET_JSON)[0]
    for name in names:
        with np.load(cache / f"{name}.npz") as f:
            assert f["data"].dtype == np.float32 and f["seg"].shape[1:] == f["data"].shape[1:]
            if name == names[0]:
                with np.load(alone) as ref:
                    assert all(np.array_equal(f[k], ref[k]) for k in ref.files)
    # complete: no temporary left behind, the manifest lists every cached case
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == \
        sorted([f"{n}.npz" for n in names] + ["cases.json"])
    assert json.loads((cache / "cases.json").read_text(encoding="utf-8")) == names


# ---- 3. per-worker synthetic slot streams -----------------------------------------------------------------------

class _RealCases:
    """Stands in for nnU-Net's dataset of real cases (only identifiers and load_case are used)."""

    identifiers = ["case_000", "case_001"]

    def load_case(self, identifier):
        return np.zeros((1, 2, 2, 2), np.float32), np.zeros((1, 2, 2, 2), np.int16), None, {"real": identifier}


def _draw_slots(dataset, n: int, queue) -> None:
    """What a batchgenerators worker does with its copy of the dataset: load synthetic identifiers."""
    queue.put([dataset.load_case(dataset.identifiers[-1])[3]["diff4mm_source"] for _ in range(n)])


def _worker_streams(dataset, names, n: int = 24) -> list[list[str]]:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_draw_slots, args=(dataset, n, queue), name=name) for name in names]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    return sorted(results)  # order of arrival is not fixed; compared as sets of streams below


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    from nnunetv2_diff4mm.training.synthetic_pool import save_sample

    folder = tmp_path_factory.mktemp("pool")
    for i in range(16):
        save_sample(folder, i, {"data": np.zeros((1, 2, 2, 2), np.float32), "seg": np.zeros((1, 2, 2, 2), np.int16),
                                "class_locations": {2: np.zeros((0, 4), int)}, "source": f"slot{i:02d}"})
    return folder


def test_augmentation_workers_draw_different_slots_and_the_seed_changes_the_stream(pool):
    """batchgenerators forks one copy of the dataset per worker (multiprocessing.Process, fork on Linux); a
    spawned worker gets a pickled copy instead, here unpickled in a forked process (spawning costs an interpreter
    start per worker, too slow for this suite)."""
    import pickle

    from nnunetv2_diff4mm.training.mixed_dataset import SyntheticMixDataset

    workers = ["Process-1", "Process-2"]
    dataset = SyntheticMixDataset(_RealCases(), pool, 0.5, seed=3, rank=0)
    dataset.load_case(dataset.identifiers[-1])  # the trainer's process drew first: its state must not be inherited
    first = _worker_streams(dataset, workers)
    assert first[0] != first[1]  # two workers: two slot streams
    assert _worker_streams(dataset, workers) == first  # same seed, rank and workers: the same streams
    assert _worker_streams(pickle.loads(pickle.dumps(dataset)), workers) == first  # a pickled copy too
    other_seed = _worker_streams(SyntheticMixDataset(_RealCases(), pool, 0.5, seed=4, rank=0), workers)
    other_rank = _worker_streams(SyntheticMixDataset(_RealCases(), pool, 0.5, seed=3, rank=1), workers)
    assert not set(map(tuple, other_seed)) & set(map(tuple, first))
    assert not set(map(tuple, other_rank)) & set(map(tuple, first))


# ---- 4. accelerate: the configured batch is the global batch -----------------------------------------------------

def test_synthesizer_batch_is_global_under_accelerate():
    from synthesis.training import per_process_batch

    assert per_process_batch(8, 1, "unet_batch") == 8
    assert per_process_batch(8, 2, "unet_batch") == 4
    assert per_process_batch(12, 4, "ae_batch") == 3
    with pytest.raises(ValueError, match=r"unet_batch 6 .* 4 processes"):
        per_process_batch(6, 4, "unet_batch")


# ---- 5. --c with another bundle ------------------------------------------------------------------------------------

def test_continue_refuses_a_checkpoint_recorded_with_another_bundle(tmp_path, monkeypatch):
    """A checkpoint as nnU-Net writes it (its MetaLogger's logging, through torch.save/load) that recorded bundle A:
    continuing with bundle B stops with one line naming both hashes and the override; the same bundle, a
    checkpoint without synthesis, and DIFF4MM_ALLOW_BUNDLE_CHANGE=1 continue."""
    from nnunetv2.training.logging.nnunet_logger import MetaLogger

    from nnunetv2_diff4mm.training.trainer import LOG_KEYS, refuse_bundle_change

    a, b = "a" * 64, "b" * 64
    logger = MetaLogger(str(tmp_path), False)
    for key in LOG_KEYS:
        logger.local_logger.my_fantastic_logging.setdefault(key, [])
    for epoch, sha in enumerate(["", a, a]):  # epoch 0 ran on real samples only (synthesis was disabled)
        logger.log("diff4mm_bundle_sha256", sha, epoch)
    torch.save({"logging": logger.get_checkpoint()}, tmp_path / "checkpoint_latest.pth")
    resumed = MetaLogger(str(tmp_path), True)
    resumed.load_checkpoint(torch.load(tmp_path / "checkpoint_latest.pth", weights_only=False)["logging"])

    monkeypatch.delenv("DIFF4MM_ALLOW_BUNDLE_CHANGE", raising=False)
    lines = []
    with pytest.raises(SystemExit) as exit_info:
        refuse_bundle_change(resumed, b, lines.append)
    message = str(exit_info.value)
    assert "\n" not in message and message.startswith("error: ")
    assert a in message and b in message and "DIFF4MM_ALLOW_BUNDLE_CHANGE=1" in message
    assert lines and a in lines[0]
    refuse_bundle_change(resumed, a, lines.append)  # same bundle: continues
    refuse_bundle_change(MetaLogger(str(tmp_path), False), b, lines.append)  # fresh start: nothing recorded
    monkeypatch.setenv("DIFF4MM_ALLOW_BUNDLE_CHANGE", "1")
    lines.clear()
    refuse_bundle_change(resumed, b, lines.append)
    assert len(lines) == 1 and "DIFF4MM_ALLOW_BUNDLE_CHANGE" in lines[0] and a in lines[0] and b in lines[0]


def test_each_folder_of_normal_cts_has_its_own_cache(tmp_path, monkeypatch):
    """A learned fill and a median fill (or two folds' inpainters) of the same cases never share cached files."""
    from nnunetv2_diff4mm.training.normal_cases import cache_folder

    learned, median = tmp_path / "normal_fold5", tmp_path / "normal_median_fold5"
    assert cache_folder(tmp_path / "c", learned) != cache_folder(tmp_path / "c", median)
    assert cache_folder(tmp_path / "c", learned).name.startswith("normal_normal_fold5_")
    monkeypatch.chdir(tmp_path)  # the same folder named relatively is the same cache
    assert cache_folder(tmp_path / "c", Path("normal_fold5")) == cache_folder(tmp_path / "c", learned)
