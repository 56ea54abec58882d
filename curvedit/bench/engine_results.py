"""Rows of ``curvedit bench engine`` and how they reach the disk: the JSON is rewritten after every row and the
table printed in a ``finally``, so a run cut short (a deadline, ``timeout -s INT``, SIGTERM) keeps every row it
finished. A lent GPU may be had for minutes only; a hung compile must not cost the rows timed before it."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from curvedit.models.files import atomic_write


@dataclass
class Row:
    flow: str
    batch: int
    backend: str
    precision: str
    ms: float | None = None
    edits_per_s: float | None = None
    gflops: float | None = None
    vs_eager: float | None = None
    frac_peak: float | None = None  # of this machine's matmul rate at the row's precision (CPU: sgemm)
    frac_bf16_peak: float | None = None  # GPU only
    max_err: float | None = None  # vs torch eager fp32 on the same inputs
    note: str = ""


class Results:
    """The run's rows and metadata; ``save()`` rewrites ``json_path`` (atomically) with everything so far."""

    def __init__(self, json_path: str | None, device: str, peaks: dict[str, float], config: dict):
        self.json_path, self.device, self.peaks, self.config = json_path, device, peaks, config
        self.rows: list[Row] = []
        self.start = time.time()
        self.status = "running"
        self.phases: dict[str, float] = {}  # phase name → seconds it took
        self.started: set[int] = set()  # id() of the rows whose backend was set to run (not skipped)
        self.machine = machine_info(device)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        self.save()
        return row

    def eager_ms(self, flow: str, batch: int) -> float | None:
        """The torch eager fp32 row's time at (flow, batch), the "x eager" yardstick, if it was timed."""
        for row in self.rows:
            if (row.flow, row.batch, row.backend, row.precision) == (flow, batch, "torch", "fp32"):
                return row.ms
        return None

    def as_dict(self) -> dict:
        return {"auto_checks": auto_checks(self.rows), "machine": {**self.machine, "load_avg": os.getloadavg()},
                "device": self.device, "status": self.status, "peaks_gflops": self.peaks,
                "flops_per_edit": "2*(a*h + h*h + h*2b)*2*L",
                "seconds": time.time() - self.start, "phases_s": self.phases, "config": self.config,
                "rows": [asdict(r) for r in self.rows]}

    def save(self) -> None:
        if self.json_path:
            text = json.dumps(self.as_dict(), indent=2) + "\n"
            atomic_write(self.json_path, lambda tmp: Path(tmp).write_text(text))

    def finish(self, status: str) -> None:
        """Mark rows that were started but never timed, write the JSON and print the table."""
        self.status = status
        for row in self.rows:
            if id(row) in self.started and row.ms is None and not row.note.startswith("error"):
                row.note = "; ".join(filter(None, [row.note, f"not timed: run {status}"]))
        self.save()
        print(format_table(self.rows, self.device.startswith("cuda")))
        for check in auto_checks(self.rows):
            print(f"{check['backend']:<15} {check['flow']:>16} b={check['batch']:<5} {check['ms']:9.3f} ms vs "
                  f"best single {check['best']} {check['best_ms']:9.3f} ms: {check['ratio']:.3f}x "
                  f"{'met' if check['met'] else 'MISSED'} (goal <= {AUTO_GOAL})")
        print(f"matmul peaks (GFLOP/s): {self.peaks}")
        print(f"device {self.device}; load average {os.getloadavg()}; {time.time() - self.start:.0f} s; {status}")
        if self.json_path:
            print(f"wrote {self.json_path}")


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt`` inside the block, even where the parent started this
    process with SIGINT ignored (a background job of a non-interactive shell): ``timeout -s INT`` and a plain
    ``timeout`` both end the run through its ``finally``. Only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupt(signum, frame):
        # Once is enough: `timeout` signals the child and then its process group, and a second interrupt must
        # not cut the `finally` that writes the results. A hung `finally` is what `timeout -k` is for.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, raise_interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def machine_info(device: str) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_avg": os.getloadavg()}
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        models = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
        info["cpu"] = models[0] if models else platform.processor()
    with contextlib.suppress(ImportError):
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    with contextlib.suppress(ImportError):
        import triton

        info["triton"] = triton.__version__
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: list[Row], cuda: bool) -> str:
    peak_cols = ["% peak", "% bf16 peak"] if cuda else ["% sgemm"]
    head = ["flow", "batch", "backend", "precision", "ms/call", "edits/s", "GFLOP/s", "x eager", *peak_cols,
            "max err", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    # Sorted by flow and batch (stable: within a batch, the order the rows were timed in), so the two passes'
    # rows of one batch stand side by side.
    flows = list(dict.fromkeys(r.flow for r in rows))
    for r in sorted(rows, key=lambda r: (flows.index(r.flow), r.batch)):
        peaks = [_fmt(r.frac_peak and 100 * r.frac_peak, ".1f")]
        if cuda:
            peaks.append(_fmt(r.frac_bf16_peak and 100 * r.frac_bf16_peak, ".1f"))
        cells = [r.flow, str(r.batch), r.backend, r.precision, _fmt(r.ms, ".3f"), _fmt(r.edits_per_s, ",.0f"),
                 _fmt(r.gflops, ".1f"), _fmt(r.vs_eager, ".2f"), *peaks, _fmt(r.max_err, ".1e"), r.note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


AUTO_GOAL = 1.05  # the goal: auto within 5% of the best single backend at every batch


def auto_checks(rows: list[Row]) -> list[dict]:
    """Each timed ``auto`` row against the fastest single backend of its flow and batch: ``auto`` against the
    backends it routes between (the main pass: torch.compile rows left out), ``auto[+compile]`` against all."""
    checks = []
    for row in rows:
        if not row.backend.startswith("auto") or row.ms is None:
            continue
        singles = [r for r in rows if (r.flow, r.batch) == (row.flow, row.batch) and r.ms is not None
                   and r.precision == "fp32" and not r.backend.startswith("auto")
                   and (row.backend != "auto" or not r.backend.startswith("torch.compile"))]
        if not singles:
            continue
        best = min(singles, key=lambda r: r.ms)
        ratio = row.ms / best.ms
        checks.append({"flow": row.flow, "batch": row.batch, "backend": row.backend, "ms": row.ms,
                       "best": best.backend, "best_ms": best.ms, "ratio": ratio, "met": ratio <= AUTO_GOAL})
    return checks
