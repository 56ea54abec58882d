"""KServe's Python model server serving the edit graph over the Open Inference Protocol (v2 REST). It has no
batching of its own (KServe's batcher is a separate sidecar, for its v1 protocol only)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import arguments, edit, session
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

args = arguments(workers=1)


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
        return InferResponse(model_name="edit", infer_outputs=[output], response_id=payload.id)


if __name__ == "__main__":
    model = EditModel()
    model.load()
    print(f"READY {args.port}", flush=True)
    ModelServer(http_port=args.port, grpc_port=args.port + 1, workers=args.workers,
                enable_docs_url=False).start([model])
