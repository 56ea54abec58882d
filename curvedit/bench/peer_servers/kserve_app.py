"""KServe's Python model server serving the edit graph over the Open Inference Protocol (v2 REST). It has no
batching of its own (KServe's batcher is a separate sidecar, for its v1 protocol only); tuned (``--quiet 1``):
without its per-request latency log and access log, and without its unused gRPC server."""

import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import arguments, edit, session
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

args = arguments(workers=1, quiet=0)


class EditModel(Model):
    def __init__(self):
        super().__init__("edit")
        self.session = None

    def load(self):
        self.session = session(args.onnx, args.threads)
        self.ready = True
        return True

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        inputs = {i.name: i.as_numpy() for i in payload.inputs}
        out = edit(self.session, inputs["z"], inputs["t"])
        output = InferOutput(name="z_edited", shape=list(out.shape), datatype="FP32")
        output.set_data_from_numpy(out, binary_data=False)
        return InferResponse(model_name="edit", infer_outputs=[output], response_id=payload.id or "")


if __name__ == "__main__":
    model = EditModel()
    model.load()
    print(f"READY {args.port}", flush=True)
    with socket.socket() as probe:  # its gRPC side must bind somewhere: any free port
        probe.bind(("127.0.0.1", 0))
        grpc_port = probe.getsockname()[1]
    if args.quiet:  # tuned: no per-request latency and access log lines (on by default)
        import logging

        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    ModelServer(http_port=args.port, grpc_port=grpc_port, workers=args.workers, enable_docs_url=False,
                enable_latency_logging=not args.quiet, enable_grpc=not args.quiet).start([model])
