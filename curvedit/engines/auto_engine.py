"""The ``auto`` engine: measures the backends this machine has per operation and batch bucket, then routes each
batch to the one that was fastest there.

Candidates (``AUTO_CANDIDATES``): on the CPU ``onnxruntime`` and ``torch``; on a CUDA GPU also ``triton``.
``torch.compile`` is a candidate only when asked (``engine_options={"candidates": [..., "torch.compile"]}``): on
the 2-core development machine one compile took 30–70 s, longer than a server's warm-up should.

Until ``calibrate`` runs, everything goes to ``default`` (the static choice ``resolve_engine("auto")`` makes:
triton on a CUDA GPU where it works, else onnxruntime; torch without ONNX Runtime), so a library user pays
nothing at load. The server calibrates at warm-up over its batch buckets; ``routes()`` then says what won
(``ModelInfo.routes``, ``curvedit_engine_route_seconds``). ``name`` says what runs: the one backend every route
chose (or ``default`` before calibration), else ``"auto"``.

A bucket leaves the default backend only for one measured more than ``SWITCH_MARGIN`` (5%) faster there
(see ``choose``). A batch of ``n`` rows takes the route of the smallest calibrated bucket holding it (beyond the
largest: the largest's). Every candidate computes the same function on the same checked inputs; their results
agree to fp32 tolerance (the engine tests check each against torch).
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass

import numpy as np

from curvedit.bundle import Bundle
from curvedit.engines.base import ShapePolicy
from curvedit.engines.route_cache import machine, versions

CPU_CANDIDATES = ("onnxruntime", "torch")
CUDA_CANDIDATES = ("triton", "onnxruntime", "torch")
KNOWN = ("onnxruntime", "torch", "triton", "torch.compile")


SWITCH_MARGIN = 0.05  # a bucket leaves the default backend only for one measured this much faster
CALIBRATION_ROUNDS = 2  # rounds over the candidates per bucket; a candidate's calls are consecutive in each
CALIBRATION_PAUSE_S = 0.05  # the longest pause before a candidate's calls (CPU)


def choose(medians: dict[str, float], default: str, margin: float = SWITCH_MARGIN) -> str:
    """The fastest backend by median seconds, but the default unless that one is more than ``margin`` faster.

    Why the margin: calibration is a few calls per bucket, and on a loaded machine its winner between two
    backends within a few percent is a coin toss; a server whose buckets land on different backends pays for it
    in the tail (ONNX Runtime's spinning pool and torch's OpenMP pool slow each other down when calls
    alternate). Staying on the default costs at most ``margin`` at a bucket, the tolerance ``bench engine``
    holds ``auto`` to."""
    best = min(medians, key=medians.get)
    if default in medians and medians[best] > (1 - margin) * medians[default]:
        return default
    return best


@dataclass(frozen=True)
class Route:
    """The backend that was fastest for ``operation`` at ``bucket`` rows, and its measured seconds per call."""

    operation: str  # "edit:<editor>", "generate" or "encode"
    bucket: int
    backend: str
    seconds: float


class CalibrationStopped(Exception):
    """A calibration was told to stop (``calibrate(stop=...)``) before it finished."""

    def __init__(self, operation: str, bucket: int):
        super().__init__(f"calibration stopped before {operation} at {bucket} rows")


class AutoEngine:
    """Routes each call to the backend measured fastest for its operation and batch bucket (see the module)."""

    def __init__(self, bundle: Bundle, device: str | None, default: str, candidates=None, build=None,
                 options: dict | None = None):
        self._on_cuda = device is not None and device.startswith("cuda")
        if candidates is None:
            candidates = CUDA_CANDIDATES if self._on_cuda else CPU_CANDIDATES
        unknown = [c for c in candidates if c not in KNOWN]
        if unknown or not candidates:
            raise ValueError(f"auto engine candidates must be among {list(KNOWN)}, got {list(candidates)}")
        self.bundle, self.device, self.default = bundle, device, default
        self.candidates = tuple(dict.fromkeys([default, *candidates]))
        self._build, self._options = build, options or {}
        self._engines: dict[str, object] = {}
        self._routes: dict[str, dict[int, Route]] = {}  # operation → bucket → route
        self.calibrated_from = ""  # "measured" or "cache" once calibrated
        self._lock = threading.Lock()

    # -- the backends -------------------------------------------------------------------------------------------
    def engine(self, name: str):
        """The candidate ``name`` (built on first use)."""
        with self._lock:
            if name not in self._engines:
                self._engines[name] = self._build(name, self._options if name == self.default else {})
            return self._engines[name]

    @property
    def name(self) -> str:
        chosen = {r.backend for buckets in self._routes.values() for r in buckets.values()}
        if not chosen:
            return self.default
        return chosen.pop() if len(chosen) == 1 else "auto"

    @property
    def shape_policy(self) -> ShapePolicy:
        return self.engine(self.default).shape_policy

    def fallbacks(self) -> dict[str, str]:
        """The fallbacks of every backend that some route (or the default) uses, keyed ``backend/part``."""
        used = {r.backend for buckets in self._routes.values() for r in buckets.values()} or {self.default}
        return {f"{name}/{part}": why for name in sorted(used)
                for part, why in self.engine(name).fallbacks().items()}

    def routes(self) -> list[Route]:
        return [r for buckets in self._routes.values() for r in sorted(buckets.values(), key=lambda r: r.bucket)]

    def _for(self, operation: str, n: int):
        buckets = self._routes.get(operation)
        if not buckets:
            return self.engine(self.default)
        for bucket in sorted(buckets):
            if bucket >= n:
                return self.engine(buckets[bucket].backend)
        return self.engine(buckets[max(buckets)].backend)

    # -- the engine interface ------------------------------------------------------------------------------------
    def edit(self, editor: str, z: np.ndarray, amounts: np.ndarray) -> np.ndarray:
        return self._for(f"edit:{editor}", len(z)).edit(editor, z, amounts)

    def generate(self, z: np.ndarray, seeds: np.ndarray | None = None, check=None) -> np.ndarray:
        return self._for("generate", len(z)).generate(z, seeds, check)

    def encode(self, images: np.ndarray) -> np.ndarray:
        return self._for("encode", len(images)).encode(images)

    # -- measuring -----------------------------------------------------------------------------------------------
    def operations(self) -> list[str]:
        ops = [f"edit:{name}" for name in self.bundle.editors] + ["generate"]
        return [*ops, "encode"] if self.bundle.generator.can_encode else ops

    def cache_key(self, buckets, operations) -> dict:
        """What this calibration's result depends on (``route_cache``): bundle, machine, software, settings."""
        return {"bundle": self.bundle.digest, "machine": machine(self.device), "versions": versions(),
                "default": self.default, "candidates": list(self.candidates),
                "options": {k: v for k, v in sorted(self._options.items())},
                "operations": list(operations), "buckets": sorted(set(int(b) for b in buckets))}

    def calibrate(self, buckets, operations=None, repeats: int = 5, warmup: int = 1, cache=None,
                  stop=None) -> list[Route]:
        """Time every candidate at every bucket of every operation (median of ``repeats`` calls, taken in
        ``CALIBRATION_ROUNDS`` rounds over the candidates so load from elsewhere hits them alike) and route each
        to the fastest (replacing earlier routes of those buckets). Within a round a candidate's calls are
        consecutive, after one untimed call: alternated call by call, ONNX Runtime's spinning thread pool slowed
        torch's calls severalfold (benchmarks/RESULTS.md, the large-batch check), so calibration favoured ONNX
        Runtime where torch was faster (by 1.19–1.24× at 1,024–4,096 rows of the shipped flow, `bench engine`
        E6). A candidate that fails to build or run is left out of that route. A sampler's ``generate`` (256
        network passes, seconds at large buckets) is timed once per candidate, without warm-up calls: its
        backends differ by 1.4–2× (benchmarks/RESULTS.md), far above the noise of one call, and seven calls each
        made shapes-pixelcnn's server warm-up take 239 s on 2 cores (48 s with one). Returns all routes.

        ``cache`` (a ``route_cache.RouteCache``): routes stored for this very bundle, machine and software are
        taken instead of measuring, and what is measured is stored. ``stop`` (a ``threading.Event``): set, it
        ends the calibration between two calls with ``CalibrationStopped`` (a server told to stop mid-warm-up)."""
        operations = list(operations or self.operations())
        key = self.cache_key(buckets, operations) if cache is not None else None
        stored = cache.load(key) if cache is not None else None
        if stored is not None:
            for operation, bucket, backend, seconds in stored:
                self._routes.setdefault(operation, {})[int(bucket)] = Route(operation, int(bucket), backend,
                                                                            float(seconds))
            self.calibrated_from = "cache"
            return self.routes()
        self._measure(buckets, operations, repeats, warmup, stop)
        self.calibrated_from = "measured"
        if cache is not None:
            cache.save(key, [[r.operation, r.bucket, r.backend, r.seconds] for r in self.routes()
                             if r.operation in operations])
        return self.routes()

    def _measure(self, buckets, operations, repeats: int, warmup: int, stop) -> None:
        rng = np.random.default_rng(0)
        d = int(self.bundle.manifest["latent_dim"])
        requested = (warmup, repeats)
        for operation in operations:
            once = operation == "generate" and self.bundle.generator.samples
            warmup, repeats = (0, 1) if once else requested
            routes = {}
            for bucket in sorted(set(int(b) for b in buckets)):
                calls, longest = {}, 0.0
                if stop is not None and stop.is_set():
                    raise CalibrationStopped(operation, bucket)
                for name in self.candidates:
                    try:
                        call = self._call(name, operation, bucket, d, rng)
                        for _ in range(warmup):
                            t0 = time.perf_counter()
                            call()
                            longest = max(longest, time.perf_counter() - t0)
                        calls[name] = call
                    except Exception:  # a backend that cannot run this is simply not a candidate here
                        continue
                if not calls:
                    continue
                samples: dict[str, list[float]] = {name: [] for name in calls}
                rounds = min(CALIBRATION_ROUNDS, repeats)
                # On the CPU, a pause before each candidate's calls lets the last one's pools stop spinning:
                # twice the longest warm-up call, at most CALIBRATION_PAUSE_S (`bench engine` pauses 50 ms). With
                # once the call and at most 20 ms, 1 of 2 runs again routed 1,024 rows of the shipped flow to
                # ONNX Runtime while torch was 1.22× faster (E13); twice and 50 ms got both runs right (E10, E11).
                # The cost: the 7 default models' warm-up took 58 s instead of 39 s on the 2-core machine.
                pause = 0.0 if self._on_cuda else min(CALIBRATION_PAUSE_S, 2 * longest)
                for r in range(rounds):
                    for name, call in calls.items():
                        time.sleep(pause)
                        if not once:
                            call()  # untimed: the previous candidate's thread pools settle
                        for _ in range(repeats // rounds + (r < repeats % rounds)):
                            t0 = time.perf_counter()
                            call()
                            samples[name].append(time.perf_counter() - t0)
                medians = {name: statistics.median(times) for name, times in samples.items()}
                best = choose(medians, self.default)
                routes[bucket] = Route(operation, bucket, best, medians[best])
            self._routes.setdefault(operation, {}).update(routes)

    def _call(self, name: str, operation: str, bucket: int, d: int, rng):
        engine = self.engine(name)
        if operation.startswith("edit:"):
            editor = operation.split(":", 1)[1]
            k = len(self.bundle.editors[editor].directions)
            z = rng.standard_normal((bucket, d)).astype(np.float32)
            t = rng.standard_normal((bucket, k)).astype(np.float32)
            return lambda: engine.edit(editor, z, t)
        if operation == "generate":
            z = rng.standard_normal((bucket, d)).astype(np.float32)
            return lambda: engine.generate(z)
        shape = tuple(self.bundle.manifest["image_shape"])
        images = rng.integers(0, 256, (bucket, *shape), dtype=np.uint8)
        return lambda: engine.encode(images)
