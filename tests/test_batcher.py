"""The batcher's policy on a plain queue with a fake clock, and the async runner's failure isolation."""

import asyncio

import numpy as np
import pytest

from curvedit.service.batcher import BatchQueue, Entry, bucket_for, bucket_sizes
from curvedit.service.errors import DeadlineExpired, QueueFull
from curvedit.service.runner import BatchRunner


class FakeFuture:
    def __init__(self, done=False):
        self._done = done

    def done(self):
        return self._done


def entry(key="k", n=1, t=0.0, deadline=None, done=False, d=3, filling=False):
    return Entry(key, np.full((n, d), t, np.float32), np.zeros((n, 2), np.float32), t, deadline, FakeFuture(done),
                 filling=filling)


@pytest.mark.parametrize(("max_batch", "sizes"), [(1, [1]), (8, [1, 2, 4, 8]), (12, [1, 2, 4, 8, 12]),
                                                  (256, [1, 2, 4, 8, 16, 32, 64, 128, 256])])
def test_bucket_sizes_are_powers_of_two_up_to_max(max_batch, sizes):
    assert bucket_sizes(max_batch) == sizes


@pytest.mark.parametrize(("n", "bucket"), [(1, 1), (2, 2), (3, 4), (5, 8), (9, 12), (12, 12)])
def test_bucket_for_is_smallest_holding_n(n, bucket):
    assert bucket_for(n, 12) == bucket


@pytest.mark.parametrize("max_batch", [1, 2, 3, 8, 12, 100, 256, 257])
def test_bucket_for_is_the_first_of_bucket_sizes_holding_n_and_refuses_more_than_max(max_batch):
    for n in range(1, max_batch + 1):
        assert bucket_for(n, max_batch) == next(b for b in bucket_sizes(max_batch) if b >= n)
    with pytest.raises(ValueError, match="exceed max_batch_size"):
        bucket_for(max_batch + 1, max_batch)


def test_a_lone_request_at_an_idle_stage_leaves_at_once_whatever_the_delay():
    q = BatchQueue(max_batch_size=8, max_queue_delay_s=10.0, max_queue_size=100)
    q.put([entry(t=0.0)])
    assert q.next_wakeup(0.0) == 0.0
    batch = q.pop_ready(0.0)
    assert batch is not None and batch.size == 1 and batch.reason == "idle"


def test_a_busy_stage_holds_its_keys_while_other_stages_go():
    q = BatchQueue(max_batch_size=8, max_queue_delay_s=0.0, max_queue_size=100)
    q.put([entry(key=("m1", "e", "edit"), t=0.0)])
    q.put([entry(key=("m2", "e", "edit"), t=1.0)])
    batch = q.pop_ready(2.0, busy={"m1"})  # model m1 is computing: only m2's key may leave
    assert batch.key[0] == "m2"
    assert q.pop_ready(2.0, busy={"m1"}) is None and q.next_wakeup(2.0, busy={"m1"}) is None
    assert q.pop_ready(2.0).key[0] == "m1"  # m1's stage frees: its batch goes at once


def test_items_that_queued_while_busy_fill_a_batch_for_up_to_the_delay():
    q = BatchQueue(max_batch_size=8, max_queue_delay_s=0.010, max_queue_size=100)
    q.put([entry(t=0.000, filling=True)])  # arrived while a batch ran; the stage is free from 0.001 on
    q.put([entry(t=0.004)])  # arrived at the free stage, but a batch is filling: it joins it
    assert q.pop_ready(0.005) is None
    assert q.next_wakeup(0.005) == pytest.approx(0.005)
    batch = q.pop_ready(0.010)
    assert batch.size == 2 and batch.reason == "delay"


def test_with_no_delay_a_filling_batch_leaves_as_soon_as_the_stage_frees():
    q = BatchQueue(max_batch_size=8, max_queue_delay_s=0.0, max_queue_size=100)
    q.put([entry(t=0.0, filling=True), entry(t=0.0, filling=True)])
    assert q.pop_ready(0.0, busy={"k"}) is None
    batch = q.pop_ready(0.0)
    assert batch.size == 2 and batch.reason == "delay"


