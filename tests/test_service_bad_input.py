"""Every bad input a client can send, against a real server on 127.0.0.1 with the tiny bundle.

Each case is sent as raw bytes (so corrupt messages and out-of-enum values go on the wire exactly as an attacker
would send them) and must get its own status code and a message naming the problem, in one log line at most,
never a traceback; after each, the server still answers a valid request correctly.
"""

import logging

import grpc
import numpy as np
import pytest
from service_util import metric, raw

import curvedit
from curvedit.client import Client, edit_request
from curvedit.service import codec
from curvedit.service.background import BackgroundServer
from curvedit.service.config import ServeConfig
from curvedit.v1 import latent_edit_pb2 as pb

ATOL = 1e-5
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
HUGE = 3e38  # finite float32, but the flow's result is not
BIG_NAME = "z" * 100_000


def tensor(shape, data: bytes = b"") -> pb.Tensor:
    return pb.Tensor(shape=shape, data=data)


def latents(array) -> pb.Tensor:
    return codec.to_tensor(np.asarray(array, np.float32))


def edit(**kwargs) -> bytes:
    return pb.EditRequest(**kwargs).SerializeToString()


def seeds(*s) -> pb.Seeds:
    return pb.Seeds(seeds=list(s))


def x(amount: float, direction: str = "x") -> pb.DirectionAmount:
    return pb.DirectionAmount(direction=direction, amount=amount)


def traverse(**kwargs) -> bytes:
    return pb.TraverseRequest(**{"seed": 0, "direction": "x", "steps": 3, **kwargs}).SerializeToString()


def generate(**kwargs) -> bytes:
    return pb.GenerateRequest(**kwargs).SerializeToString()


def per_item(array, directions=()) -> pb.Amounts:
    return pb.Amounts(directions=list(directions), amounts=latents(array))


ONE = np.zeros((1, 8), np.float32)
NAN_ROW = np.array([[np.nan] + [0.0] * 7], np.float32)
INF_ROW = np.array([[0.0] * 7 + [np.inf]], np.float32)

