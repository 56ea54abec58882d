"""Measurement code lives in one package, ``curvedit.bench``, and the server never imports it: a real
``curvedit serve --workers 2`` (a supervisor, two front ends, an engine process) runs with an import spy in every
process (a sitecustomize on PYTHONPATH, which spawned children inherit, puts a finder first on sys.meta_path that
writes down each curvedit module a process looks up, importlib's included), and none of them looks up a
benchmark module."""

import os
import signal
import subprocess
import sys
import threading
from collections import defaultdict

import pytest
from test_service_warmup import wait_for_line

SPY = """
import os, sys

class ImportSpy:
    def find_spec(self, name, path=None, target=None):
        if name.startswith("curvedit"):
            with open(os.environ["CURVEDIT_IMPORT_LOG"], "a") as log:
                log.write(f"{os.getpid()} {name}\\n")
        return None

sys.meta_path.insert(0, ImportSpy())
"""


@pytest.mark.slow
def test_serve_at_any_number_of_workers_imports_no_benchmark(tiny_bundle, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SPY)
    log = tmp_path / "imports.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CURVEDIT_IMPORT_LOG": str(log),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "curvedit.cli", "serve", "--model", str(tiny_bundle),
                             "--port", "0", "--http-port", "0", "--metrics-port", "0", "--workers", "2",
                             "--engine", "onnxruntime"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    try:
        wait_for_line(lines, r"SERVING .* 2 front-end processes and 1 engine process")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    by_process = defaultdict(set)
    for line in log.read_text().splitlines():
        pid, name = line.split()
        by_process[int(pid)].add(name)
    roles = {pid: next((r for r in ("cli", "engine_process", "frontend") if f"curvedit.service.{r}" in names),
                       None) for pid, names in by_process.items()}
    assert sorted(filter(None, roles.values())) == ["cli", "engine_process", "frontend", "frontend"], roles
    for pid, names in by_process.items():
        assert not {n for n in names if n.startswith("curvedit.bench")}, (roles[pid], sorted(names))


def test_every_benchmark_is_a_bench_subcommand():
    """``curvedit bench WHAT`` reaches each measurement module from the one package."""
    from curvedit.bench.cli import BENCHMARKS
    from curvedit.cli import build_parser

    assert all(module.__name__.startswith("curvedit.bench.") for module in BENCHMARKS)
    bench = build_parser("bench")._subparsers._group_actions[0].choices["bench"]
    assert set(bench._subparsers._group_actions[0].choices) == {"engine", "serve", "reliability", "peers", "start",
                                                                  "results"}