def test_delay_counts_from_the_oldest_item_not_the_poll():
    q = BatchQueue(max_batch_size=8, max_queue_delay_s=0.010, max_queue_size=100)
    q.put([entry(t=0.000, filling=True)])
    q.put([entry(t=0.008, filling=True)])
    assert q.pop_ready(0.009) is None
    assert q.next_wakeup(0.009) == pytest.approx(0.001)
    batch = q.pop_ready(0.010)  # 10 ms after the OLDEST arrival, though the newest waited only 2 ms
    assert batch is not None and batch.size == 2 and batch.reason == "delay"
    assert len(q) == 0 and q.next_wakeup(0.010) is None


def loaded_queue(delay: float) -> BatchQueue:
    """A queue whose stage just ran a batch that waited for company and found it (two requests, by delay)."""
    q = BatchQueue(max_batch_size=8, max_queue_delay_s=delay, max_queue_size=100)
    q.put([entry(t=0.000, filling=True), entry(t=0.001, filling=True)])
    assert q.pop_ready(delay).reason == "delay"
    return q


def test_under_load_a_request_at_the_idle_stage_fills_the_next_batch():
    q = loaded_queue(0.010)  # closed-loop clients: the first back after their batch must not leave alone
    q.put([entry(t=0.020)])
    assert q.pop_ready(0.020) is None and q.next_wakeup(0.020) == pytest.approx(0.010)
    q.put([entry(t=0.021)])  # both clients of the last batch are back: no one else is coming
    assert q.next_wakeup(0.021) == 0.0
    batch = q.pop_ready(0.021)
    assert batch.size == 2 and batch.reason == "company"


def test_a_filling_batch_leaves_once_its_last_batch_size_is_back_and_never_smaller():
    q = BatchQueue(max_batch_size=16, max_queue_delay_s=0.010, max_queue_size=100)
    q.put([entry(n=3, t=0.000, filling=True)])
    assert q.pop_ready(0.005) is None  # a key's first batch has no company to expect: it waits the delay
    batch = q.pop_ready(0.010)
    assert batch.size == 3 and batch.reason == "delay"
    q.put([entry(n=2, t=0.011, filling=True)])
    assert q.pop_ready(0.012) is None  # fewer than last time: waits
    q.put([entry(n=2, t=0.013, filling=True)])
    batch = q.pop_ready(0.013)  # 4 ≥ 3: everyone is back, and more
    assert batch.size == 4 and batch.reason == "company"
    q.put([entry(n=3, t=0.014, filling=True)])
    assert q.pop_ready(0.015) is None  # the bar is now 4
    assert q.pop_ready(0.024).reason == "delay"


def test_the_company_to_expect_is_the_largest_of_the_recent_batches():
    """A batch cut short by chance (by delay, with fewer) does not lower the bar for the next: the largest of the
    key's last COMPANY_WINDOW batches sets it, until that batch falls out of the window."""
    from curvedit.service.batcher import COMPANY_WINDOW

    q = BatchQueue(max_batch_size=16, max_queue_delay_s=0.010, max_queue_size=100)
    q.put([entry(n=6, t=0.0, filling=True)])
    assert q.pop_ready(0.010).size == 6
    t = 0.020
    for _ in range(COMPANY_WINDOW):  # the bar stays 6: two items wait for the delay every time
        q.put([entry(n=2, t=t, filling=True)])
        assert q.pop_ready(t) is None
        assert q.pop_ready(t + 0.011).reason == "delay"
        t += 0.020
    q.put([entry(n=2, t=t, filling=True)])  # the batch of 6 has left the window: 2 is company enough
    assert q.pop_ready(t).reason == "company"


