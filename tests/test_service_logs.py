"""``curvedit serve --log-format json --log-requests`` as a real subprocess: every line it logs is one JSON object,
and each request has a line with its id, model, method, status code and duration."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
import pytest

from curvedit.client import edit_request
from curvedit.v1 import latent_edit_pb2 as pb
from curvedit.v1 import latent_edit_pb2_grpc as pb_grpc

SERVE_LINE = re.compile(r"SERVING .* on 127\.0\.0\.1:(\d+); metrics off; OIP HTTP http://127\.0\.0\.1:(\d+)/v2")


def serve_and_log(bundle, *flags) -> tuple[subprocess.Popen, int, int, list[str]]:
    """Start the server (stdout: its announcements; stderr: its log), return once it says SERVING; the log's
    lines accumulate in the returned list."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "curvedit.cli", "serve", "--model", str(bundle), "--port", "0",
                             "--http-port", "0", "--metrics-port", "-1", "--engine", "onnxruntime",
                             "--max-batch-size", "4", *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        match = SERVE_LINE.search(line)
        if match:
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, int(match.group(1)), int(match.group(2)), log
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError(f"server did not start: {''.join(log)[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    time.sleep(0.2)  # the stderr reader takes the last lines


@pytest.mark.slow
def test_json_log_lines_carry_each_requests_id_model_code_and_duration(tiny_bundle):
    proc, port, http_port, log = serve_and_log(tiny_bundle, "--log-format", "json", "--log-requests")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.LatentEditServiceStub(channel)
            stub.Edit(edit_request(seeds=[0, 1], edits={"x": 0.5}, model="tiny"), timeout=30)
            with pytest.raises(grpc.RpcError):
                stub.Edit(edit_request(seeds=[0], model="nope"), timeout=30)
            with pytest.raises(grpc.RpcError):
                stub.Edit(edit_request(seeds=[0], edits={"no-such-direction": 1.0}, model="tiny"), timeout=30)
            stub.ListModels(pb.ListModelsRequest(), timeout=30)
            messages = [edit_request(seeds=[i], model="tiny", id=str(i)) for i in range(2)]
            assert len(list(stub.EditStream(iter(messages), timeout=30))) == 2
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/nope", timeout=10)
    finally:
        stop(proc)
    lines = [json.loads(line) for line in log]  # every line of the log is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]) for line in lines)
    requests = [line for line in lines if line["logger"] == "curvedit.requests"]
    edits = [(r["model"], r["code"]) for r in requests if r["method"] == "Edit"]
    assert edits == [("tiny", "OK"), ("nope", "NOT_FOUND"), ("tiny", "INVALID_ARGUMENT")]
    assert [r["code"] for r in requests if r["method"] == "ListModels"] == ["OK"]
    assert [r["code"] for r in requests if r["method"] == "EditStream"] == ["OK", "OK"]  # one per message
    assert [(r["model"], r["code"]) for r in requests if r["method"].startswith("GET")] == [("nope", "404")]
    for r in requests:
        assert isinstance(r["duration_ms"], float) and r["duration_ms"] >= 0
        assert re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", r["request_id"])
    assert len({r["request_id"] for r in requests}) == len(requests)
    assert any("SERVING" not in line["message"] and line["level"] == "INFO" for line in lines)  # the server's own


@pytest.mark.slow
def test_text_logs_stay_the_default_and_request_lines_are_opt_in(tiny_bundle):
    proc, port, _, log = serve_and_log(tiny_bundle)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            pb_grpc.LatentEditServiceStub(channel).ListModels(pb.ListModelsRequest(), timeout=30)
    finally:
        stop(proc)
    assert log and not any(line.startswith("{") for line in log)
    assert not any("curvedit.requests" in line for line in log)
