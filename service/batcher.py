"""The dynamic batcher: merges items of many requests into batches per key (model, editor, kind).

Two parts, neither knows gRPC:

* ``BatchQueue`` — pure and synchronous, every method takes ``now`` from an injectable clock, so its policy is
  unit-tested with a fake clock: a batch is released when its key has ``max_batch_size`` items queued, or when
  the OLDEST queued item of the key has waited ``max_queue_delay`` (Triton's rule; measuring from the poll
  instead makes latency depend on traffic). The queue is bounded in items; stale entries (deadline passed,
  future already done because the client cancelled) are dropped before they can reach compute.
* ``BatchRunner`` — the asyncio loop around it: futures for callers, compute on a worker thread so the event
  loop keeps serving, one failing batch fails only its own entries (and a batch failing with ``ValueError``,
  an input error, is rerun request by request, so one poisoned request cannot fail the others merged with it),
  and the loop never dies.

Batches are padded to power-of-two buckets (``bucket_sizes``) so an engine sees a handful of shapes only
(captured CUDA graphs, warmed-up kernels); ``Batch.inputs()`` pads, ``Batch.split()`` drops the padding.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from curvedit.service.errors import Cancelled, DeadlineExpired, QueueFull

log = logging.getLogger(__name__)


def bucket_sizes(max_batch_size: int) -> list[int]:
    """Powers of two below ``max_batch_size``, then ``max_batch_size`` itself: 1, 2, 4, ..., max."""
    sizes, b = [], 1
    while b < max_batch_size:
        sizes.append(b)
        b *= 2
    return [*sizes, max_batch_size]


def bucket_for(n: int, max_batch_size: int) -> int:
    """The smallest bucket holding ``n`` items."""
    for b in bucket_sizes(max_batch_size):
        if b >= n:
            return b
    raise ValueError(f"{n} items exceed max_batch_size {max_batch_size}")


@dataclass(eq=False)
class Entry:
    """Queued work: ``z`` float32 ``[n, d]``, ``amounts`` float32 ``[n, K]`` or ``None``, times on the clock."""

    key: Hashable
    z: np.ndarray
    amounts: np.ndarray | None
    arrival: float
    deadline: float | None = None  # absolute time on the batcher's clock
    future: Any = None  # anything with done(); done before compute = cancelled, so dropped
    started: float | None = None  # when its batch began computing (queue wait = started - arrival)
    siblings: tuple[Entry, ...] = ()  # the other chunks of the same request (cancelled if this one fails)

    @property
    def n(self) -> int:
        return int(self.z.shape[0])


@dataclass(eq=False)
class Batch:
    """Entries of one key, at most ``max_batch_size`` items, to be run padded to ``bucket`` rows."""

    key: Hashable
    entries: list[Entry]
    bucket: int
    released: float = 0.0
    reason: str = ""  # "full" or "delay": why the batch was released
    stages: dict[str, float] = field(default_factory=dict)  # compute seconds per stage, set by compute

    @property
    def size(self) -> int:
        return sum(e.n for e in self.entries)

    def inputs(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``z [bucket, d]`` and ``amounts [bucket, K]`` (or None), zero rows after the real items."""
        def padded(parts: list[np.ndarray]) -> np.ndarray:
            out = np.zeros((self.bucket, *parts[0].shape[1:]), dtype=parts[0].dtype)
            np.concatenate(parts, out=out[: self.size])
            return out

        z = padded([e.z for e in self.entries])
        has_amounts = self.entries[0].amounts is not None
        return z, padded([e.amounts for e in self.entries]) if has_amounts else None

    def split(self, outputs: tuple[np.ndarray, ...]) -> list[tuple[np.ndarray, ...]]:
        """Per entry, the rows of each output array (padding dropped)."""
        results, start = [], 0
        for e in self.entries:
            results.append(tuple(out[start : start + e.n] for out in outputs))
            start += e.n
        return results