def test_batches_released_idle_set_no_company_to_expect():
    """Lone requests (released idle) say nothing of how many clients a burst brings: the first batch that waits
    after them waits for the delay, not for one item."""
    q = BatchQueue(max_batch_size=16, max_queue_delay_s=0.010, max_queue_size=100)
    for t in (0.0, 0.1, 0.2):
        q.put([entry(t=t)])
        assert q.pop_ready(t).reason == "idle"
    q.put([entry(t=0.300, filling=True)])
    assert q.pop_ready(0.301) is None
    assert q.pop_ready(0.311).reason == "delay"


def test_company_is_counted_per_key():
    q = BatchQueue(max_batch_size=16, max_queue_delay_s=0.010, max_queue_size=100)
    q.put([entry(key=("m", "a"), n=1, t=0.0, filling=True), entry(key=("m", "b"), n=4, t=0.0, filling=True)])
    assert {q.pop_ready(0.010).key, q.pop_ready(0.010).key} == {("m", "a"), ("m", "b")}
    q.put([entry(key=("m", "b"), n=2, t=0.020, filling=True)])
    assert q.pop_ready(0.021) is None  # key b's last batch had 4
    q.put([entry(key=("m", "a"), n=1, t=0.021, filling=True)])
    assert q.pop_ready(0.021).key == ("m", "a")  # key a's had 1


def test_a_batch_that_waited_alone_returns_the_stage_to_idle_dispatch():
    q = loaded_queue(0.010)
    q.put([entry(t=0.020)])  # the burst is over: this one waits the delay once, and finds nobody
    batch = q.pop_ready(0.031)
    assert batch.size == 1 and batch.reason == "delay"
    q.put([entry(t=0.040)])
    batch = q.pop_ready(0.040)
    assert batch.size == 1 and batch.reason == "idle"


def test_with_no_delay_a_loaded_stage_still_dispatches_at_once():
    q = loaded_queue(0.0)
    q.put([entry(t=0.020)])
    batch = q.pop_ready(0.020)
    assert batch.size == 1 and batch.reason == "idle"


def test_full_batch_released_at_once_and_capped_at_max():
    q = BatchQueue(max_batch_size=4, max_queue_delay_s=1.0, max_queue_size=100)
    q.put([entry(n=3, t=0.0, filling=True)])
    assert q.pop_ready(0.0) is None
    q.put([entry(n=2, t=0.0, filling=True)])
    batch = q.pop_ready(0.0)  # 5 items queued >= 4: release without waiting, but only whole entries ≤ 4
    assert batch.reason == "full" and batch.size == 3 and batch.bucket == 4
    assert len(q) == 2


def test_keys_batch_separately_and_oldest_key_goes_first():
    q = BatchQueue(max_batch_size=8, max_queue_delay_s=0.0, max_queue_size=100)
    q.put([entry(key="b", t=1.0)])
    q.put([entry(key="a", t=2.0)])
    q.put([entry(key="b", t=3.0)])
    first = q.pop_ready(5.0)
    assert first.key == "b" and first.size == 2
    assert q.pop_ready(5.0).key == "a"


def test_batches_are_not_padded_and_split_by_entry():
    """Only the engine pads (its ShapePolicy); the batcher hands over exactly the queued rows."""
    q = BatchQueue(max_batch_size=8, max_queue_delay_s=0.0, max_queue_size=100)
    q.put([entry(n=2, t=1.0), entry(n=3, t=2.0)])
    batch = q.pop_ready(3.0)
    z, amounts = batch.inputs()
    assert z.shape == (5, 3) and amounts.shape == (5, 2) and batch.bucket == 8
    np.testing.assert_array_equal(z[:, 0], [1, 1, 2, 2, 2])
    parts = batch.split((z * 10,))
    assert [p[0].shape[0] for p in parts] == [2, 3]
    np.testing.assert_array_equal(parts[1][0][:, 0], 20)


