"""``curvedit bench engine``: every available backend timed side by side on the edit z' = f⁻¹(f(z) + t).

Only the edit is timed (inputs already on the device; ONNX Runtime takes NumPy, so its rows include handing
arrays in and out). Flows: the shipped model's (a tiny synthetic d=8 flow if it is not installed) and a
synthetic d=512, h=512, 8-layer flow with random weights. Backends: torch eager, torch.compile, onnxruntime,
and on CUDA also eager/compiled under bf16 autocast and the triton engine at fp32, tf32 and bf16.

FLOPs per edited latent, for a coupling flow of L layers on d = a + b coordinates (a = d // 2 conditioning,
b = d − a transformed) with MLP width h:

    FLOPs = 2 · (a·h + h·h + h·2b) · 2 · L

(one multiply-add = 2 FLOPs; three matmuls per MLP row; the MLP runs once per layer in f and once in f⁻¹;
elementwise work is not counted, nor a mixing layer's 4·d² — none in the synthetic flow, 256 of the shipped
flow's 0.16 MFLOP). d = h = 512, L = 8: 21.0 MFLOP per edit.

The image path (``bench_images``, after the main pass): ``Model.edit_images`` on a model that can encode, torch
against onnxruntime, images per second.

Two passes, so the rows that matter come back first on a machine lent for minutes: the main pass times every
backend that does not compile (torch eager, onnxruntime, triton) at every flow and batch; the compile pass then
times torch.compile (a cold compile per flow, recompiles as shapes change), bounded by ``--compile-time-limit-s``
on top of the whole run's ``--time-limit-s``; ``--no-compile`` leaves it out. Both passes run in one process
on the same inputs, and the table puts each batch's rows side by side. The JSON is rewritten after every row,
and SIGINT/SIGTERM (``timeout -s INT``) end the run through a ``finally`` that writes the JSON and prints the
table of the rows finished so far (``bench_results``).

Timing: each row warms up (compiles, builds sessions), then takes the median of ``repeats`` samples; on CUDA a
sample is CUDA-event time over enough back-to-back calls to last ≥ 1 ms, divided by the call count. Peaks are
measured in the same run with large ``torch.matmul``s (CPU: fp32 sgemm; GPU: fp32, tf32 and bf16).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

from curvedit.bench.engine_backends import as_tensor, make_backends
from curvedit.bench.engine_images import image_pass
from curvedit.bench.engine_results import Results, Row, interrupts_raise
from curvedit.bench.timing import measure_peaks, sampler, synchronize
from curvedit.bundle import Bundle, load_bundle

FULL_BATCHES = (1, 16, 64, 256, 1024, 4096)
QUICK_BATCHES = (1, 16)
FLOWS = ("shipped", "d512")


def edit_flops(editor) -> float:
    """FLOPs of one edited latent (formula in the module docstring)."""
    cfg = editor.flow.config
    a, h = cfg.dim // 2, cfg.hidden
    b = cfg.dim - a
    return 2.0 * (a * h + h * h + h * 2 * b) * 2 * cfg.layers


# -- the sweep --------------------------------------------------------------------------------------------------
def flow_bundles(flows: list[str], workdir: Path, quick: bool) -> list[tuple[str, Path]]:
    """``(label, bundle path)`` per requested flow; synthetic ones are written into ``workdir``."""
    from curvedit.api import default_bundle_path
    from curvedit.synthetic import make_synthetic_bundle

    out = []
    for flow in flows:
        if flow == "shipped":
            shipped = default_bundle_path()
            if (shipped / "manifest.json").is_file():
                out.append(("shipped", shipped))
            else:  # before the trained model exists: a flow of the same size class
                path = make_synthetic_bundle(workdir / "tiny", latent_dim=8, hidden=64, layers=8, directions=6)
                out.append(("tiny-synthetic", path))
        elif flow == "d512":
            d, h, layers = (64, 64, 4) if quick else (512, 512, 8)
            path = make_synthetic_bundle(workdir / f"d{d}", latent_dim=d, hidden=h, layers=layers)
            out.append((f"synthetic-d{d}", path))
        else:
            raise ValueError(f"unknown flow {flow!r}; choose from {list(FLOWS)}")
    return out


def _fill(row: Row, seconds: float, flops: float, results: Results) -> None:
    row.ms = seconds * 1e3
    row.edits_per_s = row.batch / seconds
    row.gflops = flops * row.batch / seconds / 1e9
    # The eager fp32 row is timed first in the main pass, so it is there for every later row of its batch.
    eager_ms = results.eager_ms(row.flow, row.batch)
    row.vs_eager = eager_ms / row.ms if eager_ms else None
    _fractions(row, results.peaks)


def _fractions(row: Row, peaks: dict[str, float]) -> None:
    """Fill the %-of-peak columns: against the matmul rate of the row's own precision, and of bf16."""
    key = "bf16" if row.precision.startswith("bf16") else row.precision if row.precision in peaks else "fp32"
    row.frac_peak = row.gflops / peaks[key] if key in peaks else None
    row.frac_bf16_peak = row.gflops / peaks["bf16"] if "bf16" in peaks else None


