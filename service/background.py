"""Run an ``EditServer`` on its own event loop in a background thread (tests, notebooks, in-process demos).

    with BackgroundServer(ServeConfig(port=0, metrics_port=0, models=(path,))) as bg:
        client = Client(f"127.0.0.1:{bg.port}")
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future

from curvedit.service.config import ServeConfig
from curvedit.service.server import EditServer, create_server


class BackgroundServer:
    def __init__(self, config: ServeConfig, models=None, compute_wrapper: Callable | None = None):
        self.config, self._models, self._wrapper = config, models, compute_wrapper
        self.loop = asyncio.new_event_loop()
        self.server: EditServer | None = None
        self.port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, name="curvedit-server", daemon=True)

    def call(self, coro, timeout: float | None = 60):
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()

        async def build():
            self.server, self.port = create_server(self.config, self._models, self._wrapper)
            await self.server.start()

        try:
            self.call(build(), timeout=300)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def drain(self, grace_s: float | None = None) -> Future:
        """Start draining; returns a future of ``EditServer.drain``'s result."""
        return asyncio.run_coroutine_threadsafe(self.server.drain(grace_s), self.loop)

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):  # already stopped (drained) or the loop is gone
                self.call(self.server.stop(0.1), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()
