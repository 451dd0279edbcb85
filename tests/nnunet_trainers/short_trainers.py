"""Test-only trainer variants with a tiny schedule (tests add this folder to nnUNet_extTrainer)."""
import os

import torch

from nnunetv2_diff4mm.training.trainer import Diff4MMTrainer


class Diff4MMTrainer_Test(Diff4MMTrainer):
    pool_size = 4
    prefill = 2

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("DIFF4MM_TEST_EPOCHS", "1"))
        self.num_iterations_per_epoch = 4
        self.num_val_iterations_per_epoch = 1
        self.save_every = 1

    def perform_actual_validation(self, save_probabilities: bool = False):
        """No test reads nnU-Net's final validation of these tiny models; it cost ~25 s per training (export
        workers spawned, sliding window with mirroring) and ran after every nnUNetv2_train of the suite."""
        self.print_to_log_file("final validation skipped (test trainer)")

    def get_dataloaders(self):
        """nnU-Net's loaders with seeded workers: nnU-Net starts its augmentation workers with seeds=None, so each
        reseeds numpy from the OS and which identifiers form the batches (real or synthetic) differed from run to
        run; a test counting synthetic samples over 8 draws then failed about 1 time in 128. Seeded, the draws are
        the same in every run (the workers start on the first batch, after this)."""
        train, val = super().get_dataloaders()
        for offset, loader in ((0, train), (1000, val)):
            if hasattr(loader, "seeds") and not getattr(loader, "initialized", True):
                loader.seeds = [offset + i for i in range(len(loader.seeds))]
        return train, val


class Diff4MMTrainer_TestFallback(Diff4MMTrainer_Test):
    """Same schedule, own results folder: used with a broken bundle."""
