"""``curvedit batch``: edit many latents into sharded ``.npy`` files, in-process or through a server; resumable.

Output directory::

    job.json                 what the job is (its fingerprint, size, shard layout)
    manifest.json            the shards finished so far (rewritten atomically after each shard)
    shards/edited-00000.npy  float32 [shard_size, d]: rows [i*S, (i+1)*S) of the input, edited
    images/00000012.png      optional, one PNG per item (global row index)

Every file is written with ``atomic_write``, and a shard enters the manifest only after its file (and PNGs) are
in place; so a job killed at any moment and rerun with the same arguments skips finished shards, redoes the
rest, and ends with every output exactly once. A rerun with different arguments into the same directory is
refused (the fingerprint differs).
"""

from __future__ import annotations

import hashlib
import json
import queue
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from tqdm import tqdm

from curvedit.models.files import read_latents, save_npy, save_png, sha256_file, write_json
from curvedit.service.channels import Security

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
            self.client = None
            self.model.amounts(job.edits, 1, job.editor)  # an unknown editor or direction fails before job.json
        else:
            from curvedit.service.client import Client

            self.client = Client(job.server, security=job.security)
            info = self.client.get_model(job.model or "")
            self.identity = {"model": info.name, "version": info.version}
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


def _fingerprint(job: BatchJob, identity: dict, n: int) -> str:
    source = ({"seeds": list(job.seeds)} if job.seeds is not None
              else {"sha256": sha256_file(job.latents_path)})
    spec = {"input": source, "n": n, "edits": sorted(job.edits.items()), "editor": job.editor,
            "shard_size": job.shard_size, "png": job.png, **identity}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _shard_path(out: Path, i: int) -> Path:
    return out / "shards" / f"edited-{i:05d}.npy"


def run_batch_job(job: BatchJob) -> dict:
    """Run (or resume) ``job``; returns a summary (items, shards, seconds, items/s)."""
    out = Path(job.out)
    latents = read_latents(job.latents_path) if job.latents_path is not None else None
    n = latents.shape[0] if latents is not None else job.seeds[1] - job.seeds[0]
    backend = _Backend(job)
    fingerprint = _fingerprint(job, backend.identity, n)
    shards = -(-n // job.shard_size)
    job_file, manifest_file = out / "job.json", out / "manifest.json"
    if job_file.exists():
        recorded = json.loads(job_file.read_text())
        if recorded.get("fingerprint") != fingerprint:
            raise ValueError(f"{out} holds a different job (fingerprint {recorded.get('fingerprint')}, "
                             f"arguments {recorded.get('spec')}); rerun with the same arguments to resume it, or "
                             "choose a new --out")
    else:
        spec = {"seeds": job.seeds, "latents": job.latents_path, "edits": job.edits, "editor": job.editor,
                "shard_size": job.shard_size, "png": job.png, **backend.identity}
        write_json(job_file, {"fingerprint": fingerprint, "n": n, "shards": shards, "spec": spec})
    done = set(json.loads(manifest_file.read_text())["done"]) if manifest_file.exists() else set()
    for stale in [*out.glob("shards/.*.tmp"), *out.glob("images/.*.tmp")]:
        stale.unlink(missing_ok=True)  # half-written files of a killed run (atomic_write's temporaries)
    pending = [i for i in range(shards) if i not in done]

    def rows(i: int) -> tuple[int, int]:
        return i * job.shard_size, min(n, (i + 1) * job.shard_size)

    def finish(i: int, edited: np.ndarray, images: np.ndarray | None) -> None:
        lo, _ = rows(i)
        if images is not None:
            from PIL import Image

            for j, image in enumerate(images):
                save_png(Image.fromarray(image), out / "images" / f"{lo + j:08d}.png")
        save_npy(_shard_path(out, i), edited)
        done.add(i)
        write_json(manifest_file, {"fingerprint": fingerprint, "done": sorted(done)})
        bar.update(edited.shape[0])
        if job.pace_s:
            time.sleep(job.pace_s)

    start = time.perf_counter()
    items_before = sum(rows(i)[1] - rows(i)[0] for i in done)
    with tqdm(total=n, initial=items_before, unit="item", disable=not job.progress, desc="curvedit batch") as bar:
        if backend.client is None:
            _run_local(job, backend.model, latents, pending, rows, finish)
        else:
            try:
                _run_remote(job, backend.client, latents, pending, rows, finish)
            finally:
                backend.client.close()
    seconds = time.perf_counter() - start
    computed = n - items_before
    return {"items": n, "computed": computed, "shards": shards, "skipped_shards": shards - len(pending),
            "seconds": seconds, "items_per_s": computed / seconds if seconds > 0 else 0.0, "out": str(out)}


def _run_local(job, model, latents, pending, rows, finish) -> None:
    for i in pending:
        lo, hi = rows(i)
        parts, images = [], []
        for a in range(lo, hi, job.chunk_size):
            b = min(hi, a + job.chunk_size)
            z = (np.asarray(latents[a:b], dtype=np.float32) if latents is not None
                 else model.sample_seeds(range(job.seeds[0] + a, job.seeds[0] + b)))
            parts.append(model.edit(z, job.edits, editor=job.editor or None))
            if job.png:
                images.append(model.generate(parts[-1]))
        finish(i, np.concatenate(parts), np.concatenate(images) if job.png else None)


def _run_remote(job, client, latents, pending, rows, finish) -> None:
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
        kwargs = ({"latents": np.asarray(latents[a:b], dtype=np.float32)} if latents is not None
                  else {"seeds": range(job.seeds[0] + a, job.seeds[0] + b)})
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
