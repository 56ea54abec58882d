"""A small CNN that reads the six factors back from an image: the instrument for supervised editing and
evaluation. Trained on labelled renders; outputs standardised units (see ``renderer``)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm import tqdm

from curvedit.models.renderer import FACTOR_NAMES, NUM_FACTORS, RenderedShapes


class FactorRegressor(nn.Module):
    """Images ``[batch, 3, 32, 32]`` in [-1, 1] → standardised factors ``[batch, 6]``; images of another square
    size (the 16×16 PixelCNN's) are first resized to 32×32, nearest neighbour, as that family's encoder sees them.

    Also exposes ``features(images) -> [batch, 128]``, the penultimate activations used by evaluation's
    Fréchet distance. ``factor_names[j]`` names output j.
    """

    size = 32

    factor_names = FACTOR_NAMES

    def __init__(self, channels: int = 32):
        super().__init__()
        self.channels = channels
        c = channels
        self.body = nn.Sequential(
            nn.Conv2d(3, c, 4, 2, 1),  # 16×16
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
        self.head = nn.Linear(128, NUM_FACTORS)

    def config(self) -> dict:
        return {"channels": self.channels}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.size:
            images = nn.functional.interpolate(images, size=(self.size, self.size), mode="nearest")
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


@dataclass(frozen=True)
class RegressorTrainConfig:
    steps: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def train_regressor(config: RegressorTrainConfig = RegressorTrainConfig(), progress: bool = True):
    """Returns ``(regressor in eval mode, held-out mean absolute error per factor [6])``."""
    torch.manual_seed(config.seed)
    model = FactorRegressor()
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.steps)
    data = RenderedShapes(seed=config.seed + 100)
    t0 = time.time()
    for _ in tqdm(range(config.steps), disable=not progress, desc="regressor", unit="step"):
        images, factors = data.next_batch(config.batch_size)
        loss = (model(images) - factors).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    images, factors = RenderedShapes(seed=config.seed + 999).next_batch(1024)
    with torch.no_grad():
        error = (model(images) - factors).abs().mean(0)
    if progress:
        print(f"regressor: {config.steps} steps in {time.time() - t0:.0f} s, held-out MAE {error.tolist()}")
    return model, error
