"""Where a bundle's files live, and reading them verified: each weight byte is stored once.

A file the manifest lists (``manifest["files"][name] = sha256``) is read from the bundle's directory or, when the
bundle does not hold it, from the **shared store**: ``curvedit/bundles/_shared/<sha256><suffix>``, content-
addressed, so the manifest's checksum (which the digest covers) names exactly one file. The shipped models keep
there what several of them hold byte for byte: the shapes factor regressor (five bundles) and the shapes-vae
editors that the PixelCNN reuses. ``share_identical`` moves such files there; ``materialize`` copies them back
into a bundle that leaves the package (``curvedit export --out``).

ONNX graphs store no weight of their own where a safetensors file of the bundle holds the same bytes: their
initializers are ONNX *external data* pointing into that file (location, offset, length), and the manifest's
``onnx`` entry lists the files a graph reads (``weights``). ``ort_session`` builds an ONNX Runtime session from the
verified graph bytes and the verified weight files, in memory: what runs is what was checked.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from importlib import resources
from pathlib import Path

MANIFEST = "manifest.json"  # every bundle directory holds one

SHARED = "_shared"


def shared_store() -> Path:
    """The package's shared store (it may not exist: then nothing is shared)."""
    return Path(str(resources.files("curvedit") / "bundles")) / SHARED


def shared_name(filename: str, sha256: str) -> str:
    return f"{sha256}{Path(filename).suffix}"


class BundleError(ValueError):
    """A bundle is missing, malformed, tampered with, or of an unsupported version (``curvedit.BundleError``)."""


def locate(path: Path, manifest: dict, filename: str) -> Path:
    """The file ``filename`` of the bundle at ``path``: its own copy, else the shared store's."""
    local = Path(path) / filename
    if local.is_file():
        return local
    sha = manifest["files"].get(filename)
    if sha is not None:
        shared = shared_store() / shared_name(filename, sha)
        if shared.is_file():
            return shared
    raise BundleError(f"bundle {path} lists {filename} but neither the bundle nor curvedit's shared store "
                      f"({shared_store()}) holds it; restore it, or copy bundles with `curvedit export --out`, "
                      "which copies shared files along")


def read_verified(path: Path, manifest: dict, filename: str) -> bytes:
    """The bytes of ``filename``, checked against the manifest's sha256 (``BundleError`` on a mismatch)."""
    file = locate(path, manifest, filename)
    data = file.read_bytes()
    actual, expected = hashlib.sha256(data).hexdigest(), manifest["files"][filename]
    if actual != expected:
        raise BundleError(f"checksum mismatch for {file}: manifest says sha256 {expected[:12]}…, file has "
                          f"{actual[:12]}…; the file was modified or corrupted — restore it or re-save the bundle")
    return data


def ort_session(path: Path, manifest: dict, filename: str, options=None, providers=("CPUExecutionProvider",)):
    """An ONNX Runtime session of graph ``filename``, built from verified bytes; the weight files its manifest
    entry lists (``weights``) are handed over in memory, so its external data resolves wherever they live."""
    import onnxruntime as ort

    options = options or ort.SessionOptions()
    weights = manifest.get("onnx", {}).get(filename, {}).get("weights", [])
    if weights:
        if not hasattr(options, "add_external_initializers_from_files_in_memory"):
            raise ValueError(f"{filename} reads its weights from {weights}, which needs onnxruntime >= 1.24 "
                             f"(have {ort.__version__}): pip install -U onnxruntime")
        buffers = [read_verified(path, manifest, name) for name in weights]
        options.add_external_initializers_from_files_in_memory(list(weights), buffers, [len(b) for b in buffers])
    return ort.InferenceSession(read_verified(path, manifest, filename), options, providers=list(providers))


def materialize(path: Path, manifest: dict) -> list[str]:
    """Copy every listed file the bundle at ``path`` takes from the shared store into the bundle itself (so it
    can leave the package); returns their names."""
    copied = []
    for filename in manifest["files"]:
        if not (Path(path) / filename).is_file():
            shutil.copyfile(locate(path, manifest, filename), Path(path) / filename)
            copied.append(filename)
    return copied


def share_identical(root: Path, manifests: dict[str, dict]) -> dict[str, list[str]]:
    """Move every file that two or more bundles under ``root`` (``manifests``: bundle name → manifest) hold byte
    for byte into ``root/_shared``; returns ``{shared file: [bundle/filename, ...]}``. Run on the shipped models
    after retraining one (the store must then be the package's, ``curvedit/bundles``)."""
    holders: dict[tuple[str, str], list[str]] = {}
    for name, manifest in manifests.items():
        for filename, sha in manifest["files"].items():
            if (root / name / filename).is_file():
                holders.setdefault((shared_name(filename, sha), sha), []).append(f"{name}/{filename}")
    moved = {}
    store = root / SHARED
    for (shared, sha), files in holders.items():
        if len(files) < 2 and not (store / shared).is_file():
            continue
        store.mkdir(exist_ok=True)
        if not (store / shared).is_file():
            shutil.copyfile(root / files[0], store / shared)
        if hashlib.sha256((store / shared).read_bytes()).hexdigest() != sha:
            raise ValueError(f"{store / shared} does not match its name; remove it and run again")
        for file in files:
            (root / file).unlink()
        moved[shared] = files
    return moved


def main(argv: list[str]) -> int:
    """``python -m curvedit.models.bundle_files share DIR``: share the identical files of DIR's bundles."""
    import json

    if len(argv) != 2 or argv[0] != "share":
        print("usage: python -m curvedit.models.bundle_files share DIR (e.g. curvedit/bundles)", file=sys.stderr)
        return 2
    root = Path(argv[1])
    manifests = {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob("*/manifest.json"))}
    for shared, files in share_identical(root, manifests).items():
        print(f"{SHARED}/{shared}: {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
