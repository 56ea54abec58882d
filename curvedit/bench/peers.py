"""``curvedit bench peers``: curvedit beside the servers a user would pick instead, serving the same graph.

Every server serves the shipped model's edit graph (``edit.onnx`` of shapes32, d = 8, K = 6) on ONNX Runtime's
CPU provider with the same intra-op threads (``--ort-threads``, default 1), one model instance each, and is
driven by the same load generator: ``c`` closed-loop HTTP/1.1 keep-alive connections in this process, each
sending single-item edits back to back as JSON (``{"z": [[...]], "t": [[...]]}``, or the Open Inference
Protocol's JSON where the server speaks it). Peers, each at its documented defaults and at tuned settings:

* LitServe: ``max_batch_size=1`` (batching off) by default; tuned: batches of up to 64, 2 ms timeout.
* Ray Serve: ``@serve.batch(max_batch_size=10, batch_wait_timeout_s=0.01)``, ``max_ongoing_requests=5`` by
  default; tuned: 64, 2 ms, 256.
* KServe's Python model server (Open Inference Protocol, v2 REST): no batching of its own; tuned: its per-request
  latency and access logs and its unused gRPC server off.
* curvedit: ``curvedit serve``'s Open Inference Protocol over HTTP, at its defaults (and, with
  ``--curvedit-delay-ms``, another queue delay); its engine picks its batch-major graph below 16 rows.

A peer whose package is not importable by its ``--peer-python`` is skipped with the reason. LitServe and Ray
Serve are the optional ``peers`` dependency group (``pip install 'curvedit[peers]'``), never a runtime
requirement; KServe (0.21) pins protobuf < 7, which curvedit's stubs cannot use, so it goes into an environment
of its own: ``--peer-python kserve=ENV/bin/python``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SERVERS = Path(__file__).with_name("peer_servers")
PEERS = {  # name: (module to import, script, path, body format, {settings name: extra flags})
    "litserve": ("litserve", "litserve_app.py", "/predict", "plain",
                 {"defaults": [], "tuned": ["--max-batch-size", "64", "--batch-timeout", "0.002"]}),
    "ray-serve": ("ray.serve", "ray_app.py", "/", "plain",
                  {"defaults": [], "tuned": ["--max-batch-size", "64", "--batch-wait-timeout-s", "0.002",
                                             "--max-ongoing-requests", "256"]}),
    "kserve": ("kserve", "kserve_app.py", "/v2/models/edit/infer", "oip",
               {"defaults": [], "tuned": ["--quiet", "1"]}),
}


@dataclass
class PeerCell:
    server: str
    settings: str
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def body(fmt: str, z: np.ndarray, t: np.ndarray, model: str = "edit") -> bytes:
    if fmt == "plain":
        return json.dumps({"z": z.tolist(), "t": t.tolist()}).encode()
    tensors = [{"name": n, "datatype": "FP32", "shape": list(a.shape), "data": a.reshape(-1).tolist()}
               for n, a in (("z", z), ("t", t))]
    return json.dumps({"inputs": tensors, "outputs": [{"name": "z_edited"}]}).encode()


async def _exchange(reader, writer, request: bytes) -> int:
    writer.write(request)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length, chunked = 0, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
        elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while (size := int((await reader.readline()).strip(), 16)) > 0:
            await reader.readexactly(size + 2)
        await reader.readline()
    else:
        await reader.readexactly(length)
    return status


async def http_load(port: int, path: str, payload: bytes, concurrency: int, duration: float,
                    warmup: float = 1.0) -> tuple[list[float], int]:
    """``concurrency`` keep-alive connections sending ``payload`` back to back; (latencies, errors)."""
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload
    loop = asyncio.get_running_loop()
    begin = loop.time() + warmup
    end = begin + duration
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        reader = writer = None
        while (t0 := loop.time()) < end:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                status = await _exchange(reader, writer, request)
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                errors += 1
                writer = None
                await asyncio.sleep(0.01)
                continue
            if status != 200:
                errors += 1
            elif t0 >= begin:
                latencies.append(loop.time() - t0)
        if writer is not None:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


def _start(argv: list[str], marker: str, env: dict | None = None, timeout: float = 180) -> subprocess.Popen:
    """``argv`` in a session of its own, once it prints ``marker``: LitServe's workers (forked by the server)
    outlive a terminated parent, so ``_stop`` ends the whole process group."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, start_new_session=True)
    deadline, lines = time.monotonic() + timeout, []
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc
        if time.monotonic() > deadline:
            break
    _stop(proc, grace=0.0)
    raise RuntimeError("server did not start:\n" + "".join(lines[-30:]))


def _ready(port: int, path: str, payload: bytes, timeout: float = 120) -> None:
    async def once() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            request = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload
            return await _exchange(reader, writer, request)
        finally:
            writer.close()

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if asyncio.run(once()) == 200:
                return
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no 200 from 127.0.0.1:{port}{path} within {timeout:g} s")


def _signal_group(proc: subprocess.Popen, sig: int) -> bool:
    """Send ``sig`` to the server's process group; False once no process is left in it."""
    try:
        os.killpg(proc.pid, sig)
        return True
    except ProcessLookupError:
        return False


