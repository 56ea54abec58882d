"""A batch job's output directory and its shards, shared by every way of running a job (in-process, a server, Ray).

Output directory::

    job.json                 what the job is (its fingerprint, size, shard layout)
    manifest.json            the shards finished so far (rewritten atomically after each shard)
    shards/edited-00000.npy  float32 [shard_size, d]: rows [i*S, (i+1)*S) of the input, edited
    images/00000012.png      optional, one PNG per item (global row index)

Every file is written with ``atomic_write``, and a shard enters the manifest (``JobDir.record``, by the one process
that owns the job) only after its file and PNGs are in place (``write_shard``, by whoever computed it); so a job
killed at any moment and rerun with the same arguments skips finished shards, redoes the rest, and ends with every
output exactly once. A shard computed twice (a rerun, a retried Ray task) is written twice with the same bytes.
A rerun with different arguments into the same directory is refused (the fingerprint differs).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from curvedit.models.files import save_npy, save_png, write_json


def shard_path(out: Path, i: int) -> Path:
    return Path(out) / "shards" / f"edited-{i:05d}.npy"


def edit_shard(model, job, source, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows ``lo:hi`` edited on ``model`` in chunks of ``job.chunk_size``: ``(latents [m, d], images or None)``.

    The chunks are the same wherever this runs, so the engine sees the same batch shapes and the bytes match.
    """
    parts, images = [], []
    for a in range(lo, hi, job.chunk_size):
        b = min(hi, a + job.chunk_size)
        parts.append(model.edit(source.latents(model, a, b), job.edits, editor=job.editor or None))
        if job.png:
            images.append(model.generate(parts[-1]))
    return np.concatenate(parts), (np.concatenate(images) if job.png else None)


def write_shard(out: Path, i: int, lo: int, edited: np.ndarray, images: np.ndarray | None) -> None:
    """Shard ``i`` (first row ``lo``): its PNGs, then its ``.npy`` (each atomically)."""
    if images is not None:
        from PIL import Image

        for j, image in enumerate(images):
            save_png(Image.fromarray(image), Path(out) / "images" / f"{lo + j:08d}.png")
    save_npy(shard_path(out, i), edited)


def fingerprint(job, identity: dict, source) -> str:
    spec = {"input": source.identity(), "n": source.n, "edits": sorted(job.edits.items()), "editor": job.editor,
            "shard_size": job.shard_size, "png": job.png, **identity}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class JobDir:
    """The job's directory: ``open`` creates or resumes it; ``record`` marks a written shard done."""

    def __init__(self, out: Path, fingerprint: str, n: int, shard_size: int, done: set[int]):
        self.out, self.fingerprint, self.n, self.shard_size = Path(out), fingerprint, n, shard_size
        self.shards = -(-n // shard_size)
        self.done = done
        self.pending = [i for i in range(self.shards) if i not in done]

    @classmethod
    def open(cls, job, identity: dict, source) -> JobDir:
        """Write ``job.json`` (or check it is this job's), read the manifest, remove half-written temporaries."""
        out = Path(job.out)
        digest = fingerprint(job, identity, source)
        job_file, manifest_file = out / "job.json", out / "manifest.json"
        if job_file.exists():
            recorded = json.loads(job_file.read_text())
            if recorded.get("fingerprint") != digest:
                raise ValueError(f"{out} holds a different job (fingerprint {recorded.get('fingerprint')}, "
                                 f"arguments {recorded.get('spec')}); rerun with the same arguments to resume it, "
                                 "or choose a new --out")
        else:
            spec = {"seeds": job.seeds, "latents": job.latents_path, "edits": job.edits, "editor": job.editor,
                    "shard_size": job.shard_size, "png": job.png, **identity}
            write_json(job_file, {"fingerprint": digest, "n": source.n, "shards": -(-source.n // job.shard_size),
                                  "spec": spec})
        done = set(json.loads(manifest_file.read_text())["done"]) if manifest_file.exists() else set()
        for stale in [*out.glob("shards/.*.tmp"), *out.glob("images/.*.tmp")]:
            stale.unlink(missing_ok=True)  # half-written files of a killed run (atomic_write's temporaries)
        return cls(out, digest, source.n, job.shard_size, done)

    def rows(self, i: int) -> tuple[int, int]:
        return i * self.shard_size, min(self.n, (i + 1) * self.shard_size)

    def items(self, shards) -> int:
        return sum(hi - lo for lo, hi in map(self.rows, shards))

    def record(self, i: int) -> None:
        """Shard ``i``'s files are in place: add it to the manifest (atomically)."""
        self.done.add(i)
        write_json(self.out / "manifest.json", {"fingerprint": self.fingerprint, "done": sorted(self.done)})

    def summary(self, computed: int, seconds: float) -> dict:
        return {"items": self.n, "computed": computed, "shards": self.shards,
                "skipped_shards": self.shards - len(self.pending), "seconds": seconds,
                "items_per_s": computed / seconds if seconds > 0 else 0.0, "out": str(self.out)}
