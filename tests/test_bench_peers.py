"""`curvedit bench peers` end to end on tiny settings: curvedit's own row is measured through the real HTTP load
generator against a real `curvedit serve`; a peer that is not installed is skipped with the reason; and the
load generator reads what servers send (keep-alive, Content-Length and chunked bodies)."""

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curvedit.bench.peers import _exchange, _start, _stop, http_load


@pytest.mark.slow
def test_curvedit_is_measured_and_a_missing_peer_is_skipped(tmp_path):
    out = tmp_path / "peers.json"
    done = subprocess.run([sys.executable, "-m", "curvedit.cli", "bench", "peers", "--peers", "litserve",
                           "--peer-python", f"litserve={sys.executable}-missing", "--concurrency", "1,4",
                           "--duration", "0.5", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "litserve" in done.stdout and "skipped" in done.stdout and "curvedit[peers]" in done.stdout
    cells = json.loads(out.read_text())["cells"]
    assert [(c["server"], c["concurrency"]) for c in cells] == [("curvedit (OIP HTTP)", 1),
                                                                ("curvedit (OIP HTTP)", 4)]
    assert all(c["errors"] == 0 and c["requests_per_s"] > 0 for c in cells)


@pytest.mark.parametrize("chunked", [False, True])
def test_the_load_generator_reads_length_and_chunked_bodies(chunked):
    async def scenario():
        async def answer(reader, writer):
            while await reader.readline() not in (b"", b"\r\n"):  # request line and headers
                pass
            await reader.readexactly(2)
            if chunked:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
        status = await _exchange(reader, writer, request)
        writer.close()
        server.close()
        return status

    assert asyncio.run(scenario()) == 200


def test_the_load_generator_counts_refusals_as_errors():
    async def scenario():
        async def refuse(reader, writer):
            while True:
                line = await reader.readline()
                if not line:
                    return
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()

        server = await asyncio.start_server(refuse, "127.0.0.1", 0)
        latencies, errors = await http_load(server.sockets[0].getsockname()[1], "/", b"{}", 2, 0.2, warmup=0.0)
        server.close()
        return latencies, errors

    latencies, errors = asyncio.run(scenario())
    assert latencies == [] and errors > 0


def test_stopping_a_server_ends_the_workers_it_forked(tmp_path):
    """LitServe's workers outlived a terminated parent (and kept polling) until the whole group was ended."""
    pid_file = tmp_path / "worker.pid"
    script = ("import subprocess, sys, time\n"
              "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
              f"open({str(pid_file)!r}, 'w').write(str(worker.pid))\n"
              "print('READY', flush=True)\n"
              "time.sleep(120)\n")
    server = _start([sys.executable, "-c", script], "READY")
    worker = int(pid_file.read_text())
    _stop(server, grace=5.0)
    assert server.returncode is not None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(worker):
        time.sleep(0.05)
    assert not _alive(worker)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's reaping is left
