"""The models a server computes: how a batch is computed on one, its warm-up, and what ``GetModel`` says.

A batch is computed on the model's RUNTIME (``Model.runtime``, the engine below the validating facade) with the
checked arrays the request reading produced: nothing is validated twice, and only the engine pads (its
``shape_policy``). Names, versions and batch keys: ``catalog``. Two bundles with the same name are refused at
start-up; the first model is the default one (requests with an empty ``model`` field).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

import curvedit
from curvedit.engines import resolve_engine
from curvedit.engines.auto_engine import CalibrationStopped
from curvedit.service.batcher import Batch, bucket_sizes
from curvedit.service.catalog import EDIT, EDIT_IMAGES, ENCODE, GENERATE, ModelEntry, from_images
from curvedit.service.errors import Cancelled, DeadlineExpired
from curvedit.v1 import latent_edit_pb2 as pb

__all__ = ["EDIT", "EDIT_IMAGES", "ENCODE", "GENERATE", "ServedModel", "from_images", "load_models",
           "serving_model"]


class ServedModel(ModelEntry):
    """A model this process computes: the ``curvedit.Model`` and its engine (see ``catalog.ModelEntry``)."""

    def __init__(self, model: curvedit.Model, name: str = "", repository_version: int = 0):
        super().__init__(model.spec, name, repository_version)
        self.model = model

    @property
    def engine(self) -> str:
        return self.model.engine

    def sample_latents(self, seeds: list[int]) -> np.ndarray:
        return self.model.bundle.generator.sample_latents(seeds)

    async def translate(self, z: np.ndarray, to: str) -> np.ndarray:
        return await asyncio.to_thread(self.model.translator.translate, z, to)

    def info(self, max_items: int) -> pb.ModelInfo:
        spec, editors = self.spec, []
        for name in spec.editors:
            editor = self.model.bundle.editors[name]
            editors.append(pb.EditorInfo(
                name=name, kind=str(getattr(editor, "kind", "")), commutative=bool(getattr(editor, "commutative",
                                                                                          False)),
                directions=[pb.Direction(name=d, index=i) for i, d in enumerate(spec.directions_of(name))]))
        return pb.ModelInfo(name=self.name, version=self.version, repository_version=self.repository_version,
                            latent_dim=self.latent_dim, image_shape=list(spec.image_shape), editors=editors,
                            default_editor=spec.default_editor, engine=self.engine,
                            max_items_per_request=max_items, can_encode=spec.can_encode, family=spec.family,
                            digest=spec.digest, alignments=spec.alignments,
                            fallbacks=[pb.EngineFallback(part=k, reason=v) for k, v in self.fallbacks().items()],
                            routes=[pb.EngineRoute(operation=r.operation, bucket=r.bucket, backend=r.backend,
                                                   seconds=r.seconds) for r in self.routes()])

    def fallbacks(self) -> dict[str, str]:
        """``{part: reason}`` of the engine parts on a fallback path (``Engine.fallbacks``)."""
        return dict(self.model.runtime.fallbacks())

    def routes(self) -> list:
        """The auto engine's measured routes (``AutoEngine.routes``); empty for a fixed engine."""
        routes = getattr(self.model.runtime, "routes", None)
        return list(routes()) if routes is not None else []

    def padded_rows(self, n: int) -> int:
        """The rows the engine really computes for a batch of ``n`` (its shape policy's padding)."""
        return self.model.runtime.shape_policy.rows(n)

    def compute(self, batch: Batch) -> tuple[np.ndarray, ...]:
        """Run one batch on the runtime: ``edit`` on ``[n, d]`` (and/or ``generate``), after ``encode`` for
        batches of real images (kinds ``encode…``, whose encoded latents come first).

        Called on the model's compute thread with checked inputs. Stage times go to ``batch.stages`` for the
        metrics. An edit whose result row is not finite (an amount too large for the flow) keeps its NaN/Inf
        row, which the request's own finish refuses for that request alone; the generator gets zeros in its
        place, so the other rows still render.
        """
        _, editor, kind = batch.key
        z, amounts = batch.inputs()
        runtime = self.model.runtime
        stages = batch.stages = {}
        if kind.startswith(ENCODE):
            t = time.perf_counter()
            z = runtime.encode(z)
            stages["encoder"] = time.perf_counter() - t
            if kind == ENCODE:
                return (z,)
            kind = kind[len(ENCODE) + 1 :]
        if kind == GENERATE:
            t = time.perf_counter()
            images = runtime.generate(z, batch.seeds(), sampling_check(batch) if self.model.samples else None)
            stages["generator"] = time.perf_counter() - t
            return (images,)
        t = time.perf_counter()
        edited = runtime.edit(editor, z, amounts)
        stages["flow"] = time.perf_counter() - t
        if kind == EDIT:
            return (edited,)
        t = time.perf_counter()
        finite = np.isfinite(edited).all(axis=1)
        images = runtime.generate(edited if finite.all() else np.where(finite[:, None], edited, 0), batch.seeds(),
                                  sampling_check(batch) if self.model.samples else None)
        stages["generator"] = time.perf_counter() - t
        return edited, images

    def warm_up(self, max_batch_size: int, cache=None, stop=None) -> dict[tuple[str, str, int], float]:
        """Run every bucket once per editor, and the generator, so no request pays a first-shape cost (the auto
        engine first measures its backends at every bucket and routes each to the fastest, or takes the routes
        ``cache``, a ``route_cache.RouteCache``, holds for this bundle and machine).

        Then time each once more: ``{(editor, EDIT or GENERATE, bucket): seconds}`` (editor "" for GENERATE),
        the admission control's first cost estimates. ``stop`` (a ``threading.Event``), once set, ends the
        warm-up between two calls with ``WarmUpStopped``.
        """
        calibrate = getattr(self.model.runtime, "calibrate", None)
        if calibrate is not None:  # the auto engine: measure its backends at these buckets, route each
            try:
                calibrate(bucket_sizes(max_batch_size), cache=cache, stop=stop)
            except CalibrationStopped as exc:
                raise WarmUpStopped(self.name) from exc
        seconds: dict[tuple[str, str, int], float] = {}
        for timed in (False, True):
            for b in bucket_sizes(max_batch_size):
                if stop is not None and stop.is_set():
                    raise WarmUpStopped(self.name)
                z = np.zeros((b, self.latent_dim), dtype=np.float32)
                for editor in self.model.editors:
                    amounts = np.zeros((b, len(self.model.directions_of(editor))), np.float32)
                    t = time.perf_counter()
                    self.model.edit(z, amounts, editor)
                    if timed:
                        seconds[(editor, EDIT, b)] = time.perf_counter() - t
                t = time.perf_counter()
                self.model.generate(z)
                if timed:
                    seconds[("", GENERATE, b)] = time.perf_counter() - t
                if self.model.can_encode:
                    images = np.zeros((b, *self.model.image_shape), dtype=np.uint8)
                    t = time.perf_counter()
                    self.model.encode(images)
                    if timed:
                        seconds[("", ENCODE, b)] = time.perf_counter() - t
        return seconds

    def seed_costs(self, cost, timings: dict[tuple[str, str, int], float]) -> None:
        """Give ``cost`` (an ``admission.CostModel``) warm-up timings under this model's batch keys."""
        for (editor, kind, b), s in timings.items():
            if kind in (GENERATE, ENCODE):
                cost.set((self.key, "", kind), b, s)
                continue
            encode = timings.get(("", ENCODE, b))
            for key, seconds in ((EDIT, s), (EDIT_IMAGES, s + timings.get(("", GENERATE, b), 0.0))):
                cost.set((self.key, editor, key), b, seconds)
                if encode is not None:
                    cost.set((self.key, editor, from_images(key)), b, seconds + encode)


