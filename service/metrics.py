"""Every metric the server exports, declared once, in a registry of its own (so tests can run several servers).

Names follow what dashboards already know: the go-grpc-prometheus ``grpc_server_*`` set and Triton's per-model
``nv_inference_*`` counters, plus histograms in seconds (percentiles, which Triton's counters cannot give) and
the executed batch size. Labels are bounded: method names, status codes, model name/version, a fixed reason
set. Every recording method is wrapped by ``_safe``: a metrics bug is logged, never raised into a request.
Counters and histograms are ``LoopFamily``s: written only on the server's event loop, without a lock.

THE LATENCY METRIC FOR SLOs is ``curvedit_request_latency_seconds{model, version, grpc_method}``: one inference
request (native Edit/Generate/Encode/Traverse/EditStream messages, OIP ModelInfer over gRPC or HTTP), from its
admission — the handler's first step — until every result is ready, so queue wait and compute included; recorded
for successful requests (failures count in ``nv_inference_request_failure`` and ``grpc_server_handled_total``, the
SLO's error side). The others measure parts or other things and are not for SLOs:
``grpc_server_handling_seconds`` is the transport's view of every RPC (health and metadata included, no model
label, no HTTP); ``nv_inference_request_duration_us`` is the same measurement as the SLO histogram, summed, for
Triton's dashboards (means only); ``curvedit_queue_wait_seconds`` and ``curvedit_batch_compute_seconds`` are its
parts; ``curvedit_http_request_seconds`` is every HTTP route.

``curvedit_rejections_total{model, reason}`` counts refusals before compute; ``model`` is "" when the refusal came
before the request named a model this server has (a bad token, draining, an unknown model).
``nv_inference_request_failure``'s ``reason`` follows Triton: REJECTED only for requests refused for room or while
unavailable (queue full, overloaded, draining), CANCELED, BACKEND (compute failed), OTHER (malformed requests).
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from bisect import bisect_left

from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

SERVICE = "curvedit.v1.LatentEditService"
INFERENCE_SERVICE = "inference.GRPCInferenceService"
LATENCY_BUCKETS = (.0005, .001, .002, .004, .006, .008, .01, .015, .02, .03, .05, .075, .1, .25, .5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# The label values known before any event, so every series of a loaded model exists from the start at zero
# (rate() and increase() need a sample before the first event to see it): go-grpc-prometheus does the same for
# every registered method and status code.
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
INFERENCE_METHODS = ("Edit", "EditStream", "Traverse", "Generate", "Encode", "Translate", "ModelInfer")
STAGES = ("encoder", "flow", "generator")
RELEASE_REASONS = ("idle", "full", "delay", "company")
DROP_REASONS = ("deadline", "cancelled")
STATUS_CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
                "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
REJECT_REASONS = ("queue_full", "overloaded", "deadline_unmeetable", "draining", "warming_up", "invalid",
                  "not_found", "unauthenticated", "deadline", "cancelled")


def _safe(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            method(*args, **kwargs)
        except Exception:
            log.exception("recording metric %s failed", method.__name__)
    return wrapper


class LoopFamily(Collector):
    """A counter or histogram family written only from the server's event loop, with no lock on the hot path.

    Every recording site of these families runs on the loop: the RPC interceptor, the handlers, the batcher's
    observer and the HTTP front. prometheus_client's own ``Counter`` / ``Histogram`` take a lock per value: the
    set recorded per request took 7.6 us in a microbenchmark (3.3 us with these), against the loop's ~330 us per
    request at c = 64 (benchmarks/RESULTS.md, runs S10–S11); here a write is an attribute update. A scrape (the
    ``/metrics`` thread) copies each child whole under the GIL, and a histogram's ``_count`` is computed from the
    same copy as its buckets, so the two always agree.

    ``kind``: ``"counter"`` (exposed as ``name_total``, as ``Counter`` would, without ``_created``),
    ``"histogram"`` (``_bucket`` / ``_count`` / ``_sum``) or ``"triton"``: exactly ``name``, untyped, as Triton
    exposes its ``nv_inference_*`` counters (the Grafana dashboards built for Triton query the bare names).
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...], registry: CollectorRegistry,
                 kind: str = "counter", buckets: tuple[float, ...] = ()):
        if kind not in ("counter", "histogram", "triton"):
            raise ValueError(f"kind must be counter, histogram or triton, got {kind!r}")
        self.name, self.documentation, self.labelnames, self.kind = name, documentation, labelnames, kind
        self.bounds = tuple(float(b) for b in buckets)
        self._children: dict[tuple[str, ...], _Count | _Buckets] = {}
        registry.register(self)

    def labels(self, *values) -> _Count | _Buckets:
        """The child of these label values (made on first use); callers on a hot path keep it."""
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {key}")
            child = self._children[key] = _Buckets(self.bounds) if self.kind == "histogram" else _Count(self.name)
        return child

    def collect(self):
        children = list(self._children.items())
        if self.kind == "histogram":
            family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
            les = [floatToGoString(b) for b in (*self.bounds, math.inf)]
            for key, child in children:
                counts, total = child.snapshot()
                family.add_metric(list(key), list(zip(les, itertools.accumulate(counts), strict=True)), total)
        elif self.kind == "counter":
            family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
            for key, child in children:
                family.add_metric(list(key), child.value)
        else:
            family = Metric(self.name, self.documentation, "unknown")
            for key, child in children:
                family.add_sample(self.name, dict(zip(self.labelnames, key, strict=True)), child.value)
        yield family


