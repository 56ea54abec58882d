"""Each weight byte stored once: the shared store, graphs that point into the safetensors files, and the sizes
that let the tree travel to a GPU machine (64 MiB at most; the target is 32)."""

import hashlib
import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import make_tiny_bundle

import curvedit
from curvedit.bundle import BundleError, copy_bundle, load_bundle, read_manifest
from curvedit.models import bundle_files
from curvedit.models.bundle_files import SHARED, share_identical, shared_store

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = curvedit.list_models()
MIN_BYTES = 1024  # export.external_weights.MIN_BYTES: smaller tensors stay inline in graphs


def _tensors(file: Path):
    """``(name, raw bytes)`` of every tensor of at least MIN_BYTES a safetensors or ONNX file stores itself."""
    data = file.read_bytes()
    if file.suffix == ".safetensors":
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + size])
        header.pop("__metadata__", None)
        for name, entry in header.items():
            begin, end = entry["data_offsets"]
            if end - begin >= MIN_BYTES:
                yield name, data[8 + size + begin : 8 + size + end]
    elif file.suffix == ".onnx":
        onnx = pytest.importorskip("onnx")
        model = onnx.load_from_string(data)
        for tensor in model.graph.initializer:
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                raw = onnx.numpy_helper.to_array(tensor).tobytes()
                if len(raw) >= MIN_BYTES:
                    yield tensor.name, raw


def test_no_weight_tensor_is_stored_twice_in_the_shipped_models():
    seen: dict[str, str] = {}
    for file in sorted(p for p in shared_store().parent.rglob("*") if p.suffix in (".safetensors", ".onnx")):
        for name, raw in _tensors(file):
            digest = hashlib.sha256(raw).hexdigest()
            where = f"{file.relative_to(shared_store().parent)}:{name}"
            assert digest not in seen, f"{where} stores the same {len(raw)} bytes as {seen[digest]}"
            seen[digest] = where


def test_the_shapes_regressor_is_stored_once_for_five_models():
    manifests = {n: read_manifest(curvedit.resolve_model(n)) for n in SHIPPED if n.startswith("shapes")}
    holders = [n for n, manifest in manifests.items() if "regressor" in manifest]
    shas = {manifests[n]["files"]["regressor.safetensors"] for n in holders}
    assert len(holders) == 5 and len(shas) == 1
    assert not any((curvedit.resolve_model(n) / "regressor.safetensors").exists() for n in holders)
    assert (shared_store() / f"{shas.pop()}.safetensors").is_file()


def test_a_copied_bundle_takes_its_shared_files_along(tmp_path, monkeypatch):
    source = curvedit.resolve_model("shapes-vae")
    copied = copy_bundle(source, tmp_path / "copy")
    bare = shutil.copytree(source, tmp_path / "bare")
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(bundle_files, "shared_store", lambda: tmp_path / "empty")  # as on another machine
    assert (copied / "regressor.safetensors").is_file()
    assert load_bundle(copied).regressor is not None
    with pytest.raises(BundleError, match=r"lists \S+\.safetensors but neither the bundle nor curvedit's "
                                          r"shared store .* holds it; .*`curvedit export --out`"):
        load_bundle(bare)


def test_a_tampered_shared_file_is_refused(tmp_path, monkeypatch):
    store = shutil.copytree(shared_store(), tmp_path / SHARED)
    monkeypatch.setattr(bundle_files, "shared_store", lambda: store)
    sha = read_manifest(curvedit.resolve_model("shapes32"))["files"]["regressor.safetensors"]
    data = bytearray((store / f"{sha}.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (store / f"{sha}.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"checksum mismatch for .*_shared/.*\.safetensors"):
        load_bundle(curvedit.resolve_model("shapes32"))


def test_sharing_moves_identical_files_into_the_store_and_both_bundles_still_load(tmp_path, monkeypatch):
    root = tmp_path / "bundles"
    for name in ("one", "two"):
        make_tiny_bundle(root / name)
    monkeypatch.setattr(bundle_files, "shared_store", lambda: root / SHARED)
    manifests = {name: read_manifest(root / name) for name in ("one", "two")}
    moved = share_identical(root, manifests)
    assert moved and all(len(files) == 2 for files in moved.values())
    assert {f"one/{n}" for n in manifests["one"]["files"]} == {f for files in moved.values() for f in files
                                                                if f.startswith("one/")}
    for name in ("one", "two"):
        assert not any(p.suffix == ".safetensors" for p in (root / name).iterdir())
        load_bundle(root / name)


def _tracked_bytes() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return sum((ROOT / name).stat().st_size for name in files.decode().split("\0") if name
               and (ROOT / name).is_file())


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_the_tracked_tree_fits_a_gpu_run_with_room():
    """A GPU run copies at most 64 MiB of working tree; the tree stays under half of that."""
    assert _tracked_bytes() <= 32 * 2**20, f"{_tracked_bytes() / 2**20:.1f} MiB tracked"
