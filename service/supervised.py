"""The worker's side of ``serve --workers N``: what the engine process (``engine_process``) and each front-end
process (``frontend``) do to live under the supervisor (``workers``), which starts them and hands each one end of
a pipe (``conn``)."""

from __future__ import annotations

import asyncio
import os


def detach(conn, stop: asyncio.Event) -> None:
    """In a worker: leave the supervisor's process group (a terminal's Ctrl-C, or ``timeout``, signals the group:
    the workers must stop in the supervisor's order, front ends draining first), and stop when the supervisor is
    gone (its end of ``conn`` closes), so that no worker outlives it."""
    os.setpgrp()
    loop = asyncio.get_running_loop()

    def parent_gone() -> None:
        try:
            conn.recv()
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            stop.set()

    loop.add_reader(conn.fileno(), parent_gone)
