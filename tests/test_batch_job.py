"""`curvedit batch`: killed mid-run and rerun, every output exists exactly once and equals model.edit."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import curvedit
from curvedit.service.background import BackgroundServer
from curvedit.service.batch_job import BatchJob, run_batch_job
from curvedit.service.config import ServeConfig

N, SHARD = 3000, 200
EDITS = {"x": 1.0, "scale": -0.5}


def batch_argv(out: Path, bundle, server: str | None, pace: float) -> list[str]:
    argv = [sys.executable, "-m", "curvedit.cli", "batch", "--seeds", f"0:{N}", "--edit", "x=1.0",
            "--edit", "scale=-0.5", "--out", str(out), "--shard-size", str(SHARD), "--chunk-size", "64",
            "--quiet", "--pace-s", str(pace)]
    return argv + (["--server", server] if server else ["--model", str(bundle)])


def done_shards(out: Path) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["done"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def kill_midway(argv: list[str], out: Path) -> None:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while done_shards(out) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "batch job made no progress"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert 3 <= done_shards(out) < N // SHARD, "the job was not killed midway"


def check_outputs(out: Path, model) -> None:
    shards = sorted((out / "shards").iterdir())
    assert [p.name for p in shards] == [f"edited-{i:05d}.npy" for i in range(N // SHARD)]  # no temporaries
    edited = np.concatenate([np.load(p) for p in shards])
    np.testing.assert_allclose(edited, model.edit(model.sample(N, seed=0), EDITS), atol=1e-5)


@pytest.fixture(scope="module")
def model(tiny_bundle):
    return curvedit.load(tiny_bundle)


@pytest.mark.slow
def test_in_process_job_resumes_after_kill(tmp_path, tiny_bundle, model):
    out = tmp_path / "job"
    kill_midway(batch_argv(out, tiny_bundle, None, pace=0.15), out)
    before = done_shards(out)
    result = subprocess.run(batch_argv(out, tiny_bundle, None, pace=0), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"{before} shards already done" in result.stdout
    check_outputs(out, model)


@pytest.mark.slow
def test_job_through_server_resumes_after_kill(tmp_path, tiny_bundle, model):
    config = ServeConfig(port=0, http_port=0, metrics_port=-1, models=(str(tiny_bundle),), max_batch_size=64,
                         max_queue_delay_ms=2)
    with BackgroundServer(config) as bg:
        out, server = tmp_path / "job", f"127.0.0.1:{bg.port}"
        kill_midway(batch_argv(out, tiny_bundle, server, pace=0.15), out)
        job = BatchJob(out=out, edits=EDITS, seeds=(0, N), server=server, shard_size=SHARD, chunk_size=64,
                       progress=False)
        summary = run_batch_job(job)
        assert summary["skipped_shards"] >= 3 and summary["computed"] == N - summary["skipped_shards"] * SHARD
    check_outputs(out, model)


def test_rerun_with_other_arguments_is_refused(tmp_path, tiny_bundle):
    job = BatchJob(out=tmp_path, edits={"x": 1.0}, seeds=(0, 10), model=str(tiny_bundle), progress=False)
    run_batch_job(job)
    again = run_batch_job(job)
    assert again["computed"] == 0 and again["skipped_shards"] == 1
    with pytest.raises(ValueError, match="different job"):
        run_batch_job(BatchJob(out=tmp_path, edits={"x": 2.0}, seeds=(0, 10), model=str(tiny_bundle),
                               progress=False))


def test_npz_input_and_pngs(tmp_path, tiny_bundle, model):
    z = model.sample(5, seed=9)
    np.savez(tmp_path / "in.npz", latents=z)
    run_batch_job(BatchJob(out=tmp_path / "o", edits={"y": 1.0}, latents_path=str(tmp_path / "in.npz"),
                           model=str(tiny_bundle), shard_size=2, png=True, progress=False))
    edited = np.concatenate([np.load(tmp_path / "o" / "shards" / f"edited-{i:05d}.npy") for i in range(3)])
    np.testing.assert_allclose(edited, model.edit(z, {"y": 1.0}), atol=1e-5)
    assert sorted(os.listdir(tmp_path / "o" / "images")) == [f"{i:08d}.png" for i in range(5)]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"seeds": (5, 5)}, "START < STOP"),
    ({"seeds": None}, "exactly one input"),
    ({"seeds": (0, 4), "shard_size": 0}, "shard_size must be"),
    ({"seeds": (0, 4), "edits": {}}, "--edit"),
])
def test_bad_job_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchJob(**{"out": tmp_path, "edits": {"x": 1.0}} | kwargs)


def test_a_typo_in_the_edits_writes_nothing_so_the_corrected_rerun_starts(tiny_bundle, tmp_path, capsys):
    from curvedit.cli import main

    out = tmp_path / "job"
    base = ["batch", "--model", str(tiny_bundle), "--engine", "torch", "--seeds", "0:4", "--out", str(out),
            "--quiet"]
    assert main([*base, "--edit", "sclae=1"]) == 2
    assert "unknown direction 'sclae'" in capsys.readouterr().err and not out.exists()
    assert main([*base, "--edit", "scale=1"]) == 0


def test_parquet_input_gives_the_same_shards_as_npy(tmp_path, tiny_bundle, model):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    z = model.sample(50, seed=4)
    np.save(tmp_path / "in.npy", z)
    rows = pa.array(list(z.astype(np.float64)), type=pa.list_(pa.float64()))  # variable-length lists, float64
    pq.write_table(pa.table({"id": pa.array(range(50)), "latents": rows}), tmp_path / "in.parquet",
                   row_group_size=7)
    for name in ("in.npy", "in.parquet"):
        run_batch_job(BatchJob(out=tmp_path / f"out-{name}", edits={"y": 1.0}, latents_path=str(tmp_path / name),
                               model=str(tiny_bundle), shard_size=16, chunk_size=5, progress=False))
    for i in range(4):
        shard = f"shards/edited-{i:05d}.npy"
        assert (tmp_path / "out-in.npy" / shard).read_bytes() == (tmp_path / "out-in.parquet" / shard).read_bytes()


@pytest.mark.parametrize(("latents", "message"), [
    (np.full((6, 5), 0.5, dtype=np.float32), "width 5, but the model's latent dim is 8"),
    (np.where(np.arange(48).reshape(6, 8) == 42, np.inf, 0.0).astype(np.float32), "row 5 contains NaN or Inf"),
])
def test_bad_latents_are_refused_before_anything_is_written(tmp_path, tiny_bundle, latents, message):
    np.save(tmp_path / "in.npy", latents)
    with pytest.raises(ValueError, match=message):
        run_batch_job(BatchJob(out=tmp_path / "out", edits={"y": 1.0}, latents_path=str(tmp_path / "in.npy"),
                               model=str(tiny_bundle), shard_size=2, progress=False))
    assert not (tmp_path / "out").exists()


def test_ray_options_need_ray_and_say_how_to_get_it(tiny_bundle, tmp_path, capsys, monkeypatch):
    from curvedit.cli import main

    base = ["batch", "--model", str(tiny_bundle), "--seeds", "0:4", "--edit", "x=1", "--out", str(tmp_path / "o")]
    assert main([*base, "--ray-workers", "2"]) == 2
    assert "--ray-workers is an option of --ray" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main([*base, "--ray"]) == 2
    assert "pip install 'curvedit[ray]'" in capsys.readouterr().err and not (tmp_path / "o").exists()