class _Count:
    __slots__ = ("name", "value")

    def __init__(self, name: str):
        self.name, self.value = name, 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"{self.name} can only go up, got {amount}")
        self.value += amount


class _Buckets:
    """One histogram child: a count per bucket (not cumulative; the last one is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds, self.counts, self.sum = bounds, [0] * (len(bounds) + 1), 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value: le
        self.sum += value

    def snapshot(self) -> tuple[list[int], float]:
        return list(self.counts), self.sum


class ServerMetrics:
    """The metric families of one server. ``registry`` is what ``/metrics`` serves."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry = registry or CollectorRegistry()
        rpc = ("grpc_type", "grpc_service", "grpc_method")
        model = ("model", "version")

        def counter(name: str, documentation: str, labels: tuple[str, ...]) -> LoopFamily:
            return LoopFamily(name, documentation, labels, registry)

        def triton(name: str, documentation: str, labels: tuple[str, ...]) -> LoopFamily:
            return LoopFamily(name, documentation, labels, registry, "triton")

        def histogram(name: str, documentation: str, labels: tuple[str, ...], buckets=LATENCY_BUCKETS):
            return LoopFamily(name, documentation, labels, registry, "histogram", buckets)

        self.started = counter("grpc_server_started_total", "RPCs started on the server.", rpc)
        self.handled = counter("grpc_server_handled_total", "RPCs completed on the server, by status code.",
                               (*rpc, "grpc_code"))
        self.handling = histogram("grpc_server_handling_seconds", "RPC handling time until the status is sent, "
                                  "every RPC (the transport's view; the SLO metric is "
                                  "curvedit_request_latency_seconds).", rpc)
        self.msg_received = counter("grpc_server_msg_received_total", "Stream messages received.", rpc)
        self.msg_sent = counter("grpc_server_msg_sent_total", "Stream messages sent.", rpc)
        self.success = triton("nv_inference_request_success", "Successful inference requests.", model)
        self.failure = triton("nv_inference_request_failure", "Failed inference requests by reason "
                              "(REJECTED, CANCELED, BACKEND, OTHER).", (*model, "reason"))
        self.count = triton("nv_inference_count", "Items (latents) inferred, padding excluded.", model)
        self.exec_count = triton("nv_inference_exec_count", "Batches executed (count / exec_count = mean "
                                 "batch).", model)
        self.pending = Gauge("nv_inference_pending_request_count", "Items queued for a batch.", model,
                             registry=registry)
        self.request_us = triton("nv_inference_request_duration_us", "Cumulative request time, us: the SLO "
                                 "histogram's measurement (curvedit_request_latency_seconds), summed.", model)
        self.queue_us = triton("nv_inference_queue_duration_us", "Cumulative queue wait of requests, us.", model)
        self.compute_us = triton("nv_inference_compute_infer_duration_us", "Cumulative batch compute time, us.",
                                 model)
        self.queue_seconds = histogram("curvedit_queue_wait_seconds", "Time a request's items waited for a "
                                       "batch.", model)
        self.compute_seconds = histogram("curvedit_batch_compute_seconds", "Compute time of one batch, by stage "
                                         "(flow = editor, generator = images).", (*model, "stage"))
        self.latency_seconds = histogram("curvedit_request_latency_seconds", "THE latency metric for SLOs: one "
                                         "successful inference request from admission until its results are "
                                         "ready (queue wait and compute included), by RPC; OIP requests "
                                         "(gRPC and HTTP) as ModelInfer.", (*model, "grpc_method"))
        self.batch_size = histogram("curvedit_batch_size", "Items in each executed batch (before padding).",
                                    model, BATCH_BUCKETS)
        self.padded_size = histogram("curvedit_batch_padded_size", "Rows in each executed batch after padding "
                                     "to its bucket.", model, BATCH_BUCKETS)
        self.batch_release = counter("curvedit_batch_release_total", "Why batches were released: idle (the "
                                     "model's compute was free), full, delay (a batch that filled while another "
                                     "ran, after max_queue_delay), or company (as many items back as its last "
                                     "batch had).", (*model, "reason"))
        self.rejections = counter("curvedit_rejections_total", "Requests or items refused before compute, by "
                                  "model (\"\" before a known model was named) and reason.", ("model", "reason"))
        for reason in REJECT_REASONS:  # every reason exported from the start, at 0
            self.rejections.labels("", reason)
        self.dropped_items = counter("curvedit_dropped_items_total", "Queued items dropped before compute "
                                     "(deadline passed or client cancelled).", (*model, "reason"))
        self.sampling_steps = counter("curvedit_sampling_steps_total", "Sampling steps computed by generators "
                                      "that sample (one step: one pixel of a whole batch; 256 per PixelCNN "
                                      "batch). A batch whose every request is gone (deadline, cancelled) stops "
                                      "between steps.", model)
        self.fallback = Gauge("curvedit_engine_fallback", "1 for each engine part (graph, kernel) running on a "
                              "fallback path; `path` is what it runs on instead (ModelInfo.fallbacks says why).",
                              (*model, "part", "path"), registry=registry)
        self.route = Gauge("curvedit_engine_route_seconds", "Auto engine: the backend that won each operation and "
                           "batch bucket at warm-up, and its measured seconds per call.",
                           (*model, "operation", "bucket", "backend"), registry=registry)
        self.model_version = Gauge("curvedit_model_version_loaded", "1 for each model version taking requests; "
                                   "`version` is the repository version (or the bundle's version without a "
                                   "repository), `bundle_version` the bundle's own version string.",
                                   (*model, "bundle_version"), registry=registry)
        self.model_ready = Gauge("curvedit_model_ready", "1 for each loaded model version that is warm and takes "
                                 "requests, 0 while it warms up (requests get UNAVAILABLE naming it).", model,
                                 registry=registry)
        self.warmup_seconds = Gauge("curvedit_model_warmup_seconds", "How long each model version's warm-up took "
                                    "(routes from the cache, or measured; every batch bucket run once).", model,
                                    registry=registry)
        self.load_failures = counter("curvedit_model_load_failures_total", "Model versions of the repository that "
                                     "failed to load (checksum, graph or warm-up); the version serving before "
                                     "keeps serving.", model)
        self.http_requests = counter("curvedit_http_requests_total", "Open Inference Protocol HTTP requests, by "
                                     "route and HTTP status.", ("route", "code"))
        self.http_seconds = histogram("curvedit_http_request_seconds", "Open Inference Protocol HTTP request "
                                      "time.", ("route",))
        self._children: dict[tuple, object] = {}

    def _child(self, metric, *labels):
        """``metric.labels(*labels)``, cached: a lookup converts every label value, on every request."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- per HTTP request (the per-RPC families are recorded by ``rpc_metrics.RpcMetrics``) ----------------------
    @_safe
    def http_request(self, route: str, status: int, seconds: float) -> None:
        """One HTTP request; ``route`` is a template (``/v2/models/{name}/infer``), never a raw path."""
        self._child(self.http_requests, route, str(status)).inc()
        self._child(self.http_seconds, route).observe(seconds)

    # -- per model: what its engine runs on ----------------------------------------------------------------------
    @_safe
    def engine(self, model: str, version: str, fallbacks: dict[str, str], routes: list) -> None:
        """The engine's fallbacks (``part`` → what it runs on) and, for the auto engine, each route's winner."""
        for part, reason in fallbacks.items():
            self.fallback.labels(model, version, part, reason.split(":")[0]).set(1)
        for r in routes:
            self.route.labels(model, version, r.operation, str(r.bucket), r.backend).set(r.seconds)

    # -- model versions (a model repository loads and unloads them while serving) --------------------------------
    @_safe
    def model_loaded(self, model: str, version: str, bundle_version: str) -> None:
        """The version is loaded: it is reported, and every series of it exists from now on, at 0."""
        self.model_version.labels(model, version, bundle_version).set(1)
        self.model_series(model, version)

    @_safe
    def model_series(self, model: str, version: str) -> None:
        """Every counter and histogram series of a model version, at 0 (a front-end process of ``serve --workers
        N`` makes them too; the gauges are the engine process's alone, so one scrape can add everything up)."""
        for reason in REJECT_REASONS:
            self.rejections.labels(model, reason)
        labels = (model, version)
        for family in (self.success, self.count, self.exec_count, self.request_us, self.queue_us, self.compute_us,
                       self.queue_seconds, self.batch_size, self.padded_size, self.sampling_steps,
                       self.load_failures):
            family.labels(*labels)
        for family, values in ((self.failure, FAILURE_REASONS), (self.latency_seconds, INFERENCE_METHODS),
                               (self.compute_seconds, STAGES), (self.batch_release, RELEASE_REASONS),
                               (self.dropped_items, DROP_REASONS)):
            for value in values:
                family.labels(*labels, value)

    @_safe
    def rpc_methods(self, methods: dict[str, str]) -> None:
        """Every RPC the server registered (``/service/Method`` → grpc_type), exported from the start at 0:
        started, handling time, handled by every status code, and stream messages where its type streams them."""
        for path, kind in methods.items():
            service, _, method = path.lstrip("/").rpartition("/")
            labels = (kind, service, method)
            self.started.labels(*labels)
            self.handling.labels(*labels)
            for code in STATUS_CODES:
                self.handled.labels(*labels, code)
            if kind in ("client_stream", "bidi_stream"):
                self.msg_received.labels(*labels)
            if kind in ("server_stream", "bidi_stream"):
                self.msg_sent.labels(*labels)

    @_safe
    def warming(self, model: str, version: str) -> None:
        self.model_ready.labels(model, version).set(0)

    @_safe
    def warmed(self, model: str, version: str, seconds: float) -> None:
        self.model_ready.labels(model, version).set(1)
        self.warmup_seconds.labels(model, version).set(seconds)

    @_safe
    def model_unloaded(self, model: str, version: str, bundle_version: str) -> None:
        """The version takes no new requests: no longer reported as loaded."""
        self.model_version.remove(model, version, bundle_version)

    @_safe
    def model_forgotten(self, model: str, version: str) -> None:
        """The version's work is done: its queue-depth and readiness gauges go too."""
        self._children.pop((id(self.pending), model, version), None)
        self.pending.remove(model, version)
        for gauge in (self.model_ready, self.warmup_seconds):
            if (model, version) in gauge._metrics:
                gauge.remove(model, version)

    @_safe
    def load_failed(self, model: str, version: int) -> None:
        self.load_failures.labels(model, str(version)).inc()

    # -- per model request --------------------------------------------------------------------------------------
    @_safe
    def request_done(self, model: str, version: str, method: str, seconds: float, queue_s: float) -> None:
        self._child(self.success, model, version).inc()
        self._child(self.request_us, model, version).inc(seconds * 1e6)
        self._child(self.queue_us, model, version).inc(queue_s * 1e6)
        self._child(self.queue_seconds, model, version).observe(queue_s)
        self._child(self.latency_seconds, model, version, method).observe(seconds)

    @_safe
    def request_failed(self, model: str, version: str, reason: str) -> None:
        self._child(self.failure, model, version, reason).inc()

    @_safe
    def rejected(self, reason: str, model: str = "") -> None:
        self._child(self.rejections, model, reason).inc()

    @_safe
    def track_pending(self, model: str, version: str, count) -> None:
        """``count()`` → items queued for the model, read at scrape time (nothing per request)."""
        self._child(self.pending, model, version).set_function(count)

    @_safe
    def batch(self, model: str, version: str, size: int, padded: int, reason: str, stages: dict[str, float]):
        self._child(self.count, model, version).inc(size)
        self._child(self.exec_count, model, version).inc()
        self._child(self.batch_size, model, version).observe(size)
        self._child(self.padded_size, model, version).observe(padded)
        self._child(self.batch_release, model, version, reason).inc()
        self._child(self.compute_us, model, version).inc(sum(stages.values()) * 1e6)
        for stage, seconds in stages.items():
            self._child(self.compute_seconds, model, version, stage).observe(seconds)

    @_safe
    def sampled(self, model: str, version: str, steps: int) -> None:
        self._child(self.sampling_steps, model, version).inc(steps)

    @_safe
    def dropped(self, model: str, version: str, reason: str, items: int) -> None:
        self._child(self.dropped_items, model, version, reason).inc(items)
        self._child(self.rejections, model, reason).inc()

    def serve_http(self, host: str, port: int):
        """Start ``/metrics`` on ``host:port`` (0 = any free port); returns ``(httpd, bound_port)``."""
        httpd, _thread = start_http_server(port, addr=host, registry=self.registry)
        return httpd, httpd.server_port