def bench_flow(label: str, bundle: Bundle, device: str, args: argparse.Namespace, results: Results,
               compiled: bool, deadline: tuple[float, str]) -> None:
    """Time one pass's backends (``compiled``: the torch.compile ones, else all others) on one flow at every
    batch size, adding the rows to ``results``. ``deadline``: (time.time() after which no new row starts, why)."""
    name = bundle.default_editor
    editor = bundle.editors[name]
    flops = edit_flops(editor)
    reference = copy.deepcopy(editor).cpu().eval()  # CPU fp32 eager: the max_err yardstick
    backends = make_backends(bundle, name, device, args, compiled=compiled)
    last = {}  # (backend, precision) → (seconds per call, batch) at the last batch it ran
    for batch in args.batch_sizes:
        gen = torch.Generator().manual_seed(batch)
        z_cpu = torch.randn(batch, editor.latent_dim, generator=gen)
        t_cpu = torch.randn(batch, editor.num_directions, generator=gen)
        with torch.inference_mode():
            expected = reference.edit(z_cpu, t_cpu)
            timed = _prepare_rows(label, batch, backends, z_cpu.to(device), t_cpu.to(device), expected, device,
                                  args, results, last, deadline)
            _sample_in_rounds(timed, device)
        for row, _, samples, _ in timed:
            if row.note.startswith("error") or not samples:
                continue
            seconds = statistics.median(samples)
            last[(row.backend, row.precision)] = (seconds, batch)
            _fill(row, seconds, flops, results)
            results.save()
            print(f"  {label:>16} b={batch:<5} {row.backend:<28} {row.precision:<13} {row.ms:10.3f} ms",
                  flush=True)


SLOW_ROW_SAMPLES = 5


def _sample_in_rounds(timed: list, device: str, rounds: int = SLOW_ROW_SAMPLES) -> None:
    """Take each row's ``repeats`` samples in ``rounds`` rounds over all backends, so a burst of load from
    elsewhere hits every backend alike. Within a round each backend's samples are consecutive, after a pause
    and one untimed call: thread pools that spin (ONNX Runtime's, OpenMP's) slow each other down when calls
    of different backends alternate, which no real single-engine process sees."""
    for r in range(rounds):
        for row, sample, samples, repeats in timed:
            count = repeats // rounds + (r < repeats % rounds)
            if row.note.startswith("error") or count == 0:
                continue
            try:
                if not device.startswith("cuda"):
                    time.sleep(0.05)
                sample()
                samples.extend(sample() for _ in range(count))
            except Exception as exc:  # reported in the row; the others go on
                row.note = _error(exc)


def _error(exc: Exception) -> str:
    first = str(exc).splitlines()[0][:120] if str(exc) else ""
    return f"error: {type(exc).__name__}: {first}"


def _prepare_rows(label, batch, backends, z, t, expected, device, args, results, last, deadline):
    """Add one row per backend at ``batch``; check each runnable one against ``expected`` and warm it up.
    Returns ``[(row, sampler, samples, repeats)]`` for the rows to time."""
    timed = []
    for backend in backends:
        row = results.add(Row(label, batch, backend.name, backend.precision, note=backend.note))
        key = (backend.name, backend.precision)
        if backend.prepare is None:
            continue
        if time.time() > deadline[0]:
            row.note = f"skipped: {deadline[1]} reached"
            continue
        if key in last and last[key][0] * batch / last[key][1] > args.max_call_s:
            row.note = f"skipped: a call would take > {args.max_call_s:g} s"
            continue
        results.started.add(id(row))
        try:
            call = backend.prepare(z, t)
            t0 = time.perf_counter()
            row.max_err = float((as_tensor(call()) - expected).abs().max())
            slow = time.perf_counter() - t0 > args.slow_call_s  # long calls: fewer samples, no less exact
            if backend.describe is not None:  # e.g. the tile the autotuner picked for this batch
                row.note = "; ".join(filter(None, [row.note, backend.describe()]))
            for _ in range(min(args.warmup, 1) if slow else args.warmup):
                call()
            synchronize(device)
            # A slow row's samples are one per round, so they interleave with the other backends' (with 3
            # back to back, one burst of load from elsewhere once decided a row: E1/E2 in RESULTS.md).
            timed.append((row, sampler(call, device), [], min(args.repeats, SLOW_ROW_SAMPLES) if slow
                          else args.repeats))
        except Exception as exc:  # a failing backend is a result, not the end of the run
            row.note = _error(exc)
        results.save()
    return timed


def _deadline(args: argparse.Namespace, start: float, compiled: bool) -> tuple[float, str]:
    """``(time.time() after which a pass starts no new row, the flag that set it)``, computed as the pass
    starts: the whole run's ``--time-limit-s``, and for the compile pass also its own limit."""
    limit = (start + args.time_limit_s, f"--time-limit-s {args.time_limit_s:g}") if args.time_limit_s else (
        float("inf"), "no limit")
    if compiled and args.compile_time_limit_s is not None:
        own = (time.time() + args.compile_time_limit_s, f"--compile-time-limit-s {args.compile_time_limit_s:g}")
        limit = min(limit, own)
    return limit


