"""``curvedit serve --workers N``: N front-end processes on the same ports, one engine process, and this
supervisor, which starts them, restarts any that dies, serves the one ``/metrics`` and drains them all.

Past one core a Python server splits its work the way vLLM (API servers beside an engine core) and gRPC's own
multiprocessing example (workers on one ``SO_REUSEPORT`` port) do:

- the **front ends** (``frontend``) parse, validate, authenticate, admit and answer, on the gRPC and HTTP ports
  they all bind with ``SO_REUSEPORT`` (the kernel spreads connections over them); they import no torch;
- the **engine** (``engine_process``) holds the models and the batcher, and batches across every front end;
- requests cross between them as raw array bytes over a Unix socket (``link``), never pickled.

Faults: a front end that dies is restarted at once; its clients' calls in flight end UNAVAILABLE (their connection
is gone), the others' are untouched. An engine that dies is restarted; meanwhile every front end fails what it has
in flight with UNAVAILABLE and says NOT_SERVING, then SERVING again once the new engine's default model is warm.
SIGTERM/SIGINT: each front end drains (nothing accepted is lost), then the engine stops.

The supervisor holds each port with an ``SO_REUSEPORT`` socket it never listens on, so ``--port 0`` means one
port for all, kept across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from curvedit.service.config import ServeConfig
from curvedit.service.metrics_merge import merge

log = logging.getLogger(__name__)
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)  # after the 1st, 2nd, 3rd, later deaths within a minute


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A bound (not listening) ``SO_REUSEPORT`` socket on ``host:port`` (0 = any): the port the workers share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot bind {host}:{port} ({exc}); is another server on that port? pass --port "
                         "with a free port (0 = any)") from None
    return sock, sock.getsockname()[1]


class Child:
    """One worker process and what it has told the supervisor (over a pipe: its state, its metrics port)."""

    def __init__(self, role: str, index: int, target, args: tuple):
        self.role, self.index, self.target, self.args = role, index, target, args
        self.process: multiprocessing.Process | None = None
        self.conn = None
        self.state, self.metrics_port, self.deaths, self.error = "", 0, [], ""

    @property
    def name(self) -> str:
        return "engine" if self.role == "engine" else f"front end {self.index}"

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # never fork a process that runs gRPC threads
        parent, child = ctx.Pipe()
        self.process = ctx.Process(target=self.target, args=(*self.args, child), name=f"curvedit-{self.role}",
                                   daemon=False)
        self.process.start()
        child.close()
        self.conn, self.state, self.metrics_port = parent, "starting", 0

    def poll(self) -> None:
        """Read what the process has said since the last poll."""
        with contextlib.suppress(EOFError, OSError):
            while self.conn is not None and self.conn.poll():
                message = self.conn.recv()
                self.state = message.get("state", self.state)
                self.metrics_port = message.get("metrics_port", self.metrics_port)
                self.error = message.get("error", self.error)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def signal(self, sig: int) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)

    def metrics(self) -> str:
        if not self.metrics_port or not self.alive:
            return ""
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            return urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            return ""


class Supervisor:
    """The workers of one server (see the module)."""

    def __init__(self, config: ServeConfig):
        from curvedit.service.engine_process import engine_main
        from curvedit.service.frontend import frontend_main

        self.config = config
        self._held = []
        grpc_sock, port = reserve_port(config.host, config.port)
        self._held.append(grpc_sock)
        http_port = config.http_port
        if http_port >= 0:
            http_sock, http_port = reserve_port(config.host, http_port)
            self._held.append(http_sock)
        self.port, self.http_port = port, http_port
        self._dir = tempfile.TemporaryDirectory(prefix="curvedit-serve-")
        self.socket_path = str(Path(self._dir.name) / "engine.sock")
        child = dataclasses.asdict(dataclasses.replace(config, port=port, http_port=http_port, metrics_port=-1,
                                                       workers=1))
        self.engine = Child("engine", 0, engine_main, (child, self.socket_path))
        self.fronts = [Child("frontend", i, frontend_main, (child, self.socket_path, i))
                       for i in range(config.workers)]
        self.stopping = False
        self._httpd: ThreadingHTTPServer | None = None
        self.metrics_port: int | None = None

    @property
    def children(self) -> list[Child]:
        return [self.engine, *self.fronts]

    # -- /metrics ----------------------------------------------------------------------------------------------
    def serve_metrics(self) -> None:
        supervisor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = merge(supervisor.engine.metrics(), [f.metrics() for f in supervisor.fronts]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        try:
            self._httpd = ThreadingHTTPServer((self.config.metrics_host, self.config.metrics_port), Handler)
        except OSError as exc:
            raise ValueError(f"cannot serve /metrics on {self.config.metrics_host}:{self.config.metrics_port} "
                             f"({exc}); pass --metrics-port with a free port (0 = any, -1 = off)") from None
        self.metrics_port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, name="curvedit-metrics", daemon=True).start()

    # -- running -------------------------------------------------------------------------------------------------
    async def wait_for(self, children: list[Child], state: str, stop: asyncio.Event) -> bool:
        """Until every child in ``children`` said ``state`` (True), or ``stop`` was set or one failed (False)."""
        while not stop.is_set():
            for child in children:
                child.poll()
                if child.state == "failed" or (not child.alive and child.process is not None):
                    child.process.join(5)
                    child.poll()  # what it said before it exited
                    raise ValueError(child.error or f"the {child.name} process failed to start (exit code "
                                     f"{child.process.exitcode}); see its log above")
            reached = (state, "ready") if state == "listening" else (state,)  # ready: listening and warm
            if all(child.state in reached for child in children):
                return True
            await asyncio.sleep(0.02)
        return False

    async def start(self, stop: asyncio.Event) -> bool:
        """/metrics, the engine, then the front ends once it listens: True when every front end is SERVING;
        False (everything stopped) if ``stop`` was set first. A worker that fails to start stops them all
        (ValueError)."""
        if self.config.metrics_port >= 0:
            self.serve_metrics()
        self.engine.start()
        try:
            started = await self.wait_for([self.engine], "listening", stop)
            if started:
                for front in self.fronts:
                    front.start()
                started = await self.wait_for(self.fronts, "serving", stop)
        except ValueError:
            await self.stop()
            raise
        if not started:
            for child in self.children:
                child.signal(signal.SIGKILL if child.role == "frontend" else signal.SIGTERM)
            await self.stop()
        return started

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart any worker that dies, until ``stop``."""
        while not stop.is_set():
            for child in self.children:
                child.poll()
                if child.process is not None and not child.alive and not self.stopping:
                    now = time.monotonic()
                    child.deaths = [t for t in child.deaths if now - t < 60] + [now]
                    wait = RESTART_BACKOFF_S[min(len(child.deaths), len(RESTART_BACKOFF_S)) - 1]
                    log.warning("the %s process (pid %d) died with exit code %s; restarting it in %.1f s",
                                child.name, child.process.pid, child.process.exitcode, wait)
                    child.process = None
                    asyncio.get_running_loop().call_later(wait, self._restart, child)
            await asyncio.sleep(0.05)

    def _restart(self, child: Child) -> None:
        if not self.stopping:
            child.start()
            log.info("the %s process restarted (pid %d)", child.name, child.process.pid)

    async def stop(self) -> bool:
        """Drain the front ends (each finishes what it accepted), then stop the engine. True if every worker
        exited cleanly."""
        self.stopping = True
        for front in self.fronts:
            front.signal(signal.SIGTERM)
        clean = await self._join(self.fronts, self.config.grace_s + 5.0)
        self.engine.signal(signal.SIGTERM)
        clean = await self._join([self.engine], 10.0) and clean
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        for sock in self._held:
            sock.close()
        self._dir.cleanup()
        return clean

    async def _join(self, children: list[Child], timeout: float) -> bool:
        """Wait for ``children`` to exit (killing what outlives ``timeout``); True if each stopped cleanly: exit
        code 0, or stopped while still starting (a SIGTERM before its handler: it had accepted nothing)."""
        starting = {id(c) for c in children if c.state not in ("serving", "ready")}
        end = time.monotonic() + timeout
        while any(c.alive for c in children) and time.monotonic() < end:
            await asyncio.sleep(0.02)
        clean = True
        for child in children:
            if child.alive:
                log.warning("the %s process did not stop within %.0f s; killing it", child.name, timeout)
                child.signal(signal.SIGKILL)
                child.process.join(5)
                clean = False
            elif child.process is not None and child.process.exitcode not in (0, None):
                clean = clean and id(child) in starting
        return clean