# (rpc, payload bytes, expected code, text the message must contain)
CASES = {
    # corrupt protobuf bytes, to every RPC and to the health service
    "corrupt Edit (issue bytes)": ("Edit", bytes.fromhex("ffffffff0f01"), INVALID, "not a valid EditRequest"),
    "corrupt Edit: length past the end": ("Edit", b"\x0a\xff\xff\xff\xff\x0f", INVALID, "not a valid"),
    "corrupt Edit: truncated field": ("Edit", b"\x1a\x10\x0a", INVALID, "not a valid"),
    "corrupt Edit: invalid UTF-8 name": ("Edit", b"\x0a\x02\xff\xfe", INVALID, "not a valid"),
    "corrupt GetModel": ("GetModel", b"\x0a\x05ab", INVALID, "not a valid GetModelRequest"),
    "corrupt ListModels": ("ListModels", bytes.fromhex("ffffffff0f01"), INVALID, "not a valid ListModelsRequest"),
    "corrupt Generate": ("Generate", b"\x12\xff\xff\xff\xff\x0f", INVALID, "not a valid GenerateRequest"),
    "corrupt Traverse": ("Traverse", bytes.fromhex("ffffffff0f01"), INVALID, "not a valid TraverseRequest"),
    "corrupt health Check": ("/grpc.health.v1.Health/Check", bytes.fromhex("ffffffff0f01"), INVALID,
                             "not a valid HealthCheckRequest"),
    # non-finite results
    "amount 3e38": ("Edit", edit(seeds=seeds(1), edits=[x(HUGE, "scale")]), INVALID, "not finite"),
    "amount -3e38 with images": ("Edit", edit(seeds=seeds(1), edits=[x(-HUGE)], return_images=True), INVALID,
                                 "not finite"),
    "per-item amount 3e38 in row 2": ("Edit", edit(seeds=seeds(0, 1, 2), amounts=per_item(
        [[0, 0, 0, 0], [0, 0, 0, 0], [HUGE, 0, 0, 0]])), INVALID, "item 2 is not finite"),
    "latents 3e38": ("Edit", edit(latents=latents(np.full((1, 8), HUGE)), edits=[x(1.0)]), INVALID, "not finite"),
    "traverse to 3e38": ("Traverse", traverse(start=-HUGE, stop=HUGE), INVALID, "not finite"),
    # repeated directions, enum values outside ImageFormat
    "direction twice": ("Edit", edit(seeds=seeds(0), edits=[x(1.0), x(2.0)]), INVALID, "appears twice"),
    "direction twice, same amount": ("Edit", edit(seeds=seeds(0), edits=[x(1.0, "y"), x(1.0, "y")]), INVALID,
                                     "appears twice"),
    "image_format 99": ("Edit", edit(seeds=seeds(0), return_images=True, image_format=99), INVALID,
                        "not an ImageFormat"),
    "image_format -1": ("Edit", edit(seeds=seeds(0), return_images=True, image_format=-1), INVALID,
                        "not an ImageFormat"),
    "image_format 7 without images": ("Edit", edit(seeds=seeds(0), image_format=7), INVALID, "not an ImageFormat"),
    "Generate image_format 3": ("Generate", generate(seeds=seeds(0), image_format=3), INVALID,
                                "not an ImageFormat"),
    "Traverse image_format 5": ("Traverse", traverse(image_format=5), INVALID, "not an ImageFormat"),
    # shapes and byte lengths
    "shape [2^62, 0]": ("Edit", edit(latents=tensor([2**62, 0])), INVALID, "too many items"),
    "shape [1, 2^62]": ("Edit", edit(latents=tensor([1, 2**62])), INVALID, "dimension above"),
    "shape [0, 2^62]": ("Edit", edit(latents=tensor([0, 2**62])), INVALID, "empty batch"),
    "shape [-1, 8]": ("Edit", edit(latents=tensor([-1, 8])), INVALID, "negative dimension"),
    "scalar shape": ("Edit", edit(latents=tensor([], b"\0" * 4)), INVALID, "2 dimensions"),
    "3-d latents": ("Edit", edit(latents=latents(np.zeros((1, 8, 1)))), INVALID, "2 dimensions"),
    "byte length": ("Edit", edit(latents=tensor([1, 8], b"\0" * 31)), INVALID, "bytes"),
    "wrong width": ("Edit", edit(latents=latents(np.zeros((1, 5)))), INVALID, "latent dim is 8"),
    "NaN latent": ("Edit", edit(latents=latents(NAN_ROW)), INVALID, "NaN"),
    "Inf latent": ("Edit", edit(latents=latents(INF_ROW)), INVALID, "NaN or Inf"),
    "empty batch": ("Edit", edit(latents=latents(np.zeros((0, 8)))), INVALID, "empty"),
    "empty seeds": ("Edit", edit(seeds=seeds()), INVALID, "empty batch"),
    "no input": ("Edit", edit(), INVALID, "no input"),
    "too many seeds": ("Edit", edit(seeds=seeds(*range(65))), INVALID, "too many items"),
    "negative seed": ("Edit", edit(seeds=seeds(-1)), INVALID, "seeds must be >= 0"),
    # names
    "unknown direction": ("Edit", edit(seeds=seeds(0), edits=[x(1.0, "zoom")]), INVALID, "zoom"),
    "empty direction": ("Edit", edit(seeds=seeds(0), edits=[x(1.0, "")]), INVALID, "unknown direction ''"),
    "100 kB direction name": ("Edit", edit(seeds=seeds(0), edits=[x(1.0, BIG_NAME)]), INVALID,
                              "unknown direction"),
    "inf amount": ("Edit", edit(seeds=seeds(0), edits=[x(float("inf"))]), INVALID, "finite"),
    "nan amount": ("Edit", edit(seeds=seeds(0), edits=[x(float("nan"))]), INVALID, "finite"),
    "unknown editor": ("Edit", edit(seeds=seeds(0), editor="gan"), INVALID, "unknown editor"),
    "unknown model": ("Edit", edit(seeds=seeds(0), model="big"), NOT_FOUND, "no model named"),
    "100 kB model name": ("Edit", edit(seeds=seeds(0), model=BIG_NAME), NOT_FOUND, "no model named"),
    "GetModel unknown": ("GetModel", pb.GetModelRequest(name="nope").SerializeToString(), NOT_FOUND, "nope"),
    # per-item amounts
    "edits and amounts": ("Edit", edit(seeds=seeds(0), edits=[x(1.0)], amounts=per_item([[0, 0, 0, 0]])),
                          INVALID, "not both"),
    "amounts shape": ("Edit", edit(seeds=seeds(0, 1), amounts=per_item(np.zeros((2, 3)))), INVALID,
                      "expected [n, K]"),
    "amounts NaN": ("Edit", edit(seeds=seeds(0), amounts=per_item([[np.nan, 0, 0, 0]])), INVALID, "NaN"),
    "amounts 3-d": ("Edit", edit(seeds=seeds(0), amounts=per_item(np.zeros((1, 4, 1)))), INVALID, "dimensions"),
    "amount columns repeated": ("Edit", edit(seeds=seeds(0), amounts=per_item([[1, 2]], ["x", "x"])), INVALID,
                                "distinct"),
    "amount column unknown": ("Edit", edit(seeds=seeds(0), amounts=per_item([[1]], ["zoom"])), INVALID,
                              "distinct names"),
    # Traverse
    "steps 0": ("Traverse", traverse(steps=0), INVALID, "steps must be >= 1"),
    "steps -5": ("Traverse", traverse(steps=-5), INVALID, "steps must be >= 1"),
    "steps 2^31-1": ("Traverse", traverse(steps=2**31 - 1), INVALID, "too many items"),
    "traverse unknown direction": ("Traverse", traverse(direction="zoom"), INVALID, "zoom"),
    "traverse no direction": ("Traverse", traverse(direction=""), INVALID, "unknown direction ''"),
    "traverse no input": ("Traverse", pb.TraverseRequest(direction="x", steps=3).SerializeToString(), INVALID,
                          "no input"),
    "traverse two latents": ("Traverse", pb.TraverseRequest(latent=latents(np.zeros((2, 8))), direction="x",
                                                            steps=3).SerializeToString(), INVALID, "one latent"),
    "traverse wrong width": ("Traverse", pb.TraverseRequest(latent=latents(np.zeros((1, 5))), direction="x",
                                                            steps=3).SerializeToString(), INVALID, "width 5"),
    "traverse NaN start": ("Traverse", traverse(start=float("nan"), stop=1.0), INVALID, "must be finite"),
    "traverse Inf stop": ("Traverse", traverse(start=0.0, stop=float("inf")), INVALID, "must be finite"),
    # Generate
    "generate no input": ("Generate", generate(), INVALID, "no input"),
    "generate NaN": ("Generate", generate(latents=latents(NAN_ROW)), INVALID, "NaN"),
    "generate empty seeds": ("Generate", generate(seeds=seeds()), INVALID, "empty batch"),
    "generate unknown model": ("Generate", generate(seeds=seeds(0), model="big"), NOT_FOUND, "no model named"),
}


