"""`curvedit bench serve` measures fairly on a shared machine: every server is up before the first cell, each
cell takes the servers in turn round by round, and a cell is built from all of its rounds. The servers are fakes
here; the real ones are exercised by the benchmark itself and by the service tests."""

import argparse
import types
from typing import ClassVar

import numpy as np
import pytest

from curvedit.bench import loadtest
from curvedit.bench.loadtest import Cell, _cell, summarize

DELTA_KEYS = ("nv_inference_exec_count", "nv_inference_count", "nv_inference_compute_infer_duration_us")


def sample(requests: int, latencies_s: list[float], errors: int = 0, batches=0.0, items=0.0, compute_us=0.0):
    return requests, latencies_s, errors, dict(zip(DELTA_KEYS, (batches, items, compute_us), strict=True))


def test_a_cell_reports_the_median_rounds_rate_and_percentiles_over_every_round():
    rounds = [sample(100, [0.001] * 10, batches=10, items=40, compute_us=2000),
              sample(300, [0.003] * 10, errors=1, batches=20, items=40, compute_us=2000),
              sample(200, [0.002] * 10, errors=2, batches=10, items=20, compute_us=2000)]
    cell = _cell("shipped", "batched", "unary", 8, 1, rounds, duration=2.0)
    assert cell.requests_per_s == 100.0 and cell.items_per_s == 100.0  # median of 50, 150, 100 req/s
    assert cell.round_requests_per_s == (50.0, 150.0, 100.0)
    assert cell.p50_ms == pytest.approx(2.0) and cell.p99_ms == pytest.approx(3.0)
    assert cell.errors == 3
    assert cell.mean_batch == pytest.approx(100 / 40) and cell.batch_compute_ms == pytest.approx(6000 / 40 / 1e3)


def test_a_server_without_batch_metrics_has_no_mean_batch():
    cell = _cell("shipped", "noop", "stream", 4, 256, [sample(10, [0.001]), sample(12, [0.002])], duration=1.0)
    assert cell.items_per_s == 12 * 256 and np.isnan(cell.mean_batch) and np.isnan(cell.batch_compute_ms)


class FakeServer:
    started: ClassVar[list["FakeServer"]] = []

    def __init__(self, argv, pythonpath=None):
        self.argv, self.pythonpath, self.stopped = argv, pythonpath, False
        FakeServer.started.append(self)

    def stop(self):
        self.stopped = True


@pytest.fixture
def fakes(monkeypatch):
    from curvedit.service import models

    FakeServer.started = []
    order: list[tuple[str, FakeServer]] = []

    def fake_sample(server, mode, conc, items, latents, edits, duration):
        assert len(FakeServer.started) == 4, "every server is up before the first cell"
        order.append((f"{mode}{conc}", server))
        return sample(10, [0.001], batches=1.0, items=1.0)

    model = types.SimpleNamespace(latent_dim=3, directions=["x"])
    monkeypatch.setattr(models, "serving_model", lambda bundle, engine: model)
    monkeypatch.setattr(loadtest, "ServerProcess", FakeServer)
    monkeypatch.setattr(loadtest, "_sample", fake_sample)
    monkeypatch.setattr(loadtest, "engine_items_per_s", lambda *a, **k: 1.0)
    return order


def options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    loadtest.add_options(parser)
    return parser.parse_args(list(argv))


def test_cells_take_the_servers_in_turn_round_by_round(fakes, tmp_path):
    args = options("--concurrency", "1,8", "--rounds", "2", "--chunk", "4",
                   "--baseline-pythonpath", str(tmp_path))
    cells = loadtest.run_model("shipped", tmp_path, args)
    servers = FakeServer.started
    assert [s.pythonpath for s in servers] == [None, str(tmp_path), None, None]  # batched, today, off, noop
    assert fakes == [(cell, s) for cell in ("unary1", "unary8", "stream4") for _ in range(2) for s in servers]
    assert [(c.server, c.mode, c.concurrency) for c in cells] == [
        (name, mode, conc) for mode, conc in (("unary", 1), ("unary", 8), ("stream", 4))
        for name in ("batched", "today", "off", "noop")]
    assert all(s.stopped for s in servers)


def test_every_server_is_stopped_when_a_cell_fails(fakes, monkeypatch, tmp_path):
    def broken(*args):
        raise RuntimeError("load generator failed")

    monkeypatch.setattr(loadtest, "_sample", broken)
    with pytest.raises(RuntimeError, match="load generator failed"):
        loadtest.run_model("shipped", tmp_path, options("--concurrency", "1"))
    assert len(FakeServer.started) == 3 and all(s.stopped for s in FakeServer.started)


def test_rounds_must_be_at_least_one(capsys):
    with pytest.raises(SystemExit):
        options("--rounds", "0")
    assert "argument --rounds: must be at least 1, got 0" in capsys.readouterr().err


def cell(server: str, mode: str, conc: int, rps: float, p50: float, p99: float, items: int = 1,
         engine: float = float("nan")) -> Cell:
    return Cell("shipped", server, mode, conc, items, rps, rps * items, p50, p50, p99, 0,
                engine_items_per_s=engine)


def test_the_goals_are_ratios_of_cells_measured_in_the_same_run():
    cells = [cell("batched", "unary", 1, 500, 1.1, 2.0), cell("off", "unary", 1, 550, 1.0, 2.0),
             cell("batched", "unary", 64, 2000, 30, 50), cell("today", "unary", 64, 2500, 25, 60),
             cell("noop", "unary", 64, 3000, 20, 20), cell("batched", "stream", 4, 100, 5, 9, items=256),
             cell("noop", "stream", 4, 900, 1, 2, items=256, engine=25600)]
    checks = {c["target"]: (round(c["value"], 3), c["met"]) for c in summarize(cells)}
    assert checks == {
        "c=1 batched p50 / batching-off p50 <= 1.15": (1.1, True),
        "c=64 req/s / today's server >= 1": (0.8, False),
        "c=64 p99 / no-op server's p99 <= 2": (2.5, False),
        "c=64 req/s / no-op server's (for scale)": (0.667, True),
        "stream items/s / in-process engine (same chunk) >= 0.8": (1.0, True),
    }
