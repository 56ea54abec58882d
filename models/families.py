"""The generator contract: what every generator family provides, and the registry that rebuilds one from a bundle.

A family is one module with one class that subclasses ``GeneratorFamily`` and registers itself with
``@register_family``; bundles store ``{"kind": family, "config": config.to_dict()}`` and ``build_generator``
rebuilds the module (untrained weights; the bundle then loads its safetensors). Everything above the models —
bundles, engines, the API, the service, export and evaluation — talks to generators through this class only.

Every family provides
- ``decode(z [n, d]) → images [n, 3, H, W]`` in [-1, 1] (``forward`` is ``decode``);
- ``latent_dim``, ``image_shape`` ``(H, W, 3)``;
- its prior: ``sample_latents(seeds) → float32 [n, d]`` (default: row i is ``N(0, I)`` from
  ``numpy.random.default_rng(seeds[i])``);
- the features the fitted baselines need: ``linear_map()`` (SeFa: the weight ``[out, d]`` of the first linear layer
  acting on z, or ``None``) and ``edit_features(z) → [n, F]`` (GANSpace: an early nonlinear layer; default: the
  output pixels, pooled);
- its training recipe: ``train_recipe(run_dir, config, train_config, progress)`` (classmethod; the VAE's also takes
  ``regressor=`` for its factor-consistency term), which runs the function the family's training module registered
  with ``@register_training(Family)`` (that module imports the family, so the family cannot import it back;
  ``all_trainers`` imports every such module);
some also provide
- ``encode(images [n, 3, H, W] in [-1, 1]) → z [n, d]`` (``can_encode``; the posterior mean for VAEs);
- ``code_axes()``: the latent coordinates the family was trained to make independent controls (InfoGAN's codes;
  default: every coordinate of z), which the ``axes`` editor moves one at a time;
- ``true_factors()``: a module ``z → [n, F]`` for a generator whose factors are known exactly (used instead of a
  regressor), and ``evaluation_facts`` for what ``curvedit eval`` reports about the generator itself;
- ``attach(path, manifest)``: a hook to read more of its bundle once loaded (the ``external`` family runs its
  ONNX graphs from there when the user's package is not importable).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

GENERATOR_FAMILIES: dict[str, type[GeneratorFamily]] = {}
TRAINING_RECIPES: dict[str, Callable[..., GeneratorFamily]] = {}  # by family name (``register_training``)


def register_family(cls: type[GeneratorFamily]) -> type[GeneratorFamily]:
    """Class decorator: make a family buildable from a bundle by its ``family`` name."""
    if not cls.family or cls.family in GENERATOR_FAMILIES:
        raise ValueError(f"generator family name {cls.family!r} is empty or taken")
    GENERATOR_FAMILIES[cls.family] = cls
    return cls


def build_generator(kind: str, config: dict) -> GeneratorFamily:
    """An untrained generator of family ``kind`` from its ``config.to_dict()``."""
    if kind not in GENERATOR_FAMILIES:
        raise ValueError(f"unknown generator family {kind!r}; this curvedit knows {sorted(GENERATOR_FAMILIES)} "
                         "(upgrade curvedit, or install the package that registers it)")
    cls = GENERATOR_FAMILIES[kind]
    try:
        return cls(cls.config_class(**config))
    except TypeError as exc:
        raise ValueError(f"bad config for generator family {kind!r}: {exc}") from None


def register_training(family: type[GeneratorFamily]):
    """Decorator: the function ``(run_dir, config, train_config, progress, **options) → generator`` (trained, eval
    mode) is ``family``'s training recipe, which ``family.train_recipe`` runs."""

    def register(train: Callable[..., GeneratorFamily]) -> Callable[..., GeneratorFamily]:
        if family.family in TRAINING_RECIPES:
            raise ValueError(f"generator family {family.family!r} already has a training recipe")
        TRAINING_RECIPES[family.family] = train
        return train

    return register


