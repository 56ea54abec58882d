"""Model bundles: a directory with ``manifest.json`` and safetensors weights (never pickle).

Manifest (format version 1)::

    {"format": "curvedit-bundle", "format_version": 1, "name": ..., "version": ...,
     "latent_dim": d, "image_shape": [H, W, 3], "seed": ..., "training": {...},
     "generator": {"kind": "dcgan" | "known-chart", "config": {...}, "file": "generator.safetensors"},
     "regressor": {"kind": "factor-cnn", "config": {...}, "file": ...}            # optional instrument
     "default_editor": "decurved",
     "editors": {NAME: {"kind": ..., "mode": ..., "config": {...}, "file": ...,
                        "directions": [{"index": 0, "name": "x"}, ...], "training": {...}}},
     "files": {"generator.safetensors": "<sha256>", ...}}

Every file the manifest names must be listed in ``files`` with its sha256; loading checks them all and the
format version, and refuses a mismatch with a ``BundleError`` that names the file and the fix. Writers add to
a bundle by rewriting ``manifest.json`` atomically, after the new files are in place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from curvedit.models import all_editors  # noqa: F401  (registers every editor kind)
from curvedit.models.editors import Editor, build_editor
from curvedit.models.files import atomic_write, sha256_file, write_json
from curvedit.models.generator import Generator, GeneratorConfig
from curvedit.models.known_chart import KnownChart, KnownChartConfig
from curvedit.models.regressor import FactorRegressor

FORMAT = "curvedit-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


# Generator kinds a bundle can hold: the trained DCGAN, and the analytic known-chart generator (its config
# carries the curvature) used by ``curvedit eval``.
GENERATOR_KINDS = {"dcgan": (Generator, GeneratorConfig), "known-chart": (KnownChart, KnownChartConfig)}


def generator_kind(generator: torch.nn.Module) -> str:
    for kind, (cls, _) in GENERATOR_KINDS.items():
        if isinstance(generator, cls):
            return kind
    raise BundleError(f"cannot store a {type(generator).__name__} generator; known kinds: "
                      f"{sorted(GENERATOR_KINDS)}")


class BundleError(ValueError):
    """A bundle is missing, malformed, tampered with, or of an unsupported version."""


@dataclass
class Bundle:
    path: Path
    manifest: dict
    generator: Generator | KnownChart
    editors: dict[str, Editor]
    regressor: FactorRegressor | None = None
    extras: dict = field(default_factory=dict)

    @property
    def default_editor(self) -> str:
        return self.manifest["default_editor"]

    @property
    def version(self) -> str:
        return self.manifest.get("version", "0")


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def save_weights(directory: Path, filename: str, module: torch.nn.Module) -> str:
    """Write ``module``'s weights as safetensors (atomically); returns the file's sha256."""
    path = atomic_write(directory / filename, lambda tmp: save_file(_state(module), tmp))
    return sha256_file(path)


def editor_entry(name: str, editor: Editor, mode: str, training: dict | None = None) -> dict:
    return {
        "kind": editor.kind,
        "mode": mode,
        "config": editor.config(),
        "file": f"editor_{name}.safetensors",
        "directions": [{"index": i, "name": d} for i, d in enumerate(editor.directions)],
        "needs_training": editor.needs_training,
        "training": training or {},
    }


def write_bundle(path: str | Path, *, name: str, version: str, generator: Generator | KnownChart,
                 editors: dict[str, tuple[Editor, str, dict]], default_editor: str,
                 regressor: FactorRegressor | None = None, seed: int | None = None,
                 training: dict | None = None) -> Path:
    """Write a complete bundle. ``editors`` maps a name to ``(editor, mode, training report/config)``.

    The bundle is built in a temporary directory beside ``path`` and then swapped in, so ``path`` holds either
    the old bundle or the complete new one, never a mix (no stale files of an earlier bundle survive). A
    non-empty ``path`` that is not a bundle is refused rather than replaced.
    """
    if default_editor not in editors:
        raise BundleError(f"default_editor {default_editor!r} is not among the editors {sorted(editors)}")
    final = Path(path)
    if final.is_dir() and any(final.iterdir()) and not (final / MANIFEST).is_file():
        raise BundleError(f"{final} is a non-empty directory but not a bundle; choose another output directory")
    final.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        _write_bundle_files(path, name, version, generator, editors, default_editor, regressor, seed, training)
        os.chmod(path, 0o755)  # mkdtemp makes it owner-only
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
            os.replace(final, old / "bundle")
            os.replace(path, final)
            shutil.rmtree(old)
        else:
            os.replace(path, final)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return final


def _write_bundle_files(path: Path, name, version, generator, editors, default_editor, regressor, seed,
                        training) -> None:
    files = {"generator.safetensors": save_weights(path, "generator.safetensors", generator.eval())}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "latent_dim": generator.config.latent_dim,
        "image_shape": [generator.config.image_size, generator.config.image_size, 3],
        "seed": seed,
        "training": training or {},
        "generator": {"kind": generator_kind(generator), "config": generator.config.to_dict(),
                      "file": "generator.safetensors"},
        "default_editor": default_editor,
        "editors": {},
        "files": files,
    }
    if regressor is not None:
        files["regressor.safetensors"] = save_weights(path, "regressor.safetensors", regressor)
        manifest["regressor"] = {"kind": "factor-cnn", "config": {}, "file": "regressor.safetensors"}
    for editor_name, (editor, mode, report) in editors.items():
        entry = editor_entry(editor_name, editor, mode, report)
        files[entry["file"]] = save_weights(path, entry["file"], editor)
        manifest["editors"][editor_name] = entry
    write_json(path / MANIFEST, manifest)


def add_editor(path: str | Path, name: str, editor: Editor, mode: str, training: dict | None = None,
               make_default: bool = False) -> None:
    """Add (or replace) one editor in an existing bundle, then rewrite the manifest atomically."""
    path = Path(path)
    manifest = read_manifest(path)
    entry = editor_entry(name, editor, mode, training)
    manifest["files"][entry["file"]] = save_weights(path, entry["file"], editor)
    manifest["editors"][name] = entry
    if make_default:
        manifest["default_editor"] = name
    write_json(path / MANIFEST, manifest)


def add_file(path: str | Path, filename: str, section: str | None = None, entry: dict | None = None) -> None:
    """Register a file already written into the bundle (e.g. an ONNX graph): checksum it, and optionally
    record ``entry`` under ``manifest[section][filename]``."""
    path = Path(path)
    manifest = read_manifest(path)
    manifest["files"][filename] = sha256_file(path / filename)
    if section is not None:
        manifest.setdefault(section, {})[filename] = entry or {}
    write_json(path / MANIFEST, manifest)


def read_manifest(path: str | Path) -> dict:
    """Read and check ``manifest.json``: format, version and required keys; no weights are touched."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not a curvedit bundle: {MANIFEST} is missing (pass a bundle directory)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path} is not valid JSON ({exc}); re-export or retrain the bundle") from exc
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: format_version {version!r} is not supported by this curvedit "
            f"(reads version {FORMAT_VERSION}); upgrade curvedit or re-save the bundle with this version"
        )
    for key in ("latent_dim", "image_shape", "generator", "editors", "default_editor", "files"):
        if key not in manifest:
            raise BundleError(f"{manifest_path} lacks the required key {key!r}")
    return manifest


