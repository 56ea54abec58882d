"""PixelCNN sampling on torch: the naive loop (a full forward per pixel) against the fast loop (conditioning once,
the vertical stack once per row on the rows it reaches, the horizontal stack per pixel on the columns it reaches).

    python benchmarks/bench_pixelcnn.py --batches 1 16 256 --repeats 3 --csv benchmarks/cpu_pixelcnn.csv
    python benchmarks/bench_pixelcnn.py --device cuda --csv out/gpu_pixelcnn.csv   # on a GPU

Both loops run side by side on the same latents and seeds, interleaved per repeat (the machine is shared and its
load moves); the table gives medians, the fast/naive ratio, and whether the two loops' images were identical.
Timings do not depend on the weights, so the default config is used at random initialisation unless
``--bundle`` names a bundle whose generator is a PixelCNN.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time

import torch

from curvedit.models.pixelcnn import PixelCNN, PixelCNNConfig


def images_per_second(model: PixelCNN, h: torch.Tensor, seeds: list[int], fast: bool):
    start = time.perf_counter()
    classes = model.sample(h, seeds, fast=fast).cpu()  # .cpu() waits for a GPU to finish
    return len(h) / (time.perf_counter() - start), classes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bundle", help="a bundle directory with a PixelCNN generator (default: random weights)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--csv", help="write the rows here")
    args = p.parse_args(argv)
    if args.bundle:
        from curvedit.bundle import load_bundle

        model = load_bundle(args.bundle).generator
        if not isinstance(model, PixelCNN):
            p.error(f"{args.bundle} holds a {model.family!r} generator, not a PixelCNN")
    else:
        torch.manual_seed(0)
        model = PixelCNN(PixelCNNConfig()).eval()
    model = model.to(args.device)
    print(f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.2f}, config {model.config}", file=sys.stderr)
    rows = []
    for batch in args.batches:
        h = torch.randn(batch, model.latent_dim, generator=torch.Generator().manual_seed(batch)).to(args.device)
        seeds = list(range(batch))
        naive, fast, identical = [], [], True
        for _ in range(args.repeats):
            rate, a = images_per_second(model, h, seeds, fast=False)
            naive.append(rate)
            rate, b = images_per_second(model, h, seeds, fast=True)
            fast.append(rate)
            identical &= torch.equal(a, b)
        row = {"batch": batch, "naive_images_s": statistics.median(naive),
               "fast_images_s": statistics.median(fast), "identical": identical,
               "load": round(os.getloadavg()[0], 2)}
        row["ratio"] = row["fast_images_s"] / row["naive_images_s"]
        rows.append(row)
        print(f"batch {batch}: naive {row['naive_images_s']:.2f}, fast {row['fast_images_s']:.2f} images/s",
              file=sys.stderr)
    print("| batch | naive images/s | fast images/s | fast / naive | identical images | 1-min load |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['naive_images_s']:.2f} | {r['fast_images_s']:.2f} | {r['ratio']:.1f}× | "
              f"{r['identical']} | {r['load']} |")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