@pytest.fixture(scope="module")
def model(tiny_bundle):
    return curvedit.load(tiny_bundle)


@pytest.fixture(scope="module")
def server(tiny_bundle):
    config = ServeConfig(port=0, http_port=0, metrics_port=0, models=(str(tiny_bundle),), max_batch_size=16,
                         max_queue_delay_ms=1, max_items_per_request=64, max_queue_size=256)
    with BackgroundServer(config) as bg:
        yield bg


@pytest.fixture(scope="module")
def client(server):
    with Client(f"127.0.0.1:{server.port}", timeout=30) as c:
        yield c


def test_there_are_at_least_forty_bad_inputs():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_its_own_code_one_line_and_the_server_keeps_serving(server, client, model, case, caplog):
    rpc, payload, code, text = CASES[case]
    kind = "unary_stream" if rpc == "Traverse" else "unary_unary"
    call = raw(client.channel, rpc, kind)
    caplog.clear()
    with caplog.at_level(logging.INFO), pytest.raises(grpc.RpcError) as info:
        answer = call(payload, timeout=10)
        if kind == "unary_stream":
            list(answer)
    assert info.value.code() == code, info.value.details()
    assert text in info.value.details()
    assert len(info.value.details()) < 600  # names are cut short: a 100 kB name is not echoed back
    records = [r for r in caplog.records if r.name.startswith(("curvedit", "grpc"))]
    assert len(records) <= 1 and all(r.exc_info is None and r.levelno < logging.ERROR for r in records), records
    np.testing.assert_allclose(client.edit(seeds=[0], edits={"x": 1}).latents,
                               model.edit(model.sample(1, seed=0), {"x": 1}), atol=ATOL)


def test_corrupt_message_in_a_stream_fails_only_that_message(client, model):
    stream = raw(client.channel, "EditStream", "stream_stream")
    good = [edit_request(seeds=[i], edits={"x": 1.0}, id=f"r{i}").SerializeToString() for i in range(3)]
    answers = [pb.EditStreamResponse.FromString(b) for b in
               stream(iter([good[0], bytes.fromhex("ffffffff0f01"), good[1], good[2]]), timeout=30)]
    errors = [a for a in answers if a.HasField("error")]
    assert len(answers) == 4 and len(errors) == 1
    assert errors[0].error.code == INVALID.value[0] and "not a valid EditRequest" in errors[0].error.message
    results = {a.id: codec.from_tensor(a.result.latents) for a in answers if a.HasField("result")}
    np.testing.assert_allclose(results["r2"], model.edit(model.sample(1, seed=2), {"x": 1.0}), atol=ATOL)


def test_refusals_are_counted_by_reason(server, client):
    port = server.server.metrics_port
    before = metric(port, "curvedit_rejections_total", reason="invalid")
    handled = metric(port, "grpc_server_handled_total", grpc_method="Edit", grpc_code="INVALID_ARGUMENT")
    for payload in (bytes.fromhex("ffffffff0f01"), edit(seeds=seeds(0), edits=[x(1.0), x(1.0)]),
                    edit(seeds=seeds(0), image_format=99)):
        with pytest.raises(grpc.RpcError):
            raw(client.channel, "Edit")(payload, timeout=10)
    assert metric(port, "curvedit_rejections_total", reason="invalid") - before == 3
    after = metric(port, "grpc_server_handled_total", grpc_method="Edit", grpc_code="INVALID_ARGUMENT")
    assert after - handled == 3
