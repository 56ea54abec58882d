"""Helpers shared by the service tests: a gate around the real compute, metric scraping, raw calls, polling."""

from __future__ import annotations

import threading
import time
import urllib.request

import grpc
from prometheus_client.parser import text_string_to_metric_families

SERVICE = "/curvedit.v1.LatentEditService/"


class Gate:
    """Wraps the server's real compute: records each batch's size, blocks until the test opens the gate.

    ``fail(batch)`` may return an exception to raise instead of computing (poison and failure tests).
    """

    def __init__(self, opened: bool = False, fail=None):
        self.open = threading.Event()
        if opened:
            self.open.set()
        self.entered = threading.Event()
        self.items: list[int] = []
        self.fail = fail

    def wrap(self, compute):
        def gated(batch):
            self.items.append(batch.size)
            self.entered.set()
            if not self.open.wait(30):
                raise TimeoutError("gate never opened")
            error = self.fail(batch) if self.fail is not None else None
            if error is not None:
                raise error
            return compute(batch)
        return gated


def samples(port: int) -> list:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def metric(port: int, name: str, **labels) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``, scraped from the real endpoint."""
    return sum(s.value for s in samples(port)
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def wait_until(condition, timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.005)


def raw(channel: grpc.Channel, method: str, kind: str = "unary_unary"):
    """A multicallable sending and receiving bytes (so tests can send what no stub would)."""
    path = method if method.startswith("/") else SERVICE + method
    return getattr(channel, kind)(path, request_serializer=None, response_deserializer=None)
