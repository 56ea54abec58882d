"""Model bundles: a directory with ``manifest.json`` and safetensors weights (never pickle).

Manifest (format version 2)::

    {"format": "curvedit-bundle", "format_version": 2, "name": ..., "version": ...,
     "latent_dim": d, "image_shape": [H, W, 3], "seed": ..., "training": {...},
     "generator": {"kind": <generator family>, "config": {...}, "file": "generator.safetensors"},
     "regressor": {"kind": "factor-cnn", "config": {...}, "factors": [...], "file": ...}   # optional instrument
     "default_editor": "decurved",
     "editors": {NAME: {"kind": ..., "mode": ..., "config": {...}, "file": ...,
                        "directions": [{"index": 0, "name": "x"}, ...], "training": {...}}},
     "onnx": {FILE: {...}},                                                            # verified graphs
     "alignments": {TARGET: {"kind": "factor-shift", "config": {...}, "file": ...,      # optional: maps of this
                             "source_editor": ..., "target": {"name", "digest", "editor"}, "training": {...}}},
                                                                  # model's latents onto another's (alignment)
     "files": {"generator.safetensors": "<sha256>", ...},
     "manifest_sha256": "<sha256 of everything above>"}

Integrity, checked on every load, each failure a ``BundleError`` that names the file and the fix:
- every file listed in ``files`` matches its sha256 (a file the bundle does not hold itself comes from the shared
  store by that checksum: ``curvedit.models.bundle_files``);
- ``manifest_sha256`` matches the manifest itself, so no field can be edited by hand without notice; it is the
  bundle's **digest** (``curvedit info`` prints it; ``curvedit serve --expect-digest`` pins it): it covers every
  file's checksum and every field that defines what the model does;
- what the manifest says a module is (family or editor kind, config, direction names and order) must equal what
  the module's weight file says it was written as (safetensors metadata), and ``latent_dim`` / ``image_shape``
  must agree with the generator and every editor.

Writers change a bundle only through ``write_bundle`` / ``add_editor`` / ``add_file`` / ``remove_file``, which
rewrite ``manifest.json`` atomically with a fresh digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from curvedit.models import all_editors, all_families  # noqa: F401  (register every editor kind and family)
from curvedit.models.alignment import ALIGNMENT_KIND, LatentAlignment
from curvedit.models.bundle_files import MANIFEST, BundleError, locate, materialize
from curvedit.models.editors import Editor, build_editor
from curvedit.models.families import GeneratorFamily, build_generator
from curvedit.models.files import atomic_write, sha256_file
from curvedit.models.regressor import FactorRegressor

FORMAT = "curvedit-bundle"
FORMAT_VERSION = 2
DIGEST_KEY = "manifest_sha256"
MIN_DIGEST_PREFIX = 12
_META_KEY = "curvedit"  # safetensors metadata: JSON of what the weights were written as


@dataclass
class Bundle:
    path: Path
    manifest: dict
    generator: GeneratorFamily
    editors: dict[str, Editor]
    regressor: FactorRegressor | None = None
    extras: dict = field(default_factory=dict)
    alignments: dict[str, LatentAlignment] = field(default_factory=dict)  # target model's name → map

    @property
    def default_editor(self) -> str:
        return self.manifest["default_editor"]

    @property
    def version(self) -> str:
        return self.manifest.get("version", "0")

    @property
    def digest(self) -> str:
        """sha256 of the manifest, which lists every file's sha256: one identity for the whole bundle."""
        return self.manifest[DIGEST_KEY]


