"""``BatchRunner``: the asyncio loop around ``BatchQueue`` (``batcher``) — the compute stage of the server.

One compute stage per model: a single-thread executor of its own, so one model's long batch never holds
another's, and a model's engine is only ever called from one thread. The loop starts a batch on every free stage
the moment the queue's policy releases one (at once for a stage that was idle), and learns from each executed
batch (``Cost``). On the stage's thread a batch is made from its entries' inputs (lazy ones — seeds to sample,
image files to decode — are materialised there, each entry on its own, so one bad input fails its own request
only), computed, split per entry, and each entry's ``finish`` (response assembly: the finite check, PNG
encoding) runs there too: the event loop only routes results.

Failures: a batch failing with ``curvedit.InputError`` (an input problem only a merged batch revealed) is rerun
request by request, so one poisoned request cannot fail the others; any other exception fails the batch's
entries (and cancels their requests' other chunks), and the loop never dies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from curvedit.errors import InputError
from curvedit.service.batcher import Batch, BatchQueue, Entry, as_array, bucket_for, stage_of
from curvedit.service.errors import Cancelled, DeadlineExpired, QueueFull

log = logging.getLogger(__name__)


class Observer(Protocol):
    """What the runner reports (metrics). Implementations must not raise; the runner guards them anyway."""

    def dropped(self, entry: Entry, reason: str) -> None: ...

    def executed(self, batch: Batch, compute_s: float, error: BaseException | None) -> None: ...


class Cost(Protocol):
    """What learns from executed batches (``admission.CostModel``)."""

    def observe(self, key: Hashable, bucket: int, seconds: float) -> None: ...


class _Failed:
    """One entry's own failure inside a batch that otherwise succeeded (bad lazy input, failing ``finish``)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


def fail_futures(futures, error: Exception) -> int:
    """Fail every future of ``futures`` not done yet with ``error`` (marked retrieved, so nothing logs it as never
    awaited); returns how many."""
    failed = 0
    for future in futures:
        if not future.done():
            future.set_exception(error)
            future.exception()
            failed += 1
    return failed


