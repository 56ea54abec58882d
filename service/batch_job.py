"""``curvedit batch``: edit many latents into sharded ``.npy`` files, in-process or through a server; resumable.

The output directory, its resume rules and the shard writing live in ``shards``; the input in ``batch_input``;
``ray_job`` runs the same job on Ray. This module holds the job's arguments and the in-process and server runs.
"""

from __future__ import annotations

import queue
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from tqdm import tqdm

from curvedit.service.batch_input import open_input
from curvedit.service.channels import Security
from curvedit.service.shards import JobDir, edit_shard, write_shard

RETRYABLE = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)


@dataclass(frozen=True)
class BatchJob:
    """One job. Exactly one of ``latents_path`` (.npy / .npz of float32 [n, d]) or ``seeds`` (start, stop)."""

    out: Path
    edits: dict[str, float]
    latents_path: str | None = None
    seeds: tuple[int, int] | None = None
    editor: str = ""
    model: str | None = None  # bundle path in-process; model name with a server
    engine: str = "auto"
    server: str | None = None  # host:port, or None = in-process
    shard_size: int = 1024
    chunk_size: int = 256  # items per request message
    max_in_flight: int = 4  # request messages in flight on the stream
    png: bool = False
    pace_s: float = 0.0  # sleep after each shard (demos and kill tests only)
    progress: bool = True
    security: Security | None = None  # TLS / token to reach the server (with ``server``)
    stats: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if (self.latents_path is None) == (self.seeds is None):
            raise ValueError("give exactly one input: a .npy/.npz file of latents, or --seeds START:STOP")
        if self.seeds is not None and not 0 <= self.seeds[0] < self.seeds[1]:
            raise ValueError(f"--seeds START:STOP needs 0 <= START < STOP, got {self.seeds[0]}:{self.seeds[1]}")
        for name in ("shard_size", "chunk_size", "max_in_flight"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.edits:
            raise ValueError("give at least one --edit NAME=AMOUNT")


class _Backend:
    """What computes chunks: a local ``curvedit.Model`` or a server (streaming)."""

    def __init__(self, job: BatchJob):
        self.job = job
        if job.server is None:
            import curvedit

            self.model = curvedit.load(job.model, engine=job.engine)
            self.identity = {"model": self.model.name, "version": self.model.version}
            self.latent_dim = self.model.latent_dim
            self.client = None
            self.model.amounts(job.edits, 1, job.editor)  # an unknown editor or direction fails before job.json
        else:
            from curvedit.service.client import Client

            self.client = Client(job.server, security=job.security)
            info = self.client.get_model(job.model or "")
            self.identity = {"model": info.name, "version": info.version}
            self.latent_dim = info.latent_dim
            self.model = None
            _check_edits_against(info, job)


def _check_edits_against(info, job: BatchJob) -> None:
    """Refuse an unknown editor or direction before anything is written (``info`` is the server's ModelInfo)."""
    editors = {e.name: [d.name for d in e.directions] for e in info.editors}
    name = job.editor or info.default_editor
    if name not in editors:
        raise ValueError(f"unknown editor {name!r}; {info.name} serves {sorted(editors)}")
    unknown = [d for d in job.edits if d not in editors[name]]
    if unknown:
        raise ValueError(f"unknown direction {unknown[0]!r}; known directions: {editors[name]}")


def run_batch_job(job: BatchJob) -> dict:
    """Run (or resume) ``job``; returns a summary (items, shards, seconds, items/s)."""
    source = open_input(job)
    backend = _Backend(job)
    try:
        source.check(backend.latent_dim)  # the whole input, before anything is written
        return _run(job, backend, source, JobDir.open(job, backend.identity, source))
    finally:
        if backend.client is not None:
            backend.client.close()


def _run(job: BatchJob, backend: _Backend, source, jobdir: JobDir) -> dict:
    def finish(i: int, edited: np.ndarray, images: np.ndarray | None) -> None:
        write_shard(jobdir.out, i, jobdir.rows(i)[0], edited, images)
        jobdir.record(i)
        bar.update(edited.shape[0])
        if job.pace_s:
            time.sleep(job.pace_s)

    start = time.perf_counter()
    items_before = jobdir.items(jobdir.done)
    with tqdm(total=jobdir.n, initial=items_before, unit="item", disable=not job.progress,
              desc="curvedit batch") as bar:
        if backend.client is None:
            for i in jobdir.pending:
                finish(i, *edit_shard(backend.model, job, source, *jobdir.rows(i)))
        else:
            _run_remote(job, backend.client, source, jobdir.pending, jobdir.rows, finish)
    return jobdir.summary(jobdir.n - items_before, time.perf_counter() - start)


def _run_remote(job, client, source, pending, rows, finish) -> None:
    """One EditStream; at most ``max_in_flight`` chunks outstanding; retry chunks the server pushed back."""
    from curvedit.service.client import StreamError, edit_request

    todo: deque[tuple[int, int, int]] = deque()  # (shard, lo, hi)
    results: dict[int, dict[int, tuple]] = {i: {} for i in pending}
    expected = {}
    for i in pending:
        lo, hi = rows(i)
        chunks = [(i, a, min(hi, a + job.chunk_size)) for a in range(lo, hi, job.chunk_size)]
        expected[i] = len(chunks)
        todo.extend(chunks)
    if not todo:
        return
    outbox: queue.Queue = queue.Queue()
    in_flight = 0

    def request(i: int, a: int, b: int):
        seeds = source.seeds(a, b)
        kwargs = {"seeds": seeds} if seeds is not None else {"latents": source.latents(None, a, b)}
        return edit_request(**kwargs, edits=job.edits, model=job.model or "", editor=job.editor,
                            images="raw" if job.png else "none", id=f"{i}:{a}:{b}")

    def pump() -> None:
        nonlocal in_flight
        while todo and in_flight < job.max_in_flight:
            outbox.put(request(*todo.popleft()))
            in_flight += 1

    def messages():
        while (message := outbox.get()) is not None:
            yield message

    pump()
    for item in client.edit_stream(messages()):
        in_flight -= 1
        i, a, b = (int(x) for x in item.id.split(":"))
        if isinstance(item, StreamError):
            if item.code not in RETRYABLE:
                outbox.put(None)
                raise ValueError(f"server refused rows {a}:{b}: {item.code.name}: {item.message}")
            time.sleep(max(item.retry_pushback_ms, 10) / 1000)
            todo.appendleft((i, a, b))
        else:
            results[i][a] = (item.latents, item.images)
            if len(results[i]) == expected[i]:
                chunks = results.pop(i)
                parts = [chunks[k] for k in sorted(chunks)]
                finish(i, np.concatenate([p[0] for p in parts]),
                       np.concatenate([p[1] for p in parts]) if job.png else None)
        pump()
        if in_flight == 0 and not todo:
            outbox.put(None)