def test_queue_bound_in_items_all_or_nothing():
    q = BatchQueue(max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=5)
    q.put([entry(n=4)])
    with pytest.raises(QueueFull) as info:
        q.put([entry(n=1), entry(n=1)])
    assert info.value.pushback_ms >= 10 and "queue full" in info.value.message
    assert len(q) == 4  # nothing of the refused request was queued
    q.put([entry(n=1)])
    assert len(q) == 5


def test_expired_deadline_and_cancelled_are_dropped_before_release():
    q = BatchQueue(max_batch_size=8, max_queue_delay_s=0.0, max_queue_size=100)
    late, gone, ok = entry(t=0.0, deadline=0.5), entry(t=0.0, done=True), entry(t=0.0, deadline=5.0)
    q.put([late, gone, ok])
    dropped = q.drop_stale(1.0)
    assert {(id(e), r) for e, r in dropped} == {(id(late), "deadline"), (id(gone), "cancelled")}
    batch = q.pop_ready(1.0)
    assert batch.entries == [ok] and len(q) == 0


def test_stale_entries_met_while_forming_a_batch_are_dropped_not_run():
    q = BatchQueue(max_batch_size=8, max_queue_delay_s=0.0, max_queue_size=100)
    late, gone, ok = entry(t=0.0, deadline=0.5), entry(t=0.0, done=True), entry(t=0.0)
    q.put([late, gone, ok])
    dropped = []
    batch = q.pop_ready(1.0, dropped)
    assert batch.entries == [ok] and [r for _, r in dropped] == ["deadline", "cancelled"] and len(q) == 0


def test_only_stale_entries_release_no_batch():
    q = BatchQueue(max_batch_size=8, max_queue_delay_s=0.0, max_queue_size=100)
    q.put([entry(t=0.0, deadline=0.5)])
    dropped = []
    assert q.pop_ready(1.0, dropped) is None and len(dropped) == 1 and len(q) == 0


def test_entries_larger_than_max_batch_are_refused():
    q = BatchQueue(max_batch_size=2, max_queue_delay_s=0.0, max_queue_size=100)
    with pytest.raises(ValueError, match="split"):
        q.put([entry(n=3)])


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"max_queue_delay_s": -1}, {"max_queue_size": 0}])
def test_bad_settings_raise_with_the_fix(kwargs):
    settings = {"max_batch_size": 4, "max_queue_delay_s": 0.0, "max_queue_size": 4} | kwargs
    with pytest.raises(ValueError, match="must be"):
        BatchQueue(**settings)


def test_runner_failing_batch_fails_only_its_requests_and_loop_survives():
    def compute(batch):
        z, _ = batch.inputs()
        if (z < 0).any():
            raise RuntimeError("boom")
        return (z * 2,)

    async def scenario():
        runner = BatchRunner(BatchQueue(4, 0.0, 100), compute)
        task = asyncio.create_task(runner.run())
        await asyncio.sleep(0)
        bad = runner.submit(("m", "bad"), -np.ones((1, 3), np.float32), None)
        good = runner.submit(("m", "good"), np.ones((6, 3), np.float32), None)  # split into 4 + 2
        results = await asyncio.gather(*(e.future for e in bad + good), return_exceptions=True)
        later = runner.submit(("m", "good"), np.ones((1, 3), np.float32), None)
        (after,) = await later[0].future
        runner.stop()
        await task
        return results, after

    results, after = asyncio.run(scenario())
    assert isinstance(results[0], RuntimeError)
    assert [r[0].shape for r in results[1:]] == [(4, 3), (2, 3)]
    np.testing.assert_array_equal(after, 2)


def test_runner_drops_expired_work_before_compute():
    computed = []

    def compute(batch):
        computed.append(batch.size)
        return batch.inputs()[:1]

    async def scenario():
        clock = [0.0]
        runner = BatchRunner(BatchQueue(4, 0.050, 100), compute, clock=lambda: clock[0])
        (e,) = runner.submit("k", np.ones((1, 3), np.float32), None, deadline=0.010)
        clock[0] = 0.060  # the batch is due (50 ms delay), but the deadline passed while it was queued
        task = asyncio.create_task(runner.run())
        with pytest.raises(DeadlineExpired):
            await e.future
        runner.stop()
        await task

    asyncio.run(scenario())
    assert computed == []


