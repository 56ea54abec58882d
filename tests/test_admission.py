"""Admission control and its cost model on a plain queue with a fake clock: refusals, reservations, pushback."""

import asyncio

import numpy as np
import pytest

from curvedit.service.admission import MAX_PUSHBACK_MS, MIN_PUSHBACK_MS, Admission, CostModel
from curvedit.service.batcher import BatchQueue
from curvedit.service.errors import DeadlineExpired, DeadlineUnmeetable, Draining, Overloaded, QueueFull
from curvedit.service.runner import BatchRunner

KEY = ("m", "e", "edit")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def admission(max_queue=16, max_batch=4, max_concurrent=8, delay_s=0.0, clock=None, batch_s=None):
    clock = clock or Clock()
    runner = BatchRunner(BatchQueue(max_batch, delay_s, max_queue), lambda batch: batch.inputs()[:1], clock=clock)
    cost = CostModel(max_batch)
    if batch_s is not None:
        for b in (1, 2, 4):
            cost.set(KEY, b, batch_s)
    return Admission(runner, cost, max_concurrent, clock=clock), runner, clock


def submit(runner, n, deadline=None):
    return runner.submit(KEY, np.zeros((n, 3), np.float32), None, deadline)


def test_cost_model_scales_from_the_nearest_measured_bucket_and_learns():
    cost = CostModel(max_batch_size=16)
    assert cost.batch_seconds(KEY, 4) == pytest.approx(4e-4)  # nothing measured: a default per item
    cost.set(KEY, 4, 0.010)
    assert cost.batch_seconds(KEY, 8) == pytest.approx(0.020)
    assert cost.batch_seconds(KEY, 2) == pytest.approx(0.005)
    cost.observe(KEY, 4, 0.020)
    assert cost.batch_seconds(KEY, 4) == pytest.approx(0.8 * 0.010 + 0.2 * 0.020)
    cost.set(KEY, 16, 0.1)
    assert cost.drain_seconds(KEY, 36) == pytest.approx(2 * 0.1 + 0.012)  # two full batches and a bucket of 4


@pytest.mark.parametrize(("queued", "expected_ms"), [(0, MIN_PUSHBACK_MS), (8, 200), (12, 300),
                                                     (1000, MAX_PUSHBACK_MS)])
def test_pushback_is_the_time_to_drain_the_queue_clamped(queued, expected_ms):
    async def scenario():
        a, runner, _ = admission(max_queue=2000, batch_s=0.1)
        for _ in range(queued // 4):
            submit(runner, 4)
        return a.pushback_ms()

    assert asyncio.run(scenario()) == expected_ms


def test_enter_refuses_when_draining_or_at_the_concurrency_bound_and_leave_frees_a_slot():
    a, _, _ = admission(max_concurrent=2)
    first, second = a.enter(), a.enter()
    with pytest.raises(Overloaded) as info:
        a.enter()
    assert info.value.pushback_ms >= MIN_PUSHBACK_MS and "--max-concurrent-requests" in info.value.message
    first.leave()
    first.leave()  # idempotent
    assert a.active == 1
    a.enter().leave()
    a.draining = True
    with pytest.raises(Draining):
        a.enter()
    second.leave()
    assert a.active == 0


def test_reservations_count_against_the_queue_until_queued():
    async def scenario():
        a, runner, _ = admission(max_queue=8)
        t1 = a.enter()
        t1.reserve(KEY, 6)  # admitted, not yet in the queue (e.g. seeds being sampled)
        t2 = a.enter()
        with pytest.raises(QueueFull):
            t2.reserve(KEY, 3)
        submit(runner, 6)
        t1.queued()
        t2.reserve(KEY, 2)
        assert (len(runner.queue), a.reserved) == (6, 2)
        t2.leave()
        assert a.reserved == 0

    asyncio.run(scenario())


def test_stale_entries_give_their_room_back_before_a_refusal():
    async def scenario():
        a, runner, clock = admission(max_queue=8)
        expired = submit(runner, 4, deadline=1.0) + submit(runner, 4, deadline=1.0)
        clock.now = 2.0
        a.enter().reserve(KEY, 8)  # fits only because the expired 8 items were dropped
        assert len(runner.queue) == 0
        for e in expired:
            with pytest.raises(DeadlineExpired):
                await e.future

    asyncio.run(scenario())


class Recorder:
    """A batch observer that records what was dropped."""

    def __init__(self):
        self.drops = []

    def dropped(self, entry, reason):
        self.drops.append((entry.n, reason))

    def executed(self, batch, seconds, error):
        pass


def test_the_runner_makes_room_from_stale_entries_before_refusing_and_reports_them():
    async def scenario():
        _, runner, clock = admission(max_queue=8)
        runner.observer = seen = Recorder()
        late = submit(runner, 4, deadline=1.0)
        gone = submit(runner, 4)
        with pytest.raises(QueueFull):
            submit(runner, 1)  # nothing is stale yet: refused, nothing of it queued
        gone[0].future.cancel()  # the client went away
        clock.now = 2.0  # and the other request's deadline passed
        submit(runner, 8)  # fits once both stale entries are dropped
        assert len(runner.queue) == 8
        with pytest.raises(DeadlineExpired):
            await late[0].future
        return sorted(seen.drops)

    assert asyncio.run(scenario()) == [(4, "cancelled"), (4, "deadline")]


def test_a_deadline_shorter_than_the_work_queued_ahead_is_refused():
    async def scenario():
        a, runner, clock = admission(max_queue=64, batch_s=0.5)
        submit(runner, 4)
        submit(runner, 4)  # two batches ahead: 1 s
        with pytest.raises(DeadlineUnmeetable) as info:
            a.enter(deadline=clock.now + 1.2).reserve(KEY, 4)  # 1 s ahead + 0.5 s of its own > 1.2 s
        assert "about 1500 ms" in info.value.message and info.value.pushback_ms == 1000
        a.enter(deadline=clock.now + 2.0).reserve(KEY, 4)
        a.enter().reserve(KEY, 4)  # no deadline: never refused on time grounds

    asyncio.run(scenario())
