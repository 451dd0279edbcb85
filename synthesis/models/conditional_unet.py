"""3D latent diffusion UNet conditioned on the normal (tumor-free) ROI and the tumor mask.

Input channels = concat(noisy target latent, latent of the NORMAL ROI, tumor condition average-pooled to the
latent grid) -> the noise (epsilon) or v, as the scheduler's prediction_type says. The tumor condition is the
mask (1 channel) or, with `enhancement_channels` = C > 0, the mask and the mask times the tumor's enhancement
pattern per phase (1 + C channels, synthesis/enhancement.py). A diffusers wrapper (config =
constructor arguments) around MONAI's `DiffusionModelUNet(spatial_dims=3)`.

`target` says what is diffused (see synthesis/pipeline.py): "residual" = (z_tumor - z_normal) * target_scale,
which is ~0 outside the mask, or "latent" = z_tumor. Both latents are already multiplied by the autoencoder's
`scaling_factor`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from monai.networks.nets import DiffusionModelUNet

TARGETS = ("residual", "latent")


class MaskConditionedUNet(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, latent_channels: int = 4, channels: tuple[int, ...] = (32, 64, 64),
                 attention_levels: tuple[bool, ...] = (False, True, True), num_res_blocks: int = 1,
                 norm_num_groups: int = 16, num_head_channels: int = 16, target: str = "residual",
                 target_scale: float = 1.0, enhancement_channels: int = 0):
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
        self.net = DiffusionModelUNet(
            spatial_dims=3, in_channels=2 * latent_channels + 1 + enhancement_channels, out_channels=latent_channels,
            channels=tuple(int(c) for c in channels), attention_levels=tuple(bool(a) for a in attention_levels),
            num_res_blocks=num_res_blocks, norm_num_groups=norm_num_groups, num_head_channels=num_head_channels,
        )

    @staticmethod
    def pool_mask(mask: torch.Tensor, latent_shape) -> torch.Tensor:
        """Tumor condition (B, 1 [+ C], D, H, W) at image or latent resolution -> its mean per latent voxel."""
        if tuple(mask.shape[2:]) == tuple(latent_shape):
            return mask
        return F.adaptive_avg_pool3d(mask, tuple(latent_shape))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, normal_latent: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(timestep) or timestep.ndim == 0:
            timestep = torch.as_tensor(timestep, device=sample.device).reshape(1).expand(sample.shape[0])
        expected = 1 + self.config.enhancement_channels
        if mask.shape[1] != expected:
            raise ValueError(f"this UNet takes a tumor condition of {expected} channel(s) (mask"
                             f"{' + enhancement pattern' if expected > 1 else ''}), got {mask.shape[1]}")
        mask = self.pool_mask(mask.to(sample.dtype), sample.shape[2:])
        return self.net(torch.cat([sample, normal_latent, mask], dim=1), timestep.to(sample.device))
