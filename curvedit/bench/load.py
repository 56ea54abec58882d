"""What every serving benchmark shares: a server process started from its argv, and the load that drives it.

``ServerProcess`` runs ``curvedit serve`` (or any server that prints the same SERVING line) as a subprocess and
scrapes its ``/metrics``; ``unary_load`` and ``stream_load`` are the asyncio/grpc.aio clients; ``percentiles``
and ``engine_items_per_s`` turn what they measured into the tables' columns.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from curvedit.client import edit_request
from curvedit.v1 import latent_edit_pb2_grpc as pb_grpc

SERVING = re.compile(r"SERVING .* on [\w.]+:(\d+); metrics (?:http://[\w.]+:(\d+)/metrics|off)")
OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


class ServerProcess:
    """``argv`` as a subprocess that prints a SERVING line; stopped with SIGTERM. ``pythonpath``: put first."""

    def __init__(self, argv: list[str], pythonpath: str | None = None):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
        # `python -m` puts the working directory first on sys.path: run from the install itself, so a source
        # checkout in the current directory cannot shadow the other curvedit.
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     cwd=pythonpath or None)
        lines = []
        for line in self.proc.stdout:
            lines.append(line)
            match = SERVING.search(line)
            if match:
                self.port = int(match.group(1))
                self.metrics_port = int(match.group(2)) if match.group(2) else None
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()
                return
        raise RuntimeError(f"server did not start: {''.join(lines)}")

    def metrics(self) -> dict[str, float]:
        if self.metrics_port is None:
            return {}
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[s.name] = out.get(s.name, 0.0) + s.value
        return out

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def percentiles(latencies: list[float]) -> tuple[float, float, float]:
    if not latencies:
        return (float("nan"),) * 3
    p = np.percentile(np.asarray(latencies) * 1000, [50, 95, 99])
    return float(p[0]), float(p[1]), float(p[2])


async def unary_load(target: str, latents: np.ndarray, edits: dict, concurrency: int, duration: float,
                     warmup: float = 0.5, items: int = 1,
                     connections: int = 1) -> tuple[int, list[float], int, int]:
    """``concurrency`` workers each sending Edit calls of ``items`` latents back to back, spread over
    ``connections`` TCP connections: (requests, latencies, errors, completed). ``requests`` and ``latencies``
    leave out the warm-up; ``completed`` counts every call that succeeded, warm-up included, which is what the
    server's CPU time over the whole load should be divided by.

    Several connections matter for ``serve --workers N``: the kernel hands each connection to one front-end
    process (SO_REUSEPORT), so a client with one connection loads one front end however many there are."""
    starts = range(0, len(latents) - items + 1, items)
    requests = [edit_request(latents=latents[i : i + items], edits=edits) for i in starts]
    # A local subchannel pool per channel: without it, channels to one target in one process share a connection.
    options = OPTIONS + ([("grpc.use_local_subchannel_pool", 1)] if connections > 1 else [])
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(max(1, connections))]
    stubs = [pb_grpc.LatentEditServiceStub(channel) for channel in channels]
    loop = asyncio.get_running_loop()
    begin = loop.time() + warmup
    end = begin + duration
    latencies: list[float] = []
    errors = completed = 0

    async def worker(i: int) -> None:
        nonlocal errors, completed
        request, stub = requests[i % len(requests)], stubs[i % len(stubs)]
        while (t0 := loop.time()) < end:
            try:
                await stub.Edit(request, timeout=60)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            completed += 1
            if t0 >= begin:
                latencies.append(loop.time() - t0)

    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    finally:
        for channel in channels:
            await channel.close()
    return len(latencies), latencies, errors, completed


async def stream_load(target: str, latents: np.ndarray, edits: dict, chunk: int, in_flight: int,
                      duration: float, warmup: float = 0.5) -> tuple[int, list[float], int]:
    """One EditStream with ``in_flight`` chunks outstanding, as ``curvedit batch`` sends them."""
    requests = [edit_request(latents=latents[i : i + chunk], edits=edits, id=str(k))
                for k, i in enumerate(range(0, len(latents) - chunk + 1, chunk))]
    async with grpc.aio.insecure_channel(target, options=OPTIONS) as channel:
        stub = pb_grpc.LatentEditServiceStub(channel)
        loop = asyncio.get_running_loop()
        begin = loop.time() + warmup
        end = begin + duration
        slots = asyncio.Semaphore(in_flight)
        sent: dict[str, float] = {}
        latencies: list[float] = []
        errors = 0

        async def messages():
            k = 0
            while loop.time() < end:
                await slots.acquire()
                request = requests[k % len(requests)]
                request.id = str(k)
                sent[request.id] = loop.time()
                k += 1
                yield request

        async for response in stub.EditStream(messages()):
            slots.release()
            t0 = sent.pop(response.id)
            if response.HasField("error"):
                errors += 1
            elif t0 >= begin:
                latencies.append(loop.time() - t0)
            if loop.time() >= end and not sent:
                break
    return len(latencies), latencies, errors


def engine_items_per_s(model, latents: np.ndarray, edits: dict, batch: int, seconds: float = 1.0) -> float:
    """The in-process engine's items/s at ``batch`` (``Model.edit`` on ``[batch, d]``)."""
    z = np.ascontiguousarray(latents[:batch])
    amounts = model.amounts(edits, batch)
    model.edit(z, amounts)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.edit(z, amounts)
        calls += 1
    return calls * batch / (time.perf_counter() - start)
