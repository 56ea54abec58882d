"""``curvedit bench engine | serve | reliability | peers | start``: each benchmark registers its own options."""

from __future__ import annotations

import importlib

BENCH_MODULES = ("curvedit.engines.bench", "curvedit.service.loadtest", "curvedit.service.reliability",
                 "curvedit.service.peers", "curvedit.service.start_bench")


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks: engine speed, service load, service reliability")
    sub = bench.add_subparsers(dest="what", required=True, metavar="WHAT")
    for name in BENCH_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise
            continue  # not built yet
        module.register(sub)
