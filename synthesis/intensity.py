"""HU <-> the [-1, 1] range the networks of stages 2 and 3 work in: one definition for both."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def normalize_hu(hu, window: Sequence[float]):
    """HU -> [-1, 1]: clip to ``window`` = (low, high) and scale linearly. numpy in, float32 numpy out; a torch
    tensor in, a float tensor out."""
    low, high = float(window[0]), float(window[1])
    centre, half = (low + high) / 2, (high - low) / 2
    if not isinstance(hu, np.ndarray) and hasattr(hu, "clamp"):  # a torch tensor (torch is not imported here)
        return ((hu.clamp(low, high) - centre) / half).float()
    return ((np.clip(np.asarray(hu, np.float32), low, high) - centre) / half).astype(np.float32)


def denormalize_hu(x, window: Sequence[float]) -> np.ndarray:
    """[-1, 1] -> HU (float32), the inverse of normalize_hu inside the window."""
    low, high = float(window[0]), float(window[1])
    return (np.asarray(x, np.float32) * (high - low) / 2 + (low + high) / 2).astype(np.float32)
