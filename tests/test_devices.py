"""One device resolver (synthesis.devices) behind every command that takes -device (issue #17: there were four,
one refusing a missing GPU and three not)."""
from __future__ import annotations

import pytest
import torch

from synthesis.devices import DeviceError, resolve_device


def test_auto_cpu_and_explicit_devices():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(DeviceError, match="invalid device 'gpu'"):
        resolve_device("gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_with_the_fix_by_every_caller():
    from nnunetv2_diff4mm.benchmark.common import BenchmarkError
    from nnunetv2_diff4mm.benchmark.run import _resolve_device
    from nnunetv2_diff4mm.inference.model import ModelError, resolve_device as predict_device
    from synthesis.inpainting import resolve_device as inpainter_device

    for resolve, error in ((resolve_device, DeviceError), (inpainter_device, DeviceError),
                           (predict_device, ModelError), (_resolve_device, BenchmarkError)):
        with pytest.raises(error, match="no CUDA GPU.*-device cpu"):
            resolve("cuda")
    assert _resolve_device("auto") == "cpu" and predict_device("auto") == torch.device("cpu")
