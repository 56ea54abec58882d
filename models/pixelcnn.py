"""The conditional PixelCNN family: an autoregressive image model ``p(x | h)`` whose conditioning vector ``h``
plays the latent's role, so DeCurvEd edits ``h``.

Images are 16×16 with colours quantised to ``levels`` values per channel, evenly spaced grey levels from
``palette_low`` to ``palette_high`` (26 … 242: the shapes' background grey, 26, is a palette colour, and the
shapes' channels span 36 … 242); each pixel is one categorical over the ``levels³`` colours, so there are no
sub-pixel masks. The network is the gated PixelCNN: a vertical stack (rows above) and a horizontal stack (pixels to
the left in the row), gated units ``tanh(a) ⊙ σ(b)`` with ``V h`` added to ``a`` and ``b`` in every layer of both
stacks, the vertical stack fed to the horizontal one shifted down a row (no blind spot), and residual connections
in the horizontal stack.

``h`` is the ``shapes-vae`` encoder's posterior mean (a PixelVAE-style decoder on a frozen encoder): ``encode``
upsamples the 16×16 image ×2 (nearest) and runs that encoder, so real images can be encoded, and ``h ~ N(0, I)`` is
the contract's standard prior.

Sampling is seeded and batch-independent: row i draws pixel j by inverse CDF from ``u[j]`` of ``torch.rand(H·W,
generator=manual_seed(seeds[i]))``, so equal ``(h, seed)`` give equal images at any batch size or position (the
loop itself: ``pixelcnn_sampling``).
``decode(z)`` samples with ``DEFAULT_SEED``; ``render(z, seeds, check)`` with given seeds, calling ``check``
between steps (the service stops a cancelled request's work there). The fast loop (``sample(..., fast=True)``)
computes the conditioning once, the vertical stack once per row on the rows its receptive field reaches, and per
pixel only the horizontal stack on the columns it reaches; it gives the same images as the naive loop (a full
forward per pixel).

Reference: van den Oord et al., "Conditional Image Generation with PixelCNN Decoders", NeurIPS 2016; Gulrajani et
al., "PixelVAE", ICLR 2017.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from curvedit.models.families import GeneratorFamily, register_family
from curvedit.models.pixelcnn_graphs import graph_sample
from curvedit.models.pixelcnn_sampling import sample_loop
from curvedit.models.vae import VAE, VAEConfig

DEFAULT_SEED = 0


@dataclass(frozen=True)
class PixelCNNConfig:
    latent_dim: int = 8
    image_size: int = 16
    levels: int = 4  # per colour channel: levels³ colours
    channels: int = 32
    layers: int = 6
    kernel: int = 5  # odd: the vertical stack sees kernel // 2 rows up and columns each side per layer
    head: int = 64
    encoder_channels: int = 32  # of the conditioning encoder (the VAE's, on images upsampled to 32×32)
    encoder_hidden: int = 256
    palette_low: int = 26  # grey levels (uint8) of the first and last palette value per channel: the renders'
    palette_high: int = 242  # background, 0.1 of full scale (25.5), is 26 as drawn; 242: their brightest channel

    def __post_init__(self):
        if self.image_size != 16:
            raise ValueError(f"the PixelCNN is built for 16×16 images, got image_size={self.image_size}")
        if self.kernel < 3 or self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and >= 3, got {self.kernel}")
        if not 2 <= self.levels <= 8 or self.layers < 1 or self.latent_dim < 1:
            raise ValueError(f"need 2 <= levels <= 8, layers >= 1, latent_dim >= 1; got {self.levels}, "
                             f"{self.layers}, {self.latent_dim}")
        if not 0 <= self.palette_low < self.palette_high <= 255:
            raise ValueError(f"need 0 <= palette_low < palette_high <= 255 (grey levels), got {self.palette_low}, "
                             f"{self.palette_high}")

    @property
    def classes(self) -> int:
        return self.levels**3

    @property
    def palette(self) -> torch.Tensor:
        """The per-channel values, grey levels ``[levels]`` (float, whole numbers)."""
        step = (self.palette_high - self.palette_low) / (self.levels - 1)
        return torch.tensor([round(self.palette_low + i * step) for i in range(self.levels)], dtype=torch.float32)

    def to_dict(self) -> dict:
        return asdict(self)


def quantise(images: torch.Tensor, config: PixelCNNConfig) -> torch.Tensor:
    """Images ``[n, 3, H, W]`` in [-1, 1] → colour classes ``[n, H, W]`` (long), ``r·L² + g·L + b``: each channel
    to its nearest palette value."""
    grey = (images.clamp(-1, 1) + 1) * 127.5
    idx = (grey[..., None] - config.palette.to(images.device)).abs().argmin(dim=-1)
    levels = config.levels
    return idx[:, 0] * levels**2 + idx[:, 1] * levels + idx[:, 2]


def dequantise(classes: torch.Tensor, config: PixelCNNConfig) -> torch.Tensor:
    """Colour classes ``[n, H, W]`` → images ``[n, 3, H, W]`` in [-1, 1], whose uint8 rendering (``(x + 1) ·
    127.5``, rounded) is exactly the palette's grey levels."""
    levels = config.levels
    idx = torch.stack([classes // levels**2, classes // levels % levels, classes % levels], dim=1)
    return config.palette.to(classes.device)[idx] / 127.5 - 1


def _gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One gated layer of both stacks. The first layer's horizontal convolution is masked type A (it does not see
    the current pixel) and has no residual connection."""

    def __init__(self, c: int, k: int, latent_dim: int, first: bool):
        super().__init__()
        self.p, self.first = k // 2, first
        self.v_conv = nn.Conv2d(c, 2 * c, (k // 2 + 1, k))
        self.h_conv = nn.Conv2d(c, 2 * c, (1, k // 2 + 1))
        self.v_to_h = nn.Conv2d(2 * c, 2 * c, 1)
        self.h_out = nn.Conv2d(c, c, 1)
        self.cond = nn.Linear(latent_dim, 4 * c)  # V h for [vertical a, b | horizontal a, b]
        mask = torch.ones(1, 1, 1, k // 2 + 1)
        if first:
            mask[..., -1] = 0.0
        self.register_buffer("mask", mask, persistent=False)

    def vertical(self, v: torch.Tensor, cond_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``v [n, c, rows, W]`` → ``(gated [n, c, rows, W], pre-activation [n, 2c, rows, W])``; output row i sees
        input rows i − k//2 … i (zeros above the first)."""
        pre = self.v_conv(F.pad(v, (self.p, self.p, self.p, 0)))
        return _gate(pre + cond_v), pre

    def horizontal(self, h: torch.Tensor, above: torch.Tensor, cond_h: torch.Tensor) -> torch.Tensor:
        """``h [n, c, rows, cols]``, ``above`` = the vertical pre-activation of the row above
        ``[n, 2c, rows, cols]`` → ``[n, c, rows, cols]``; column j sees columns j − k//2 … j (… j − 1 in the
        first layer)."""
        weight = self.h_conv.weight * self.mask if self.first else self.h_conv.weight
        pre = F.conv2d(F.pad(h, (self.p, 0, 0, 0)), weight, self.h_conv.bias) + self.v_to_h(above) + cond_h
        out = self.h_out(_gate(pre))
        return out if self.first else h + out


@register_family
class PixelCNN(GeneratorFamily):
    """``decode(h [n, d]) → [n, 3, 16, 16]`` in [-1, 1] (seeded sampling); ``encode(images) → h [n, d]``."""

    family = "pixelcnn"
    config_class = PixelCNNConfig
    can_encode = True
    samples = True

    def __init__(self, config: PixelCNNConfig = PixelCNNConfig()):
        super().__init__(config)
        c, k = config.channels, config.kernel
        vae = VAE(VAEConfig(latent_dim=config.latent_dim, base_channels=config.encoder_channels,
                            hidden=config.encoder_hidden))
        self.encoder = vae.encoder  # frozen in training: the conditioning space is the VAE's latent space
        self.embed = nn.Embedding(config.classes, c)
        self.layers = nn.ModuleList(GatedLayer(c, k, config.latent_dim, i == 0) for i in range(config.layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(c, config.head, 1), nn.ReLU(),
                                  nn.Conv2d(config.head, config.classes, 1))
        self.reach = config.layers * (k // 2)  # rows up (vertical) and columns left (horizontal) a pixel sees

    # -- conditioning ------------------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        mean, _ = self.encoder(F.interpolate(images, scale_factor=2, mode="nearest")).chunk(2, dim=1)
        return mean

    def conditioning(self, h: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``h [n, d]`` → per layer ``(V_v h, V_h h)``, each ``[n, 2c, 1, 1]``: computed once per image."""
        return [tuple(t[..., None, None] for t in layer.cond(h).chunk(2, dim=1)) for layer in self.layers]

    def linear_map(self) -> torch.Tensor:
        return torch.cat([layer.cond.weight for layer in self.layers])

    def edit_features(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(torch.cat([layer.cond(z) for layer in self.layers], dim=1))

    # -- the network -------------------------------------------------------------------------------------------
    def logits(self, classes: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Teacher-forced: colour classes ``[n, H, W]``, ``h [n, d]`` → logits ``[n, levels³, H, W]``; position
        (r, c) depends only on pixels before it in raster order."""
        return self._logits(classes, self.conditioning(h))

    def _logits(self, classes: torch.Tensor, cond) -> torch.Tensor:
        return self.stacks(self.embed(classes).permute(0, 3, 1, 2), cond)

    def stacks(self, x: torch.Tensor, cond) -> torch.Tensor:
        """Embedded pixels ``[n, c, H, W]`` and ``conditioning(h)`` → logits ``[n, levels³, H, W]`` (the tests
        differentiate this to check the masks)."""
        v = h = x
        for layer, (cond_v, cond_h) in zip(self.layers, cond, strict=True):
            v, pre = layer.vertical(v, cond_v)
            h = layer.horizontal(h, F.pad(pre, (0, 0, 1, 0))[:, :, :-1], cond_h)
        return self.head(h)

    # -- sampling ----------------------------------------------------------------------------------------------
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.render(z)

    def render(self, z: torch.Tensor, seeds: Sequence[int] | None = None, check=None) -> torch.Tensor:
        """Sampled images ``[n, 3, 16, 16]`` in [-1, 1]; ``seeds`` one per row (``None``: ``DEFAULT_SEED`` for
        every row); ``check(step)`` runs after each of the 256 pixel steps and may raise to stop."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
            # Fail at once: tracing would unroll 256 steps and then fail on the seeded generators anyway.
            raise RuntimeError("the PixelCNN samples pixel by pixel in a Python loop and has no one-graph export; "
                               "its ONNX graphs are the per-step networks (models/pixelcnn_steps.py)")
        seeds = [DEFAULT_SEED] * len(z) if seeds is None else seeds
        return dequantise(self.sample(z, seeds, check=check), self.config)

    @torch.no_grad()
    def sample(self, h: torch.Tensor, seeds: Sequence[int], fast: bool = True, check=None,
               cuda_graphs: bool = True) -> torch.Tensor:
        """``h [n, d]`` and one seed per row → colour classes ``[n, H, W]`` (long); ``dequantise`` makes images.
        ``fast=False`` is the naive loop (a full forward per pixel), kept as the reference. On a CUDA device the
        fast loop is replayed from a CUDA graph per batch bucket (``pixelcnn_graphs``; the same images) unless
        ``cuda_graphs`` is off."""
        if fast and cuda_graphs and h.is_cuda:
            return graph_sample(self, h, seeds, check)
        cond = self.conditioning(h)
        step = self._fast_rows if fast else self._naive_rows
        return sample_loop(lambda classes: step(classes, cond), seeds, len(h), self.config.image_size, h.device,
                           check)

    def _naive_rows(self, classes: torch.Tensor, cond):
        for r in range(classes.shape[1]):
            yield r, lambda col, r=r: self._logits(classes, cond)[:, :, r, col]

    def _fast_rows(self, classes: torch.Tensor, cond):
        """Per row: the vertical stack over the ``reach`` rows above, once; per pixel: the horizontal stack over
        the ``reach`` columns to its left. Zero padding at a crop's edge only reaches ``reach − 1`` rows/columns
        in, so the target pixel is exact."""
        n, size, c2 = classes.shape[0], classes.shape[1], 2 * self.config.channels
        for r in range(size):
            if r == 0:
                above = [classes.new_zeros(n, c2, 1, size, dtype=torch.float32)] * len(self.layers)
            else:
                v = self.embed(classes[:, max(0, r - 1 - self.reach):r]).permute(0, 3, 1, 2)
                above = []
                for layer, (cond_v, _) in zip(self.layers, cond, strict=True):
                    v, pre = layer.vertical(v, cond_v)
                    above.append(pre[:, :, -1:])
            yield r, lambda col, r=r, above=above: self._pixel(classes, cond, above, r, col)

    def _pixel(self, classes, cond, above, r: int, col: int) -> torch.Tensor:
        c0 = max(0, col - self.reach)
        h = self.embed(classes[:, r:r + 1, c0:col + 1]).permute(0, 3, 1, 2)
        for layer, (_, cond_h), a in zip(self.layers, cond, above, strict=True):
            h = layer.horizontal(h, a[..., c0:col + 1], cond_h)
        return self.head(h[..., -1:])[:, :, 0, 0]
