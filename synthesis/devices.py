"""The one device resolver of the package: ``-device auto|cpu|cuda[:N]|mps`` -> ``torch.device``.

"auto" picks CUDA when torch sees a GPU. An explicit CUDA device on a machine without one is refused here, with
the fix, instead of failing later inside a model's ``.to()`` with torch's own message."""
from __future__ import annotations

import re


class DeviceError(RuntimeError):
    """A device that does not exist on this machine, or an unknown device name."""


def resolve_device(device="auto"):
    import torch  # here, so that importing this module (e.g. for a CLI's --help) does not load torch

    device = str(device)  # a torch.device too
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise DeviceError(f"invalid device {device!r}: use auto, cpu, cuda (or cuda:N) or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {device} requested but torch sees no CUDA GPU here; use -device cpu or auto")
    return torch.device(device)
