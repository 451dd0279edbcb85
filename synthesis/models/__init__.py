"""Networks of the synthesis stages (diffusers-style: nn.Module + config, no training code)."""
from .ffc_inpainter import FFCInpainter

__all__ = ["FFCInpainter"]
