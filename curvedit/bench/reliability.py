"""``curvedit bench reliability``: overload, soak and SIGTERM against a real ``curvedit serve`` process.

* overload: N concurrent ``Edit`` calls of 64 seeds sent at once (N = 500, 1000, 2000), then 1,000 calls of 1,024
  seeds with a 5 s deadline. Counts by status code, client-side latency p50/p99 of the answers and of the
  refusals, whether every refusal carried a pushback trailer, and what the server counted (scraped from its
  ``/metrics``). The same burst against the no-op gRPC server (``curvedit.bench.noop``) beside it: what gRPC
  itself costs for N simultaneous calls on this machine, the floor of any refusal time.
* soak: steady load for ``--soak-s`` seconds (unary edits, image edits and a stream); the server's RSS is sampled
  every second; growth is measured after a warm-up of ``--soak-warmup-s``.
* sigterm: steady load, SIGTERM, load continues until every client is refused. A request is lost if the server
  did not answer it with OK or refuse it (RESOURCE_EXHAUSTED, or UNAVAILABLE while draining or closed).

This process is the load generator (asyncio, grpc.aio); the server is a separate process, both on this machine.
"""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from curvedit.bench.load import OPTIONS, ServerProcess
from curvedit.client import edit_request
from curvedit.models.files import write_csv
from curvedit.service.errors import PUSHBACK_KEY
from curvedit.v1 import latent_edit_pb2_grpc as pb_grpc

REFUSED = ("RESOURCE_EXHAUSTED", "UNAVAILABLE")
_CODES = {code.value[0]: code.value for code in grpc.StatusCode}


def refused(code: str, details: str) -> bool:
    """A refusal (the request was never accepted, so nothing was lost): queue/overload, draining, port closed.

    UNAVAILABLE "server stopped before this request finished" is accepted work cut off by the drain's grace."""
    return code == "RESOURCE_EXHAUSTED" or (code == "UNAVAILABLE" and "server stopped" not in details)


def scrape(port: int | None) -> dict[tuple, float]:
    """``{(name, sorted label items): value}`` from a server's /metrics (empty without metrics)."""
    if port is None:
        return {}
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def counted(before: dict, after: dict, name: str, **labels) -> float:
    def total(samples):
        return sum(v for (n, items), v in samples.items()
                   if n == name and all((k, w) in items for k, w in labels.items()))
    return total(after) - total(before)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q)) if values else float("nan")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def serve_argv(*flags: str) -> list[str]:
    return [sys.executable, "-m", "curvedit.cli", "serve", "--port", "0", "--http-port", "-1",
            "--metrics-port", "0", *flags]


async def burst(target: str, n: int, items: int, timeout: float,
                connections: int = 8) -> list[tuple[str, float, bool, str]]:
    """``n`` Edit calls of ``items`` seeds started at once, spread over ``connections`` TCP connections (the
    kernel gives each connection to one front end of ``serve --workers N``): (code, seconds, pushback trailer?,
    details)."""
    request = edit_request(seeds=range(items), edits={"x": 1.0})
    options = [*OPTIONS, ("grpc.use_local_subchannel_pool", 1)]  # else channels to one address share a connection
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(connections)]
    try:
        await asyncio.gather(*(channel.channel_ready() for channel in channels))
        edits = [pb_grpc.LatentEditServiceStub(channel).Edit for channel in channels]
        loop = asyncio.get_running_loop()

        async def one(edit):
            t = loop.time()
            try:
                await edit(request, timeout=timeout)
                return "OK", loop.time() - t, False, ""
            except grpc.aio.AioRpcError as exc:
                trailers = dict(exc.trailing_metadata() or ())
                return exc.code().name, loop.time() - t, PUSHBACK_KEY in trailers, exc.details() or ""
        return await asyncio.gather(*(one(edits[i % connections]) for i in range(n)))
    finally:
        for channel in channels:
            await channel.close()