class BatchQueue:
    """Bounded per-key FIFO queues and the release policy. Not thread-safe: one event loop owns it."""

    def __init__(self, max_batch_size: int, max_queue_delay_s: float, max_queue_size: int):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_queue_delay_s < 0:
            raise ValueError(f"max_queue_delay_s must be >= 0, got {max_queue_delay_s}")
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be at least 1, got {max_queue_size}")
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_size = max_queue_size
        self.queued_items = 0
        self.item_seconds = 1e-4  # running estimate of compute time per item, for retry pushback
        self._queues: OrderedDict[Hashable, deque[Entry]] = OrderedDict()
        self._items: dict[Hashable, int] = {}

    def pushback_ms(self) -> int:
        """How long a rejected client should wait: the time to compute what is queued, 10 ms .. 5 s."""
        return int(min(5000, max(10, 1000 * self.queued_items * self.item_seconds)))

    def put(self, entries: list[Entry]) -> None:
        """Queue the entries of one request, all or none; ``QueueFull`` when they do not fit."""
        n = sum(e.n for e in entries)
        if any(e.n > self.max_batch_size or e.n < 1 for e in entries):
            raise ValueError(f"entries must hold 1..{self.max_batch_size} items; split requests first")
        if self.queued_items + n > self.max_queue_size:
            raise QueueFull(self.queued_items, self.max_queue_size, n, self.pushback_ms())
        for e in entries:
            self._queues.setdefault(e.key, deque()).append(e)
            self._items[e.key] = self._items.get(e.key, 0) + e.n
        self.queued_items += n

    def drop_stale(self, now: float) -> list[tuple[Entry, str]]:
        """Remove entries whose deadline passed (``"deadline"``) or whose future is done (``"cancelled"``)."""
        dropped = []
        for key in list(self._queues):
            queue, kept = self._queues[key], deque()
            for e in queue:
                reason = self._stale(e, now)
                if reason is None:
                    kept.append(e)
                else:
                    dropped.append((e, reason))
            if len(kept) != len(queue):
                self._set(key, kept)
        return dropped

    def _set(self, key: Hashable, queue: deque[Entry]) -> None:
        removed = self._items[key] - sum(e.n for e in queue)
        self.queued_items -= removed
        if queue:
            self._queues[key], self._items[key] = queue, self._items[key] - removed
        else:
            del self._queues[key], self._items[key]

    def pop_ready(self, now: float, dropped: list[tuple[Entry, str]] | None = None) -> Batch | None:
        """The next batch to run, or ``None`` while no key is full and no oldest item has waited long enough.

        Among releasable keys the one whose oldest item arrived first goes first, so no key starves. Stale
        entries met while forming the batch (deadline passed, future done) are not run: they are appended to
        ``dropped`` as ``(entry, reason)``; so nothing stale reaches compute, without scanning the whole queue
        on every wake-up. (``drop_stale`` sweeps everything; ``put`` uses it before refusing a request.)
        """
        best = None
        for key, queue in self._queues.items():
            full = self._items[key] >= self.max_batch_size
            late = now - queue[0].arrival >= self.max_queue_delay_s
            if (full or late) and (best is None or queue[0].arrival < best[1]):
                best = (key, queue[0].arrival, "full" if full else "delay")
        if best is None:
            return None
        key, _, reason = best
        queue, taken, size = self._queues[key], [], 0
        while queue and size + queue[0].n <= self.max_batch_size:
            e = queue.popleft()
            reason_dropped = self._stale(e, now)
            if reason_dropped is None:
                taken.append(e)
                size += e.n
            elif dropped is not None:
                dropped.append((e, reason_dropped))
        self._set(key, queue)
        if not taken:
            return None
        return Batch(key, taken, bucket_for(size, self.max_batch_size), released=now, reason=reason)

    @staticmethod
    def _stale(e: Entry, now: float) -> str | None:
        if e.deadline is not None and now >= e.deadline:
            return "deadline"
        if e.future is not None and e.future.done():
            return "cancelled"
        return None

    def next_wakeup(self, now: float) -> float | None:
        """Seconds until the oldest queued item's delay runs out (0 if it has), ``None`` if nothing is queued."""
        if not self._queues:
            return None
        oldest = min(q[0].arrival for q in self._queues.values())
        return max(0.0, oldest + self.max_queue_delay_s - now)

    def items_by_key(self) -> list[tuple[Hashable, int]]:
        """``(key, queued items)`` for every key with something queued."""
        return list(self._items.items())

    def drain_all(self) -> list[Entry]:
        """Remove and return every queued entry (shutdown)."""
        entries = [e for queue in self._queues.values() for e in queue]
        self._queues.clear()
        self._items.clear()
        self.queued_items = 0
        return entries

    def items_where(self, keep: Callable[[Hashable], bool]) -> int:
        """Queued items of the keys for which ``keep(key)`` holds (e.g. one model's pending count)."""
        return sum(n for key, n in self._items.items() if keep(key))

    def __len__(self) -> int:
        return self.queued_items


class Observer(Protocol):
    """What the runner reports (metrics). Implementations must not raise; the runner guards them anyway."""

    def dropped(self, entry: Entry, reason: str) -> None: ...

    def executed(self, batch: Batch, compute_s: float, error: BaseException | None) -> None: ...


class Cost(Protocol):
    """What learns from executed batches (``admission.CostModel``)."""

    def observe(self, key: Hashable, bucket: int, seconds: float) -> None: ...


