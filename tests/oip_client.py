"""Drives a running curvedit server with ``tritonclient`` (gRPC and HTTP), a client nobody here wrote.

Run by ``test_service_oip.py`` in a process of its own: tritonclient's gRPC stubs and curvedit's define the
same protocol messages (``inference.*``), and one process's protobuf registry holds only one copy of them.
Writes what it got to ``--out`` (``results.json`` plus ``.npy`` arrays) for the test to check.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def attempt(call) -> dict:
    """``{"ok": value}`` or ``{"status": ..., "message": ...}`` from an InferenceServerException."""
    from tritonclient.utils import InferenceServerException

    try:
        return {"ok": call()}
    except InferenceServerException as exc:
        return {"status": str(exc.status()), "message": exc.message()}


def run(kind: str, url: str, model: str, out: Path, token: str | None, image_model: str | None) -> dict:
    if kind == "grpc":
        import tritonclient.grpc as client_lib
    else:
        import tritonclient.http as client_lib
    client = client_lib.InferenceServerClient(url)
    headers = {"authorization": f"Bearer {token}"} if token else None
    z = np.load(out / "z.npy")
    t = np.load(out / "t.npy")
    results: dict = {}

    def infer(inputs_: dict, outputs: list[str], parameters=None, name=model, request_id="r1"):
        inputs = []
        for name_, array in inputs_.items():
            tensor = client_lib.InferInput(name_, list(array.shape), "FP32" if array.dtype == np.float32
                                           else "UINT8")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        asked = [client_lib.InferRequestedOutput(o) for o in outputs]
        result = client.infer(name, inputs, outputs=asked, request_id=request_id, headers=headers,
                              parameters=parameters)
        for o in outputs:
            np.save(out / f"{kind}_{request_id}_{o}.npy", result.as_numpy(o))
        response = result.get_response()
        return response["id"] if isinstance(response, dict) else response.id

    results["live"] = attempt(lambda: client.is_server_live(headers=headers))
    results["ready"] = attempt(lambda: client.is_server_ready(headers=headers))
    results["model_ready"] = attempt(lambda: client.is_model_ready(model, headers=headers))
    if kind == "grpc":
        results["server"] = attempt(lambda: client.get_server_metadata(headers=headers, as_json=True))
        results["metadata"] = attempt(lambda: client.get_model_metadata(model, headers=headers, as_json=True))
        results["index"] = attempt(lambda: client.get_model_repository_index(headers=headers, as_json=True))
    else:
        results["server"] = attempt(lambda: client.get_server_metadata(headers=headers))
        results["metadata"] = attempt(lambda: client.get_model_metadata(model, headers=headers))
        results["index"] = attempt(lambda: client.get_model_repository_index(headers=headers))
    results["edit"] = attempt(lambda: infer({"z": z, "t": t}, ["z_edited", "images"], request_id="edit"))
    results["no_t"] = attempt(lambda: infer({"z": z}, ["z_edited"], request_id="no_t"))
    results["editor"] = attempt(lambda: infer({"z": z, "t": t}, ["z_edited"], {"editor": "decurved"},
                                              request_id="editor"))
    results["bad_editor"] = attempt(lambda: infer({"z": z, "t": t}, ["z_edited"], {"editor": "nope"},
                                                  request_id="bad_editor"))
    results["bad_shape"] = attempt(lambda: infer({"z": z[:, :3]}, ["z_edited"], request_id="bad_shape"))
    results["bad_t"] = attempt(lambda: infer({"z": z, "t": t[:, :2]}, ["z_edited"], request_id="bad_t"))
    results["unknown_model"] = attempt(lambda: infer({"z": z}, ["z_edited"], name="nope", request_id="nope"))
    if image_model:
        images = np.load(out / "images.npy")
        results["images"] = attempt(lambda: infer({"images": images}, ["z_edited", "images"], name=image_model,
                                                  request_id="images"))
    client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--grpc", required=True, help="host:port of the gRPC side (required)")
    parser.add_argument("--http", required=True, help="host:port of the HTTP side (required)")
    parser.add_argument("--model", required=True, help="the model to call (required)")
    parser.add_argument("--image-model", default=None, help="a model that can encode (default: none)")
    parser.add_argument("--token", default=None, help="bearer token (default: none)")
    parser.add_argument("--out", required=True, help="folder with z.npy/t.npy in, results out (required)")
    args = parser.parse_args()
    out = Path(args.out)
    results = {kind: run(kind, url, args.model, out, args.token, args.image_model)
               for kind, url in (("grpc", args.grpc), ("http", args.http))}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
