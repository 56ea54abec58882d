"""What a model takes and gives, and the checks of its inputs: everything about a model but computing it.

``ModelSpec`` holds a model's name, version, digest, latent dim, image shape, editors with their directions, and
what it can do (encode real images, sample, translate to which models). Its ``check_*`` methods and ``amounts``
are the one place inputs are validated, each failure a ``curvedit.InputError`` naming the problem and the fix:
``curvedit.Model`` checks through its spec, and so does a serving front end that holds no model at all — this
module imports NumPy and Pillow only (never torch), so a process that only parses, validates and answers
requests starts fast and stays small. ``to_dict``/``from_dict`` carry a spec between processes as JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from curvedit.errors import InputError
from curvedit.images import check_images


def finite_float32(array, what: str, hint: str) -> np.ndarray:
    """``array`` as a contiguous 2-D float32 array of finite values, else ``InputError`` (``hint``: the shape)."""
    try:
        out = np.asarray(array, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be numeric ({hint}), got {type(array).__name__}: {exc}") from exc
    if out.ndim != 2:
        raise InputError(f"{what} must be 2-D {hint}, got shape {list(out.shape)}")
    if not np.isfinite(out).all():
        bad = np.argwhere(~np.isfinite(out))[0].tolist()
        raise InputError(f"{what} contains NaN or Inf (first at index {bad}); pass finite values")
    return np.ascontiguousarray(out)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    digest: str
    family: str
    latent_dim: int
    image_shape: tuple[int, int, int]
    editor_directions: dict[str, list[str]]  # editor name → its directions (index = amount column), bundle order
    default_editor: str
    can_encode: bool
    samples: bool  # the generator samples (images depend on a seed as well as the latent)
    alignments: list[str] = field(default_factory=list)  # models this one's latents translate to
    encoding_families: tuple[str, ...] = ()  # for the message when a model without an encoder gets images
    translation_fix: str = ""  # how to get an alignment, for the message when a target is not one
    editor_modes: dict[str, str] = field(default_factory=dict)  # editor name → how it was trained ("" unknown)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> ModelSpec:
        data = dict(data)
        data["image_shape"] = tuple(data["image_shape"])
        data["encoding_families"] = tuple(data.get("encoding_families", ()))
        return cls(**data)

    # -- editors and directions ------------------------------------------------------------------------------
    @property
    def editors(self) -> list[str]:
        return list(self.editor_directions)

    @property
    def directions(self) -> list[str]:
        return self.directions_of(None)

    def directions_of(self, editor: str | None) -> list[str]:
        return list(self.editor_directions[self.resolve_editor(editor)])

    def resolve_editor(self, editor: str | None) -> str:
        """``None`` or ``""`` → the default editor; an unknown name raises ``InputError`` listing the known."""
        if not editor:
            return self.default_editor
        if editor not in self.editor_directions:
            raise InputError(f"unknown editor {editor!r}; this model has {self.editors}")
        return editor

    # -- checking inputs ------------------------------------------------------------------------------------
    def check_latents(self, z) -> np.ndarray:
        """Validate latents: float32 ``[n, d]``, ``n >= 1``, finite. Returns a contiguous float32 array."""
        d = self.latent_dim
        z = finite_float32(z, "latents", f"[n, {d}]")
        if z.shape[1] != d:
            raise InputError(f"latents have width {z.shape[1]}, but this model's latent dim is {d}: pass [n, {d}]")
        if z.shape[0] == 0:
            raise InputError("empty batch: pass at least one latent")
        return z

    def amounts(self, edits, n: int, editor: str | None = None) -> np.ndarray:
        """Turn ``{"name": amount}`` (applied to all n) or an ``[n, K]`` array into float32 ``[n, K]``."""
        names = self.directions_of(editor)
        k = len(names)
        if isinstance(edits, Mapping):
            out = np.zeros((n, k), dtype=np.float32)
            for name, amount in edits.items():
                if name not in names:
                    raise InputError(f"unknown direction {name!r}; known directions: {names}")
                try:
                    value = float(amount)
                except (TypeError, ValueError):
                    raise InputError(
                        f"amount for direction {name!r} must be one number, got {amount!r}; for per-item amounts "
                        f"pass an [n, K] array instead of a mapping"
                    ) from None
                if not np.isfinite(value):
                    raise InputError(f"amount for direction {name!r} is {value}; pass a finite number")
                out[:, names.index(name)] = value
            return out
        out = finite_float32(edits, "amounts", f"[n, K] = [{n}, {k}]")
        if out.shape != (n, k):
            raise InputError(
                f"amounts have shape {list(out.shape)}, expected [n, K] = [{n}, {k}] "
                f"(one row per latent, one column per direction: {names})"
            )
        return out

    def check_seeds(self, seed, n: int) -> np.ndarray | None:
        """A sampling ``seed`` for ``n`` rows — ``None``, one int for every row, or ``n`` ints — as int64
        ``[n]`` (``None`` stays ``None``: the family's default seed)."""
        if seed is None:
            return None
        seeds = np.atleast_1d(np.asarray(seed))
        if seeds.ndim != 1 or seeds.dtype.kind not in "iu" or len(seeds) not in (1, n):
            raise InputError(f"seed must be one integer or one per latent ({n}), got {seed!r}")
        if (seeds < 0).any() or (seeds > np.iinfo(np.int64).max).any():
            raise InputError(f"seeds must be in 0 … 2^63 − 1, got {seeds.min()} … {seeds.max()}")
        return np.broadcast_to(seeds.astype(np.int64), (n,)).copy()

    def require_encoder(self) -> None:
        """Raise ``InputError`` naming the families that can encode, unless this model can."""
        if not self.can_encode:
            raise InputError(f"model {self.name!r} ({self.family}) has no encoder, so it cannot take real images; "
                             f"families that can: {list(self.encoding_families)} (e.g. the shipped shapes-vae)")

    def check_images(self, images) -> np.ndarray:
        """Validate real images for this model (rules in ``curvedit.images``): uint8 ``[n, H, W, 3]`` back."""
        self.require_encoder()
        return check_images(images, self.image_shape)

    def check_translation_target(self, to: str) -> str:
        """``to`` if this model has an alignment to it; else ``InputError`` naming the ones it has, and the fix."""
        if not isinstance(to, str) or not to:
            raise InputError(f"name the target model to translate to (to=...); model {self.name!r} can translate "
                             f"to {self.alignments}")
        if to not in self.alignments:
            where = f"it can translate to {self.alignments}" if self.alignments else "it holds no alignment"
            raise InputError(f"model {self.name!r} has no alignment to {to!r}: {where}; {self.translation_fix}")
        return to
