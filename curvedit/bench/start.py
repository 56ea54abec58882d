"""``curvedit bench start``: how fast ``curvedit serve`` is ready, and how fast it stops, through the real CLI.

Each round starts ``curvedit serve`` (the default models unless ``--model``) as a fresh process and reads its
output: seconds from the process start to SERVING and to the log line saying every model is warm. Four phases,
side by side in one run:

- ``cold``: an empty route cache (a fresh checkout or machine: every model's engine calibrates);
- ``warm``: the cache the cold start wrote (what every later start does);
- ``stop during warm-up``: SIGTERM as the first model warms up (cold cache): seconds until the process exits;
- ``stop while serving``: SIGTERM once every model is warm and idle: seconds until it has drained and exited.

Prints a table; ``--json FILE`` writes the rounds and medians.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PHASES = ("cold", "warm", "stop during warm-up", "stop while serving")


class Serve:
    """One ``curvedit serve`` process; its output lines with the seconds since launch they came at."""

    def __init__(self, models: list[str], cache_dir: str, extra: tuple[str, ...] = ()):
        flags = [f for m in models for f in ("--model", m)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "curvedit.cli", "serve", "--port", "0",
                                      "--http-port", "-1", "--metrics-port", "-1", "--cache-dir", cache_dir,
                                      *flags, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic() - self.started, line.rstrip()))

    def wait_for(self, pattern: str, timeout: float = 600.0) -> float:
        """Seconds since launch of the first line matching ``pattern``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for at, line in list(self.lines):
                if re.search(pattern, line):
                    return at
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.01)
        tail = "\n".join(line for _, line in self.lines[-20:])
        self.kill()
        raise RuntimeError(f"curvedit serve: no line matching {pattern!r}:\n{tail}")

    def stop(self, sig=signal.SIGTERM, timeout: float = 60.0) -> float:
        """Send ``sig``; seconds until the process has exited."""
        sent = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(timeout=timeout)
        return time.monotonic() - sent

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def all_ready_pattern(models: list[str]) -> str:
    """The log line after which every model is warm: "all N models ready", or the one model's own."""
    return r"all \d+ models ready" if len(models) != 1 else r"ready after a [\d.]+ s warm-up"


def one_round(models: list[str]) -> dict:
    """The four phases once, each on a fresh process; cold and the first stop on fresh, empty caches."""
    result = {}
    everything = all_ready_pattern(models)
    with tempfile.TemporaryDirectory(prefix="curvedit-cache-") as cache:
        for phase in ("cold", "warm"):
            serve = Serve(models, cache)
            try:
                result[f"{phase} SERVING s"] = serve.wait_for(r"SERVING ")
                result[f"{phase} all ready s"] = serve.wait_for(everything)
                if phase == "warm":
                    result["stop while serving s"] = serve.stop()
                    result["stop while serving exit"] = serve.proc.returncode
                else:
                    serve.stop()
            finally:
                serve.kill()
    with tempfile.TemporaryDirectory(prefix="curvedit-cache-") as cache:
        serve = Serve(models, cache)
        try:
            serve.wait_for(r"warming up ")
            time.sleep(0.5)  # into the first model's calibration
            result["stop during warm-up s"] = serve.stop()
            result["stop during warm-up exit"] = serve.proc.returncode
        finally:
            serve.kill()
    return result


def run(args: argparse.Namespace) -> int:
    models = list(args.model or [])
    if not models:
        from curvedit.service.models import default_models

        models = list(default_models())
    rounds = []
    for i in range(args.rounds):
        rounds.append(one_round(models))
        print(f"round {i + 1} of {args.rounds}: " + ", ".join(f"{k} {v:.2f}" for k, v in rounds[-1].items()
                                                              if k.endswith(" s")), flush=True)
    medians = {k: statistics.median(r[k] for r in rounds) for k in rounds[0] if k.endswith(" s")}
    print(f"\ncurvedit serve, {len(models)} model(s): {', '.join(models)}; {args.rounds} round(s), medians")
    print(f"{'phase':<22} {'SERVING s':>10} {'all ready s':>12} {'exit s':>8}")
    for phase in PHASES:
        serving, ready = medians.get(f"{phase} SERVING s"), medians.get(f"{phase} all ready s")
        stop = medians.get(f"{phase} s")
        cells = [f"{v:.2f}" if v is not None else "" for v in (serving, ready, stop)]
        print(f"{phase:<22} {cells[0]:>10} {cells[1]:>12} {cells[2]:>8}")
    exits = {r.get(f"{p} exit") for r in rounds for p in ("stop during warm-up", "stop while serving")}
    print(f"exit codes after SIGTERM: {sorted(exits)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"models": models, "rounds": rounds, "medians": medians},
                                              indent=1) + "\n")
    return 0 if exits == {0} else 1


def register(sub) -> None:
    p = sub.add_parser("start", help="how fast curvedit serve is SERVING (cold and warm route cache) and how "
                       "fast SIGTERM stops it (during warm-up, while serving), through the real CLI")
    p.add_argument("--model", action="append", default=None, metavar="NAME|PATH",
                   help="the models to serve, repeatable (default: serve's default models)")
    p.add_argument("--rounds", type=int, default=1, help="rounds of the four phases (default 1)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="write the rounds and medians as JSON (default: none)")
    p.set_defaults(func=run)