async def serve_workers(config: ServeConfig, announce=print) -> int:
    """``serve --workers N`` until SIGTERM/SIGINT: every process drained and stopped; exit code 0 if clean."""
    from curvedit.service import security

    warning = security.exposure_warning(config)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    supervisor = Supervisor(config)
    if not await supervisor.start(stop):
        log.info("curvedit serve: %s while starting: stopped before serving", received[0])
        return 0
    watching = asyncio.create_task(supervisor.supervise(stop))
    metrics = (f"http://{config.metrics_host}:{supervisor.metrics_port}/metrics" if supervisor.metrics_port
               else "off")
    http = f"http://{config.host}:{supervisor.http_port}/v2" if supervisor.http_port >= 0 else "off"
    names = ", ".join(str(m) for m in config.models) or "the default models"
    announce(f"curvedit serve: SERVING {names} on {config.host}:{supervisor.port}; metrics {metrics}; "
             f"OIP HTTP {http}; {config.workers} front-end processes and 1 engine process "
             f"(pids {', '.join(str(c.process.pid) for c in supervisor.children)})")
    sys.stdout.flush()
    await stop.wait()
    watching.cancel()
    announce(f"curvedit serve: draining (grace {config.grace_s:g} s)")
    clean = await supervisor.stop()
    announce("curvedit serve: stopped" + ("" if clean else " (a worker did not stop cleanly)"))
    return 0 if clean else 1
