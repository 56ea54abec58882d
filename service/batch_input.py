"""What a batch job reads: seeds, or latents float32 ``[n, d]`` from a ``.npy``, ``.npz`` or Parquet file.

Every way of running a job (in-process, through a server, on Ray) reads through these classes, so the rows a shard
gets do not depend on how it is computed. ``check`` reads a file once, whole, before any work starts: a wrong width
or a NaN fails with the row it is on instead of halfway through the job. A ``LatentFile`` pickles as its path, and
each Ray worker opens its own view (``.npy`` memory-mapped, Parquet row groups on demand).

Parquet: one column named ``latents`` (or the file's only column), each row a list of ``d`` floats (``list``,
``large_list`` or ``fixed_size_list`` of float32/float64); reading it needs ``pyarrow`` (``curvedit[ray]`` has it).
"""

from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np

from curvedit.models.files import read_latents, sha256_file

CHECK_ROWS = 65536  # rows per read while checking a file (bounded memory for any n)


class SeedInput:
    """Latents drawn from seeds ``start .. stop-1`` (row i from seed ``start + i``), by whoever computes them."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop
        self.n = stop - start

    def identity(self) -> dict:
        return {"seeds": [self.start, self.stop]}

    def check(self, latent_dim: int) -> None:
        """Nothing to read: seeds were checked when the job was made."""

    def seeds(self, a: int, b: int) -> range:
        return range(self.start + a, self.start + b)

    def latents(self, model, a: int, b: int) -> np.ndarray:
        return model.sample_seeds(self.seeds(a, b))


class LatentFile:
    """Latents float32 ``[n, d]`` in a ``.npy`` / ``.npz`` / ``.parquet`` file. Raises ``ValueError`` on a file
    that does not exist or does not hold ``[n, d]`` with ``n >= 1``."""

    def __init__(self, path: str | Path):
        self.path = str(Path(path).resolve())  # a Ray worker may run in another directory
        self._rows = None
        self.n, self.width = self._open().shape

    def __getstate__(self) -> dict:
        return {"path": self.path, "n": self.n, "width": self.width, "_rows": None}

    def _open(self):
        if self._rows is None:
            is_parquet = Path(self.path).suffix in (".parquet", ".pq")
            self._rows = _ParquetRows(self.path) if is_parquet else read_latents(self.path)
        return self._rows

    def identity(self) -> dict:
        return {"sha256": sha256_file(self.path)}

    def seeds(self, a: int, b: int) -> None:
        return None

    def latents(self, model, a: int, b: int) -> np.ndarray:
        return np.asarray(self._open()[a:b], dtype=np.float32)

    def check(self, latent_dim: int) -> None:
        """Width ``latent_dim`` and every value finite, or ``ValueError`` naming the first bad row."""
        if self.width != latent_dim:
            raise ValueError(f"{self.path} holds latents of width {self.width}, but the model's latent dim is "
                             f"{latent_dim}: pass float32 [n, {latent_dim}]")
        for a in range(0, self.n, CHECK_ROWS):
            block = self.latents(None, a, min(self.n, a + CHECK_ROWS))
            bad = ~np.isfinite(block).all(axis=1)
            if bad.any():
                row = a + int(np.argmax(bad))
                raise ValueError(f"{self.path} row {row} contains NaN or Inf; pass finite values")


class _ParquetRows:
    """``rows[a:b]`` → float32 ``[b - a, d]`` from a Parquet file, reading only the row groups that hold them."""

    def __init__(self, path: str):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError("reading Parquet needs pyarrow: pip install pyarrow (or 'curvedit[ray]')") from None
        if not Path(path).is_file():
            raise ValueError(f"input {path} does not exist; pass a .npy, .npz or .parquet of float32 [n, d]")
        self.file = pq.ParquetFile(path)
        schema = self.file.schema_arrow
        names = schema.names
        self.column = "latents" if "latents" in names else (names[0] if len(names) == 1 else None)
        if self.column is None:
            raise ValueError(f"{path} has columns {names}; name the latents column 'latents'")
        kind = schema.field(self.column).type
        is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
        if not is_list or not pa.types.is_floating(kind.value_type):
            raise ValueError(f"{path} column {self.column!r} is {kind}; expected a list of floats per row")
        meta = self.file.metadata
        self.starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]).tolist()
        n = self.starts[-1]
        if n == 0:
            raise ValueError(f"{path} holds no rows; expected float32 [n, d] with n >= 1")
        self.path, self._cached = path, ((), None)
        self.shape = (n, len(self[0:1][0]))

    def __getitem__(self, rows: slice) -> np.ndarray:
        a, b = rows.start, rows.stop
        groups = tuple(range(bisect.bisect_right(self.starts, a) - 1, bisect.bisect_right(self.starts, b - 1)))
        if self._cached[0] != groups:  # a shard reads its chunks in order, mostly from the same row groups
            table = self.file.read_row_groups(list(groups), columns=[self.column])
            self._cached = (groups, table.column(0).combine_chunks())
        column = self._cached[1].slice(a - self.starts[groups[0]], b - a)
        if column.null_count:
            raise ValueError(f"{self.path} has a null row among rows {a}:{b}; every row needs d floats")
        lengths = column.value_lengths().to_numpy(zero_copy_only=False)
        width = getattr(self, "shape", (0, lengths[0]))[1]
        if (lengths != width).any():
            row = a + int(np.argmax(lengths != width))
            raise ValueError(f"{self.path} row {row} has {lengths[row - a]} values, expected {width}")
        return column.flatten().to_numpy(zero_copy_only=False).reshape(b - a, width)


def open_input(job) -> SeedInput | LatentFile:
    """The input a ``BatchJob`` names (its seeds, or its latents file)."""
    return SeedInput(*job.seeds) if job.seeds is not None else LatentFile(job.latents_path)