class LazyRows:
    """A lazy input (as the service queues seeds or image files): made on the compute thread, may fail there."""

    def __init__(self, rows: np.ndarray, fail: bool = False):
        self.rows, self.fail = rows, fail

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return LazyRows(self.rows[index], self.fail)

    def array(self):
        if self.fail:
            raise RuntimeError("cannot decode")
        return self.rows


def test_runner_makes_lazy_inputs_and_finishes_entries_on_the_stage_thread_one_failing_alone():
    import threading

    threads = []

    def compute(batch):
        threads.append(threading.current_thread().name)
        return (batch.inputs()[0] + 1,)

    def finish(rows, start):
        threads.append(threading.current_thread().name)
        return float(rows[0].sum()) + start

    async def scenario():
        runner = BatchRunner(BatchQueue(8, 0.0, 100), compute)
        task = asyncio.create_task(runner.run())
        await asyncio.sleep(0)
        ok = runner.submit(("m", "e"), LazyRows(np.ones((2, 3), np.float32)), None, finish=finish)
        bad = runner.submit(("m", "e"), LazyRows(np.ones((1, 3), np.float32), fail=True), None, finish=finish)
        results = await asyncio.gather(*(e.future for e in ok + bad), return_exceptions=True)
        runner.stop()
        await task
        runner.shutdown()
        return results

    results = asyncio.run(scenario())
    assert results[0] == 12.0 and isinstance(results[1], RuntimeError)
    assert threads and all(name.startswith("curvedit-compute-m") for name in threads)


def test_each_model_computes_on_its_own_stage_so_a_slow_one_does_not_hold_another():
    import threading

    release = threading.Event()

    def compute(batch):
        if batch.key[0] == "slow":
            assert release.wait(10)
        return (batch.inputs()[0],)

    async def scenario():
        runner = BatchRunner(BatchQueue(8, 0.0, 100), compute)
        task = asyncio.create_task(runner.run())
        await asyncio.sleep(0)
        (slow,) = runner.submit(("slow", "e"), np.ones((1, 3), np.float32), None)
        await asyncio.sleep(0.05)
        (fast,) = runner.submit(("fast", "e"), np.ones((1, 3), np.float32), None)
        await asyncio.wait_for(fast.future, 10)  # done while the slow model's batch still runs
        assert not slow.future.done()
        release.set()
        await slow.future
        runner.stop()
        await task
        runner.shutdown()

    asyncio.run(scenario())


def test_a_batch_joins_its_entries_sampling_seeds_and_zeros_for_entries_without():
    from curvedit.service.batcher import Batch

    a, b, c = entry(n=2), entry(n=1), entry(n=3)
    a.seeds, c.seeds = np.array([7, 8]), np.array([1, 2, 3])
    assert Batch("k", [a, b, c], 8).seeds().tolist() == [7, 8, 0, 1, 2, 3]
    assert Batch("k", [b], 1).seeds() is None


@pytest.mark.parametrize(("entries", "now", "reason"), [
    ([dict(deadline=5.0), dict(deadline=9.0)], 6.0, None),  # one request still waits
    ([dict(deadline=5.0), dict(deadline=6.0)], 6.0, "deadline"),
    ([dict(done=True), dict(done=True)], 0.0, "cancelled"),
    ([dict(done=True), dict(deadline=1.0)], 2.0, "deadline"),
    ([dict(done=True), dict()], 100.0, None),
])
def test_a_batch_is_abandoned_once_every_request_is_gone(entries, now, reason):
    """What lets a long computation (sampling) stop between steps; on a fake clock."""
    from curvedit.service.batcher import Batch

    batch = Batch("k", [entry(**e) for e in entries], 2, clock=lambda: now)
    assert batch.abandoned() == reason
