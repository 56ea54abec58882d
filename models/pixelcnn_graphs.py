"""PixelCNN sampling replayed from CUDA graphs.

On a GPU the eager sampling loop is launch-bound: 256 pixel steps of a few dozen small kernels each, every one
issued from Python (run G3 in benchmarks/RESULTS.md: 1.5 images/s at batch 1 on an H200, fewer than two CPU
cores give). ``GraphSampler`` captures the whole fast loop for one batch bucket once (the conditioning, every
row's vertical stack, every pixel's horizontal stack and its inverse-CDF draw) and replays it: one launch from
Python per batch. The replay runs the captured kernels on the same kind of inputs, so it draws the same images as
the eager loop (``tests/test_pixelcnn_graphs.py`` checks equality on a GPU).

Rows are independent (the convolutions and the embedding work per image), so a batch is padded with zero rows to
its bucket (a power of two) and only its own rows are returned. ``check`` runs once, after the replay: a batch
is one launch, so cancellation between steps becomes cancellation between batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from curvedit.models.pixelcnn_sampling import draw_loop, sampling_noise

if TYPE_CHECKING:  # the model calls in here (``PixelCNN.sample`` on a CUDA device)
    from curvedit.models.pixelcnn import PixelCNN


class GraphSampler:
    """The fast loop of ``model`` for ``bucket`` rows, captured as one CUDA graph (see the module)."""

    def __init__(self, model: PixelCNN, bucket: int):
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device, it is on {device}; sample with "
                             "PixelCNN.sample instead")
        size = model.config.image_size
        self.model, self.bucket, self.size = model, bucket, size
        self.h = torch.zeros(bucket, model.latent_dim, device=device)
        self.noise = torch.zeros(bucket, size * size, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.no_grad():
            self._loop()  # warm-up outside the capture: cuDNN picks its algorithms here
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.classes = self._loop()

    def _loop(self) -> torch.Tensor:
        cond = self.model.conditioning(self.h)
        return draw_loop(lambda classes: self.model._fast_rows(classes, cond), self.noise, self.size)

    def sample(self, h: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """``h [n, d]`` (n <= bucket), one seed per row → colour classes ``[n, H, W]``, as ``PixelCNN.sample``."""
        n = len(h)
        if not 1 <= n <= self.bucket or len(seeds) != n:
            raise ValueError(f"need 1..{self.bucket} latents and one seed each, got {n} latents and {len(seeds)} "
                             "seeds")
        self.h.zero_()
        self.h[:n].copy_(h)
        self.noise.zero_()
        self.noise[:n].copy_(sampling_noise(seeds, self.size))
        self.graph.replay()
        return self.classes[:n].clone()


def bucket_for(n: int) -> int:
    """The power of two at or above ``n``."""
    return 1 << max(0, n - 1).bit_length()


def graph_sample(model: PixelCNN, h: torch.Tensor, seeds: Sequence[int], check=None) -> torch.Tensor:
    """``model.sample`` on a CUDA device through the model's captured graph for ``len(h)``'s bucket (captured on
    first use and kept on the model)."""
    if len(seeds) != len(h):
        raise ValueError(f"need one seed per latent: {len(seeds)} seeds for {len(h)} latents")
    # The graphs read the weights where they were at capture: a model moved since (new tensors) recaptures.
    weights = tuple(p.data_ptr() for p in model.parameters())
    if model.__dict__.get("_graph_weights") != weights:
        model.__dict__["_graph_samplers"], model.__dict__["_graph_weights"] = {}, weights
    samplers = model.__dict__["_graph_samplers"]
    bucket = bucket_for(len(h))
    if bucket not in samplers:
        samplers[bucket] = GraphSampler(model, bucket)
    classes = samplers[bucket].sample(h, seeds)
    if check is not None:
        size = model.config.image_size
        check(size * size)
    return classes
