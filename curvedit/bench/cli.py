"""``curvedit bench engine | serve | reliability | peers | start | results``: each registers its own options."""

from __future__ import annotations

from curvedit.bench import engine, loadtest, peers, reliability, results, start

BENCHMARKS = (engine, loadtest, reliability, peers, start, results)


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks: engine speed, service load and reliability, peer "
                                                "servers, start-up; their results")
    sub = bench.add_subparsers(dest="what", required=True, metavar="WHAT")
    for module in BENCHMARKS:
        module.register(sub)
