"""The ``auto`` engine against its own candidates at large batches, interleaved call by call.

A check of `curvedit bench engine`'s one repeated `auto` miss (d = 512 synthetic flow, batch 4096): there the
auto row and the single-backend rows are separate rows with at most 3 samples each. Here the three calls
(ONNX Runtime, torch, auto) alternate within every round, so load from elsewhere falls on all of them alike.

    python benchmarks/check_auto_large_batch.py --batches 1024 4096 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from curvedit.bundle import load_bundle
from curvedit.engines.auto_engine import AutoEngine
from curvedit.engines.onnx_engine import OnnxEngine, OrtOptions
from curvedit.engines.torch_engine import TorchEngine
from curvedit.synthetic import make_synthetic_bundle


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1024, 4096], help="batch sizes (default 1024 4096)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per batch (default 5)")
    args = p.parse_args()

    bundle = load_bundle(make_synthetic_bundle(Path(tempfile.mkdtemp()) / "d512", latent_dim=512, hidden=512,
                                               layers=8))
    editor = bundle.default_editor
    engines = {"onnxruntime": OnnxEngine(bundle, "cpu", options=OrtOptions(), exporter="dynamo"),
               "torch": TorchEngine(bundle, "cpu")}
    auto = AutoEngine(bundle, "cpu", "onnxruntime", list(engines), lambda name, _: engines[name])
    rng = np.random.default_rng(0)
    header = ("batch", "routed to", "onnxruntime ms", "torch ms", "auto ms", "auto / best")
    print("".join(f"{h:>15}" for h in header))
    for batch in args.batches:
        z = rng.standard_normal((batch, 512)).astype(np.float32)
        t = rng.standard_normal((batch, len(bundle.editors[editor].directions))).astype(np.float32)
        route = next(r for r in auto.calibrate([batch], [f"edit:{editor}"]) if r.bucket == batch)
        calls = {name: (lambda e=e, z=z, t=t: e.edit(editor, z, t))
                 for name, e in [*engines.items(), ("auto", auto)]}
        samples = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                samples[name].append(time.perf_counter() - start)
        ms = {name: 1e3 * statistics.median(values) for name, values in samples.items()}
        best = min(ms["onnxruntime"], ms["torch"])
        cells = (batch, route.backend, f"{ms['onnxruntime']:.1f}", f"{ms['torch']:.1f}", f"{ms['auto']:.1f}",
                 f"{ms['auto'] / best:.3f}")
        print("".join(f"{c:>15}" for c in cells))


if __name__ == "__main__":
    main()