def overload_row(label: str, results, before: dict, after: dict) -> dict:
    codes = collections.Counter(r[0] for r in results)
    refused = [r for r in results if r[0] in REFUSED]
    ok = [r[1] for r in results if r[0] == "OK"]
    named = ("OK", *REFUSED, "DEADLINE_EXCEEDED", "CANCELLED")
    return {"case": label, "calls": len(results), **{f"n_{c}": codes.get(c, 0) for c in named},
            "other": sum(v for c, v in codes.items() if c not in named),
            "refused_p50_ms": pct([r[1] for r in refused], 50), "refused_p99_ms": pct([r[1] for r in refused], 99),
            "ok_p50_ms": pct(ok, 50), "ok_p99_ms": pct(ok, 99),
            "refusals_with_pushback": sum(r[2] for r in refused),
            "server_rejections": counted(before, after, "curvedit_rejections_total"),
            "server_cancelled": counted(before, after, "grpc_server_handled_total", grpc_code="CANCELLED")}


def run_overload(args) -> list[dict]:
    rows = []
    for label, argv in (("curvedit", serve_argv(*args.serve_flags)),
                        ("no-op gRPC", [sys.executable, "-m", "curvedit.bench.noop", "--port", "0"])):
        server = ServerProcess(argv)
        target = f"127.0.0.1:{server.port}"
        try:
            for n in args.concurrency:
                before = scrape(server.metrics_port)
                results = asyncio.run(burst(target, n, 64, timeout=60))
                rows.append(overload_row(f"{label}: {n} x 64 seeds", results, before, scrape(server.metrics_port)))
                print(_row(rows[-1]), flush=True)
                time.sleep(2)  # let the server finish what it accepted
            if label == "curvedit":
                before = scrape(server.metrics_port)
                results = asyncio.run(burst(target, 1000, 1024, timeout=5))
                rows.append(overload_row(f"{label}: 1000 x 1024 seeds, 5 s deadline", results, before,
                                         scrape(server.metrics_port)))
                print(_row(rows[-1]), flush=True)
        finally:
            server.stop()
    return rows


async def steady(target: str, clients: int, stop: asyncio.Event, outcomes: collections.Counter,
                 lost: list[str], until_refused: bool = False) -> None:
    """``clients`` closed-loop callers (edits of 16 seeds, every 4th with images) plus one EditStream."""
    async with grpc.aio.insecure_channel(target, options=OPTIONS) as channel:
        stub = pb_grpc.LatentEditServiceStub(channel)

        async def caller(k: int):
            i = 0
            while not stop.is_set():
                request = edit_request(seeds=range(k * 10_000 + i, k * 10_000 + i + 16), edits={"x": 1.0},
                                       images="raw" if i % 4 == 0 else "none")
                i += 16
                try:
                    await stub.Edit(request, timeout=30)
                    outcomes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    code, details = exc.code().name, exc.details() or ""
                    outcomes[code] += 1
                    if not refused(code, details):
                        lost.append(f"{code}: {details[:120]}")
                    if until_refused and code == "UNAVAILABLE":
                        return
                    await asyncio.sleep(0.01)

        async def streamer():
            async def messages():
                i = 0
                while not stop.is_set():
                    yield edit_request(seeds=range(i, i + 64), edits={"y": 0.5}, id=str(i))
                    i += 64
                    await asyncio.sleep(0.05)
            try:
                async for answer in stub.EditStream(messages(), timeout=3600):
                    if not answer.HasField("error"):
                        outcomes["stream OK"] += 1
                        continue
                    code = grpc.StatusCode(_CODES[answer.error.code]).name
                    outcomes[f"stream {code}"] += 1
                    if not refused(code, answer.error.message):
                        lost.append(f"stream {code}: {answer.error.message[:120]}")
            except grpc.aio.AioRpcError as exc:
                outcomes[f"stream ended {exc.code().name}"] += 1

        await asyncio.gather(*(caller(k) for k in range(clients)), streamer())


def run_soak(args) -> dict:
    server = ServerProcess(serve_argv(*args.serve_flags))
    pid, samples = server.proc.pid, []
    outcomes, lost = collections.Counter(), []

    async def load_and_sample():
        stop = asyncio.Event()
        task = asyncio.create_task(steady(f"127.0.0.1:{server.port}", args.soak_clients, stop, outcomes, lost))
        start = time.monotonic()
        while (t := time.monotonic() - start) < args.soak_s:
            samples.append((t, rss_mb(pid)))
            await asyncio.sleep(1.0)
        stop.set()
        await task

    try:
        asyncio.run(load_and_sample())
    finally:
        server.stop()
    warm = [mb for t, mb in samples if t >= args.soak_warmup_s]
    return {"seconds": args.soak_s, "clients": args.soak_clients, "rss_first_mb": samples[0][1],
            "rss_after_warmup_mb": warm[0], "rss_end_mb": warm[-1], "rss_max_mb": max(mb for _, mb in samples),
            "growth_after_warmup_pct": 100 * (warm[-1] - warm[0]) / warm[0], "outcomes": dict(outcomes),
            "lost": len(lost)}


