"""The public Python API: ``curvedit.load()``, ``curvedit.list_models()`` and the ``Model`` a load returns.

A model is named by a shipped model's name (``"shapes32"``, the default; ``list_models()`` lists them all) or by
the path of a bundle directory: ``resolve_model`` (``curvedit.shipped``, re-exported here) gives every command
the same meaning for ``--model``.

Arrays in and out are NumPy: latents float32 ``[n, d]``, amounts float32 ``[n, K]``, images uint8
``[n, H, W, 3]``. Every input is checked here, and a bad one raises ``ValueError`` saying what is wrong and
what is expected, so services and command lines built on ``Model`` can pass the message straight on. It is a
``curvedit.InputError`` (a ``ValueError``): the service answers it with INVALID_ARGUMENT, and anything else that
goes wrong below ``Model`` with INTERNAL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from curvedit.bundle import Bundle, load_bundle
from curvedit.engines import make_engine
from curvedit.errors import InputError
from curvedit.model_spec import ModelSpec
from curvedit.models.families import families_that_encode
from curvedit.shipped import DEFAULT_MODEL, default_bundle_path, list_models, resolve_model, shipped_models_dir
from curvedit.translation import Translator, translation_fix

# The shipped models' names and paths live in curvedit.shipped (translation needs them too, without this module).
__all__ = ["DEFAULT_MODEL", "Model", "default_bundle_path", "list_models", "load", "resolve_model",
           "shipped_models_dir"]

Edits = Mapping[str, float] | np.ndarray | Sequence[Sequence[float]]

def load(model: str | Path | None = None, engine: str = "auto", device: str | None = None,
         engine_options: dict | None = None, expect_digest: str | None = None) -> Model:
    """Load a shipped model by name (``None`` = ``shapes32``) or a bundle by path, with an engine: ``auto``
    (triton on a CUDA GPU, else onnxruntime), ``torch``, ``onnxruntime`` or ``triton``. ``engine_options`` go to
    that backend (see ``curvedit.engines.make_engine``); ``expect_digest`` refuses any bundle whose digest
    (``Model.digest``, ``curvedit info``) does not start with it."""
    bundle = load_bundle(resolve_model(model), expect_digest=expect_digest)
    return Model(bundle, engine, device, engine_options)


class Model:
    """A loaded bundle plus the engine that runs it.

    ``directions`` are the default editor's direction names, index = axis k of the amounts array.
    """

    def __init__(self, bundle: Bundle, engine: str = "auto", device: str | None = None,
                 engine_options: dict | None = None):
        self.bundle = bundle
        self._engine = make_engine(bundle, engine, device, engine_options)
        self.translator = Translator(bundle, self.name)
        self._spec: ModelSpec | None = None

    # ``translator``: translation below this facade, like ``runtime``: ``translator.translate(z, to)`` takes
    # checked latents and a checked target name (``check_translation_target``) and checks neither again.

    @property
    def runtime(self):
        """The engine below this facade, for callers that validated their inputs already (the service's compute
        stage): it takes CHECKED arrays only — contiguous float32 latents ``[n, d]``, amounts ``[n, K]`` of a
        resolved editor name, uint8 images ``[n, H, W, 3]`` of the model's size — and checks nothing again.
        ``runtime.shape_policy`` says which batch sizes it runs; ``runtime.fallbacks()`` what runs on a
        slower path than the engine's own."""
        return self._engine

    # -- what the bundle holds ------------------------------------------------------------------------------
    @property
    def engine(self) -> str:
        return self._engine.name

    @property
    def name(self) -> str:
        return self.bundle.manifest.get("name", self.bundle.path.name)

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def digest(self) -> str:
        """The bundle's digest: sha256 of its manifest, which covers every file and what the model does."""
        return self.bundle.digest

    @property
    def family(self) -> str:
        """The generator family (``dcgan``, ``vae``, ``known-chart``, …)."""
        return self.bundle.generator.family

    @property
    def can_encode(self) -> bool:
        """Whether real images can be encoded (``encode``, ``edit_images``): families with an encoder."""
        return self.bundle.generator.can_encode

    @property
    def latent_dim(self) -> int:
        return int(self.bundle.manifest["latent_dim"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.bundle.manifest["image_shape"])

    @property
    def editors(self) -> list[str]:
        return list(self.bundle.editors)

    @property
    def default_editor(self) -> str:
        return self.bundle.default_editor

    @property
    def directions(self) -> list[str]:
        return self.directions_of(None)

    def directions_of(self, editor: str | None) -> list[str]:
        return self.spec.directions_of(editor)

    def resolve_editor(self, editor: str | None) -> str:
        """``None`` or ``""`` → the default editor; an unknown name raises ``ValueError`` listing the known."""
        return self.spec.resolve_editor(editor)

    @property
    def spec(self) -> ModelSpec:
        """What this model takes and gives, and the checks of its inputs (``curvedit.model_spec``): every input
        of the methods below is checked through it."""
        if self._spec is None:
            bundle = self.bundle
            self._spec = ModelSpec(
                name=self.name, version=self.version, digest=self.digest, family=self.family,
                latent_dim=int(bundle.manifest["latent_dim"]), image_shape=tuple(bundle.manifest["image_shape"]),
                editor_directions={name: list(editor.directions) for name, editor in bundle.editors.items()},
                default_editor=bundle.default_editor, can_encode=bool(bundle.generator.can_encode),
                samples=bool(bundle.generator.samples), alignments=self.translator.targets,
                encoding_families=tuple(families_that_encode()), translation_fix=translation_fix(self.name),
                editor_modes={name: str(entry.get("mode", ""))
                              for name, entry in bundle.manifest.get("editors", {}).items()})
        return self._spec

    # -- checking inputs ------------------------------------------------------------------------------------
    def check_latents(self, z) -> np.ndarray:
        """Validate latents: float32 ``[n, d]``, ``n >= 1``, finite. Returns a contiguous float32 array."""
        return self.spec.check_latents(z)

    def amounts(self, edits: Edits, n: int, editor: str | None = None) -> np.ndarray:
        """Turn ``{"name": amount}`` (applied to all n) or an ``[n, K]`` array into float32 ``[n, K]``."""
        return self.spec.amounts(edits, n, editor)

    # -- the work -------------------------------------------------------------------------------------------
    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """``n`` latents float32 ``[n, d]``: row i is ``N(0, I)`` drawn from seed ``seed + i``.

        So ``sample(n, seed=s)`` equals ``sample_seeds(range(s, s + n))``; ``seed=None`` draws a fresh seed.
        """
        if n < 1:
            raise InputError(f"n must be >= 1, got {n}")
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        return self.sample_seeds(range(seed, seed + n))

    def sample_seeds(self, seeds: Sequence[int]) -> np.ndarray:
        """One latent per seed: float32 ``[len(seeds), d]``, row i from ``numpy.random.default_rng(seeds[i])``."""
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise InputError("empty batch: pass at least one seed")
        if any(s < 0 for s in seeds):
            raise InputError(f"seeds must be >= 0, got {min(seeds)}")
        return self.bundle.generator.sample_latents(seeds)

    def edit(self, z, edits: Edits, editor: str | None = None) -> np.ndarray:
        """Edited latents float32 ``[n, d]``; ``edits`` is ``{"direction": amount}`` or ``[n, K]`` amounts."""
        editor = self.resolve_editor(editor)
        z = self.check_latents(z)
        return self._engine.edit(editor, z, self.amounts(edits, z.shape[0], editor))

    @property
    def samples(self) -> bool:
        """Whether the generator samples (the PixelCNN): its images depend on a seed as well as the latent."""
        return self.bundle.generator.samples

    def check_seeds(self, seed, n: int) -> np.ndarray | None:
        """A sampling ``seed`` for ``n`` rows — ``None``, one int for every row, or ``n`` ints — as int64
        ``[n]`` (``None`` stays ``None``: the family's default seed)."""
        return self.spec.check_seeds(seed, n)

    def generate(self, z, seed: int | Sequence[int] | None = None) -> np.ndarray:
        """Images uint8 ``[n, H, W, 3]`` for latents ``[n, d]``. For a generator that samples (``samples``):
        ``seed``, one int for every row or one per row, picks the draw, and equal ``(z, seed)`` give equal images
        at any batch size or position; ``None`` is the family's default seed (0), so ``generate`` stays
        deterministic. Other generators ignore it."""
        z = self.check_latents(z)
        return self._engine.generate(z, self.check_seeds(seed, len(z)))

    def require_encoder(self) -> None:
        """Raise ``ValueError`` naming the families that can encode, unless this model can."""
        self.spec.require_encoder()

    def check_images(self, images) -> np.ndarray:
        """Validate real images for this model (rules in ``curvedit.images``): uint8 ``[n, H, W, 3]`` back."""
        return self.spec.check_images(images)

    def encode(self, images) -> np.ndarray:
        """Latents float32 ``[n, d]`` of real images uint8 ``[n, H, W, 3]`` (grayscale ``[n, H, W]`` too)."""
        return self._engine.encode(self.check_images(images))

    def edit_images(self, images, edits: Edits, editor: str | None = None) -> np.ndarray:
        """Edit real images: encode → edit → decode; uint8 ``[n, H, W, 3]`` in and out."""
        editor = self.resolve_editor(editor)
        images = self.check_images(images)
        amounts = self.amounts(edits, images.shape[0], editor)
        return self._engine.generate(self._engine.edit(editor, self._engine.encode(images), amounts))

    @property
    def alignments(self) -> list[str]:
        """The models this one's latents can be translated to (``translate``)."""
        return self.translator.targets

    def check_translation_target(self, to: str) -> str:
        """``to`` if this model has an alignment to it; else ``ValueError`` naming the ones it has, and the fix."""
        return self.spec.check_translation_target(to)

    def translate(self, inputs, to: str) -> np.ndarray:
        """Latents of model ``to`` float32 ``[n, d_t]`` that show what ``inputs`` show, in ``to``'s domain.

        ``inputs`` are this model's latents float32 ``[n, d]``, or real images uint8 ``[n, H, W, 3]`` (encoded
        first; grayscale ``[n, H, W]`` too). Render them with ``curvedit.load(to).generate(...)``; edits commute
        with the translation: ``translate(edit(z, t)) ≈ load(to).edit(translate(z), t)``.
        """
        to = self.check_translation_target(to)
        array = np.asarray(inputs) if not isinstance(inputs, np.ndarray) else inputs
        if array.dtype == np.uint8:
            z = self.encode(array)
        elif array.ndim == 2:
            z = self.check_latents(array)
        else:
            raise InputError(f"translate takes latents float32 [n, {self.latent_dim}] or images uint8 "
                             f"[n, H, W, 3], got {array.dtype} of shape {list(array.shape)}")
        return self.translator.translate(z, to)

    def __repr__(self) -> str:
        return (f"Model(name={self.name!r}, version={self.version!r}, latent_dim={self.latent_dim}, "
                f"editors={self.editors}, directions={self.directions}, engine={self.engine!r})")
