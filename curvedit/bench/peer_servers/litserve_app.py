"""LitServe serving the edit graph; batching by LitServe (``--max-batch-size 1``: its default, batching off)."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import litserve as ls
from common import arguments, edit, session

args = arguments(max_batch_size=1, batch_timeout=0.0)


class EditAPI(ls.LitAPI):
    def setup(self, device):
        self.session = session(args.onnx, args.threads)

    def decode_request(self, request):
        return np.asarray(request["z"], np.float32), np.asarray(request["t"], np.float32)

    def batch(self, inputs):
        return np.concatenate([z for z, _ in inputs]), np.concatenate([t for _, t in inputs]), [len(z) for z, _ in
                                                                                              inputs]

    def predict(self, x):
        if len(x) == 3:  # a batch
            z, t, sizes = x
            out = edit(self.session, z, t)
            return np.split(out, np.cumsum(sizes)[:-1])
        return edit(self.session, *x)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        return {"z_edited": output.tolist()}


if __name__ == "__main__":
    api = EditAPI(max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    print(f"READY {args.port}", flush=True)
    server.run(port=args.port, host="127.0.0.1", generate_client_file=False)
