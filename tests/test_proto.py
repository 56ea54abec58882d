"""The committed stubs are exactly what `make proto` generates, and the .proto documents everything."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROTO = ROOT / "proto" / "curvedit" / "v1" / "latent_edit.proto"
GENERATED = ("latent_edit_pb2.py", "latent_edit_pb2.pyi", "latent_edit_pb2_grpc.py")


def test_regenerating_stubs_gives_identical_files(tmp_path):
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={tmp_path}",
                    f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", str(PROTO)], check=True)
    for name in GENERATED:
        fresh = (tmp_path / "curvedit" / "v1" / name).read_text()
        committed = (PROTO.parent / name).read_text()
        assert fresh == committed, f"{name} is stale or hand-edited: run `make proto` and commit the result"


def _declarations():
    lines = PROTO.read_text().splitlines()
    decl = re.compile(r"^\s*(rpc |message |enum |service |(repeated |optional )?[\w.]+ \w+ = \d+;|\w+ = \d+;)")
    for i, line in enumerate(lines):
        if decl.match(line) and not line.strip().startswith("//"):
            yield i, line.strip(), lines[i - 1].strip()


@pytest.mark.parametrize(("line", "declaration", "above"), list(_declarations()),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_every_rpc_message_and_field_has_a_comment(line, declaration, above):
    assert above.startswith("//"), f"line {line + 1} `{declaration}` needs a // comment above it"


def test_service_has_the_issue_rpcs():
    from curvedit.v1 import latent_edit_pb2 as pb

    methods = set(pb.DESCRIPTOR.services_by_name["LatentEditService"].methods_by_name)
    assert methods == {"ListModels", "GetModel", "Edit", "EditStream", "Traverse", "Generate", "Encode"}
    assert pb.DESCRIPTOR.package == "curvedit.v1"