def families_that_encode() -> list[str]:
    """Families whose every generator can encode (the ``external`` family can when the user's module does)."""
    return sorted(name for name, cls in GENERATOR_FAMILIES.items() if cls.can_encode is True)


class GeneratorFamily(nn.Module):
    """Base class of every generator family (see the module docstring for the contract)."""

    family: ClassVar[str] = ""
    config_class: ClassVar[type]
    can_encode: ClassVar[bool] = False
    samples: ClassVar[bool] = False  # decode draws random numbers: ``render`` takes seeds and a step check

    def __init__(self, config):
        super().__init__()
        self.config = config

    # -- what every family has --------------------------------------------------------------------------------
    @property
    def latent_dim(self) -> int:
        return int(self.config.latent_dim)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        size = int(self.config.image_size)
        return (size, size, 3)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z [n, d]`` → images ``[n, 3, H, W]`` in [-1, 1]."""
        raise NotImplementedError

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z)

    def render(self, z: torch.Tensor, seeds: Sequence[int] | None = None, check=None) -> torch.Tensor:
        """``decode`` with the options of families that sample (``samples``): ``seeds`` (one per row; ``None``:
        the family's default) and ``check(step)``, called between sampling steps (it may raise to stop the
        work). Deterministic families ignore both."""
        return self.decode(z)

    def sample_latents(self, seeds: Sequence[int]) -> np.ndarray:
        """The prior: float32 ``[len(seeds), d]``; row i is ``N(0, I)`` from ``default_rng(seeds[i])``."""
        d = self.latent_dim
        return np.stack([np.random.default_rng(int(s)).standard_normal(d, dtype=np.float32) for s in seeds])

    def linear_map(self) -> torch.Tensor | None:
        """The weight ``[out, d]`` of the first linear layer acting on z (SeFa factorises it), or ``None``."""
        return None

    def edit_features(self, z: torch.Tensor) -> torch.Tensor:
        """GANSpace's feature space for ``z [n, d]`` → ``[n, F]``; default: the output pixels, 2×2-pooled."""
        return nn.functional.avg_pool2d(self.decode(z), 2).flatten(1)

    @classmethod
    def train_recipe(cls, run_dir: Path, config, train_config, progress: bool = True,
                     **options) -> GeneratorFamily:
        """Train (or resume) a generator in ``run_dir`` with the family's own ``train_config``; eval mode.
        ``options``: what the family's recipe takes besides (the VAE's ``regressor``)."""
        if cls.family not in TRAINING_RECIPES:
            raise ValueError(f"the {cls.family!r} family has no built-in training recipe (a family's training "
                             "module registers one when imported: curvedit.models.all_trainers imports them all)")
        return TRAINING_RECIPES[cls.family](run_dir, config, train_config, progress, **options)

    # -- what some families have ------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[n, 3, H, W]`` in [-1, 1] → latents ``[n, d]`` (families with ``can_encode``)."""
        raise ValueError(f"the {self.family!r} family has no encoder; families that can encode images: "
                         f"{families_that_encode()}")

    def code_axes(self) -> list[int]:
        """Indices of the latent coordinates that are the family's own controls; default: all ``d`` of them."""
        return list(range(self.latent_dim))

    def true_factors(self) -> nn.Module | None:
        """A module ``z [n, d]`` → exact standardised factors ``[n, F]``, when the family knows them."""
        return None

    def attach(self, path: Path, manifest: dict) -> None:
        """Called once a bundle at ``path`` has loaded this generator's weights (and verified every file): a
        family may use more of its bundle's files here. Default: nothing."""

    def evaluation_facts(self, steps: int, known: dict) -> dict:
        """Facts ``curvedit eval`` reports beside the editors (e.g. a known chart's curvature and the best purity
        a linear editor can reach); ``known`` is the bundle's training record, which may hold them already."""
        return {}
