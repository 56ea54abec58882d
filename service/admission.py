"""Admission control: refuse at once, before any work, what the server cannot do in time.

A request passes two gates. ``Admission.enter`` (first thing in every handler, O(1)): UNAVAILABLE while
draining, RESOURCE_EXHAUSTED when ``max_concurrent_requests`` requests (unary RPCs and stream messages) are
already in progress. ``Ticket.reserve`` (once the request's size and batch key are known, before decoding or
sampling anything): RESOURCE_EXHAUSTED when its items do not fit the queue, or when the work queued ahead of it
(estimated by ``CostModel``) cannot finish before its deadline. Every refusal carries a pushback: the estimated
time to drain the queue.

``CostModel`` knows how long a batch of each key takes per bucket: measured by warm-up, then refined by every
executed batch (an exponential moving average), so the estimates follow the machine the server runs on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

from curvedit.service.batcher import bucket_for
from curvedit.service.errors import DeadlineUnmeetable, Draining, Overloaded, QueueFull
from curvedit.service.runner import BatchRunner

MIN_PUSHBACK_MS, MAX_PUSHBACK_MS = 10, 5000


class CostModel:
    """Seconds one batch of ``key`` takes at each bucket size. Keys are the batcher's (opaque) keys."""

    def __init__(self, max_batch_size: int, default_item_s: float = 1e-4, weight: float = 0.2):
        self.max_batch_size = max_batch_size
        self.default_item_s = default_item_s
        self.weight = weight
        self._seconds: dict[tuple[Hashable, int], float] = {}

    def set(self, key: Hashable, bucket: int, seconds: float) -> None:
        self._seconds[(key, bucket)] = seconds

    def observe(self, key: Hashable, bucket: int, seconds: float) -> None:
        old = self._seconds.get((key, bucket))
        self._seconds[(key, bucket)] = seconds if old is None else (1 - self.weight) * old + self.weight * seconds

    def batch_seconds(self, key: Hashable, bucket: int) -> float:
        """Known time of this bucket, else the nearest known bucket of the key scaled by size, else a default."""
        known = self._seconds.get((key, bucket))
        if known is not None:
            return known
        others = [(b, s) for (k, b), s in self._seconds.items() if k == key]
        if not others:
            return self.default_item_s * bucket
        b, s = min(others, key=lambda bs: abs(bs[0] - bucket))
        return s * bucket / b

    def drain_seconds(self, key: Hashable, items: int) -> float:
        """Time to compute ``items`` queued items of ``key`` in full batches (and one partial)."""
        if items <= 0:
            return 0.0
        full, rest = divmod(items, self.max_batch_size)
        seconds = full * self.batch_seconds(key, self.max_batch_size)
        if rest:
            seconds += self.batch_seconds(key, bucket_for(rest, self.max_batch_size))
        return seconds


class Admission:
    """The gates in front of the batcher. Not thread-safe: the server's event loop owns it."""

    def __init__(self, runner: BatchRunner, cost: CostModel, max_concurrent: int,
                 clock: Callable[[], float] = time.monotonic):
        self.runner = runner
        self.queue = runner.queue
        self.cost = cost
        self.max_concurrent = max_concurrent
        self.clock = clock
        self.active = 0  # requests (unary RPCs, stream messages) admitted and not yet answered
        self.reserved = 0  # items admitted but not yet in the queue
        self.draining = False

    def backlog_seconds(self) -> float:
        """Estimated time until everything queued (and the batch computing now) is done."""
        return self.runner.backlog_seconds(self.cost, self.clock())

    def pushback_ms(self) -> int:
        return int(min(MAX_PUSHBACK_MS, max(MIN_PUSHBACK_MS, 1000 * self.backlog_seconds())))

    def enter(self, deadline: float | None = None) -> Ticket:
        """Admit one request (or stream message), or raise ``Draining`` / ``Overloaded``."""
        if self.draining:
            raise Draining()
        if self.active >= self.max_concurrent:
            raise Overloaded(self.active, self.max_concurrent, self.pushback_ms())
        self.active += 1
        return Ticket(self, deadline)


class Ticket:
    """One admitted request: ``reserve`` its queue space, ``leave`` when answered (idempotent)."""

    __slots__ = ("admission", "deadline", "entered", "items", "left")

    def __init__(self, admission: Admission, deadline: float | None):
        self.admission, self.deadline, self.items, self.left = admission, deadline, 0, False
        self.entered = admission.clock()  # where the SLO latency (curvedit_request_latency_seconds) starts

    def reserve(self, key: Hashable, n: int) -> None:
        """Claim queue space for ``n`` items of ``key``, or raise ``QueueFull`` / ``DeadlineUnmeetable``."""
        a = self.admission
        capacity = a.queue.max_queue_size
        if len(a.queue) + a.reserved + n > capacity:
            a.runner.make_room()  # stale entries (deadline passed, client gone) give their space back first
            if len(a.queue) + a.reserved + n > capacity:
                raise QueueFull(len(a.queue) + a.reserved, capacity, n, a.pushback_ms())
        if self.deadline is not None:
            wait = a.backlog_seconds() + a.cost.drain_seconds(key, n) + a.queue.max_queue_delay_s
            remaining = self.deadline - a.clock()
            if wait > remaining:
                raise DeadlineUnmeetable(1000 * wait, 1000 * max(0.0, remaining), a.pushback_ms())
        a.reserved += n
        self.items += n

    def queued(self) -> None:
        """The reserved items are in the queue now (or were given up): release the reservation."""
        self.admission.reserved -= self.items
        self.items = 0

    def leave(self) -> None:
        if not self.left:
            self.left = True
            self.queued()
            self.admission.active -= 1
