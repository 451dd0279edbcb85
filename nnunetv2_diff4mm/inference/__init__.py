"""Inference on new patients (issue #15): raw phases in, a liver/tumor segmentation on the reference phase's own
grid out (``diff4mm_predict``). ``predict_case`` / ``predict_folder`` are the Python API."""
from .first_pass import ModelFirstPass
from .model import Diff4MMModel, ModelError, ModelInfo, find_model_folder, read_model
from .predict import CaseResult, PredictionSettings, predict_case, predict_folder

__all__ = ["CaseResult", "Diff4MMModel", "ModelError", "ModelFirstPass", "ModelInfo", "PredictionSettings",
           "find_model_folder", "predict_case", "predict_folder", "read_model"]
