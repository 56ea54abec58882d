"""The ``external`` family: a generator the user brings, as a factory ``"package.module:callable"``.

The factory returns a ``torch.nn.Module`` that maps latents ``[n, d]`` to images ``[n, C, H, W]`` in [-1, 1]
(C = 1 or 3): a plain module (its ``forward``), or one with the contract's methods (``decode``, and optionally
``encode``, ``linear_map``, ``edit_features``, ``sample_latents``, ``latent_dim``), which are then used.

A bundle stores the factory, the shapes and the module's weights; loading imports the factory again (the current
directory is on the import path, as for ``python -m``). Where the factory cannot be imported — a server without
the user's package — the generator runs from the bundle's verified ``generator.onnx`` (and ``encoder.onnx``)
instead: serving works, training more editors does not, and every such call says so.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from curvedit.models.bundle_files import ort_session
from curvedit.models.families import GeneratorFamily, register_family


@dataclass(frozen=True)
class ExternalConfig:
    factory: str
    latent_dim: int
    image_height: int
    image_width: int
    channels: int = 3  # what the user's module outputs; 1 = grayscale, shown as grey RGB

    def __post_init__(self):
        if ":" not in self.factory:
            raise ValueError(f"factory must look like 'package.module:callable', got {self.factory!r}")
        if self.latent_dim < 1 or self.image_height < 1 or self.image_width < 1 or self.channels not in (1, 3):
            raise ValueError(f"bad external generator shape: latent_dim {self.latent_dim}, image "
                             f"{self.image_height}×{self.image_width}×{self.channels} (channels must be 1 or 3)")

    def to_dict(self) -> dict:
        return asdict(self)


def import_factory(spec: str):
    """``"package.module:attr.path"`` → the object it names; ``ValueError`` with the reason if it cannot."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{spec!r} is not a factory: write it as 'package.module:callable'")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # as `python -m` would: the current directory, for this import only
        sys.path.insert(0, cwd)
    try:
        target = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} for factory {spec!r}: {exc}") from None
    finally:
        if added:
            sys.path.remove(cwd)
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{module_name!r} has no {attr!r} (factory {spec!r})")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"factory {spec!r} is not callable")
    return target


def build_user_module(spec: str) -> nn.Module:
    module = import_factory(spec)()
    if not isinstance(module, nn.Module):
        raise ValueError(f"factory {spec!r} returned a {type(module).__name__}, not a torch.nn.Module")
    return module


@register_family
class ExternalGenerator(GeneratorFamily):
    """A user's generator behind the contract; ``inner`` is the user's module (``None``: running from ONNX)."""

    family = "external"
    config_class = ExternalConfig

    def __init__(self, config: ExternalConfig, module: nn.Module | None = None):
        super().__init__(config)
        self.import_error = ""
        if module is None:
            try:
                module = build_user_module(config.factory)
            except ValueError as exc:
                self.import_error = str(exc)
        self.inner = module
        self._sessions: dict[str, object] = {}

    @classmethod
    def wrap(cls, module: nn.Module, factory: str, latent_dim: int | None = None) -> ExternalGenerator:
        """Probe the user's module with two latents and describe it: ``latent_dim`` from the argument or the
        module's own ``latent_dim``; image shape and channels from its output."""
        latent_dim = latent_dim or getattr(module, "latent_dim", None)
        if not latent_dim:
            raise ValueError(f"the module from {factory!r} has no latent_dim attribute: pass --latent-dim")
        decode = getattr(module, "decode", module)
        with torch.no_grad():
            try:
                images = decode(torch.zeros(2, int(latent_dim)))
            except Exception as exc:  # the user's code: any failure becomes one line
                raise ValueError(f"the generator from {factory!r} fails on latents [2, {latent_dim}]: "
                                 f"{type(exc).__name__}: {exc}") from None
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] != 2 \
                or images.shape[1] not in (1, 3):
            shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"the generator from {factory!r} must return images [n, C, H, W] with C = 1 or 3 "
                             f"in [-1, 1]; it returned {shape} for 2 latents")
        config = ExternalConfig(factory, int(latent_dim), int(images.shape[2]), int(images.shape[3]),
                                int(images.shape[1]))
        return cls(config, module).eval()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.config.image_height, self.config.image_width, 3)

    @property
    def can_encode(self) -> bool:
        if self.inner is None:
            return "encoder" in self._sessions
        return hasattr(self.inner, "encode")

    # -- the ONNX fallback ---------------------------------------------------------------------------------------
    def attach(self, path: Path, manifest: dict) -> None:
        """Without the user's module, run the bundle's verified graphs (their checksums are checked on load)."""
        if self.inner is not None:
            return
        graphs = manifest.get("onnx", {})
        if "generator.onnx" not in graphs:
            raise ValueError(f"{self.import_error}; and the bundle has no generator.onnx to run instead: install "
                             "the generator's package where you load this bundle")
        for key in ("generator", "encoder"):
            if f"{key}.onnx" in graphs:
                self._sessions[key] = ort_session(path, manifest, f"{key}.onnx")

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self.inner is None:  # weights stay in the (checksummed) file; the graphs carry them
            return nn.modules.module._IncompatibleKeys([], [])
        return super().load_state_dict(state_dict, strict, assign)

    def _onnx(self, key: str, name: str, array: np.ndarray, to_float: bool) -> torch.Tensor:
        if torch.is_grad_enabled():
            raise ValueError(f"this bundle's generator runs from ONNX ({self.import_error}); training needs the "
                             "generator's own package importable")
        out = self._sessions[key].run(None, {name: array})[0]
        return torch.from_numpy(out.astype(np.float32) / 127.5 - 1.0 if to_float else out)

    # -- the contract --------------------------------------------------------------------------------------------
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.inner is None:
            images = self._onnx("generator", "z", z.detach().cpu().float().numpy(), to_float=True)
            return images.permute(0, 3, 1, 2).to(z.device)
        images = getattr(self.inner, "decode", self.inner)(z)
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if not self.can_encode:
            return super().encode(images)
        if self.inner is None:
            pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
            return self._onnx("encoder", "image", pixels.cpu().numpy(), to_float=False).to(images.device)
        if self.config.channels == 1 and images.shape[1] == 3:
            images = images.mean(dim=1, keepdim=True)
        return self.inner.encode(images)

    def linear_map(self) -> torch.Tensor | None:
        method = getattr(self.inner, "linear_map", None)
        return method() if method is not None else None

    def edit_features(self, z: torch.Tensor) -> torch.Tensor:
        method = getattr(self.inner, "edit_features", None)
        return method(z) if method is not None else super().edit_features(z)

    def sample_latents(self, seeds):
        method = getattr(self.inner, "sample_latents", None)
        if method is None:
            return super().sample_latents(seeds)
        return np.asarray(method(list(seeds)), dtype=np.float32)