# -- writing ----------------------------------------------------------------------------------------------------
def _canonical(data) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON, without the digest field itself."""
    return hashlib.sha256(_canonical({k: v for k, v in manifest.items() if k != DIGEST_KEY})).hexdigest()


def write_manifest(path: str | Path, manifest: dict) -> None:
    """Stamp ``manifest`` with its digest and write it into bundle ``path`` atomically."""
    manifest = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    manifest[DIGEST_KEY] = manifest_digest(manifest)
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_write(Path(path) / MANIFEST, lambda tmp: Path(tmp).write_text(text))


def weights_meta(role: str, kind: str, config: dict) -> dict:
    """What a weight file is: ``role`` (generator, editor, regressor), kind and config, as JSON would hold it."""
    return json.loads(json.dumps({"role": role, "kind": kind, "config": config}))  # tuples → lists, as in JSON


def save_weights(directory: Path, filename: str, module: torch.nn.Module, meta: dict,
                 float16: tuple[str, ...] = ()) -> str:
    """Write ``module``'s weights as safetensors (atomically) with ``meta`` (what they are) in the file's
    metadata; returns the file's sha256. Float tensors whose names start with one of ``float16`` are stored in
    half precision (loading casts them back to the module's float32)."""
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    state = {k: v.half() if v.is_floating_point() and k.startswith(float16) else v for k, v in state.items()}
    metadata = {_META_KEY: json.dumps(meta, sort_keys=True)}
    path = atomic_write(directory / filename, lambda tmp: save_file(state, tmp, metadata=metadata))
    return sha256_file(path)


def editor_entry(name: str, editor: Editor, mode: str, training: dict | None = None) -> dict:
    return {
        "kind": editor.kind,
        "mode": mode,
        "config": weights_meta("editor", editor.kind, editor.config())["config"],
        "file": f"editor_{name}.safetensors",
        "directions": [{"index": i, "name": d} for i, d in enumerate(editor.directions)],
        "needs_training": editor.needs_training,
        "training": training or {},
    }


def write_bundle(path: str | Path, *, name: str, version: str, generator: GeneratorFamily,
                 editors: dict[str, tuple[Editor, str, dict]], default_editor: str,
                 regressor: FactorRegressor | None = None, seed: int | None = None,
                 training: dict | None = None, generator_float16: tuple[str, ...] = ()) -> Path:
    """Write a complete bundle. ``editors`` maps a name to ``(editor, mode, training report/config)``;
    ``generator_float16``: prefixes of the generator's weights stored in half precision (recorded in the
    manifest's ``generator`` entry as ``float16``).

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
        _write_bundle_files(path, name, version, generator, editors, default_editor, regressor, seed, training,
                            generator_float16)
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
                        training, generator_float16) -> None:
    gen_meta = weights_meta("generator", generator.family, generator.config.to_dict())
    files = {"generator.safetensors": save_weights(path, "generator.safetensors", generator.eval(), gen_meta,
                                                   generator_float16)}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "latent_dim": generator.latent_dim,
        "image_shape": list(generator.image_shape),
        "seed": seed,
        "training": training or {},
        "generator": {"kind": generator.family, "config": gen_meta["config"], "file": "generator.safetensors",
                      **({"float16": list(generator_float16)} if generator_float16 else {})},
        "default_editor": default_editor,
        "editors": {},
        "files": files,
    }
    if regressor is not None:
        reg_meta = weights_meta("regressor", "factor-cnn", regressor.config())
        files["regressor.safetensors"] = save_weights(path, "regressor.safetensors", regressor, reg_meta)
        manifest["regressor"] = {"kind": "factor-cnn", "config": reg_meta["config"],
                                 "factors": list(regressor.factor_names), "file": "regressor.safetensors"}
    for editor_name, (editor, mode, report) in editors.items():
        entry = editor_entry(editor_name, editor, mode, report)
        files[entry["file"]] = save_weights(path, entry["file"], editor, weights_meta("editor", editor.kind,
                                                                                editor.config()))
        manifest["editors"][editor_name] = entry
    write_manifest(path, manifest)


def copy_bundle(source: str | Path, target: str | Path) -> Path:
    """Copy the bundle at ``source`` into the new directory ``target`` with every file it lists, the ones it takes
    from the shared store included, so the copy stands on its own."""
    source, target = Path(source), Path(target)
    shutil.copytree(source, target, dirs_exist_ok=True)
    materialize(target, read_manifest(target))
    return target


def borrow_generator_weights(path: str | Path, prefix: str, source: str | Path, source_name: str) -> None:
    """Make the bundle at ``path`` take its generator's weights under ``prefix`` from the bundle at ``source``
    (named ``source_name``), which holds the same ones: its weight file is copied in as
    ``generator_<source_name>.safetensors`` (the shared store keeps one copy of identical files) and the
    generator's own file is rewritten without them. Refused unless the values are equal (to the half-precision
    rounding where this bundle stored them in float16)."""
    path, source = Path(path), Path(source)
    manifest, theirs = read_manifest(path), read_manifest(source)
    spec = manifest["generator"]
    own_file = locate(path, manifest, spec["file"])
    with safe_open(own_file, framework="pt") as f:
        metadata = f.metadata()
    own = load_file(own_file)
    borrowed_file = locate(source, theirs, theirs["generator"]["file"])
    taken = {k: v for k, v in load_file(borrowed_file).items() if k.startswith(prefix)}
    mine = {k: v for k, v in own.items() if k.startswith(prefix)}
    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        if b.dtype != torch.float16:
            return torch.equal(a.double(), b.double())
        # round to nearest: within 2⁻¹¹ relative, and half the spacing of float16's subnormals (2⁻²⁴) near 0
        return torch.allclose(a.double(), b.double(), rtol=2.0**-11, atol=2.0**-25)

    if set(taken) != set(mine) or not all(same(taken[k], mine[k]) for k in mine):
        raise BundleError(f"{source} does not hold the same weights under {prefix!r} as {path}: nothing borrowed")
    filename = f"generator_{source_name}.safetensors"
    shutil.copyfile(borrowed_file, path / filename)
    kept = {k: v for k, v in own.items() if not k.startswith(prefix)}
    atomic_write(path / spec["file"], lambda tmp: save_file(kept, tmp, metadata=metadata))
    manifest["files"][spec["file"]] = sha256_file(path / spec["file"])
    manifest["files"][filename] = sha256_file(path / filename)
    spec["borrow"] = {"prefix": prefix, "file": filename, "from": source_name}
    if all(p.startswith(prefix) for p in spec.get("float16", ())):
        spec.pop("float16", None)  # what it stored in half precision is the source's now
    write_manifest(path, manifest)


def add_editor(path: str | Path, name: str, editor: Editor, mode: str, training: dict | None = None,
               make_default: bool = False) -> None:
    """Add (or replace) one editor in an existing bundle, then rewrite the manifest atomically."""
    path = Path(path)
    manifest = read_manifest(path)
    if editor.latent_dim != manifest["latent_dim"]:
        raise BundleError(f"editor {name!r} has latent dim {editor.latent_dim}, the bundle "
                          f"{manifest['latent_dim']}")
    entry = editor_entry(name, editor, mode, training)
    manifest["files"][entry["file"]] = save_weights(path, entry["file"], editor,
                                                    weights_meta("editor", editor.kind, editor.config()))
    manifest["editors"][name] = entry
    if make_default:
        manifest["default_editor"] = name
    write_manifest(path, manifest)


def add_file(path: str | Path, filename: str, section: str | None = None, entry: dict | None = None) -> None:
    """Register a file already written into the bundle (e.g. an ONNX graph): checksum it, and optionally
    record ``entry`` under ``manifest[section][filename]``."""
    path = Path(path)
    manifest = read_manifest(path)
    manifest["files"][filename] = sha256_file(path / filename)
    if section is not None:
        manifest.setdefault(section, {})[filename] = entry or {}
    write_manifest(path, manifest)


def add_alignment(path: str | Path, target: str, alignment: LatentAlignment, entry: dict) -> None:
    """Store (or replace) the map of this bundle's latents onto model ``target``'s, with ``entry`` (the source
    editor, the target's name, digest and editor, the training report) under ``manifest["alignments"][target]``;
    the weights are checksummed like every other file, so the digest covers the map."""
    path = Path(path)
    manifest = read_manifest(path)
    if alignment.latent_dim != manifest["latent_dim"]:
        raise BundleError(f"the alignment has latent dim {alignment.latent_dim}, the bundle "
                          f"{manifest['latent_dim']}")
    filename = f"alignment_{target}.safetensors"
    meta = weights_meta("alignment", ALIGNMENT_KIND, alignment.config())
    manifest["files"][filename] = save_weights(path, filename, alignment, meta)
    manifest.setdefault("alignments", {})[target] = {**entry, "kind": ALIGNMENT_KIND, "config": meta["config"],
                                                     "file": filename}
    write_manifest(path, manifest)


def remove_file(path: str | Path, filename: str, section: str | None = None) -> None:
    """Drop ``filename`` from the manifest (and ``manifest[section]``), then delete the file."""
    path = Path(path)
    manifest = read_manifest(path)
    listed = filename in manifest["files"] or filename in manifest.get(section or "", {})
    manifest["files"].pop(filename, None)
    if section is not None:
        manifest.get(section, {}).pop(filename, None)
    if listed:
        write_manifest(path, manifest)
    (path / filename).unlink(missing_ok=True)


# -- reading ----------------------------------------------------------------------------------------------------
def read_manifest(path: str | Path) -> dict:
    """Read and check ``manifest.json``: format, version, required keys and its own digest; no weights read."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not a curvedit bundle: {MANIFEST} is missing (pass a bundle directory)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path} is not valid JSON ({exc}); re-export or retrain the bundle") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_path}: not a {FORMAT!r} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: format_version {version!r} is not supported by this curvedit (reads version "
            f"{FORMAT_VERSION}, whose manifests are integrity-checked); retrain or re-save the bundle with this "
            "curvedit, or use the curvedit that wrote it"
        )
    for key in ("latent_dim", "image_shape", "generator", "editors", "default_editor", "files", DIGEST_KEY):
        if key not in manifest:
            raise BundleError(f"{manifest_path} lacks the required key {key!r}")
    if manifest_digest(manifest) != manifest[DIGEST_KEY]:
        raise BundleError(
            f"{manifest_path} does not match its own checksum ({DIGEST_KEY}): it was edited by hand or damaged, "
            "so what the model does (directions, shapes, configs) cannot be trusted; restore the original, or "
            "re-save the bundle with curvedit"
        )
    return manifest


