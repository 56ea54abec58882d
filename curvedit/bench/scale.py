"""``curvedit bench serve --workers 1,2,4``: the scale-out table — ``serve --workers N`` beside a no-op gRPC
server of N processes on the same port, at each client concurrency, in one run.

For each N it starts ``curvedit serve --workers N`` (``--workers 1``: today's single process) and
``curvedit.bench.noop --processes N``; every cell takes both in turn for ``--rounds`` rounds. The load comes
from ``--client-processes`` processes of this benchmark (asyncio, grpc.aio), each with its share of the
concurrency and its own connections, so the load generator is not one Python core. A cell reports requests/s
(median round), client p50/p99 over all rounds, and **server CPU-µs per request**: the CPU time of the server's
processes (supervisor, front ends, engine; or the no-op's) over the round, divided by every call it answered
(the warm-up's too) —
what a request costs the machine, which does not depend on how many cores it has. A last cell per N sends
requests of ``--big-items`` latents each and reports rows/s against the in-process engine's own rows/s at that
batch (``engine_items_per_s``).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from curvedit.bench.load import ServerProcess, engine_items_per_s, percentiles, unary_load
from curvedit.models.files import write_csv

# Each client process spreads its calls over this many TCP connections: the kernel gives each connection to one
# front-end process, so with one connection per client two client processes load two front ends only when
# SO_REUSEPORT's hash happens to split them (run W1's N = 2 cells put all load on one front end half the time).
CONNECTIONS_PER_CLIENT = 8

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class ScaleCell:
    workers: int
    server: str  # curvedit | noop
    concurrency: int
    items_per_request: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    errors: int
    rows_per_s: float | None = None  # requests of many latents only
    engine_rows_per_s: float | None = None


def family(pid: int) -> list[int]:
    """``pid`` and every process below it (from ``/proc``'s parent links)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += parents.get(current, [])
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far."""
    return sum(stat_cpu_seconds(f"/proc/{pid}/stat") for pid in pids)


def stat_cpu_seconds(stat: str) -> float:
    """User + system CPU seconds from a ``/proc/.../stat`` file (a process's or a thread's); 0 once it is gone."""
    try:
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def _client(target: str, latents: np.ndarray, concurrency: int, duration: float, conn) -> None:
    connections = min(concurrency, CONNECTIONS_PER_CLIENT)
    requests, latencies, errors, completed = asyncio.run(unary_load(target, latents, {"x": 1.0}, concurrency,
                                                                    duration, connections=connections))
    conn.send((requests, np.asarray(latencies, np.float32), errors, completed))


def load(target: str, latents: np.ndarray, concurrency: int, duration: float, processes: int) -> tuple:
    """Load from ``processes`` client processes (each with its share of ``concurrency``): (requests, latencies,
    errors, completed), as ``unary_load`` counts them."""
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    ctx = multiprocessing.get_context("spawn")
    running = []
    for share in shares:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_client, args=(target, latents, share, duration, child))
        proc.start()
        running.append((proc, parent))
    requests, latencies, errors, completed = 0, [], 0, 0
    for proc, parent in running:
        n, lat, err, done = parent.recv()
        proc.join()
        requests, errors, completed = requests + n, errors + err, completed + done
        latencies.append(lat)
    return requests, np.concatenate(latencies), errors, completed


def _measure(server: ServerProcess, latents, concurrency: int, duration: float, clients: int) -> tuple:
    pids = family(server.proc.pid)
    before = cpu_seconds(pids)
    requests, latencies, errors, completed = load(f"127.0.0.1:{server.port}", latents, concurrency, duration,
                                                  clients)
    return requests, latencies, errors, cpu_seconds(pids) - before, completed


def run_scale(args) -> int:
    import curvedit

    bundle = Path(args.scale_model) if args.scale_model else curvedit.default_bundle_path()
    model = curvedit.load(bundle, engine=args.engine)
    latents = model.sample(4096, seed=0)
    cells: list[ScaleCell] = []
    print(f"scale-out: {bundle.name}, concurrencies {args.concurrency}, {args.rounds} round(s) of "
          f"{args.duration:g} s, {args.client_processes} client process(es)", flush=True)
    for n in args.workers:
        curvedit_server = ServerProcess([sys.executable, "-m", "curvedit.cli", "serve", "--model", str(bundle),
                                         "--port", "0", "--http-port", "-1", "--metrics-port", "0",
                                         "--workers", str(n), "--engine", args.engine,
                                         "--max-concurrent-requests", "100000", "--max-queue-size", "65536",
                                         "--max-items-per-request", str(max(4096, args.big_items))])
        noop = ServerProcess([sys.executable, "-m", "curvedit.bench.noop", "--port", "0", "--processes",
                              str(n)])
        try:
            for concurrency in args.concurrency:
                samples = {"curvedit": [], "noop": []}
                for _ in range(args.rounds):
                    for name, server in (("curvedit", curvedit_server), ("noop", noop)):
                        samples[name].append(_measure(server, latents, concurrency, args.duration,
                                                      args.client_processes))
                for name, rounds in samples.items():
                    cells.append(_cell(n, name, concurrency, 1, rounds, args.duration))
                    print(_row(cells[-1]), flush=True)
            cells.append(_big(n, curvedit_server, model, latents, args))
            print(_row(cells[-1]), flush=True)
        finally:
            curvedit_server.stop()
            noop.stop()
    print("\n" + HEADER)
    for cell in cells:
        print(_row(cell))
    checks = summarize(cells)
    for line in checks:
        print(line)
    if args.csv:
        write_csv(args.csv, [asdict(c) for c in cells])
    if args.json_file:
        Path(args.json_file).write_text(json.dumps({"cells": [asdict(c) for c in cells], "checks": checks},
                                                  indent=1) + "\n")
    return 0


def _cell(n: int, name: str, concurrency: int, items: int, rounds: list, duration: float) -> ScaleCell:
    rates = [r[0] / duration for r in rounds]
    latencies = np.concatenate([r[1] for r in rounds]).tolist()
    p50, _, p99 = percentiles(latencies)
    # CPU over the whole load, warm-up included, per call completed in it.
    completed, cpu = sum(r[4] for r in rounds), sum(r[3] for r in rounds)
    return ScaleCell(n, name, concurrency, items, statistics.median(rates), p50, p99,
                     1e6 * cpu / max(completed, 1), sum(r[2] for r in rounds))


def _big(n: int, server: ServerProcess, model, latents, args) -> ScaleCell:
    """Requests of ``--big-items`` latents: rows/s through the server against the engine's own at that batch."""
    items = args.big_items
    big = np.ascontiguousarray(np.resize(latents, (max(items * 4, len(latents)), latents.shape[1])))
    rounds = []
    for _ in range(args.rounds):
        rounds.append(_measure_big(server, big, items, args))
    cell = _cell(n, "curvedit", args.big_concurrency, items, rounds, args.duration)
    cell.rows_per_s = cell.requests_per_s * items
    cell.engine_rows_per_s = engine_items_per_s(model, big, {"x": 1.0}, items, args.engine_seconds)
    return cell


def _measure_big(server: ServerProcess, big: np.ndarray, items: int, args) -> tuple:
    pids = family(server.proc.pid)
    before = cpu_seconds(pids)
    requests, latencies, errors, completed = asyncio.run(unary_load(
        f"127.0.0.1:{server.port}", big, {"x": 1.0}, args.big_concurrency, args.duration, items=items,
        connections=min(args.big_concurrency, CONNECTIONS_PER_CLIENT)))
    return requests, np.asarray(latencies), errors, cpu_seconds(pids) - before, completed


HEADER = (f"{'N':>2} {'server':<9} {'conc':>5} {'items':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'CPU µs/req':>10} {'err':>4} {'rows/s':>10} {'engine rows/s':>13}")


def _row(c: ScaleCell) -> str:
    rows = "" if c.rows_per_s is None else f"{c.rows_per_s:10.0f} {c.engine_rows_per_s:13.0f}"
    return (f"{c.workers:>2} {c.server:<9} {c.concurrency:>5} {c.items_per_request:>5} {c.requests_per_s:9.0f} "
            f"{c.p50_ms:8.2f} {c.p99_ms:8.2f} {c.cpu_us_per_request:10.1f} {c.errors:>4} {rows}")


def summarize(cells: list[ScaleCell]) -> list[str]:
    """The ratios the issue asks for, per N and concurrency: curvedit ÷ no-op requests/s; CPU-µs per request
    against N = 1's; big requests' rows/s ÷ the engine's own."""
    lines = []
    single = {c.concurrency: c for c in cells
              if c.workers == 1 and c.server == "curvedit" and c.items_per_request == 1}
    for c in cells:
        if c.server != "curvedit":
            continue
        if c.items_per_request > 1:
            share = c.rows_per_s / c.engine_rows_per_s
            lines.append(f"N={c.workers} requests of {c.items_per_request}: {share:.2f} of the engine's rows/s at "
                         "that batch")
            continue
        noop = next(x for x in cells if x.workers == c.workers and x.server == "noop"
                    and x.concurrency == c.concurrency)
        base = single.get(c.concurrency)
        line = (f"N={c.workers} c={c.concurrency}: {c.requests_per_s / noop.requests_per_s:.2f} of the no-op's "
                f"req/s")
        if base is not None and c.workers != 1:
            line += f"; CPU-µs/request {c.cpu_us_per_request / base.cpu_us_per_request:.2f}× N=1's"
        lines.append(line)
    return lines
