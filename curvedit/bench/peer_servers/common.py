"""What every peer server shares: the ONNX Runtime session, built the same way for each."""

from __future__ import annotations

import argparse

import numpy as np


def session(path: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def edit(sess, z: np.ndarray, t: np.ndarray) -> np.ndarray:
    return sess.run(None, {"z": z, "t": t})[0]


def arguments(**batching) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--port", type=int, required=True)
    for name, default in batching.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    return parser.parse_args()