def _stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM to the server and its workers; SIGKILL to whatever is left after ``grace`` seconds."""
    _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _signal_group(proc, 0):
            break
        time.sleep(0.1)
    _signal_group(proc, signal.SIGKILL)
    proc.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(name: str, settings: str, proc_argv, path: str, payload: bytes, args, marker="READY",
            env=None) -> list[PeerCell]:
    port = _free_port()
    argv = [a.replace("{port}", str(port)) for a in proc_argv]
    proc = _start(argv, marker, env)
    cells = []
    try:
        _ready(port, path, payload)
        for c in args.concurrency:
            latencies, errors = asyncio.run(http_load(port, path, payload, c, args.duration))
            p50, p99 = (np.percentile(np.asarray(latencies) * 1e3, [50, 99]) if latencies else (np.nan, np.nan))
            cell = PeerCell(name, settings, c, len(latencies) / args.duration, float(p50), float(p99), errors)
            cells.append(cell)
            print(_row(cell), flush=True)
    finally:
        _stop(proc)
    return cells


HEADER = f"{'server':<22} {'settings':<16} {'conc':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'err':>5}"


def _row(c: PeerCell) -> str:
    return (f"{c.server:<22} {c.settings:<16} {c.concurrency:>5} {c.requests_per_s:>9.0f} {c.p50_ms:>8.2f} "
            f"{c.p99_ms:>8.2f} {c.errors:>5}")


def run(args) -> int:
    import curvedit

    bundle = curvedit.default_bundle_path()
    onnx = bundle / "edit.onnx"
    model = curvedit.load(bundle, engine="torch")
    rng = np.random.default_rng(0)
    z, t = rng.standard_normal((1, model.latent_dim)).astype(np.float32), np.zeros((1, len(model.directions)),
                                                                                  np.float32)
    t[0, 0] = 1.0
    pythons = {"": sys.executable}
    for entry in args.peer_python:
        name, _, python = entry.rpartition("=")
        pythons[name] = python
    print(f"load average {os.getloadavg()}; ORT threads {args.ort_threads}; {args.duration:g} s per cell")
    print(HEADER, flush=True)
    cells: list[PeerCell] = []
    serve = [sys.executable, "-m", "curvedit.cli", "serve", "--model", str(bundle), "--engine", "onnxruntime",
             "--ort-threads", str(args.ort_threads), "--port", "0", "--metrics-port", "-1",
             "--http-port", "{port}"]
    oip = body("oip", z, t)
    variants = [("defaults", [])] + [(f"delay {d:g} ms", ["--max-queue-delay-ms", str(d)])
                                    for d in args.curvedit_delay_ms]
    for settings, flags in variants:
        cells += measure("curvedit (OIP HTTP)", settings, serve + flags, f"/v2/models/{model.name}/infer", oip,
                         args, marker="SERVING")
    for name in args.peers:
        module, script, path, fmt, configs = PEERS[name]
        python = pythons.get(name, pythons[""])
        try:
            check = subprocess.run([python, "-c", f"import {module}, onnxruntime"], capture_output=True, text=True)
            failed, said = check.returncode != 0, check.stderr.strip()
        except OSError as exc:
            failed, said = True, f"cannot run {python}: {exc.strerror}"
        if failed:
            reason = said.splitlines()[-1] if said else "import failed"
            print(f"{name:<22} skipped: {reason} (pip install 'curvedit[peers]', or pass --peer-python)")
            continue
        for settings, flags in configs.items():
            argv = [python, str(SERVERS / script), "--onnx", str(onnx), "--threads",
                    str(args.ort_threads), "--port", "{port}", *flags]
            try:
                cells += measure(name, settings, argv, path, body(fmt, z, t), args)
            except RuntimeError as exc:
                print(f"{name:<22} {settings:<16} failed: {str(exc)[-500:]}")
    print(f"\nload average {os.getloadavg()}")
    print(HEADER)
    for cell in cells:
        print(_row(cell))
    if args.json:
        Path(args.json).write_text(json.dumps({"load_avg_end": os.getloadavg(), "args": {
            k: v for k, v in vars(args).items() if k != "func"}, "cells": [asdict(c) for c in cells]}, indent=1))
    return 0


def register(sub) -> None:
    p = sub.add_parser("peers", help="curvedit beside LitServe, Ray Serve and KServe on the same graph and load")
    p.add_argument("--peers", default=list(PEERS), type=lambda s: s.split(","),
                   help=f"comma list among {','.join(PEERS)} (default: all)")
    p.add_argument("--peer-python", action="append", default=[], metavar="[PEER=]PYTHON",
                   help="the python that has the peers installed, or PEER=PYTHON for one peer (repeatable; KServe "
                        "pins protobuf < 7 and needs an environment of its own) (default: this one)")
    p.add_argument("--concurrency", default=[1, 8, 64], type=lambda s: [int(x) for x in s.split(",")],
                   help="comma list of client concurrencies (default 1,8,64)")
    p.add_argument("--duration", type=float, default=5.0,
                   help="seconds measured per cell, after 1 s warm-up (default 5)")
    p.add_argument("--ort-threads", type=int, default=1,
                   help="ONNX Runtime intra-op threads of every server (default 1)")
    p.add_argument("--curvedit-delay-ms", default=[], type=lambda s: [float(x) for x in s.split(",")],
                   help="also measure curvedit serve at these max queue delays (default: its defaults only)")
    p.add_argument("--json", default=None, help="also write the cells here (default: none)")
    p.set_defaults(func=run)
