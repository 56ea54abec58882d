"""Run an ``EditServer`` on its own event loop in a background thread (tests, notebooks, in-process demos).

    with BackgroundServer(ServeConfig(port=0, metrics_port=0, models=(path,))) as bg:
        client = Client(f"127.0.0.1:{bg.port}")

With ``config.workers > 1`` the thread runs the ``serve --workers`` supervisor instead (front-end and engine
processes); ``bg.server`` is then the ``Supervisor``, which has the same ``port``, ``http_port`` and
``metrics_port``, and nothing of the server's insides (models, runner) is in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future

from curvedit.service.config import ServeConfig
from curvedit.service.server import EditServer, create_server
from curvedit.service.workers import Supervisor


class BackgroundServer:
    def __init__(self, config: ServeConfig, models=None, compute_wrapper: Callable | None = None):
        if config.workers > 1 and (models is not None or compute_wrapper is not None):
            raise ValueError("BackgroundServer: loaded models and a compute wrapper live in this process; with "
                             "workers > 1 the engine is another process: pass bundle paths in config.models")
        self.config, self._models, self._wrapper = config, models, compute_wrapper
        self.loop = asyncio.new_event_loop()
        self.server: EditServer | Supervisor | None = None
        self._stop_workers = asyncio.Event()
        self._supervising: asyncio.Task | None = None
        self.port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, name="curvedit-server", daemon=True)

    def call(self, coro, timeout: float | None = 60):
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()

        async def build():
            if self.config.workers > 1:
                self.server = Supervisor(self.config)
                self.port = self.server.port
                await self.server.start(self._stop_workers)
                self._supervising = asyncio.create_task(self.server.supervise(self._stop_workers))
                return
            self.server, self.port = create_server(self.config, self._models, self._wrapper)
            await self.server.start()

        try:
            self.call(build(), timeout=300)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def drain(self, grace_s: float | None = None) -> Future:
        """Start draining; returns a future of ``EditServer.drain``'s result (True if nothing was cut off). With
        workers the front ends drain as on SIGTERM, each with its own ``config.grace_s``."""
        if isinstance(self.server, Supervisor):
            return asyncio.run_coroutine_threadsafe(self._stop_supervisor(), self.loop)
        return asyncio.run_coroutine_threadsafe(self.server.drain(grace_s), self.loop)

    async def _stop_supervisor(self) -> bool:
        """Drain the front ends, then stop the engine (as on SIGTERM); True if every worker exited cleanly."""
        self._stop_workers.set()
        if self._supervising is None:  # start() failed, and stopped every worker itself
            return False
        supervising, self._supervising = self._supervising, None
        await supervising
        return await self.server.stop()

    def __exit__(self, *exc) -> None:
        if isinstance(self.server, Supervisor):
            with contextlib.suppress(Exception):
                self.call(self._stop_supervisor(), timeout=self.config.grace_s + 30)
        elif self.server is not None:
            with contextlib.suppress(Exception):  # already stopped (drained) or the loop is gone
                self.call(self.server.stop(0.1), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()