@dataclass
class BatchRunner:
    """Runs ``compute(batch) -> tuple of arrays [batch.size, ...]`` on its stage's thread for each batch."""

    queue: BatchQueue
    compute: Callable[[Batch], tuple[np.ndarray, ...]]
    observer: Observer | None = None
    clock: Callable[[], float] = time.monotonic
    cost: Cost | None = None
    executors: dict[Hashable, ThreadPoolExecutor] = field(default_factory=dict)
    running: dict[Hashable, tuple[Batch, float]] = field(default_factory=dict)  # stage → (batch, since)
    _waiter: asyncio.Future | None = None
    _stopped: bool = False
    _tasks: set = field(default_factory=set)

    def executor_for(self, stage: Hashable) -> ThreadPoolExecutor:
        """The stage's own compute thread (made on first use)."""
        executor = self.executors.get(stage)
        if executor is None:
            executor = self.executors[stage] = ThreadPoolExecutor(1, f"curvedit-compute-{stage}")
        return executor

    def submit(self, key: Hashable, z, amounts: np.ndarray | None, deadline: float | None = None,
               finish: Callable | None = None, seeds: np.ndarray | None = None) -> list[Entry]:
        """Queue ``z`` (``n`` rows, split into chunks of at most max_batch_size); one entry (with a future) per
        chunk. ``finish(rows, start)`` runs on the compute thread on each chunk's output rows (``start``: the
        chunk's first row in ``z``); its value is the chunk's result. Raises ``QueueFull`` (nothing queued) when
        the items do not fit."""
        loop = asyncio.get_running_loop()
        now, m = self.clock(), self.queue.max_batch_size
        filling = stage_of(key) in self.running
        entries = [Entry(key, z[i : i + m], None if amounts is None else amounts[i : i + m], now, deadline,
                         loop.create_future(), filling=filling, start=i, finish=finish,
                         seeds=None if seeds is None else seeds[i : i + m])
                   for i in range(0, len(z), m)]
        if len(entries) > 1:
            for e in entries:
                e.siblings = tuple(entries)
        try:
            self.queue.put(entries)
        except QueueFull:
            self.make_room()  # stale entries give their space back, then try once more
            self.queue.put(entries)
        if not filling:  # a busy stage wakes the loop itself when its batch ends
            self._wake_up()
        return entries

    def _wake_up(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @property
    def busy(self) -> bool:
        return bool(self.running)

    @property
    def idle(self) -> bool:
        return not self.running and len(self.queue) == 0

    def backlog_seconds(self, cost, now: float) -> float:
        """Estimated seconds until everything queued and computing is done, by ``cost`` (a ``CostModel``)."""
        seconds = sum(cost.drain_seconds(key, n) for key, n in self.queue.items_by_key())
        for batch, since in self.running.values():
            seconds += max(0.0, cost.batch_seconds(batch.key, batch.bucket) - (now - since))
        return seconds

    def make_room(self) -> None:
        """Drop stale queued entries now (deadline passed, client gone), failing their futures."""
        self._fail_dropped(self.queue.drop_stale(self.clock()))

    def fail_all(self, error: Exception) -> int:
        """Fail every queued entry and the batches computing now with ``error`` (shutdown); returns how many."""
        entries = self.queue.drain_all() + [e for batch, _ in self.running.values() for e in batch.entries]
        return fail_futures([e.future for e in entries], error)

    def stop(self) -> None:
        self._stopped = True
        self._wake_up()

    def shutdown(self) -> None:
        """Stop every stage's thread (queued work is not run)."""
        for executor in self.executors.values():
            executor.shutdown(wait=False, cancel_futures=True)

    async def cancel_batches(self) -> None:
        """Cancel the batch tasks still waiting for their stage's thread (shutdown), so that none outlives the
        event loop; their entries were already failed (``fail_all``) or their clients gone."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

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
                now = self.clock()
                while (batch := self._next(now)) is not None:
                    self._start(loop, batch, now)
                wait = self.queue.next_wakeup(now, self.running)
                if wait is None or wait > 0:
                    # A future plus a timer, not wait_for(Event): this runs once per batch under load.
                    self._waiter = loop.create_future()
                    timer = None if wait is None else loop.call_later(wait, self._wake_up)
                    try:
                        await self._waiter
                    finally:
                        self._waiter = None
                        if timer is not None:
                            timer.cancel()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop serving: log, back off a little, continue
                log.exception("batcher loop error")
                await asyncio.sleep(0.01)

    def _next(self, now: float) -> Batch | None:
        dropped: list[tuple[Entry, str]] = []
        batch = self.queue.pop_ready(now, dropped, self.running)
        self._fail_dropped(dropped)
        return batch

    def _fail_dropped(self, dropped: list[tuple[Entry, str]]) -> None:
        for entry, reason in dropped:
            if not entry.future.done():
                entry.future.set_exception(DeadlineExpired("queued") if reason == "deadline" else Cancelled())
                entry.future.exception()  # mark retrieved: the caller may be gone
            self._guard("dropped", entry, reason)

    def _start(self, loop: asyncio.AbstractEventLoop, batch: Batch, now: float) -> None:
        stage = stage_of(batch.key)
        self.running[stage] = (batch, now)
        batch.clock = self.clock
        for entry in batch.entries:
            entry.started = now
        task = loop.create_task(self._run_batch(loop, batch, stage))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: Batch, stage: Hashable) -> None:
        try:
            await self._execute(loop, batch, stage)
        except Exception:
            log.exception("batch execution error")
        finally:
            self.running.pop(stage, None)
            self._wake_up()

    def _work(self, batch: Batch) -> list:
        """On the stage's thread: materialise lazy inputs, compute, split, finish; one result per entry."""
        failed: dict[int, _Failed] = {}
        for i, entry in enumerate(batch.entries):
            if not isinstance(entry.z, np.ndarray):
                try:
                    entry.z = as_array(entry.z)
                except Exception as exc:
                    failed[i] = _Failed(exc)
        results: list = [None] * len(batch.entries)
        good = [e for i, e in enumerate(batch.entries) if i not in failed]
        if good:
            part = batch if len(good) == len(batch.entries) else Batch(batch.key, good, batch.bucket,
                                                                       batch.released, batch.reason, batch.stages,
                                                                       clock=self.clock)
            try:
                outputs = iter(part.split(self.compute(part)))
            finally:
                batch.steps = part.steps
        for i, entry in enumerate(batch.entries):
            if i in failed:
                results[i] = failed[i]
                continue
            rows = next(outputs)
            try:
                results[i] = rows if entry.finish is None else entry.finish(rows, entry.start)
            except Exception as exc:
                results[i] = _Failed(exc)
        return results

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: Batch, stage: Hashable,
                       isolate: bool = True) -> None:
        start, error, results = self.clock(), None, None
        try:
            results = await loop.run_in_executor(self.executor_for(stage), self._work, batch)
        except Exception as exc:
            error = exc
        seconds = self.clock() - start
        if error is None:
            self.queue.item_seconds = 0.8 * self.queue.item_seconds + 0.2 * seconds / max(1, batch.size)
            if self.cost is not None:
                self.cost.observe(batch.key, batch.bucket, seconds)
            for entry, result in zip(batch.entries, results, strict=True):
                if isinstance(result, _Failed):
                    self._fail(entry, result.error)
                elif not entry.future.done():
                    entry.future.set_result(result)
        elif isolate and isinstance(error, InputError) and len(batch.entries) > 1:
            # An input error that only the merged batch revealed: one request's items may have poisoned it. Run
            # each request alone, so only the requests whose own items fail get the error.
            self._guard("executed", batch, seconds, error)
            for entry in batch.entries:
                if not entry.future.done():
                    alone = Batch(batch.key, [entry], bucket_for(entry.n, self.queue.max_batch_size),
                                  released=batch.released, reason=batch.reason, clock=self.clock)
                    self.running[stage] = (alone, self.clock())
                    await self._execute(loop, alone, stage, isolate=False)
            return
        else:
            for entry in batch.entries:
                self._fail(entry, error)
        self._guard("executed", batch, seconds, error)

    @staticmethod
    def _fail(entry: Entry, error: BaseException) -> None:
        if not entry.future.done():
            entry.future.set_exception(error)
            entry.future.exception()
        for other in entry.siblings:  # the request has failed: its queued chunks must not run
            if not other.future.done():
                other.future.cancel()
