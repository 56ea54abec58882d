"""A no-op ``LatentEditService`` (grpc.aio): ``Edit`` echoes the latents back, ``EditStream`` echoes each message.

The load benchmark's yardstick: what gRPC itself costs per call on this machine, with the same messages and the
same client, and no batching, validation or compute. ``python -m curvedit.bench.noop --port 0``;
``--processes N`` runs N of them on one ``SO_REUSEPORT`` port, the yardstick of ``serve --workers N``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys

import grpc

from curvedit.v1 import latent_edit_pb2 as pb
from curvedit.v1 import latent_edit_pb2_grpc as pb_grpc


class NoopServicer(pb_grpc.LatentEditServiceServicer):
    async def Edit(self, request, context):
        return pb.EditResponse(latents=request.latents, model="noop", model_version="0", id=request.id)

    async def EditStream(self, request_iterator, context):
        async for request in request_iterator:
            result = pb.EditResponse(latents=request.latents, id=request.id)
            yield pb.EditStreamResponse(id=request.id, result=result)


async def main(host: str, port: int, reuse_port: bool = False) -> None:
    server = grpc.aio.server(options=[("grpc.max_send_message_length", 64 << 20),
                                      ("grpc.max_receive_message_length", 64 << 20),
                                      ("grpc.so_reuseport", int(reuse_port))])
    pb_grpc.add_LatentEditServiceServicer_to_server(NoopServicer(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"curvedit noop: SERVING noop on {host}:{bound}; metrics off", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


def run_processes(host: str, port: int, processes: int) -> None:
    """``processes`` no-op servers on one port (held here with an ``SO_REUSEPORT`` socket); SIGTERM stops all."""
    from curvedit.service.workers import reserve_port

    held, port = reserve_port(host, port)
    children = [subprocess.Popen([sys.executable, "-m", "curvedit.bench.noop", "--host", host, "--port",
                                  str(port), "--reuse-port"], stdout=subprocess.PIPE, text=True)
                for _ in range(processes)]
    for child in children:
        child.stdout.readline()  # its SERVING line
    print(f"curvedit noop: SERVING noop on {host}:{port}; metrics off; {processes} processes (pids "
          f"{', '.join(str(c.pid) for c in children)})", flush=True)
    stopped = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.append(1))
    while not stopped:
        signal.pause()
    for child in children:
        child.terminate()
    for child in children:
        child.wait(10)
    held.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--reuse-port", action="store_true")
    args = parser.parse_args()
    if args.processes > 1:
        run_processes(args.host, args.port, args.processes)
    else:
        asyncio.run(main(args.host, args.port, args.reuse_port))
