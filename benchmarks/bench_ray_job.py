"""The batch job on Ray against the in-process job, side by side on this machine (a local Ray).

    python benchmarks/bench_ray_job.py --items 1000000 --png-items 10000 --workers 1 2 --repeats 3 \
        --csv out/ray_job.csv
    curvedit bench results record ray_job out/ray_job.csv --machine NAME

For each workload (latents only; latents + one PNG per item) and each repeat it runs the in-process job, then
the Ray job with each worker count on a local Ray of ``--num-cpus`` CPUs: interleaved, because the machine is
shared and its load moves; the table gives medians and each run's 1-minute load average. ``job items/s`` is
what the job reports (Ray: from the connected driver, actor start-up and model loads included); ``wall items/s``
counts from the command's start (model load; for Ray, starting the local Ray too). Every run writes a fresh
directory, and every Ray run's files are compared byte for byte with the first in-process run's.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from curvedit.models.files import write_csv
from curvedit.service.batch_job import BatchJob, run_batch_job
from curvedit.service.ray_job import RayOptions, run_ray_job


def same_bytes(a: Path, b: Path) -> bool:
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    return names == sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=400_000, help="seeds in the latents-only workload")
    p.add_argument("--png-items", type=int, default=20_000, help="seeds in the latents + PNG workload (0 = skip)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts to run")
    p.add_argument("--shard-size", type=int, default=1024, help="items per shard (the CLI's default)")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    p.add_argument("--repeats", type=int, default=2, help="runs of each configuration")
    p.add_argument("--csv", default=None, help="also write the runs here")
    args = p.parse_args(argv)
    rows = []
    root = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        for png, items in ((False, args.items), (True, args.png_items)):
            if items:
                rows += bench_workload(root, png, items, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table(rows)
    if args.csv:
        write_csv(args.csv, rows)
    return 0


def bench_workload(root: Path, png: bool, items: int, args) -> list[dict]:
    job = {"edits": {"x": 1.0, "scale": -0.5}, "seeds": (0, items), "png": png, "progress": False,
           "shard_size": args.shard_size}
    workload = f"{items} seeds{' + PNG' if png else ''}"
    rows, reference = [], root / f"reference-{png}"

    def run(runner: str, workers: int, repeat: int, fn) -> None:
        out = root / "run" if reference.exists() else reference
        t = time.perf_counter()
        summary = fn(BatchJob(out=out, **job))
        wall = time.perf_counter() - t
        rows.append({"workload": workload, "runner": runner, "workers": workers, "repeat": repeat,
                     "job_items_per_s": round(summary["items_per_s"], 1),
                     "wall_items_per_s": round(items / wall, 1), "identical": same_bytes(reference, out),
                     "load1": round(os.getloadavg()[0], 2)})
        print(rows[-1], file=sys.stderr, flush=True)
        if out != reference:
            shutil.rmtree(out)

    for r in range(args.repeats):  # interleaved: the machine is shared, and its load moves from minute to minute
        run("in-process", 1, r, run_batch_job)
        for w in args.workers:
            run("ray", w, r, on_local_ray(w, args.num_cpus))
    return rows


def on_local_ray(workers: int, num_cpus: int):
    """A runner: start a local Ray, run the job on ``workers`` actors, stop Ray (all inside the wall time)."""
    import ray

    def run(job: BatchJob) -> dict:
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
        try:
            return run_ray_job(job, RayOptions(workers=workers))
        finally:
            ray.shutdown()
    return run


def table(rows) -> None:
    print(f"{'workload':<22} {'runner':<20} {'workers':>7} {'job items/s':>12} {'wall items/s':>13} "
          f"{'vs in-process':>13} {'identical':>9} {'load1':>6}")
    for workload in dict.fromkeys(r["workload"] for r in rows):
        mine = [r for r in rows if r["workload"] == workload]
        base = statistics.median(r["job_items_per_s"] for r in mine if r["runner"] == "in-process")
        for key in dict.fromkeys((r["runner"], r["workers"]) for r in mine):
            runs = [r for r in mine if (r["runner"], r["workers"]) == key]
            job = statistics.median(r["job_items_per_s"] for r in runs)
            wall = statistics.median(r["wall_items_per_s"] for r in runs)
            loads = "-".join(f"{r['load1']:.1f}" for r in runs)
            print(f"{workload:<22} {key[0]:<20} {key[1]:>7} {job:>12,.0f} {wall:>13,.0f} {job / base:>12.0%} "
                  f"{all(r['identical'] for r in runs)!s:>9} {loads:>6}")


if __name__ == "__main__":
    sys.exit(main())
