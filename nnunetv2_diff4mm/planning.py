"""A reduced nnU-Net plans preset for CPU runs (tests, demo, CPU benchmark), made by nnU-Net's own planner.

`Diff4MMCPUPlanner` is nnU-Net's `ExperimentPlanner` with a thin network (8 base features, at most 64) and a
small memory target, so nnU-Net's planning logic picks a patch and topology that train on a CPU. It writes
its own plans file (`Diff4MMCPUPlans.json`) and preprocessed data beside nnU-Net's default plans, which stay
untouched for real GPU training. nnU-Net's `-pl` option only searches nnunetv2's own package, hence
`diff4mm_plan_cpu` runs the same three steps as `nnUNetv2_plan_and_preprocess` with this planner.
"""
from __future__ import annotations

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

CPU_PLANS_NAME = "Diff4MMCPUPlans"


class Diff4MMCPUPlanner(ExperimentPlanner):
    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 0.25,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = CPU_PLANS_NAME,
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
        self.UNet_base_num_features = 8
        self.UNet_max_features_3d = 64
        self.UNet_max_features_2d = 64


def plan_and_preprocess_cpu(dataset_id: int, num_processes: int = 2, verify_dataset_integrity: bool = True,
                            configurations=("3d_fullres",)) -> str:
    """Fingerprint (if missing), plan with Diff4MMCPUPlanner, preprocess; returns the plans identifier."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints,
                                                                      plan_experiment_dataset,
                                                                      preprocess_dataset)

    extract_fingerprints([dataset_id], num_processes=num_processes, check_dataset_integrity=verify_dataset_integrity,
                         clean=False, verbose=False)
    _, plans_identifier = plan_experiment_dataset(dataset_id, Diff4MMCPUPlanner)
    preprocess_dataset(dataset_id, plans_identifier, configurations, [num_processes] * len(configurations),
                       show_progress_bar=False)
    return plans_identifier
