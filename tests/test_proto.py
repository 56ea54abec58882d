"""The committed stubs are exactly what `make proto` generates, and the .proto documents everything."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROTO = ROOT / "proto" / "curvedit" / "v1" / "latent_edit.proto"
OIP_PROTO = ROOT / "proto" / "curvedit" / "inference" / "grpc_service.proto"
PROTOS = (PROTO, OIP_PROTO)


@pytest.mark.parametrize("proto", PROTOS, ids=lambda p: p.name)
def test_regenerating_stubs_gives_identical_files(tmp_path, proto):
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={tmp_path}",
                    f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", str(proto)], check=True)
    package = proto.parent.relative_to(ROOT / "proto")
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
        name = proto.stem + suffix
        fresh = (tmp_path / package / name).read_text()
        committed = (proto.parent / name).read_text()
        assert fresh == committed, f"{name} is stale or hand-edited: run `make proto` and commit the result"


def _declarations():
    decl = re.compile(r"^\s*(rpc |message |enum |service |(repeated |optional )?[\w.<>, ]+ \w+ = \d+;|\w+ = \d+;)")
    for proto in PROTOS:
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            if decl.match(line) and not line.strip().startswith("//"):
                yield f"{proto.name}:{i + 1}", line.strip(), lines[i - 1].strip()


@pytest.mark.parametrize(("line", "declaration", "above"), list(_declarations()),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_every_rpc_message_and_field_has_a_comment(line, declaration, above):
    assert above.startswith("//"), f"{line} `{declaration}` needs a // comment above it"


def test_service_has_the_issue_rpcs():
    from curvedit.v1 import latent_edit_pb2 as pb

    methods = set(pb.DESCRIPTOR.services_by_name["LatentEditService"].methods_by_name)
    assert methods == {"ListModels", "GetModel", "Edit", "EditStream", "Traverse", "Generate", "Encode",
                       "Translate"}
    assert pb.DESCRIPTOR.package == "curvedit.v1"


def test_the_open_inference_protocol_keeps_its_wire_names_and_numbers():
    """Wire compatibility with every OIP client rests on these names and field numbers (the protocol's own)."""
    from curvedit.inference import grpc_service_pb2 as oip

    service = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert oip.DESCRIPTOR.package == "inference" and service.full_name == "inference.GRPCInferenceService"
    assert set(service.methods_by_name) == {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
                                            "ModelMetadata", "ModelInfer", "RepositoryIndex",
                                            "RepositoryModelLoad", "RepositoryModelUnload"}

    def numbers(message) -> dict[str, int]:
        return {f.name: f.number for f in message.DESCRIPTOR.fields}

    request, response = oip.ModelInferRequest, oip.ModelInferResponse
    assert numbers(request) == {"model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "inputs": 5,
                                "outputs": 6, "raw_input_contents": 7}
    assert numbers(request.InferInputTensor) == {"name": 1, "datatype": 2, "shape": 3, "parameters": 4,
                                                 "contents": 5}
    assert numbers(request.InferRequestedOutputTensor) == {"name": 1, "parameters": 2}
    assert numbers(response) == {"model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "outputs": 5,
                                 "raw_output_contents": 6}
    assert numbers(oip.InferParameter) == {"bool_param": 1, "int64_param": 2, "string_param": 3,
                                           "double_param": 4, "uint64_param": 5}
    assert numbers(oip.InferTensorContents)["fp32_contents"] == 6
    assert numbers(oip.InferTensorContents)["uint_contents"] == 4
    assert numbers(oip.ModelMetadataResponse) == {"name": 1, "versions": 2, "platform": 3, "inputs": 4,
                                                  "outputs": 5}
    assert numbers(oip.RepositoryIndexResponse.ModelIndex) == {"name": 1, "version": 2, "state": 3, "reason": 4}
    for load in (oip.RepositoryModelLoadRequest, oip.RepositoryModelUnloadRequest):  # Triton's numbers
        assert numbers(load) == {"repository_name": 1, "model_name": 2, "parameters": 3}
    assert numbers(oip.ModelRepositoryParameter) == {"bool_param": 1, "int64_param": 2, "string_param": 3,
                                                     "bytes_param": 4}
