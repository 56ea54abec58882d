"""A small CNN that reads the factors back from an image: the instrument for supervised editing and evaluation.
Trained on a labelled render set (the shapes' six factors by default, or the faces' eight in either style);
outputs standardised units (see ``renderer``)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm import tqdm

from curvedit.models.datasets import factor_names_of, labelled_stream, native_size
from curvedit.models.renderer import FACTOR_NAMES


class FactorRegressor(nn.Module):
    """Images ``[batch, 3, S, S]`` in [-1, 1] (S = ``image_size``: 32 or 64) → standardised factors ``[batch, F]``;
    images of another square size (the 16×16 PixelCNN's) are first resized to S×S, nearest neighbour, as that
    family's encoder sees them.

    Also exposes ``features(images) -> [batch, 128]``, the penultimate activations used by evaluation's
    Fréchet distance. ``factor_names[j]`` names output j (default: the shapes' six factors). At 64×64 one more
    strided convolution comes first, so both sizes end in the same 4×4 grid.
    """

    def __init__(self, channels: int = 32, factors: list[str] | tuple[str, ...] | None = None,
                 image_size: int = 32):
        super().__init__()
        if image_size not in (32, 64):
            raise ValueError(f"the factor regressor reads 32×32 or 64×64 images, got image_size={image_size}")
        self.channels, self.image_size = channels, image_size
        self.factor_names = tuple(factors) if factors is not None else FACTOR_NAMES
        self._custom_factors = factors is not None
        c = channels
        first = [nn.Conv2d(3, c, 4, 2, 1), nn.SiLU()] if image_size == 64 else []  # 64 → 32
        self.body = nn.Sequential(
            *first,
            nn.Conv2d(c if first else 3, c, 4, 2, 1),  # 16×16
            nn.SiLU(),
            nn.Conv2d(c, c, 3, 1, 1),  # contours at 16×16: the shape factor lives in the corners
            nn.SiLU(),
            nn.Conv2d(c, 2 * c, 4, 2, 1),  # 8×8
            nn.SiLU(),
            nn.Conv2d(2 * c, 4 * c, 4, 2, 1),  # 4×4
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(4 * c * 16, 128),
            nn.SiLU(),
        )
        self.head = nn.Linear(128, len(self.factor_names))

    def config(self) -> dict:
        """Constructor arguments; the shapes regressor's stay ``{"channels": c}`` as its bundles recorded."""
        extra = {"factors": list(self.factor_names), "image_size": self.image_size} if self._custom_factors else {}
        return {"channels": self.channels, **extra}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.image_size:
            images = nn.functional.interpolate(images, size=(self.image_size, self.image_size), mode="nearest")
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


@dataclass(frozen=True)
class RegressorTrainConfig:
    steps: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    data: str = "shapes"  # a labelled render set (``datasets.LABELLED``)
    channels: int = 32

    def to_dict(self) -> dict:
        return asdict(self)


def train_regressor(config: RegressorTrainConfig = RegressorTrainConfig(), progress: bool = True):
    """Returns ``(regressor in eval mode, held-out mean absolute error per factor [F])``."""
    torch.manual_seed(config.seed)
    model = regressor_for(config.data, config.channels)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.steps)
    data = labelled_stream(config.data, seed=config.seed + 100)
    t0 = time.time()
    for _ in tqdm(range(config.steps), disable=not progress, desc=f"regressor ({config.data})", unit="step"):
        images, factors = data.next_batch(config.batch_size)
        loss = (model(images) - factors).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    images, factors = labelled_stream(config.data, seed=config.seed + 999).next_batch(1024)
    with torch.no_grad():
        error = (model(images) - factors).abs().mean(0)
    if progress:
        print(f"regressor: {config.steps} steps in {time.time() - t0:.0f} s, held-out MAE {error.tolist()}")
    return model, error


def regressor_for(data: str, channels: int = 32) -> FactorRegressor:
    """An untrained regressor for a labelled render set: its factors and image size."""
    if data == "shapes":
        return FactorRegressor(channels)
    return FactorRegressor(channels, factors=factor_names_of(data), image_size=native_size(data))