class WarmUpStopped(Exception):
    """A warm-up was told to stop (the server is shutting down) before it finished."""

    def __init__(self, name: str):
        super().__init__(f"warm-up of {name} stopped")


def sampling_check(batch: Batch):
    """``check(step)`` for a sampling generator: counts the batch's steps and stops the work (raising
    ``DeadlineExpired`` or ``Cancelled``) once every request in the batch is gone."""

    def check(step: int) -> None:
        batch.steps = step
        reason = batch.abandoned()
        if reason == "deadline":
            raise DeadlineExpired(f"sampling (step {step} of the batch)", computing=True)
        if reason is not None:
            raise Cancelled()

    return check


def serving_model(path, engine: str = "auto", expect_digest: str | None = None,
                  ort_threads: int = 0) -> curvedit.Model:
    """``curvedit.load`` as a server (and the load benchmark's in-process yardstick) runs it.

    ONNX Runtime runs with spinning off: its idle worker threads otherwise busy-wait between batches, taking
    the cores the gRPC event loop needs (on 2 cores this halved single-item throughput); ``ort_threads`` > 0
    sets its intra-op threads.
    """
    options = None
    if resolve_engine(engine) == "onnxruntime":
        options = {"spinning": False, **({"threads": ort_threads} if ort_threads else {})}
    return curvedit.load(path, engine=engine, engine_options=options, expect_digest=expect_digest)


def default_models() -> tuple[str, ...]:
    """The models ``serve`` runs when none is named: every shipped model whose generator does not sample. A
    sampler's warm-up samples every batch bucket (``shapes-pixelcnn`` on the 2-core machine: 31 s with the
    onnxruntime engine, 48 s with the auto engine, which first times both backends at every bucket; shapes-vae:
    4 s), so it is served when named: ``--model shapes-pixelcnn``."""
    from curvedit.api import resolve_model
    from curvedit.bundle import read_manifest
    from curvedit.models.families import GENERATOR_FAMILIES

    return tuple(name for name in curvedit.list_models()
                 if not GENERATOR_FAMILIES[read_manifest(resolve_model(name))["generator"]["kind"]].samples)


def load_models(paths: tuple[str, ...], engine: str, expect_digests: tuple[str, ...] = (),
                ort_threads: int = 0) -> dict[str, ServedModel]:
    """Load every model (a shipped model's name or a bundle path; none = ``default_models()``, the default
    ``shapes32`` first), each pinned to ``expect_digests[i]`` when given; refuse duplicate names. Insertion
    order = given order; the first is the default."""
    models: dict[str, ServedModel] = {}
    paths = paths or default_models()
    digests = expect_digests or (None,) * len(paths)
    for path, digest in zip(paths, digests, strict=True):
        served = ServedModel(serving_model(path, engine, digest, ort_threads))
        if served.name in models:
            raise ValueError(f"two models are named {served.name!r} ({path} and an earlier --model); model names "
                             "come from the bundle manifest's 'name' and must be unique on one server")
        models[served.name] = served
    return models