def run(args: argparse.Namespace) -> dict:
    """Measure peaks, then both passes over every flow. Rows reach ``--json`` as they finish; the table is
    printed at the end, also when the run is cut short by a signal or an error."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = time.time()
    peaks = measure_peaks(device, args.quick)
    print("matmul peaks (GFLOP/s): " + ", ".join(f"{k} {v:,.0f}" for k, v in peaks.items()), flush=True)
    results = Results(args.json, device, peaks, {k: v for k, v in vars(args).items() if k != "func"})
    results.save()
    status = "failed"
    with interrupts_raise(), tempfile.TemporaryDirectory(prefix="curvedit-bench-") as tmp:
        try:
            bundles = [(label, load_bundle(path))
                       for label, path in flow_bundles(args.flows.split(","), Path(tmp), args.quick)]
            for name, compiled in (("main", False), ("compile", True)):
                if compiled and args.no_compile:
                    continue
                began = time.time()
                print(f"-- {name} pass ({began - start:.0f} s into the run)", flush=True)
                deadline = _deadline(args, start, compiled)
                for label, bundle in bundles:
                    bench_flow(label, bundle, device, args, results, compiled, deadline)
                results.phases[name] = time.time() - began
                if not compiled and args.image_model:
                    began = time.time()
                    print(f"-- image pass: {args.image_model} encode → edit → decode", flush=True)
                    image_pass(args, results, device, deadline)
                    results.phases["images"] = time.time() - began
            _peaks_again(results, device, args.quick)
            status = "complete"
        except KeyboardInterrupt as exc:
            status = "interrupted"
            print(f"\ninterrupted ({exc}): the table below has the rows finished so far", flush=True)
        finally:
            results.finish(status)
    return results.as_dict()


def _peaks_again(results: Results, device: str, quick: bool) -> None:
    """Peaks again at the end, keeping the higher: a busy moment at the start must not flatter the fractions."""
    again = measure_peaks(device, quick)
    if any(again[k] > results.peaks[k] for k in results.peaks):
        results.peaks.update({k: max(results.peaks[k], again[k]) for k in results.peaks})
        for row in results.rows:
            if row.gflops is not None:
                _fractions(row, results.peaks)


def cmd_bench_engine(args: argparse.Namespace) -> int:
    if args.batch_sizes is None:
        args.batch_sizes = list(QUICK_BATCHES if args.quick else FULL_BATCHES)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 10
    if any(b < 1 for b in args.batch_sizes) or args.repeats < 1 or args.warmup < 0:
        raise ValueError("--batch-sizes and --repeats must be >= 1 and --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.compile and args.no_compile:
        raise ValueError("--compile and --no-compile contradict each other; pass one")
    if args.time_limit_s is not None and args.time_limit_s <= 0:
        raise ValueError(f"--time-limit-s must be > 0, got {args.time_limit_s}")
    if args.compile_time_limit_s is not None and args.compile_time_limit_s <= 0:
        raise ValueError(f"--compile-time-limit-s must be > 0, got {args.compile_time_limit_s}")
    status = run(args)["status"]
    return 0 if status == "complete" else 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", default=None, help="also write the results here (default: none)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help=f"default {' '.join(map(str, FULL_BATCHES))} ({' '.join(map(str, QUICK_BATCHES))} "
                             "with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed samples per row (default 10; quick 3)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    parser.add_argument("--flows", default=",".join(FLOWS), help="comma-separated: shipped,d512 (default both)")
    parser.add_argument("--image-model", default="shapes-vae", metavar="NAME|PATH",
                        help="a model that can encode, for the image path (encode → edit → decode per image, "
                             "torch vs onnxruntime, batches 1, 16, 256) after the main pass; '' skips it "
                             "(default shapes-vae)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: small d=64 flow, batches 1 and 16, no torch.compile (default: off)")
    parser.add_argument("--compile", action="store_true", help="time torch.compile even with --quick "
                                                               "(default: off)")
    parser.add_argument("--no-compile", action="store_true",
                        help="leave out the torch.compile pass; every other backend is still timed (default: off)")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode (default: reduce-overhead on CUDA, default on CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch and ONNX Runtime alike (default: torch's and ORT's own)")
    parser.add_argument("--time-limit-s", type=float, default=None,
                        help="start no new row after this many seconds from the start, in either pass "
                             "(finished rows are kept; default: no limit)")
    parser.add_argument("--compile-time-limit-s", type=float, default=None,
                        help="start no new row after this many seconds into the torch.compile pass "
                             "(default: no limit)")
    parser.add_argument("--max-call-s", type=float, default=5.0,
                        help="skip a backend's larger batches once one call would exceed this (default 5 s)")
    parser.add_argument("--slow-call-s", type=float, default=0.3,
                        help="rows whose call takes longer (s) get 1 warm-up call and at most 5 samples, one "
                             "per round (default 0.3)")


def register(sub) -> None:
    engine = sub.add_parser("engine", help="time every engine backend on the edit, side by side",
                            description=__doc__.split("\n\n")[0])
    add_arguments(engine)
    engine.set_defaults(func=cmd_bench_engine)