def verify_files(path: str | Path, manifest: dict) -> None:
    """Check every listed file's sha256; raise ``BundleError`` naming the first mismatch."""
    path = Path(path)
    for filename, expected in manifest["files"].items():
        file = path / filename
        if not file.is_file():
            raise BundleError(f"bundle {path} lists {filename} but the file is missing; restore or re-save it")
        actual = sha256_file(file)
        if actual != expected:
            raise BundleError(
                f"checksum mismatch for {file}: manifest says sha256 {expected[:12]}…, file has {actual[:12]}…; "
                "the file was modified or corrupted — restore it, or re-save the bundle"
            )


def _load_weights(path: Path, manifest: dict, filename: str, module: torch.nn.Module) -> None:
    if filename not in manifest["files"]:
        raise BundleError(f"{filename} is not listed with a checksum in {path / MANIFEST}; refusing to load it")
    try:
        module.load_state_dict(load_file(path / filename))
    except RuntimeError as exc:
        raise BundleError(f"{path / filename} does not match its config in the manifest: {exc}") from exc


def load_bundle(path: str | Path) -> Bundle:
    """Load a bundle after checking its version and every checksum. Modules come back in eval mode."""
    path = Path(path)
    manifest = read_manifest(path)
    verify_files(path, manifest)
    kind = manifest["generator"].get("kind", "dcgan")
    if kind not in GENERATOR_KINDS:
        raise BundleError(f"{path / MANIFEST}: unknown generator kind {kind!r}; this curvedit reads "
                          f"{sorted(GENERATOR_KINDS)} (upgrade curvedit)")
    generator_cls, config_cls = GENERATOR_KINDS[kind]
    generator = generator_cls(config_cls(**manifest["generator"]["config"]))
    _load_weights(path, manifest, manifest["generator"]["file"], generator)
    editors = {}
    for name, entry in manifest["editors"].items():
        editor = build_editor(entry["kind"], entry["config"])
        _load_weights(path, manifest, entry["file"], editor)
        editors[name] = editor.eval()
    if manifest["default_editor"] not in editors:
        raise BundleError(f"default_editor {manifest['default_editor']!r} is not among {sorted(editors)}")
    regressor = None
    if "regressor" in manifest:
        regressor = FactorRegressor()
        _load_weights(path, manifest, manifest["regressor"]["file"], regressor)
        regressor.eval()
    return Bundle(path, manifest, generator.eval(), editors, regressor)
