"""Evaluation. `metrics`: segmentation metrics per case and structure (liver, tumor) and tumor detection
(re-exported here); `report`: per_case.csv, summary.md and plots from evaluated rows; `registration_error`: the
registration stage's error on the phantom."""
from .metrics import (DEFAULT_NSD_TOLERANCE_MM, METRICS, STRUCTURES, EvaluationInputError, GridMismatchError,
                      detect_tumors, evaluate_case, evaluate_case_files, evaluate_folder, evaluate_pairs, folder_pairs,
                      mean_std, structure_metrics, summarize)

__all__ = ["DEFAULT_NSD_TOLERANCE_MM", "METRICS", "STRUCTURES", "EvaluationInputError", "GridMismatchError",
           "detect_tumors", "evaluate_case", "evaluate_case_files", "evaluate_folder", "evaluate_pairs",
           "folder_pairs", "mean_std", "structure_metrics", "summarize"]