def verify_files(path: str | Path, manifest: dict) -> None:
    """Check every listed file's sha256; raise ``BundleError`` naming the first mismatch."""
    path = Path(path)
    for filename, expected in manifest["files"].items():
        file = locate(path, manifest, filename)  # the bundle's own copy, or the shared store's
        actual = sha256_file(file)
        if actual != expected:
            raise BundleError(
                f"checksum mismatch for {file}: manifest says sha256 {expected[:12]}…, file has {actual[:12]}…; "
                "the file was modified or corrupted — restore it, or re-save the bundle"
            )


def check_digest(digest: str, expected: str | None, path: Path) -> None:
    """Refuse the bundle unless its digest starts with ``expected`` (at least ``MIN_DIGEST_PREFIX`` hex digits)."""
    if expected is None:
        return
    expected = expected.strip().lower()
    if len(expected) < MIN_DIGEST_PREFIX or any(c not in "0123456789abcdef" for c in expected):
        raise BundleError(f"expected digest {expected!r} must be at least {MIN_DIGEST_PREFIX} hex digits "
                          "(`curvedit info` prints a bundle's digest)")
    if not digest.startswith(expected):
        raise BundleError(f"bundle {path} has digest {digest}, not the expected {expected}…: refusing to use it "
                          "(another model, or a changed one)")


