"""Training images a generator family can learn from, all made or shipped locally (nothing is downloaded).

- ``shapes``: the built-in renders (``renderer.RenderedShapes``), an endless seeded stream, 3 channels, 32×32.
- ``faces-photo``, ``faces-avatar``: the face renders (``faces.RenderedFaces``) in either style, 3 channels, 64×64;
  one seed draws the same factors in both styles.
- ``digits``: scikit-learn's bundled handwritten digits (1,797 images of 8×8, 0..16), upsampled bilinearly to
  the requested size, 1 channel; a fixed split keeps ``HELD_OUT_DIGITS`` images out of training.

Every source yields images ``[n, C, size, size]`` in [-1, 1] from ``next_batch(n)`` and a fixed held-out set from
``held_out(n)``.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from curvedit.extras import require_extra
from curvedit.models.faces import FACE_FACTOR_NAMES, RenderedFaces
from curvedit.models.renderer import FACTOR_NAMES, RenderedShapes

# The labelled renders: name → (factor names, native image size, stream(seed, size)).
LABELLED = {
    "shapes": (FACTOR_NAMES, 32, lambda seed, size: RenderedShapes(seed=seed, size=size)),
    "faces-photo": (FACE_FACTOR_NAMES, 64, lambda seed, size: RenderedFaces(seed, "photo", size)),
    "faces-avatar": (FACE_FACTOR_NAMES, 64, lambda seed, size: RenderedFaces(seed, "avatar", size)),
}
DATASETS = (*LABELLED, "digits")


def _labelled(name: str):
    if name not in LABELLED:
        raise ValueError(f"{name!r} is not a labelled render set; choose one of {list(LABELLED)}")
    return LABELLED[name]


def factor_names_of(name: str) -> tuple[str, ...]:
    """The factors a labelled render set is drawn from (its regressor's outputs, its supervised directions)."""
    return _labelled(name)[0]


def native_size(name: str) -> int:
    """The image size a data set is made at by default (the digits: 32)."""
    return _labelled(name)[1] if name in LABELLED else 32


def labelled_stream(name: str, seed: int, size: int | None = None):
    """A seeded stream of a labelled render set: ``next_batch(n) → (images [n, 3, S, S] in [-1, 1], standardised
    factors [n, F])``."""
    _, native, make = _labelled(name)
    return make(seed, size or native)
HELD_OUT_DIGITS = 297  # the last 297 of a seeded permutation of 1,797: 1,500 train
_DIGITS_SPLIT_SEED = 2023


def load_digits_images(size: int) -> torch.Tensor:
    """All 1,797 digits as ``[1797, 1, size, size]`` in [-1, 1] (needs scikit-learn: ``curvedit[train]``)."""
    require_extra("train", "the digits data (it ships inside scikit-learn)")
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images).float()[:, None] / 16.0  # [1797, 1, 8, 8] in [0, 1]
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images.clamp(0.0, 1.0) * 2.0 - 1.0


class Digits:
    """Batches of digits sampled (with replacement, seeded) from the 1,500 training images."""

    def __init__(self, seed: int, size: int = 32):
        images = load_digits_images(size)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(_DIGITS_SPLIT_SEED))
        self.train_images = images[order[:-HELD_OUT_DIGITS]]
        self.test_images = images[order[-HELD_OUT_DIGITS:]]
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self, n: int) -> torch.Tensor:
        index = torch.randint(len(self.train_images), (n,), generator=self.generator)
        return self.train_images[index]

    def held_out(self, n: int | None = None) -> torch.Tensor:
        return self.test_images if n is None else self.test_images[:n]


class Rendered:
    """A labelled render set (``LABELLED``) as a data source; held-out images come from a seed training never
    uses."""

    HELD_OUT_SEED = 999_999

    def __init__(self, name: str, seed: int, size: int | None = None):
        self.name = name
        self.size = size or native_size(name)
        self.stream = labelled_stream(name, seed, self.size)

    @property
    def generator(self) -> torch.Generator:
        return self.stream.generator

    def next_batch(self, n: int) -> torch.Tensor:
        return self.stream.next_batch(n)[0]

    def next_labelled(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, standardised factors)``: the same draw as ``next_batch`` (it advances the stream alike)."""
        return self.stream.next_batch(n)

    def held_out(self, n: int = 1000) -> torch.Tensor:
        return self.held_out_labelled(n)[0]

    def held_out_labelled(self, n: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, standardised factors)`` of ``n`` held-out renders."""
        return labelled_stream(self.name, self.HELD_OUT_SEED, self.size).next_batch(n)


def make_dataset(name: str, seed: int, size: int | None = None) -> Rendered | Digits:
    if name in LABELLED:
        return Rendered(name, seed, size)
    if name == "digits":
        return Digits(seed, size or 32)
    raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}")


def channels_of(name: str) -> int:
    return 1 if name == "digits" else 3