def run_sigterm(args) -> dict:
    server = ServerProcess(serve_argv(*args.serve_flags, "--grace-s", "20"))
    outcomes, lost = collections.Counter(), []

    async def load_then_signal():
        stop = asyncio.Event()
        task = asyncio.create_task(steady(f"127.0.0.1:{server.port}", args.sigterm_clients, stop, outcomes, lost,
                                          until_refused=True))
        await asyncio.sleep(args.sigterm_after_s)
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(5)
        stop.set()
        await task

    asyncio.run(load_then_signal())
    code = server.proc.wait(60)
    return {"clients": args.sigterm_clients, "outcomes": dict(outcomes), "accepted_lost": len(lost),
            "lost_examples": lost[:5], "exit_code": code}


HEADER = (f"{'case':<42} {'OK':>5} {'RES_EXH':>7} {'UNAVAIL':>7} {'DEADLN':>6} {'CANCEL':>6} {'other':>5} "
          f"{'ref p50':>8} {'ref p99':>8} {'ok p50':>8} {'ok p99':>8} {'pushbk':>6} {'srv rej':>7} "
          f"{'srv canc':>8}")


def _row(r: dict) -> str:
    return (f"{r['case']:<42} {r['n_OK']:>5} {r['n_RESOURCE_EXHAUSTED']:>7} {r['n_UNAVAILABLE']:>7} "
            f"{r['n_DEADLINE_EXCEEDED']:>6} {r['n_CANCELLED']:>6} {r['other']:>5} {r['refused_p50_ms']:>8.1f} "
            f"{r['refused_p99_ms']:>8.1f} {r['ok_p50_ms']:>8.1f} {r['ok_p99_ms']:>8.1f} "
            f"{r['refusals_with_pushback']:>6} {r['server_rejections']:>7.0f} {r['server_cancelled']:>8.0f}")


def add_options(p) -> None:
    p.add_argument("--parts", default="overload,soak,sigterm", help="comma list of overload, soak, sigterm "
                   "(default: all three)")
    p.add_argument("--concurrency", default="500,1000,2000", type=lambda s: [int(x) for x in s.split(",")],
                   help="simultaneous calls of the overload bursts (default 500,1000,2000)")
    p.add_argument("--soak-s", type=float, default=300.0, help="soak length in seconds (default 300)")
    p.add_argument("--soak-warmup-s", type=float, default=30.0,
                   help="RSS growth is measured from this many seconds in (default 30)")
    p.add_argument("--soak-clients", type=int, default=16, help="closed-loop callers of the soak (default 16)")
    p.add_argument("--sigterm-clients", type=int, default=64, help="callers across the SIGTERM (default 64)")
    p.add_argument("--sigterm-after-s", type=float, default=5.0, help="load before SIGTERM, seconds (default 5)")
    p.add_argument("--serve-flag", dest="serve_flags", action="append", default=[],
                   help="extra flag for `curvedit serve`, repeatable (default: none; the shipped model)")
    p.add_argument("--out", default=None, help="write the results here as JSON, and the overload rows as "
                   "CSV beside it (default: print only)")


def run(args) -> int:
    parts = args.parts.split(",")
    report: dict = {}
    if "overload" in parts:
        print(HEADER, flush=True)
        report["overload"] = run_overload(args)
    if "soak" in parts:
        report["soak"] = run_soak(args)
        print("soak:", json.dumps(report["soak"]), flush=True)
    if "sigterm" in parts:
        report["sigterm"] = run_sigterm(args)
        print("sigterm:", json.dumps(report["sigterm"]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(_finite(report), indent=2) + "\n")
        if report.get("overload"):
            write_csv(Path(args.out).with_suffix(".csv"), report["overload"])
    return 0


def _finite(value):
    """``value`` with NaN (no such calls) as ``None``, so the file is strict JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="curvedit bench reliability", description=__doc__)
    add_options(parser)
    return run(parser.parse_args(argv))


def register(sub) -> None:
    p = sub.add_parser("reliability", help="overload bursts, a soak and SIGTERM under load against curvedit serve")
    add_options(p)
    p.set_defaults(func=run)
