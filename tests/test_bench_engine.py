"""The engine benchmark keeps what it measured when it is cut short, and times the compiling backends last:
on a GPU lent for minutes, a hung torch.compile must not cost the rows timed before it."""

import json
import os
import signal
from pathlib import Path

import pytest

from curvedit.bench import engine as bench
from curvedit.cli import main

# The shipped flow is small, so these runs take seconds; ONNX Runtime uses the bundle's own graphs.
QUICK = ["bench", "engine", "--quick", "--flows", "shipped", "--repeats", "2", "--warmup", "1", "--device", "cpu"]


def run_bench(tmp_path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "bench.json"
    code = main([*QUICK, "--json", str(out), *extra])
    return code, json.loads(out.read_text())


def test_compiling_backends_come_after_every_other_row(tmp_path):
    code, result = run_bench(tmp_path, "--batch-sizes", "1", "2")
    assert code == 0 and result["status"] == "complete"
    backends = [row["backend"] for row in result["rows"]]
    first_compiled = next(i for i, name in enumerate(backends) if name.startswith("torch.compile"))
    assert all(name.startswith("torch.compile") for name in backends[first_compiled:]), backends
    assert set(result["phases_s"]) == {"main", "images", "compile"}


def test_no_compile_leaves_the_compile_pass_out(tmp_path):
    code, result = run_bench(tmp_path, "--batch-sizes", "1", "--no-compile")
    assert code == 0
    assert not [row for row in result["rows"] if row["backend"].startswith("torch.compile")]
    assert set(result["phases_s"]) == {"main", "images"}


def test_the_image_path_times_torch_and_onnxruntime_side_by_side(tmp_path):
    """encode → edit → decode per image on shapes-vae: both engines at each quick batch, same pixels (±1)."""
    code, result = run_bench(tmp_path, "--batch-sizes", "1", "--no-compile")
    rows = [r for r in result["rows"] if r["flow"] == "shapes-vae images"]
    assert code == 0 and {(r["backend"], r["batch"]) for r in rows} == {
        (engine, batch) for engine in ("torch", "onnxruntime") for batch in (1, 16)}
    for r in rows:
        assert r["ms"] > 0 and r["edits_per_s"] == pytest.approx(r["batch"] / (r["ms"] / 1e3))
        assert r["max_err"] <= 1, "images agree within one grey level"
    torch_ms = {r["batch"]: r["ms"] for r in rows if r["backend"] == "torch"}
    for r in rows:
        assert r["vs_eager"] == pytest.approx(torch_ms[r["batch"]] / r["ms"])


def test_the_image_path_can_be_left_out(tmp_path):
    code, result = run_bench(tmp_path, "--batch-sizes", "1", "--no-compile", "--image-model", "")
    assert code == 0 and set(result["phases_s"]) == {"main"}
    assert not [r for r in result["rows"] if r["flow"].endswith("images")]


def test_compile_and_no_compile_together_are_refused(capsys):
    assert main([*QUICK, "--compile", "--no-compile"]) == 2
    assert "contradict" in capsys.readouterr().err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_run_keeps_the_finished_rows(tmp_path, monkeypatch, capsys, signum):
    """What ``timeout -s INT`` (or a plain ``timeout``) does to the benchmark on a GPU machine: the rows timed
    before the signal are in the JSON, the rest are marked, and the table is printed."""
    real = bench._sample_in_rounds
    batches_sampled = []

    def sample_then_signal(timed, device, rounds=3):
        real(timed, device, rounds)
        batches_sampled.append(timed[0][0].batch)
        if len(batches_sampled) == 2:  # batch 2 is sampled but not yet written up
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(bench, "_sample_in_rounds", sample_then_signal)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    code, result = run_bench(tmp_path, "--batch-sizes", "1", "2", "3")
    assert code == 130 and result["status"] == "interrupted"
    rows = {(row["batch"], row["backend"]): row for row in result["rows"]}
    assert rows[(1, "torch")]["ms"] > 0 and rows[(1, "onnxruntime")]["ms"] > 0
    for backend in ("torch", "onnxruntime"):  # sampled, not yet written up; onnxruntime's row has a note already
        assert rows[(2, backend)]["ms"] is None and "not timed: run interrupted" in rows[(2, backend)]["note"]
    assert "not timed" not in rows[(2, "triton")]["note"]  # never meant to run here
    assert not [batch for batch, _ in rows if batch == 3]
    printed = capsys.readouterr().out
    assert "| flow | batch | backend |" in printed and "interrupted" in printed
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_the_json_is_rewritten_after_every_row(tmp_path, monkeypatch):
    """Each row reaches the file as it is added, before the run ends."""
    seen = []
    real = bench.Results.save

    def save_and_count(self):
        real(self)
        if self.json_path:
            seen.append(len(json.loads(Path(self.json_path).read_text())["rows"]))

    monkeypatch.setattr(bench.Results, "save", save_and_count)
    run_bench(tmp_path, "--batch-sizes", "1", "--image-model", "")
    assert seen[0] == 0 and max(seen) == 5  # torch, onnxruntime, auto, triton (note), torch.compile (note)
    assert sorted(set(seen)) == [0, 1, 2, 3, 4, 5]
