"""Render the overlays into deploy/kubernetes/rendered/ without kubectl: the subset of kustomize these manifests
use (resources, images, inline JSON 6902 patches with a kind/name target), so that CI, which has no kubectl,
checks what an operator's `kubectl kustomize deploy/kubernetes/overlays/<cpu|gpu>` gives. tests/test_kubernetes.py
compares the two wherever kubectl is installed, and fails on any kustomize field this renderer does not know.

    python deploy/kubernetes/render.py           # rewrite rendered/cpu.yaml and rendered/gpu.yaml
    python deploy/kubernetes/render.py --check   # exit 1 if either is out of date
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
OVERLAYS = ("cpu", "gpu")
KNOWN = {"apiVersion", "kind", "resources", "images", "patches"}


def render(folder: Path) -> list[dict]:
    """The resources of the kustomization in ``folder``, with its images and patches applied."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(spec) - KNOWN
    if unknown:
        raise ValueError(f"{folder}/kustomization.yaml uses {sorted(unknown)}, which render.py does not apply; "
                         "teach it, or render with kubectl kustomize")
    docs: list[dict] = []
    for entry in spec.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for image in spec.get("images", []):
        for doc in docs:
            for container in _containers(doc):
                name, _, _ = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    for patch in spec.get("patches", []):
        target = patch["target"]
        hits = [d for d in docs if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        if not hits:
            raise ValueError(f"{folder}: a patch targets {target}, which no resource is")
        for doc in hits:
            for op in yaml.safe_load(patch["patch"]):
                apply(doc, op)
    return docs


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def apply(doc: dict, op: dict) -> None:
    """One JSON 6902 operation (add, replace, remove) on ``doc``, in place."""
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    kind = op["op"]
    if isinstance(node, list):
        if kind == "add":
            node.insert(len(node) if last == "-" else int(last), copy.deepcopy(op["value"]))
        elif kind == "replace":
            node[int(last)] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del node[int(last)]
        else:
            raise ValueError(f"render.py applies add, replace and remove, not {kind!r}")
    elif kind in ("add", "replace"):
        if kind == "replace" and last not in node:
            raise ValueError(f"replace of {op['path']}, which does not exist")
        node[last] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del node[last]
    else:
        raise ValueError(f"render.py applies add, replace and remove, not {kind!r}")


def rendered_text(overlay: str) -> str:
    head = (f"# Rendered from deploy/kubernetes/overlays/{overlay} by deploy/kubernetes/render.py (the same as "
            f"`kubectl kustomize\n# deploy/kubernetes/overlays/{overlay}`, which tests/test_kubernetes.py checks "
            "where kubectl is installed). Do not edit.\n")
    return head + yaml.safe_dump_all(render(HERE / "overlays" / overlay), sort_keys=False)


def main(argv: list[str]) -> int:
    stale = []
    for overlay in OVERLAYS:
        path = HERE / "rendered" / f"{overlay}.yaml"
        text = rendered_text(overlay)
        if "--check" in argv:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python deploy/kubernetes/render.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
