"""The image path of ``curvedit bench engine``: a real image encoded, edited and decoded, per engine.

Times ``Model.edit_images`` (uint8 images in, uint8 images out: input checks, encoder, edit, generator, the
conversions between them) on a model that can encode (default ``shapes-vae``), for the torch engine and the ONNX
Runtime engine side by side at each batch size, in the same process as the rest of the sweep. Rows carry
images per second in ``edits_per_s``; ``max_err`` is the largest difference in grey levels from torch eager's
images; ``x eager`` is torch's time over the row's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from curvedit.bench.engine_results import Results, Row

IMAGE_BATCHES = (1, 16, 256)
QUICK_IMAGE_BATCHES = (1, 16)


def image_pass(args: argparse.Namespace, results: Results, device: str, deadline: tuple[float, str]) -> None:
    """Add the image-path rows to ``results`` (``args.image_model`` at ``IMAGE_BATCHES``)."""
    import curvedit

    models = {"torch": curvedit.load(args.image_model, engine="torch", device=device)}
    try:
        models["onnxruntime"] = curvedit.load(args.image_model, engine="onnxruntime",
                                              engine_options={"threads": args.threads} if args.threads else None)
    except ValueError as exc:  # no onnxruntime here, or not for this device
        results.add(Row(f"{args.image_model} images", 0, "onnxruntime", "fp32", note=f"unavailable: {exc}"))
    reference = models["torch"]
    reference.require_encoder()
    label = f"{reference.name} images"
    for batch in QUICK_IMAGE_BATCHES if args.quick else IMAGE_BATCHES:
        images = reference.generate(reference.sample(batch, seed=batch))
        edits = {reference.directions[0]: 1.0}
        expected = reference.edit_images(images, edits).astype(np.int16)
        eager_ms = None
        for name, model in models.items():
            row = results.add(Row(label, batch, name, "fp32"))
            if time.time() > deadline[0]:
                row.note = f"skipped: {deadline[1]} reached"
                continue
            row.max_err = float(np.abs(model.edit_images(images, edits).astype(np.int16) - expected).max())
            for _ in range(args.warmup):
                model.edit_images(images, edits)
            samples = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                model.edit_images(images, edits)
                samples.append(time.perf_counter() - t0)
            seconds = statistics.median(samples)
            row.ms, row.edits_per_s = seconds * 1e3, batch / seconds
            eager_ms = eager_ms if name != "torch" else row.ms
            row.vs_eager = eager_ms / row.ms if eager_ms else None
            row.note = "images/s in the edits/s column; max err in grey levels"
            results.save()
            print(f"  {label:>16} b={batch:<5} {name:<28} {'fp32':<13} {row.ms:10.3f} ms "
                  f"({row.edits_per_s:,.0f} images/s)", flush=True)
