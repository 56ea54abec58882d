"""`curvedit batch --ray` on a real local Ray (2 CPUs): the same bytes as the in-process job, resumable after the
driver is killed, and bad input refused before Ray or the output directory is touched."""

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_batch_job import done_shards

import curvedit
from curvedit.service.batch_job import BatchJob, run_batch_job
from curvedit.service.ray_job import RayOptions, run_ray_job

ray = pytest.importorskip("ray", reason="Ray is optional: pip install 'curvedit[ray]'")

EDITS = {"x": 1.0, "scale": -0.5}


@pytest.fixture(scope="module")
def cluster():
    """A local Ray with 2 CPUs for the module's jobs; its GCS address, for drivers in other processes."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tiny_bundle):
    return curvedit.load(tiny_bundle)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_bytes(a: Path, b: Path) -> None:
    fa, fb = files(a), files(b)
    assert sorted(fa) == sorted(fb)
    different = [name for name in fa if fa[name] != fb[name]]
    assert not different, f"{len(different)} files differ, e.g. {different[:3]}"


def write_input(kind: str, model, tmp_path: Path) -> dict:
    """BatchJob input arguments for ``kind``: seeds, or the same latents as a .npy or a Parquet file."""
    if kind == "seeds":
        return {"seeds": (0, 700)}
    z = model.sample(700, seed=3)
    if kind == "npy":
        np.save(tmp_path / "in.npy", z)
        return {"latents_path": str(tmp_path / "in.npy")}
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    column = pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1)), z.shape[1])
    pq.write_table(pa.table({"latents": column}), tmp_path / "in.parquet", row_group_size=300)
    return {"latents_path": str(tmp_path / "in.parquet")}


@pytest.mark.parametrize("kind", ["seeds", "npy", "parquet"])
def test_ray_job_writes_the_same_bytes_as_the_in_process_job(kind, cluster, tiny_bundle, model, tmp_path):
    args = {"edits": EDITS, "model": str(tiny_bundle), "shard_size": 128, "chunk_size": 50, "png": kind == "seeds",
            "progress": False, **write_input(kind, model, tmp_path)}
    local = run_batch_job(BatchJob(out=tmp_path / "local", **args))
    on_ray = run_ray_job(BatchJob(out=tmp_path / "ray", **args))
    assert on_ray["workers"] == 2 and on_ray["computed"] == local["computed"] == 700
    assert_same_bytes(tmp_path / "local", tmp_path / "ray")
    again = run_ray_job(BatchJob(out=tmp_path / "ray", **args))
    assert again["computed"] == 0 and again["skipped_shards"] == 6


@pytest.mark.slow
def test_ray_job_resumes_after_its_driver_is_killed(cluster, tiny_bundle, tmp_path):
    n, shard = 3000, 200
    args = {"edits": EDITS, "seeds": (0, n), "model": str(tiny_bundle), "shard_size": shard, "chunk_size": 64,
            "progress": False}
    out = tmp_path / "ray"
    argv = [sys.executable, "-m", "curvedit.cli", "batch", "--ray", "--ray-address", cluster, "--seeds", f"0:{n}",
            "--edit", "x=1.0", "--edit", "scale=-0.5", "--model", str(tiny_bundle), "--out", str(out),
            "--shard-size", str(shard), "--chunk-size", "64", "--quiet", "--pace-s", "0.3"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while done_shards(out) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the Ray job made no progress"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    before = done_shards(out)
    assert 3 <= before < n // shard, "the job was not killed midway"
    summary = run_ray_job(BatchJob(out=out, **args))
    assert summary["skipped_shards"] >= before and summary["computed"] == n - summary["skipped_shards"] * shard
    run_batch_job(BatchJob(out=tmp_path / "local", **args))
    assert_same_bytes(tmp_path / "local", out)


def bad_npy(tmp_path: Path, width: int = 8, nan: bool = False) -> str:
    z = np.zeros((10, width), dtype=np.float32)
    if nan:
        z[7, 2] = np.nan
    np.save(tmp_path / "bad.npy", z)
    return str(tmp_path / "bad.npy")


@pytest.mark.parametrize(("case", "message"), [
    ("direction", "unknown direction 'sclae'"),
    ("width", "width 5, but the model's latent dim is 8"),
    ("nan", "row 7 contains NaN"),
    ("server", "give one of them"),
    ("engine", "unknown engine 'tpu'"),
    ("workers", "do not fit this Ray cluster"),
])
def test_bad_input_is_refused_before_anything_is_written(case, message, cluster, tiny_bundle, tmp_path):
    args = {"out": tmp_path / "out", "edits": {"x": 1.0}, "seeds": (0, 10), "model": str(tiny_bundle),
            "progress": False}
    options = RayOptions(workers=3 if case == "workers" else None)
    if case == "direction":
        args["edits"] = {"sclae": 1.0}
    elif case in ("width", "nan"):
        args |= {"seeds": None, "latents_path": bad_npy(tmp_path, width=5 if case == "width" else 8,
                                                        nan=case == "nan")}
    elif case == "server":
        args["server"] = "127.0.0.1:1"
    elif case == "engine":
        args["engine"] = "tpu"
    with pytest.raises(ValueError, match=message):
        run_ray_job(BatchJob(**args), options)
    assert not (tmp_path / "out").exists()


def test_an_unreachable_address_is_named_at_once(tiny_bundle, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "curvedit.cli", "batch", "--ray", "--ray-address",
                             f"127.0.0.1:{port}", "--seeds", "0:4", "--edit", "x=1", "--model", str(tiny_bundle),
                             "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and f"no Ray cluster at 127.0.0.1:{port}" in result.stderr
    assert not out.exists()


def test_the_command_line_with_relative_paths_matches_in_process(cluster, tiny_bundle, model, tmp_path):
    """Ray workers run in other directories: relative input and --out still land where the user meant."""
    np.save(tmp_path / "in.npy", model.sample(300, seed=5))
    base = [sys.executable, "-m", "curvedit.cli", "batch", "in.npy", "--edit", "y=-1", "--model", str(tiny_bundle),
            "--shard-size", "64", "--quiet"]
    for extra in (["--out", "local"], ["--out", "ray", "--ray", "--ray-address", cluster]):
        result = subprocess.run(base + extra, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    assert "on 2 Ray workers" in result.stdout
    assert_same_bytes(tmp_path / "local", tmp_path / "ray")
