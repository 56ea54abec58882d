"""The PixelCNN's raster-order sampling loop, which every way of running the network shares (the torch loops in
``pixelcnn``, the CUDA graphs of ``pixelcnn_graphs``, the ONNX step graphs of ``pixelcnn_steps``): pixel j of row
i is drawn by inverse CDF from ``u[j]`` of ``torch.rand(H·W, generator=manual_seed(seeds[i]))``, so equal
``(h, seed)`` give equal images at any batch size or position. It knows nothing of the network: ``rows`` hands it
the logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def sampling_noise(seeds: Sequence[int], size: int) -> torch.Tensor:
    """``[n, size²]`` uniforms: row i is ``torch.rand(size², generator=manual_seed(seeds[i]))``."""
    return torch.stack([torch.rand(size * size, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def sample_loop(rows, seeds: Sequence[int], n: int, size: int, device, check=None) -> torch.Tensor:
    """The raster-order sampling loop every engine shares: ``rows(classes)`` yields ``(r, logits_of)`` per row,
    ``logits_of(col) → [n, K]`` from the ``classes [n, size, size]`` drawn so far; each pixel is drawn by inverse
    CDF from its seed's uniform; ``check(step)`` runs after each pixel step (``step`` = pixels done)."""
    if len(seeds) != n:
        raise ValueError(f"need one seed per latent: {len(seeds)} seeds for {n} latents")
    return draw_loop(rows, sampling_noise(seeds, size).to(device), size, check)


def draw_loop(rows, noise: torch.Tensor, size: int, check=None) -> torch.Tensor:
    """``sample_loop`` on the uniforms themselves, ``noise [n, size²]`` on the sampling device (no host
    transfer inside, so a CUDA graph can capture it: ``pixelcnn_graphs``)."""
    n, device = noise.shape[0], noise.device
    classes = torch.zeros(n, size, size, dtype=torch.long, device=device)
    for r, logits_of in rows(classes):
        for col in range(size):
            classes[:, r, col] = _draw(logits_of(col), noise[:, r * size + col])
            if check is not None:
                check(r * size + col + 1)
    return classes


def _draw(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: ``logits [n, K]``, ``u [n]`` in [0, 1) → classes ``[n]``."""
    cdf = torch.softmax(logits, dim=1).cumsum(dim=1)
    return (cdf < u[:, None]).sum(dim=1).clamp(max=logits.shape[1] - 1)
