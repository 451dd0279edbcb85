"""FFCInpainter: a LaMa-style Fast Fourier Convolution network that fills a hole in all CT phases jointly.

Architecture (LaMa, Suvorov et al., arXiv 2109.07161): a small strided-convolution encoder, a stack of residual
Fast Fourier Convolution (FFC) blocks at the bottleneck, and an upsampling decoder. An FFC splits its channels
into a *local* branch (ordinary convolutions) and a *global* branch whose spectral transform takes a real FFT
over all spatial axes, mixes the stacked real and imaginary parts with a 1x1 convolution (+BN/ReLU) and
transforms back, so every output voxel sees the whole patch from the first block on; local<->global convolutions
exchange information between the branches. A hole of tumor size (up to ~9 cm after dilation) is thus filled from
the whole region of interest, not just from its rim.

Input channels: the phases in ``in_phases`` order (normalised HU, hole zeroed), the hole mask, and
``noise_channels`` channels of Gaussian noise inside the hole. Output: every phase; the returned image is the
input outside the hole and the prediction inside. All phases are predicted by one network from one input, so the
fill is anatomically consistent across phases (a vessel continued through the hole is continued in all of them).

Why the noise input: a network trained with a pixel loss converges to the conditional median, a flat fill
(texture/real std ~0.3), which a later tumor synthesiser would learn as "the background of a tumor". LaMa gets
texture from an adversarial loss; here a texture-statistics loss (see ``synthesis.inpainting``) plus a noise
input lets a small network produce CT-like grain at a few minutes of CPU training. It is injected both at the
input and at full resolution in the head (the encoder would otherwise average it away).

3D, not 2.5D (``spatial_dims=3`` is the default; 2 is supported for comparison and per-slice use):
- through-plane consistency: a per-slice fill is decided independently in each slice; at 5 mm slices a 2-5 cm
  hole spans 4-10 slices and slice-wise fills show as steps in coronal views, and the synthesiser downstream works
  on 3D ROIs;
- the FFT in 3D gives a volume-wide receptive field: the hole is filled from tissue above and below it too, which
  is what is left when the hole covers a whole axial cross-section of a small liver;
- slice thickness: the working grid is resampled to a fixed spacing in mm (default 3 x 3 x 5 mm, the phantom's
  native and a common clinical reconstruction), so 1 mm and 5 mm scans look alike to the network and a 3D kernel
  means the same physical extent for every input; 2.5D (neighbour slices as channels) would tie the network to
  one slice thickness anyway;
- CPU cost: with two stride-2 levels the FFC blocks run on 1/64 of the voxels, and a 24 x 48 x 48 patch
  (12 x 14 x 14 cm) costs ~0.1 s forward+backward at base_channels=16 on 2 cores, so 3D fits the budget.

FFC layers are written here because neither diffusers nor torch ships one (diffusers' blocks are spatial
convolutions and attention; torch has the FFT but no Fourier convolution layer). The encoder, decoder and
normalisation layers are plain torch modules chosen by ``spatial_dims`` (MONAI's habit).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _conv(dims: int, cin: int, cout: int, kernel: int = 3, stride: int = 1, bias: bool = False) -> nn.Module:
    return _CONV[dims](cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias)


def _conv_bn_relu(dims: int, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(_conv(dims, cin, cout, kernel, stride), _NORM[dims](cout), nn.ReLU(inplace=True))


class FourierUnit(nn.Module):
    """Real FFT over the spatial axes -> 1x1 conv on stacked (real, imag) -> BN/ReLU -> inverse FFT.

    A 1x1 convolution in the frequency domain is a spatial convolution whose kernel spans the whole input, at the
    cost of an FFT (O(N log N)). ``norm="ortho"`` keeps magnitudes independent of the patch size, so a network
    trained on patches runs on larger ROIs.
    """

    def __init__(self, channels: int, dims: int):
        super().__init__()
        self.dims = dims
        self.mix = _conv_bn_relu(dims, 2 * channels, 2 * channels, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axes = tuple(range(-self.dims, 0))
        spectrum = torch.fft.rfftn(x.float(), dim=axes, norm="ortho")
        b, c = x.shape[:2]
        stacked = torch.stack((spectrum.real, spectrum.imag), dim=2).reshape(b, 2 * c, *spectrum.shape[2:])
        mixed = self.mix(stacked).reshape(b, c, 2, *spectrum.shape[2:])
        spectrum = torch.complex(mixed[:, :, 0], mixed[:, :, 1])
        return torch.fft.irfftn(spectrum, s=x.shape[2:], dim=axes, norm="ortho").to(x.dtype)


class SpectralTransform(nn.Module):
    """The global-to-global path of an FFC: 1x1 reduce -> FourierUnit (with a residual) -> 1x1 expand."""

    def __init__(self, cin: int, cout: int, dims: int):
        super().__init__()
        hidden = max(cout // 2, 1)
        self.reduce = _conv_bn_relu(dims, cin, hidden, kernel=1)
        self.fourier = FourierUnit(hidden, dims)
        self.expand = _conv(dims, hidden, cout, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        return self.expand(x + self.fourier(x))


class FFC(nn.Module):
    """Fast Fourier Convolution on a (local, global) pair, followed by BN/ReLU per branch.

    local_out = conv(local) + conv(global);  global_out = conv(local) + spectral(global).
    """

    def __init__(self, local_channels: int, global_channels: int, dims: int):
        super().__init__()
        cl, cg = local_channels, global_channels
        self.l2l = _conv(dims, cl, cl)
        self.g2l = _conv(dims, cg, cl)
        self.l2g = _conv(dims, cl, cg)
        self.g2g = SpectralTransform(cg, cg, dims)
        self.act_l = nn.Sequential(_NORM[dims](cl), nn.ReLU(inplace=True))
        self.act_g = nn.Sequential(_NORM[dims](cg), nn.ReLU(inplace=True))

    def forward(self, xl: torch.Tensor, xg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        yl = self.l2l(xl) + self.g2l(xg)
        yg = self.l2g(xl) + self.g2g(xg)
        return self.act_l(yl), self.act_g(yg)


class FFCResBlock(nn.Module):
    """Two FFCs with a residual connection on each branch (LaMa's FFCResnetBlock)."""

    def __init__(self, local_channels: int, global_channels: int, dims: int):
        super().__init__()
        self.first = FFC(local_channels, global_channels, dims)
        self.second = FFC(local_channels, global_channels, dims)

    def forward(self, xl: torch.Tensor, xg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        yl, yg = self.second(*self.first(xl, xg))
        return xl + yl, xg + yg


class FFCInpainter(ModelMixin, ConfigMixin):
    """Joint multi-phase CT inpainter; ``save_pretrained`` / ``from_pretrained`` round-trip via safetensors.

    Constructor arguments are the saved config (``config.json``). Besides the network shape it stores what
    inference must reproduce from training, as diffusers' autoencoders store their ``scaling_factor``:
    the phase names and order (``in_phases``), the HU window of the intensity normalisation (``hu_window``:
    HU clipped to it and mapped linearly to [-1, 1]), the working voxel size (``spacing_mm``, x y z) and the
    training patch size (``patch_size``, z y x voxels; inference ROIs are at least this big).
    """

    @register_to_config
    def __init__(self, in_phases: Sequence[str] = ("NC", "AP", "PVP", "DELAY"), base_channels: int = 16,
                 num_ffc_blocks: int = 3, ratio_global: float = 0.75, spatial_dims: int = 3,
                 num_downsamplings: int = 2, noise_channels: int = 1,
                 hu_window: Sequence[float] = (-200.0, 400.0), spacing_mm: Sequence[float] = (3.0, 3.0, 5.0),
                 patch_size: Sequence[int] = (24, 48, 48)):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, not {spatial_dims}")
        if not 0.0 < ratio_global < 1.0:
            raise ValueError(f"ratio_global must be in (0, 1), not {ratio_global}")
        if len(set(in_phases)) != len(in_phases) or not in_phases:
            raise ValueError(f"in_phases must be distinct phase names, not {list(in_phases)}")
        dims, phases = spatial_dims, len(in_phases)
        in_channels = phases + 1 + noise_channels
        self.stem = _conv_bn_relu(dims, in_channels, base_channels)
        channels = base_channels
        down = []
        for _ in range(num_downsamplings):
            down.append(_conv_bn_relu(dims, channels, 2 * channels, stride=2))
            channels *= 2
        self.down = nn.Sequential(*down)
        self.global_channels = max(1, int(round(channels * ratio_global)))
        self.local_channels = channels - self.global_channels
        if self.local_channels < 1:
            raise ValueError(f"ratio_global={ratio_global} leaves no local channels at width {channels}")
        self.blocks = nn.ModuleList(FFCResBlock(self.local_channels, self.global_channels, dims)
                                    for _ in range(num_ffc_blocks))
        up = []
        for _ in range(num_downsamplings):
            up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                    _conv_bn_relu(dims, channels, channels // 2)))
            channels //= 2
        self.up = nn.Sequential(*up)
        # full-resolution head: sees the decoder features and the raw input (hole rim, noise) again
        self.head = nn.Sequential(_conv(dims, channels + in_channels, channels, bias=True), nn.ReLU(inplace=True),
                                  _conv(dims, channels, phases, kernel=1, bias=True))

    @property
    def size_multiple(self) -> int:
        """Spatial sizes must be multiples of this (one factor 2 per downsampling)."""
        return 2 ** self.config.num_downsamplings

    def forward(self, image: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Fill the hole.

        image: (B, P, *spatial) normalised phases; mask: (B, 1, *spatial), 1 in the hole; noise: (B,
        noise_channels, *spatial) or None to draw it (from ``generator``). Returns (B, P, *spatial): ``image``
        outside the hole, the prediction inside.
        """
        dims = self.config.spatial_dims
        spatial = image.shape[2:]
        if image.dim() != dims + 2 or mask.shape[2:] != spatial:
            raise ValueError(f"expected image (B, P, {dims} spatial axes) and a mask of the same size, got "
                             f"{tuple(image.shape)} and {tuple(mask.shape)}")
        if image.shape[1] != len(self.config.in_phases):
            raise ValueError(f"image has {image.shape[1]} channels, the model expects {len(self.config.in_phases)} "
                             f"phases {list(self.config.in_phases)}")
        if any(s % self.size_multiple for s in spatial):
            raise ValueError(f"spatial size {tuple(spatial)} must be a multiple of {self.size_multiple}")
        mask = mask.to(image.dtype)
        if noise is None:
            noise = torch.randn((image.shape[0], self.config.noise_channels, *spatial), generator=generator,
                                device="cpu" if generator is None else generator.device, dtype=image.dtype)
            noise = noise.to(image.device)
        x = torch.cat((image * (1 - mask), mask, noise * mask), dim=1)
        h = self.down(self.stem(x))
        hl, hg = h[:, :self.local_channels], h[:, self.local_channels:]
        for block in self.blocks:
            hl, hg = block(hl, hg)
        h = self.up(torch.cat((hl, hg), dim=1))
        prediction = self.head(torch.cat((h, x), dim=1))
        return image * (1 - mask) + prediction * mask
