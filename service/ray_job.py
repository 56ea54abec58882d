"""``curvedit batch --ray``: the batch job as a Ray Data pipeline (``pip install 'curvedit[ray]'``).

The driver (this process) checks everything first — the model, the edits, the whole input — then connects to Ray
(starting a local one unless given an address), opens the output directory (``shards.JobDir``: the same job.json,
manifest and resume rules as the in-process job) and streams the pending shard numbers through a pool of actors.
Each actor loads the model once, computes whole shards with ``shards.edit_shard`` (the in-process job's own
chunking, so the bytes match) and writes them with ``shards.write_shard``; the driver records a shard in the
manifest when its row comes back, and moves the progress bar. Actors take a GPU each where the cluster has GPUs.

On a cluster, the input, the model (a shipped name, or a bundle path) and ``--out`` must be at the same paths on
every node (a shared filesystem), and curvedit installed there; on one machine nothing needs arranging.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from curvedit.engines import ENGINE_NAMES
from curvedit.service.batch_input import open_input
from curvedit.service.batch_job import BatchJob
from curvedit.service.shards import JobDir, edit_shard, write_shard

CONNECT_TIMEOUT_S = 5.0  # ray.init retries an unreachable address for minutes; a TCP probe answers at once


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the job runs. ``workers=None``: one per GPU where the cluster has GPUs, else one per
    ``cpus_per_worker`` CPUs. ``gpus_per_worker=None``: 1 where the cluster has GPUs, else 0. ``num_cpus``
    limits a local Ray this job starts (``None`` = every CPU here); it is ignored with an ``address``."""

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None
    num_cpus: int | None = None

    def __post_init__(self):
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--ray-workers must be at least 1, got {self.workers}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"--ray-cpus-per-worker must be positive, got {self.cpus_per_worker}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise ValueError(f"--ray-gpus-per-worker must be 0 or more, got {self.gpus_per_worker}")


def import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise ValueError("--ray needs Ray: pip install 'curvedit[ray]' (or drop --ray to run in-process)") \
            from None
    return ray


class _ShardWorker:
    """A Ray Data actor: loads the model once, then computes and writes whole shards (one per call)."""

    def __init__(self, job: BatchJob, source, rows: dict[int, tuple[int, int]], threads: int):
        import torch

        import curvedit
        from curvedit.engines import resolve_engine

        on_cpu = resolve_engine(job.engine) == "onnxruntime" and not torch.cuda.is_available()
        options = {"threads": threads} if on_cpu else None  # the actor's own CPUs, not every core of the node
        self.model = curvedit.load(job.model, engine=job.engine, engine_options=options)
        self.job, self.source, self.rows = job, source, rows

    def __call__(self, batch: dict) -> dict:
        items = []
        for i in batch["shard"].tolist():
            lo, hi = self.rows[i]
            write_shard(self.job.out, i, lo, *edit_shard(self.model, self.job, self.source, lo, hi))
            items.append(hi - lo)
            if self.job.pace_s:
                time.sleep(self.job.pace_s)
        return {"shard": batch["shard"], "items": items}


def _for_workers(job: BatchJob) -> BatchJob:
    """Workers do not share the driver's working directory: the paths they get are absolute (``LatentFile``
    resolves the input's). ``job.json`` records the arguments as given, as the in-process job does."""
    model = job.model
    if model is not None and Path(model).is_dir():
        model = str(Path(model).resolve())
    return dataclasses.replace(job, out=Path(job.out).resolve(), model=model)


def _check(job: BatchJob):
    """Everything that can be wrong with the job's arguments, before Ray starts: ``(source, identity)``."""
    import curvedit

    if job.server is not None:
        raise ValueError("--ray computes in Ray workers, --server on a server: give one of them")
    if job.engine not in ENGINE_NAMES:
        raise ValueError(f"unknown engine {job.engine!r}; choose one of {list(ENGINE_NAMES)}")
    source = open_input(job)
    model = curvedit.load(job.model, engine="torch")  # names, directions and width; the workers pick the engine
    model.amounts(job.edits, 1, job.editor)
    source.check(model.latent_dim)
    return source, {"model": model.name, "version": model.version}


def _probe(address: str) -> None:
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        raise ValueError(f"no Ray cluster at {address} ({exc}); pass the head's GCS address HOST:PORT (what "
                         "`ray start --head` prints), or drop --ray-address to start a local Ray") from None


def _connect(ray, options: RayOptions) -> bool:
    """Connect (or start a local Ray); True when this call started it, so the job shuts it down after."""
    if ray.is_initialized():
        return False
    if options.address is not None:
        _probe(options.address)
        ray.init(address=options.address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=options.num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    return True


def _plan(ray, options: RayOptions) -> tuple[int, float, float]:
    """``(workers, cpus each, gpus each)`` for this cluster, refused if the cluster cannot hold them."""
    have = ray.cluster_resources()
    cpus, gpus_here = options.cpus_per_worker, have.get("GPU", 0.0)
    gpus = options.gpus_per_worker if options.gpus_per_worker is not None else (1.0 if gpus_here >= 1 else 0.0)
    if options.workers is not None:
        workers = options.workers
    else:
        workers = int(gpus_here // gpus) if gpus else int(have.get("CPU", 0) // cpus)
    if workers * cpus > have.get("CPU", 0) or workers * gpus > gpus_here or workers < 1:
        raise ValueError(f"{workers} worker(s) of {cpus:g} CPU and {gpus:g} GPU do not fit this Ray cluster "
                         f"({have.get('CPU', 0):g} CPUs, {gpus_here:g} GPUs); ask for fewer --ray-workers")
    return workers, cpus, gpus


def run_ray_job(job: BatchJob, options: RayOptions | None = None) -> dict:
    """Run (or resume) ``job`` on Ray; the same summary as ``run_batch_job``, plus ``workers``."""
    options = options or RayOptions()
    ray = import_ray()
    source, identity = _check(job)
    started_here = _connect(ray, options)
    try:
        workers, cpus, gpus = _plan(ray, options)
        jobdir = JobDir.open(job, identity, source)
        workers = max(1, min(workers, len(jobdir.pending)))
        start = time.perf_counter()
        items_before = jobdir.items(jobdir.done)
        with tqdm(total=jobdir.n, initial=items_before, unit="item", disable=not job.progress,
                  desc="curvedit batch (ray)") as bar:
            if jobdir.pending:
                for i, items in _stream(ray, _for_workers(job), source, jobdir, workers, cpus, gpus):
                    if i not in jobdir.done:  # a retried task can bring a shard back twice
                        jobdir.record(i)
                        bar.update(items)
        return {**jobdir.summary(jobdir.n - items_before, time.perf_counter() - start), "workers": workers}
    finally:
        if started_here:
            ray.shutdown()


def _stream(ray, job, source, jobdir: JobDir, workers: int, cpus: float, gpus: float):
    """``(shard, items)`` as each pending shard is written, in the order they finish (streaming execution)."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the job's own bar counts items; Ray's would count blocks beside it
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # not its execution plan at INFO
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # nor "progress bars disabled"
    rows = {i: jobdir.rows(i) for i in jobdir.pending}
    shards = ray.data.from_items([{"shard": i} for i in jobdir.pending], override_num_blocks=len(jobdir.pending))
    written = shards.map_batches(
        _ShardWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus,
        num_gpus=gpus, fn_constructor_kwargs={"job": job, "source": source, "rows": rows,
                                              "threads": max(1, int(cpus))})
    for row in written.iter_rows():
        yield int(row["shard"]), int(row["items"])
