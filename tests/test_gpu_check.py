"""``benchmarks/gpu_check.sh`` dry-run on the CPU, so that its plumbing still works the next time a GPU is lent
for a few minutes: every step runs (the GPU tests skip, the benchmark takes its ``--quick`` path), a step cut at
its time limit still leaves its results, and the steps after it run anyway."""

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and GNU coreutils' timeout")

# A GPU test that hangs: the script's pytest step must be cut (SIGINT) and still write its junit XML.
HANGING_TEST = """
import time

import pytest


@pytest.mark.gpu
def test_hangs():
    time.sleep(120)
"""


def test_dry_mode_runs_every_section_on_the_cpu_and_leaves_every_result_even_when_a_step_is_cut(tmp_path):
    (tmp_path / "hang").mkdir()
    hanging = tmp_path / "hang" / "test_hang.py"
    hanging.write_text(HANGING_TEST)
    out = tmp_path / "gpu_check"
    # Only the hanging test: it starts within a second (no conftest, no torch import), so the 6 s limit cuts it
    # and never pytest's start-up, however busy the machine.
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "CURVEDIT_GPU_CHECK_DRY": "1",
           "GPU_CHECK_TEST_FILES": str(hanging), "GPU_CHECK_TESTS_S": "6",
           "PYTEST_ADDOPTS": f"-c {ROOT / 'pyproject.toml'} --rootdir {ROOT}",
           "BENCH_ARGS": "--quick --flows shipped --batch-sizes 1 --repeats 2 --warmup 1"}
    env.pop("TRITON_INTERPRET", None)  # the dry mode sets it to 1 itself (on a GPU the script sets 0)
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=290)
    assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-2000:]  # 1: a step was cut

    summary = (out / "summary.txt").read_text()
    assert "GPU tests: cut at its time limit (exit 124)" in summary, summary
    assert "benchmark: ok" in summary and "benchmark: complete" in summary, summary
    assert "total:" in summary

    ET.parse(out / "pytest_gpu.xml")  # written although pytest was stopped
    assert "GPU tests (junit):" in summary

    result = json.loads((out / "bench_gpu.json").read_text())
    assert result["status"] == "complete"
    assert [r for r in result["rows"] if r["backend"] == "torch" and r["ms"]]

    # The serve section: the real server at N = 1 and 2 beside the no-op server, every cell measured, no errors.
    assert "serve: ok" in summary, summary
    serve = json.loads((out / "serve.json").read_text())
    cells = serve["cells"]
    assert {c["workers"] for c in cells} == {1, 2}
    assert {c["server"] for c in cells} == {"curvedit", "noop"}
    assert all(c["requests_per_s"] > 0 and c["errors"] == 0 for c in cells), cells
    assert [c for c in cells if c.get("engine_rows_per_s")], "no request of many latents against the engine"
    assert "N=2 c=8:" in summary and "CPU-µs/request" in summary, summary
    assert "N server" in (out / "serve.txt").read_text()

    # The results step: both benchmarks recorded as this machine's runs, beside the committed ones.
    assert "results: ok" in summary, summary
    for name in ("engine", "scale"):
        runs = json.loads((out / "results" / f"{name}.json").read_text())["runs"]
        assert any(machine.startswith("dry run") for machine in runs) and len(runs) > 1, runs.keys()
    assert "### dry run" in (out / "RESULTS.md").read_text()

    log = (out / "gpu_check.log").read_text()
    assert "=== GPU tests" in log and "=== engine benchmark" in log and "=== serve" in log and "=== done" in log
    assert "KeyboardInterrupt" in log  # pytest saw SIGINT, not SIGKILL


def test_a_spent_budget_skips_the_steps_and_says_so(tmp_path):
    out = tmp_path / "gpu_check"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPU_CHECK_BUDGET_S": "1"}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout[-4000:]
    summary = (out / "summary.txt").read_text()
    assert "GPU tests: not started (time budget spent)" in summary, summary
    assert "benchmark: not started (time budget spent)" in summary, summary
    assert "serve: not started (time budget spent)" in summary, summary