@dataclass
class BatchRunner:
    """Runs ``compute(batch) -> tuple of arrays [bucket, ...]`` on a worker thread for each released batch."""

    queue: BatchQueue
    compute: Callable[[Batch], tuple[np.ndarray, ...]]
    observer: Observer | None = None
    clock: Callable[[], float] = time.monotonic
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "curvedit-compute"))
    cost: Cost | None = None
    busy: bool = False
    current: Batch | None = None  # the batch computing now, and since when (for admission's estimates)
    current_started: float = 0.0
    _waiter: asyncio.Future | None = None
    _stopped: bool = False

    def submit(self, key: Hashable, z: np.ndarray, amounts: np.ndarray | None,
               deadline: float | None = None) -> list[Entry]:
        """Queue ``z [n, d]`` (split into chunks of at most max_batch_size); one entry (with a future) per chunk.

        Raises ``QueueFull`` (nothing queued) when the items do not fit.
        """
        loop = asyncio.get_running_loop()
        now, m = self.clock(), self.queue.max_batch_size
        entries = [Entry(key, z[i : i + m], None if amounts is None else amounts[i : i + m], now, deadline,
                         loop.create_future()) for i in range(0, z.shape[0], m)]
        if len(entries) > 1:
            for e in entries:
                e.siblings = tuple(entries)
        try:
            self.queue.put(entries)
        except QueueFull:
            self.make_room()  # stale entries give their space back, then try once more
            self.queue.put(entries)
        if not self.busy:  # while a batch computes, the loop looks at the queue anyway when it finishes
            self._wake_up()
        return entries

    def _wake_up(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @property
    def idle(self) -> bool:
        return not self.busy and len(self.queue) == 0

    def make_room(self) -> None:
        """Drop stale queued entries now (deadline passed, client gone), failing their futures."""
        self._fail_dropped(self.queue.drop_stale(self.clock()))

    def fail_all(self, error: Exception) -> int:
        """Fail every queued entry and the batch computing now with ``error`` (shutdown); returns how many."""
        entries = self.queue.drain_all() + (list(self.current.entries) if self.current is not None else [])
        failed = 0
        for e in entries:
            if not e.future.done():
                e.future.set_exception(error)
                e.future.exception()
                failed += 1
        return failed

    def stop(self) -> None:
        self._stopped = True
        self._wake_up()

    def _guard(self, name: str, *args) -> None:
        if self.observer is None:
            return
        try:
            getattr(self.observer, name)(*args)
        except Exception:  # metrics must never break serving
            log.exception("batch observer %s failed", name)

    async def run(self) -> None:
        """Serve batches until ``stop()``. Exceptions of a batch go to its futures; the loop goes on."""
        loop = asyncio.get_running_loop()
        while not self._stopped:
            try:
                batch = self._next(self.clock())
                if batch is None:
                    wait = self.queue.next_wakeup(self.clock())
                    if wait is None or wait > 0:
                        # A future plus a timer, not wait_for(Event): this runs once per request under load.
                        self._waiter = loop.create_future()
                        timer = None if wait is None else loop.call_later(wait, self._wake_up)
                        try:
                            await self._waiter
                        finally:
                            self._waiter = None
                            if timer is not None:
                                timer.cancel()
                    continue
                await self._execute(loop, batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop serving: log, back off a little, continue
                log.exception("batcher loop error")
                await asyncio.sleep(0.01)

    def _next(self, now: float) -> Batch | None:
        dropped: list[tuple[Entry, str]] = []
        batch = self.queue.pop_ready(now, dropped)
        self._fail_dropped(dropped)
        return batch

    def _fail_dropped(self, dropped: list[tuple[Entry, str]]) -> None:
        for entry, reason in dropped:
            if not entry.future.done():
                entry.future.set_exception(DeadlineExpired("queued") if reason == "deadline" else Cancelled())
                entry.future.exception()  # mark retrieved: the caller may be gone
            self._guard("dropped", entry, reason)

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: Batch, isolate: bool = True) -> None:
        self.busy, self.current = True, batch
        start, error, outputs = self.clock(), None, None
        self.current_started = start
        for entry in batch.entries:
            entry.started = start
        try:
            outputs = await loop.run_in_executor(self.executor, self.compute, batch)
        except Exception as exc:
            error = exc
        finally:
            self.busy, self.current = False, None
        seconds = self.clock() - start
        if error is None:
            self.queue.item_seconds = 0.8 * self.queue.item_seconds + 0.2 * seconds / max(1, batch.size)
            if self.cost is not None:
                self.cost.observe(batch.key, batch.bucket, seconds)
            for entry, result in zip(batch.entries, batch.split(outputs), strict=True):
                if not entry.future.done():
                    entry.future.set_result(result)
        elif isolate and isinstance(error, ValueError) and len(batch.entries) > 1:
            # A ValueError is about the inputs: one request's items may have poisoned the merged batch. Run
            # each request alone, so only the requests whose own items fail get the error.
            self._guard("executed", batch, seconds, error)
            for entry in batch.entries:
                if not entry.future.done():
                    alone = Batch(batch.key, [entry], bucket_for(entry.n, self.queue.max_batch_size),
                                  released=batch.released, reason=batch.reason)
                    await self._execute(loop, alone, isolate=False)
            return
        else:
            for entry in batch.entries:
                if not entry.future.done():
                    entry.future.set_exception(error)
                    entry.future.exception()
                for other in entry.siblings:  # the request has failed: its queued chunks must not run
                    if not other.future.done():
                        other.future.cancel()
        self._guard("executed", batch, seconds, error)
