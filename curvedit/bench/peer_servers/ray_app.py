"""Ray Serve serving the edit graph with ``@serve.batch`` (defaults: max_batch_size 10, 10 ms wait)."""

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
import ray
from common import arguments, edit, session
from ray import serve

args = arguments(max_batch_size=10, batch_wait_timeout_s=0.01, max_ongoing_requests=5)


@serve.deployment(max_ongoing_requests=args.max_ongoing_requests, ray_actor_options={"num_cpus": 0})
class Edit:
    def __init__(self):
        self.session = session(args.onnx, args.threads)

    @serve.batch(max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_timeout_s)
    async def run(self, items: list) -> list:
        z = np.concatenate([z for z, _ in items])
        t = np.concatenate([t for _, t in items])
        out = edit(self.session, z, t)
        return [{"z_edited": row[None].tolist()} for row in out]

    async def __call__(self, request):
        body = await request.json()
        return await self.run((np.asarray(body["z"], np.float32), np.asarray(body["t"], np.float32)))


if __name__ == "__main__":
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(Edit.bind(), route_prefix="/")
    print(f"READY {args.port}", flush=True)
    while True:
        time.sleep(3600)
