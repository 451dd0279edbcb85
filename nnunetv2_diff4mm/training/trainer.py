"""Diff4MMTrainer: nnU-Net's trainer, with a fraction of every epoch's samples replaced by synthetic ones.

Only the training dataset changes (`get_tr_and_val_datasets`): synthetic multi-phase cases, painted by the
pretrained synthesis bundle into the normal CTs of the training split, go through nnU-Net's own data loader,
augmentation, loss and validation. Validation stays real. See docs/trainer.md.
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from .. import conventions
from .leakage import LeakError, refuse_leak
from .mixed_dataset import SyntheticMixDataset, fallback_count, is_synthetic
from .normal_cases import cache_folder, intensity_mappings, preprocess_normal_cases
from .progress import EpochProgress
from .synthetic_pool import PoolSettings, produce, read_status, slots

LOG_KEYS = ("diff4mm_synthetic_fraction", "diff4mm_synthesis_seconds_per_sample", "diff4mm_bundle_sha256")
ENV_ALLOW_BUNDLE_CHANGE = "DIFF4MM_ALLOW_BUNDLE_CHANGE"


def bundle_fingerprint(bundle: Path) -> str:
    """sha256 of the bundle's description file, which itself lists the sha256 of every weight file."""
    return hashlib.sha256((Path(bundle) / "diff4mm_bundle.json").read_bytes()).hexdigest()


def pool_settings(device: torch.device, folder, bundle, normal_files, intensity, foreground_labels, size: int,
                  seed: int, duty_cpu: float, duty_gpu: float) -> PoolSettings:
    """The background producer's settings. `device` goes over as its full string: under nnU-Net's DDP rank r
    trains on cuda:r, and `device.type` alone ("cuda") would put every rank's producer on GPU 0."""
    return PoolSettings(folder=str(folder), bundle=str(bundle), normal_files=[str(p) for p in normal_files],
                        intensity=list(intensity), foreground_labels=list(foreground_labels), size=size, seed=seed,
                        device=str(device), duty=duty_cpu if device.type == "cpu" else duty_gpu)


def refuse_bundle_change(logger, current_sha: str, log=print) -> None:
    """On `--c`: nnU-Net's load_checkpoint has restored the logging of the epochs already trained. If the last
    bundle they recorded is not the bundle about to be used, stop with one line (SystemExit) unless
    DIFF4MM_ALLOW_BUNDLE_CHANGE=1, which continues and writes the change into the log. Epochs trained on real
    samples only (recorded as "") and a fresh start (nothing recorded) compare with nothing."""
    try:
        recorded = [sha for sha in logger.get_value("diff4mm_bundle_sha256", step=None) if sha]
    except KeyError:  # a checkpoint of a trainer that did not log it
        recorded = []
    if not recorded or not current_sha or recorded[-1] == current_sha:
        return
    if os.environ.get(ENV_ALLOW_BUNDLE_CHANGE) == "1":
        log(f"Diff4MM: warning: continuing a checkpoint trained with bundle sha256 {recorded[-1]} with bundle "
            f"sha256 {current_sha} ({ENV_ALLOW_BUNDLE_CHANGE}=1)")
        return
    message = (f"Diff4MMTrainer: the checkpoint was trained with bundle sha256 {recorded[-1]}, the current bundle is "
               f"sha256 {current_sha}; continue with the bundle it was trained with, start a new training, or set "
               f"{ENV_ALLOW_BUNDLE_CHANGE}=1 to continue anyway")
    log(f"Diff4MM: refused: {message}")
    raise SystemExit(f"error: {message}")