def _borrowed(path: Path, manifest: dict, borrow: dict, own: dict) -> dict:
    """The tensors a module takes from another model's weight file: those under ``borrow["prefix"]`` of the file
    ``borrow["file"]`` the manifest lists (the shipped PixelCNN's encoder is the shapes-vae's)."""
    filename, prefix = borrow["file"], borrow["prefix"]
    if filename not in manifest["files"]:
        raise BundleError(f"{filename} is not listed with a checksum in {path / MANIFEST}; refusing to load it")
    taken = {k: v for k, v in load_file(locate(path, manifest, filename)).items() if k.startswith(prefix)}
    if not taken or any(k.startswith(prefix) for k in own):
        raise BundleError(f"{path / MANIFEST}: the weights under {prefix!r} must come from {filename} alone "
                          f"({len(taken)} there, {sum(k.startswith(prefix) for k in own)} in the module's own "
                          "file); re-save the bundle")
    return taken


def _load_weights(path: Path, manifest: dict, filename: str, module: torch.nn.Module, meta: dict,
                  borrow: dict | None = None) -> None:
    """Load ``filename`` (and what ``borrow`` takes from another file) into ``module`` after checking the file was
    written as what ``meta`` says."""
    if filename not in manifest["files"]:
        raise BundleError(f"{filename} is not listed with a checksum in {path / MANIFEST}; refusing to load it")
    file = locate(path, manifest, filename)
    with safe_open(file, framework="pt") as f:
        written = json.loads((f.metadata() or {}).get(_META_KEY, "null"))
    if written != meta:
        raise BundleError(
            f"{path / MANIFEST} describes {filename} as {meta['role']} {meta['kind']!r} with config "
            f"{meta['config']}, but the weights were written as {written}: the manifest disagrees with its "
            "checksummed weights; restore the original manifest or re-save the bundle"
        )
    state = load_file(file)
    if borrow is not None:
        state.update(_borrowed(path, manifest, borrow, state))
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise BundleError(f"{file} does not match its config in the manifest: {exc}") from exc


