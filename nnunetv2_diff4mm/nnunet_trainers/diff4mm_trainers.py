"""Trainer classes nnU-Net finds by name (`-tr NAME`) through `nnUNet_extTrainer` (see nnunet_hook.py).

One behaviour change per class, named after what it changes, as nnU-Net's own variants are. Constructors spell
out nnU-Net's signature: nnUNetTrainer records its init arguments by parameter name (no *args/**kwargs). The CPU
schedules' baselines show the same progress bar inside each epoch as Diff4MMTrainer (EpochProgress: output only).
"""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_diff4mm.training.progress import EpochProgress
from nnunetv2_diff4mm.training.trainer import Diff4MMTrainer


class Diff4MMTrainer_synthetic25(Diff4MMTrainer):
    synthetic_fraction = 0.25


class Diff4MMTrainer_synthetic75(Diff4MMTrainer):
    synthetic_fraction = 0.75


class Diff4MMTrainer_noSynthesis(Diff4MMTrainer):
    """Control arm: the same trainer with synthesis switched off (identical to nnUNetTrainer's behaviour)."""

    synthetic_fraction = 0.0


class Diff4MMTrainer_250epochs(Diff4MMTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 250


def _set_schedule(trainer, epochs: int, iterations: int, val_iterations: int) -> None:
    trainer.num_epochs = epochs
    trainer.num_iterations_per_epoch = iterations
    trainer.num_val_iterations_per_epoch = val_iterations


# The short CPU schedule shared by both arms of the demo and the CPU benchmark: 8 epochs of 20 iterations, so that
# the demo's six trainings (3 arms x 2 labelled fractions, ~3 min each on 2 cores) keep the whole demo under 30
# minutes (10 x 25 measured 4.2 min per training, 33 min in all).
DEMO_SCHEDULE = (8, 20, 4)
# The schedule of the learning-curve search (benchmarks/schedule_curve.py): 80 epochs of 25 iterations, the
# validation pseudo-Dice of every epoch (10 batches) tells after how many iterations a CPU-sized nnU-Net finds the
# tumors. Only used on validation folds, to choose the evidence schedule (docs/decisions.md).
CURVE_SCHEDULE = (80, 25, 10)
# The CPU evidence schedule (diff4mm_benchmark --preset evidence, 2d): 50 epochs of 25 iterations. On the learning
# curve of a validation fold (benchmarks/schedule_curve.py, 80 x 25) arm (b)'s tumor pseudo-Dice was 0 up to 800
# iterations and 0.63-0.76 from 825 on; 1250 iterations leave a margin (docs/decisions.md, Evidence).
EVIDENCE_SCHEDULE = (50, 25, 10)
# The long CPU evidence schedule (the evidence preset since 2026-12-07): 80 x 25, the curve's own. With all 19
# training cases of fold 0, arm (b) on 50 x 25 never reached the tumor onset (validation pseudo-Dice 0 in all 50
# epochs), while on 80 x 25 it did at epoch 31 (0.67-0.76 from there): the poly learning rate of the shorter
# schedule has decayed by a third more at the same iteration. Chosen on that validation curve (docs/decisions.md).
# New trainer names, so that no results folder trained on 50 x 25 is reused under the longer schedule.
EVIDENCE_LONG_SCHEDULE = CURVE_SCHEDULE


class nnUNetTrainer_Diff4MMDemo(EpochProgress, nnUNetTrainer):
    """nnUNetTrainer on the demo's short CPU schedule (baseline arm)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _set_schedule(self, *DEMO_SCHEDULE)


class Diff4MMTrainer_Demo(Diff4MMTrainer):
    """Diff4MMTrainer on exactly nnUNetTrainer_Diff4MMDemo's schedule."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _set_schedule(self, *DEMO_SCHEDULE)


class nnUNetTrainer_Diff4MMCurve(EpochProgress, nnUNetTrainer):
    """nnUNetTrainer on the learning-curve schedule (80 x 25 iterations)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _set_schedule(self, *CURVE_SCHEDULE)


class nnUNetTrainer_Diff4MMEvidence(EpochProgress, nnUNetTrainer):
    """nnUNetTrainer on the CPU evidence schedule (baseline arms)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _set_schedule(self, *EVIDENCE_SCHEDULE)


class Diff4MMTrainer_Evidence(Diff4MMTrainer):
    """Diff4MMTrainer on exactly nnUNetTrainer_Diff4MMEvidence's schedule; 16 synthetic samples made before the
    first epoch (the CPU producer adds ~1 per epoch)."""

    prefill = 16

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _set_schedule(self, *EVIDENCE_SCHEDULE)


class nnUNetTrainer_Diff4MMEvidenceLong(EpochProgress, nnUNetTrainer):
    """nnUNetTrainer on the long CPU evidence schedule, 80 x 25 (baseline arms of --preset evidence)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _set_schedule(self, *EVIDENCE_LONG_SCHEDULE)


class Diff4MMTrainer_EvidenceLong(Diff4MMTrainer_Evidence):
    """Diff4MMTrainer on exactly nnUNetTrainer_Diff4MMEvidenceLong's schedule (arm (c) of --preset evidence)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _set_schedule(self, *EVIDENCE_LONG_SCHEDULE)


class Diff4MMTrainer_EvidenceSynthetic25(Diff4MMTrainer_Evidence):
    """Diff4MMTrainer_Evidence with a quarter of the samples synthetic instead of half: on the evidence schedule
    the tumor onset of (c) at 0.5 came ~14 epochs after (b)'s, at the very end of training (docs/decisions.md,
    Evidence); chosen on a validation fold."""

    synthetic_fraction = 0.25


class Diff4MMTrainer_DemoMedianFill(Diff4MMTrainer_Demo):
    """Diff4MMTrainer_Demo under another name, for the benchmark's Table 5 ablation arm (m): same schedule, its
    own results folder; the benchmark points it at median-filled normal CTs ($DIFF4MM_NORMAL_DIR)."""


class Diff4MMTrainer_EvidenceMedianFill(Diff4MMTrainer_Evidence):
    """Diff4MMTrainer_Evidence under another name, for the benchmark's ablation arm (m) (see the Demo variant)."""


class Diff4MMTrainer_EvidenceLongMedianFill(Diff4MMTrainer_EvidenceLong):
    """Diff4MMTrainer_EvidenceLong under another name, for the benchmark's ablation arm (m)."""


class Diff4MMTrainerMedianFill(Diff4MMTrainer):
    """Diff4MMTrainer under another name, for the benchmark's ablation arm (m) with the default preset."""


__all__ = ["Diff4MMTrainer", "Diff4MMTrainer_synthetic25", "Diff4MMTrainer_synthetic75",
           "Diff4MMTrainer_noSynthesis", "Diff4MMTrainer_250epochs", "nnUNetTrainer_Diff4MMDemo",
           "Diff4MMTrainer_Demo", "nnUNetTrainer_Diff4MMCurve", "nnUNetTrainer_Diff4MMEvidence",
           "Diff4MMTrainer_Evidence", "Diff4MMTrainer_EvidenceSynthetic25", "Diff4MMTrainer_DemoMedianFill",
           "Diff4MMTrainer_EvidenceMedianFill", "nnUNetTrainer_Diff4MMEvidenceLong", "Diff4MMTrainer_EvidenceLong",
           "Diff4MMTrainer_EvidenceLongMedianFill", "Diff4MMTrainerMedianFill"]
