"""The server's metric families (``metrics.LoopFamily``): the exposition Prometheus reads, and the heap freeze.

The families replace prometheus_client's locked ``Counter`` / ``Histogram`` on the request path; what a scrape
returns must stay what dashboards and alert rules already query (``tests/test_deploy.py`` runs those rules).
"""

from __future__ import annotations

import gc

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from curvedit.service.engine_core import settle_heap
from curvedit.service.metrics import LATENCY_BUCKETS, LoopFamily


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_a_histogram_exposes_what_prometheus_clients_histogram_does():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = LoopFamily("rpc_seconds", "Time.", ("method",), ours, "histogram", LATENCY_BUCKETS)
    reference = Histogram("rpc_seconds", "Time.", ("method",), buckets=LATENCY_BUCKETS, registry=theirs)
    # Values on bucket bounds (le is inclusive), between them, below the first and beyond the last.
    values = [0.0, 0.0005, 0.0007, 0.001, 0.0149, 0.015, 0.3, 10.0, 11.0, 1e9]
    for method in ("Edit", "Generate"):
        for v in values:
            mine.labels(method).observe(v)
            reference.labels(method).observe(v)
    assert samples(ours) == samples(theirs)
    got = samples(ours)
    assert got[("rpc_seconds_count", (("method", "Edit"),))] == len(values)
    assert got[("rpc_seconds_bucket", (("le", "+Inf"), ("method", "Edit")))] == len(values)
    assert got[("rpc_seconds_bucket", (("le", "0.0005"), ("method", "Edit")))] == 2


def test_counters_keep_the_counter_names_and_triton_counters_their_bare_names():
    registry = CollectorRegistry()
    started = LoopFamily("rpcs_started_total", "Started.", ("method",), registry)
    success = LoopFamily("nv_inference_request_success", "Successes.", ("model", "version"), registry, "triton")
    started.labels("Edit").inc()
    started.labels("Edit").inc(2)
    success.labels("m", "1").inc()
    text = generate_latest(registry).decode()
    assert "# TYPE rpcs_started_total counter" in text
    assert 'rpcs_started_total{method="Edit"} 3.0' in text
    assert 'nv_inference_request_success{model="m",version="1"} 1.0' in text
    assert "nv_inference_request_success_total" not in text


def test_a_counter_refuses_to_go_down_and_labels_must_match():
    family = LoopFamily("things_total", "Things.", ("kind",), CollectorRegistry())
    with pytest.raises(ValueError, match="can only go up"):
        family.labels("a").inc(-1)
    with pytest.raises(ValueError, match="takes labels"):
        family.labels("a", "b")
    with pytest.raises(ValueError, match="kind must be"):
        LoopFamily("x", "X.", (), CollectorRegistry(), "gauge")


def test_the_same_labels_give_the_same_child_so_hot_paths_can_keep_it():
    family = LoopFamily("things_total", "Things.", ("kind",), CollectorRegistry())
    assert family.labels("a") is family.labels("a")
    assert family.labels(1) is family.labels("1")


def test_settle_heap_freezes_what_is_alive_and_still_collects_what_dies_later():
    class Node:
        pass

    try:
        before = Node()
        before.self = before  # a reference cycle made before the freeze: it stays (frozen) while referenced
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert gc.is_tracked(before)
        after = Node()
        after.self = after
        del after
        assert gc.collect() >= 1  # cycles made after the freeze are still collected
    finally:
        gc.unfreeze()