def _consistent(path: Path, manifest: dict, generator: GeneratorFamily, editors: dict[str, Editor]) -> None:
    where = path / MANIFEST
    if manifest["latent_dim"] != generator.latent_dim:
        raise BundleError(f"{where}: latent_dim {manifest['latent_dim']} disagrees with the generator's "
                          f"{generator.latent_dim}; restore the original manifest")
    if list(manifest["image_shape"]) != list(generator.image_shape):
        raise BundleError(f"{where}: image_shape {manifest['image_shape']} disagrees with the generator's "
                          f"{list(generator.image_shape)}; restore the original manifest")
    for name, editor in editors.items():
        listed = [d.get("name") for d in sorted(manifest["editors"][name]["directions"], key=lambda d: d["index"])]
        if listed != editor.directions or editor.latent_dim != generator.latent_dim:
            raise BundleError(f"{where}: editor {name!r} lists directions {listed} (latent dim "
                              f"{manifest['latent_dim']}), its weights hold {editor.directions} (latent dim "
                              f"{editor.latent_dim}); restore the original manifest")


def load_bundle(path: str | Path, expect_digest: str | None = None) -> Bundle:
    """Load a bundle after checking its version, digest, every checksum and its self-consistency; modules come
    back in eval mode. ``expect_digest`` (the digest or a prefix of it) refuses any other bundle."""
    path = Path(path)
    manifest = read_manifest(path)
    check_digest(manifest[DIGEST_KEY], expect_digest, path)
    verify_files(path, manifest)
    try:
        spec = manifest["generator"]
        generator = build_generator(spec["kind"], spec["config"])
        _load_weights(path, manifest, spec["file"], generator, weights_meta("generator", spec["kind"],
                                                                             spec["config"]), spec.get("borrow"))
        generator.attach(path, manifest)
        editors = {}
        for name, entry in manifest["editors"].items():
            editor = build_editor(entry["kind"], entry["config"])
            _load_weights(path, manifest, entry["file"], editor, weights_meta("editor", entry["kind"],
                                                                               entry["config"]))
            editors[name] = editor.eval()
        regressor = None
        if "regressor" in manifest:
            spec = manifest["regressor"]
            regressor = FactorRegressor(**spec["config"])
            _load_weights(path, manifest, spec["file"], regressor, weights_meta("regressor", spec["kind"],
                                                                                 spec["config"]))
            regressor.eval()
        alignments = {}
        for target, entry in manifest.get("alignments", {}).items():
            if entry["kind"] != ALIGNMENT_KIND:
                raise BundleError(f"alignment to {target!r} is of unknown kind {entry['kind']!r}; upgrade "
                                  "curvedit")
            alignment = LatentAlignment(**entry["config"])
            _load_weights(path, manifest, entry["file"], alignment, weights_meta("alignment", entry["kind"],
                                                                                 entry["config"]))
            alignments[target] = alignment.eval()
    except (KeyError, TypeError) as exc:
        raise BundleError(f"{path / MANIFEST} is malformed ({type(exc).__name__}: {exc}); re-save the "
                          "bundle") from exc
    except BundleError:
        raise
    except ValueError as exc:  # unknown family or editor kind, a config the module refuses
        raise BundleError(f"{path / MANIFEST}: {exc}") from exc
    if manifest["default_editor"] not in editors:
        raise BundleError(f"default_editor {manifest['default_editor']!r} is not among {sorted(editors)}")
    _consistent(path, manifest, generator, editors)
    return Bundle(path, manifest, generator.eval(), editors, regressor, alignments=alignments)