class Diff4MMTrainer(EpochProgress, nnUNetTrainer):
    synthetic_fraction: float = 0.5  # expected share of training samples that are synthetic
    pool_size: int = 32  # synthetic samples kept on disk and reused with augmentation
    prefill: int = 8  # samples synthesised before the first epoch
    # Share of wall time the background producer may compute (one thread of its own process). On a CPU it takes
    # that share of a core from training; 0.05 renews ~1-2 of the 32 pooled samples per epoch of the demo schedule
    # (~20 synthetic draws per epoch) and its epoch-time figure is in docs/decisions.md. On a GPU synthesis runs
    # on the GPU: 0.5 measured an epoch-time ratio of 1.12 (H200).
    synthesis_duty_cpu: float = 0.05
    synthesis_duty_gpu: float = 0.5
    seed: int = int(os.environ.get("DIFF4MM_SEED", "0"))

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        for key in LOG_KEYS:
            self.logger.local_logger.my_fantastic_logging.setdefault(key, [])
        self._producer = None
        self._stop = None
        self._pool_folder: Path | None = None
        self._bundle: Path | None = None
        self._bundle_sha = ""
        self._synthetic_ok = False
        self._epoch_counts = [0, 0]  # synthetic, total samples this epoch
        self._epoch_fallbacks_start = 0
        self._epoch_status_start = {"produced": 0, "seconds": 0.0}

    # --- set-up -----------------------------------------------------------------------------------------------
    def _prepare_synthesis(self) -> None:
        """Locate bundle and normal CTs (the fold's own `_foldF` folders where they exist), refuse them if they were
        trained on a validation case of this fold (SystemExit with one line), cache the normal CTs in
        preprocessed space, prefill the pool. Any other problem is logged and training continues with real
        samples only."""
        raw = conventions.raw_dataset_folder(self.plans_manager.dataset_name)
        self._bundle = conventions.fold_or_shared(conventions.bundle_folder, raw, self.fold)
        normal_dir = conventions.fold_or_shared(conventions.normal_folder, raw, self.fold)
        cache = conventions.preprocessed_cache_folder(self.preprocessed_dataset_folder_base,
                                                      self.plans_manager.plans_name, self.configuration_name)
        rank = self.local_rank
        # one pool per trainer class, fold and rank: variants trained side by side never share samples
        self._pool_folder = cache / f"pool_{self.__class__.__name__}_fold{self.fold}_rank{rank}"
        if self._pool_folder.exists():
            shutil.rmtree(self._pool_folder)  # samples of an earlier run (maybe another bundle) are not reused
        self._pool_folder.mkdir(parents=True)
        if self.synthetic_fraction <= 0:
            return
        if (self._bundle / "diff4mm_bundle.json").is_file() and self.fold != "all":
            try:
                refuse_leak(self._bundle, normal_dir, list(self.do_split()[1]), self.fold, self.print_to_log_file)
            except LeakError as err:
                self.print_to_log_file(f"Diff4MM: refused: {err}")
                raise SystemExit(f"error: {err}") from None
        try:
            if not (self._bundle / "diff4mm_bundle.json").is_file():
                raise FileNotFoundError(f"no synthesis bundle at {self._bundle} (train one with "
                                        f"diff4mm_train_synthesizer, or set {conventions.ENV_BUNDLE})")
            if not (normal_dir / "imagesTr").is_dir():
                raise FileNotFoundError(f"no normal CTs at {normal_dir} (run diff4mm_inpaint, or set "
                                        f"{conventions.ENV_NORMAL})")
            self._bundle_sha = bundle_fingerprint(self._bundle)
            refuse_bundle_change(self.logger, self._bundle_sha, self.print_to_log_file)  # --c: logging is restored
            tr_keys, _ = self.do_split()
            start = time.perf_counter()
            normal_files = preprocess_normal_cases(
                normal_dir, list(tr_keys), len(self.dataset_json["channel_names"]), self.dataset_json["file_ending"],
                cache_folder(cache, normal_dir), self.plans_manager, self.configuration_manager, self.dataset_json)
            if not normal_files:
                raise FileNotFoundError(f"none of the {len(tr_keys)} training cases has a normal CT in {normal_dir}")
            mappings = intensity_mappings(self.plans_manager.plans, self.configuration_manager)
            settings = pool_settings(self.device, self._pool_folder, self._bundle, normal_files,
                                     [m.__dict__ for m in mappings], self.label_manager.foreground_labels,
                                     self.pool_size, self.seed * 1000 + rank, self.synthesis_duty_cpu,
                                     self.synthesis_duty_gpu)
            produce(settings, max_samples=min(self.prefill, self.pool_size))  # inline: first epoch has samples
            status = read_status(self._pool_folder)
            if status.get("error"):
                raise RuntimeError(status["error"])
            self.print_to_log_file(
                f"Diff4MM: bundle {self._bundle} (sha256 {self._bundle_sha[:12]}), {len(normal_files)} normal CTs "
                f"of {normal_dir} cached, {status['produced']} synthetic samples prefilled in "
                f"{time.perf_counter() - start:.1f} s; "
                f"synthetic fraction {self.synthetic_fraction}")
            ctx = mp.get_context("spawn")
            self._stop = ctx.Event()
            self._producer = ctx.Process(target=produce, args=(settings, self._stop), daemon=True)
            self._producer.start()
            self._synthetic_ok = True
        except Exception as exc:  # synthesis must never stop training: fall back to real samples
            self.print_to_log_file(f"Diff4MM: synthesis disabled, training on real samples only: "
                                   f"{type(exc).__name__}: {exc}")
            self._synthetic_ok = False

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        if self._synthetic_ok:
            # slot draws per augmentation worker from (DIFF4MM_SEED, rank, worker), see mixed_dataset.py
            dataset_tr = SyntheticMixDataset(dataset_tr, self._pool_folder, self.synthetic_fraction, seed=self.seed,
                                             rank=self.local_rank)
        return dataset_tr, dataset_val

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        self._prepare_synthesis()
        super().on_train_start()

    # --- per step / epoch -------------------------------------------------------------------------------------
    def on_train_epoch_start(self):
        self._epoch_counts = [0, 0]
        if self._pool_folder is not None:
            self._epoch_fallbacks_start = fallback_count(self._pool_folder)
            self._epoch_status_start = read_status(self._pool_folder) or {"produced": 0, "seconds": 0.0}
        super().on_train_epoch_start()

    def train_step(self, batch: dict) -> dict:
        keys = batch.get("keys", [])
        self._epoch_counts[0] += sum(1 for k in keys if is_synthetic(k))
        self._epoch_counts[1] += len(keys)
        return super().train_step(batch)

    def on_epoch_end(self):
        synthetic, total = self._epoch_counts
        if self._pool_folder is not None:
            synthetic -= fallback_count(self._pool_folder) - self._epoch_fallbacks_start
            status = read_status(self._pool_folder)
            if status.get("error") and self._synthetic_ok:
                self.print_to_log_file(f"Diff4MM: synthesis producer failed ({status['error']}); pooled samples "
                                       "are still used, none are added")
        else:
            status = {}
        produced = status.get("produced", 0) - self._epoch_status_start.get("produced", 0)
        seconds = status.get("seconds", 0.0) - self._epoch_status_start.get("seconds", 0.0)
        per_sample = seconds / produced if produced > 0 else float("nan")
        fraction = synthetic / total if total else 0.0
        self.logger.log("diff4mm_synthetic_fraction", fraction, self.current_epoch)
        self.logger.log("diff4mm_synthesis_seconds_per_sample", per_sample, self.current_epoch)
        self.logger.log("diff4mm_bundle_sha256", self._bundle_sha, self.current_epoch)
        speed = f" at {per_sample:.2f} s/sample" if produced > 0 else ""
        self.print_to_log_file(f"Diff4MM: synthetic fraction used {fraction:.3f} ({synthetic}/{total} samples), "
                               f"{produced} synthesised this epoch{speed}, "
                               f"{len(slots(self._pool_folder)) if self._pool_folder else 0} in pool")
        super().on_epoch_end()

    def on_train_end(self):
        self._stop_producer()
        super().on_train_end()

    def _stop_producer(self):
        if self._producer is not None:
            self._stop.set()
            # the producer looks at the event between samples, and one sample takes seconds to tens of seconds on
            # a CPU; every pool write is atomic (temporary file + rename), so stopping it mid-sample loses only
            # that sample, and nobody waits for it at the end of training
            self._producer.join(timeout=2)
            if self._producer.is_alive():
                self._producer.terminate()
                self._producer.join(timeout=10)
            if self._pool_folder is not None:  # a temporary file of the sample cut short
                for stray in Path(self._pool_folder).glob(".sample_*.tmp"):
                    stray.unlink(missing_ok=True)
            self._producer = None

    def __del__(self):
        try:
            self._stop_producer()
        except Exception:
            pass
