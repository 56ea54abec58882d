"""PixelCNN sampling per engine: torch's naive loop (a full forward per pixel), torch's fast loop (conditioning
once, the vertical stack once per row on the rows it reaches, the horizontal stack per pixel on the columns it
reaches) and ONNX Runtime's loop over the step graphs (``pixelcnn_rows.onnx`` once per row, ``pixelcnn_pixel.onnx``
per pixel; ``models/pixelcnn_steps.py``).

    python benchmarks/bench_pixelcnn.py --batches 1 16 256 --repeats 3 --csv out/pixelcnn.csv
    curvedit bench results record pixelcnn out/pixelcnn.csv --machine NAME
    python benchmarks/bench_pixelcnn.py --device cuda      # naive, fast, and the fast loop from CUDA graphs

The engines run side by side on the same latents and seeds, interleaved per repeat (the machine is shared and its
load moves); the table gives medians, the ratios to the naive loop, and whether each engine's images were
identical to the naive loop's. ONNX Runtime gets as many intra-op threads as torch has. Timings do not depend on
the weights, so the default config is used at random initialisation (its step graphs exported and verified in
memory) unless ``--bundle`` names a bundle whose generator is a PixelCNN (its shipped graphs are used).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

from curvedit.models.files import write_csv
from curvedit.models.pixelcnn import PixelCNN, PixelCNNConfig

LABELS = {"naive": "torch naive", "fast": "torch fast", "ort": "onnxruntime", "graphs": "CUDA graphs"}


def images_per_second(sample, h: torch.Tensor, seeds: list[int]):
    start = time.perf_counter()
    images = sample(h, seeds)
    return len(h) / (time.perf_counter() - start), images


def engines(model: PixelCNN, bundle_path, device: str) -> dict:
    """``{name: sample(h, seeds) → uint8 images}``: the naive and fast torch loops, and ONNX Runtime on the CPU
    or the fast loop replayed from CUDA graphs on a GPU."""
    import numpy as np

    import curvedit
    from curvedit.models.files import to_uint8
    from curvedit.models.pixelcnn import dequantise

    def torch_loop(fast: bool, cuda_graphs: bool = False):
        # .cpu() (in to_uint8) waits for a GPU to finish
        return lambda h, seeds: to_uint8(dequantise(model.sample(h, seeds, fast=fast, cuda_graphs=cuda_graphs),
                                                    model.config))

    run = {"naive": torch_loop(False), "fast": torch_loop(True)}
    if device.startswith("cuda"):
        return {**run, "graphs": torch_loop(True, cuda_graphs=True)}
    ort = curvedit.load(bundle_path, engine="onnxruntime",
                        engine_options={"threads": torch.get_num_threads()}).runtime
    ort.warm_up()
    if ort.fallbacks():
        raise SystemExit(f"ONNX Runtime falls back to torch: {ort.fallbacks()}")
    return {**run, "ort": lambda h, seeds: ort.generate(h.numpy(), np.asarray(seeds, np.int64))}


def scratch_bundle(model: PixelCNN, directory: str) -> str:
    """A bundle around ``model`` (one trivial editor) with its verified step graphs, for ONNX Runtime."""
    from curvedit.bundle import write_bundle
    from curvedit.export.onnx_export import export_bundle
    from curvedit.models.labelled_editors import AxesEditor

    path = write_bundle(f"{directory}/bundle", name="bench-pixelcnn", version="0", generator=model,
                        editors={"axes": (AxesEditor(model.latent_dim, ["d0"], [0]), "supervised", {})},
                        default_editor="axes")
    export_bundle(path, exporter="torchscript", only=["pixelcnn_rows.onnx", "pixelcnn_pixel.onnx"])
    return str(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bundle", help="a bundle directory with a PixelCNN generator (default: random weights)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda: the naive, fast and CUDA-graph loops")
    p.add_argument("--csv", help="write the rows here")
    args = p.parse_args(argv)
    scratch = tempfile.TemporaryDirectory()
    if args.bundle:
        from curvedit.bundle import load_bundle

        model, path = load_bundle(args.bundle).generator, args.bundle
        if not isinstance(model, PixelCNN):
            p.error(f"{args.bundle} holds a {model.family!r} generator, not a PixelCNN")
    else:
        torch.manual_seed(0)
        model = PixelCNN(PixelCNNConfig()).eval()
        path = scratch_bundle(model, scratch.name)
    model = model.to(args.device)
    run = engines(model, path, args.device)
    print(f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.2f}, config {model.config}", file=sys.stderr)
    rows = []
    for batch in args.batches:
        h = torch.randn(batch, model.latent_dim, generator=torch.Generator().manual_seed(batch)).to(args.device)
        seeds = list(range(batch))
        rates = {name: [] for name in run}
        identical = {name: True for name in run}
        for _ in range(args.repeats):
            images = {}
            for name, sample in run.items():
                rate, images[name] = images_per_second(sample, h, seeds)
                rates[name].append(rate)
                identical[name] &= bool((images[name] == images["naive"]).all())
        row = {"batch": batch, **{f"{name}_images_s": statistics.median(r) for name, r in rates.items()},
               **{f"{name}_identical": identical[name] for name in run if name != "naive"},
               "load": round(os.getloadavg()[0], 2)}
        rows.append(row)
        print(f"batch {batch}: " + ", ".join(f"{name} {row[f'{name}_images_s']:.2f}" for name in run)
              + " images/s", file=sys.stderr)
    others = [name for name in run if name != "naive"]
    print("| batch | " + " | ".join(f"{LABELS[name]} images/s" for name in run) + " | "
          + " | ".join(f"{LABELS[name]} / naive" for name in others) + f" | {LABELS[others[-1]]} / fast"
          + f" | identical to naive ({', '.join(LABELS[name] for name in others)}) | 1-min load |")
    print("|---" * (len(run) + 2 * len(others) + 2) + "|")
    for r in rows:
        rate = {name: r[f"{name}_images_s"] for name in run}
        print(f"| {r['batch']} | " + " | ".join(f"{rate[name]:.2f}" for name in run) + " | "
              + " | ".join(f"{rate[name] / rate['naive']:.1f}×" for name in others)
              + f" | {rate[others[-1]] / rate['fast']:.2f}× | "
              + ", ".join(str(r[f"{name}_identical"]) for name in others) + f" | {r['load']} |")
    if args.csv:
        write_csv(args.csv, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
