"""3D KL autoencoder for multi-phase tumor ROIs: all phases as channels, spatial downsampling x4.

A thin diffusers wrapper around MONAI's `AutoencoderKL(spatial_dims=3)`: the constructor arguments are the
saved config, so `save_pretrained(dir)` writes config.json + safetensors and `ROIAutoencoderKL.from_pretrained
(dir)` rebuilds it in one call. `scaling_factor` (1 / std of the training latents, set after training as in
diffusers' `AutoencoderKL`) brings latents to unit variance for the diffusion model.

The network is fully convolutional (no attention), so it can be trained on patches smaller than the ROI.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from monai.networks.nets import AutoencoderKL


@dataclass
class LatentPosterior:
    """Diagonal Gaussian q(z | x) returned by :meth:`ROIAutoencoderKL.encode`."""

    mean: torch.Tensor
    std: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype,
                            device=generator.device if generator is not None else self.mean.device)
        return self.mean + noise.to(self.mean.device) * self.std

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over channels and space: one value per batch item."""
        var = self.std.pow(2)
        kl = 0.5 * (self.mean.pow(2) + var - torch.log(var.clamp_min(1e-12)) - 1.0)
        return kl.flatten(1).sum(1)


class ROIAutoencoderKL(ModelMixin, ConfigMixin):
    """Multi-phase ROI (B, C=phases, D, H, W) in [-1, 1] <-> latent (B, latent_channels, D/f, H/f, W/f),
    f = 2 ** (len(channels) - 1)."""

    @register_to_config
    def __init__(self, in_channels: int = 4, latent_channels: int = 4, channels: tuple[int, ...] = (16, 32, 32),
                 num_res_blocks: int = 1, norm_num_groups: int = 8, scaling_factor: float = 1.0):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        self.net = AutoencoderKL(
            spatial_dims=3, in_channels=in_channels, out_channels=in_channels, channels=channels,
            latent_channels=latent_channels, num_res_blocks=num_res_blocks,
            attention_levels=(False,) * len(channels), norm_num_groups=norm_num_groups,
            with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False,
        )

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.config.channels) - 1)

    def encode(self, x: torch.Tensor) -> LatentPosterior:
        mean, std = self.net.encode(x)
        return LatentPosterior(mean, std)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.net.decode(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, LatentPosterior]:
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior
