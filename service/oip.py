"""The Open Inference Protocol (KServe v2) view of curvedit's models, shared by its gRPC and HTTP front ends.

One OIP model per bundle, named as the bundle (``ModelInfo.name``), with the bundle's version:

* inputs: ``z`` FP32 ``[-1, d]`` (latents) — or, for models that can encode, ``images`` UINT8
  ``[-1, H, W, 3]`` (real images, encoded first) — exactly one of the two; ``t`` FP32 ``[-1, K]`` optional (the
  editor's amounts, one column per direction in ``ModelInfo``'s order; absent = no edit);
* outputs: ``z_edited`` FP32 ``[-1, d]`` and ``images`` UINT8 ``[-1, H, W, 3]`` (the edited latents rendered),
  each returned when asked for (no outputs named = both, as the protocol says);
* the request parameter ``editor`` (a string) picks an editor (default: the model's default editor), and ``seed``
  (an integer, 0 … 2^63 − 1) the draw of a generator that samples (the PixelCNN), for every item of the request,
  as the native Generate's ``sampling_seed`` (default 0; other generators ignore it);
* the request parameter ``translate_to`` (a string, a model this one is aligned to: ``ModelInfo.alignments``)
  translates the edited latents into that model: ``z_edited`` is then the target's latents ``[-1, d_t]`` and
  ``images`` the target's images of them (the target must be served here for ``images``).

With a model repository (``serve --model-repository``) a model's versions are the repository's version numbers
("3"): metadata lists the loaded ones (over HTTP with ``bundle_version``, the bundle's own version string, beside
them), a request may name one, responses say which computed them, and ``RepositoryModelLoad`` / ``Unload`` load
and unload models. Without one, a model's one version is its bundle's version string.

Requests go through the native API's machinery: admission, the batcher (same batch keys as ``Edit``, so OIP and
native requests merge), limits, metrics and status codes. This module only translates tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import grpc
import numpy as np

from curvedit import __version__
from curvedit.service import requests
from curvedit.service.admission import Ticket
from curvedit.service.catalog import EDIT, EDIT_IMAGES, GENERATE, ModelEntry, from_images
from curvedit.service.errors import ServiceError, invalid, not_found
from curvedit.service.servicer import edit_finish
from curvedit.v1 import latent_edit_pb2 as pb

DTYPES = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}
EXTENSIONS = ["binary_tensor_data", "parameters", "model_repository"]
SERVER_NAME = "curvedit"


@dataclass
class InferTensor:
    """One input tensor, decoded: ``data`` already of ``datatype`` and ``shape``."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray


@dataclass
class InferOutput:
    """One output tensor: raw little-endian row-major bytes."""

    name: str
    datatype: str
    shape: list[int]
    data: bytes


def _checked_shape(name: str, datatype: str, shape) -> tuple[np.dtype, list[int]]:
    if datatype not in DTYPES:
        raise invalid(f"input {requests.short(name)} has datatype {requests.short(datatype)}; curvedit's "
                      f"inputs are {sorted(DTYPES)} (z and t: FP32, images: UINT8)")
    dims = [int(s) for s in shape]
    if not dims or min(dims) < 0:
        raise invalid(f"input {requests.short(name)} has shape {dims}; give every dimension, batch first")
    return DTYPES[datatype], dims


def tensor_from_bytes(name: str, datatype: str, shape, raw: bytes) -> InferTensor:
    """A tensor sent as raw bytes (gRPC ``raw_input_contents``, HTTP binary data)."""
    dtype, dims = _checked_shape(name, datatype, shape)
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        raise invalid(f"input {requests.short(name)} has shape {dims} of {datatype} ({expected} bytes) but "
                      f"carries {len(raw)} bytes; send prod(shape) values, little-endian, row-major")
    return InferTensor(name, datatype, dims, np.frombuffer(raw, dtype=dtype).reshape(dims))


def tensor_from_values(name: str, datatype: str, shape, values) -> InferTensor:
    """A tensor sent as typed values (gRPC ``contents``, HTTP JSON ``data``, nested or flat)."""
    dtype, dims = _checked_shape(name, datatype, shape)
    try:
        array = np.asarray(values, dtype=np.float64 if dtype.kind == "f" else np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise invalid(f"input {requests.short(name)}: data must be numbers (nested or flat lists)") from None
    if array.size != math.prod(dims):
        raise invalid(f"input {requests.short(name)} has shape {dims} ({math.prod(dims)} values) but carries "
                      f"{array.size} values")
    if dtype.kind == "u" and array.size and (array.min() < 0 or array.max() > 255):
        raise invalid(f"input {requests.short(name)} is UINT8: values must be 0..255")
    return InferTensor(name, datatype, dims, array.astype(dtype).reshape(dims))


def model_metadata(served: ModelEntry) -> dict:
    """The protocol's model metadata (names, versions, platform, tensors) as plain data."""
    d, image = served.latent_dim, list(served.spec.image_shape)
    k = len(served.spec.directions_of(None))
    inputs = [{"name": "z", "datatype": "FP32", "shape": [-1, d]}]
    if served.spec.can_encode:
        inputs.append({"name": "images", "datatype": "UINT8", "shape": [-1, *image]})
    inputs.append({"name": "t", "datatype": "FP32", "shape": [-1, k]})
    outputs = [{"name": "z_edited", "datatype": "FP32", "shape": [-1, d]},
               {"name": "images", "datatype": "UINT8", "shape": [-1, *image]}]
    return {"name": served.name, "versions": [served.version_label], "platform": f"curvedit_{served.engine}",
            "bundle_version": served.version, "inputs": inputs, "outputs": outputs}


def server_metadata() -> dict:
    return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}


class Inference:
    """The protocol's operations on the native servicer's models, admission and batcher."""

    def __init__(self, servicer, ready, repository=None):
        self.servicer = servicer
        self.ready = ready  # () -> bool: warm-up done and not draining
        self.repository = repository  # a repository.ModelRepository, or None

    def model(self, name: str, version: str = "") -> ModelEntry:
        """The model ``name`` at ``version`` (empty = the one serving new requests), or NOT_FOUND."""
        versions = self.servicer.models.versions(name)
        if not versions:
            raise not_found(f"no model named {requests.short(name)}; this server has {list(self.servicer.models)}"
                            " (see RepositoryIndex or GET /v2/models/<name>)")
        if not version:
            return versions[0]
        for served in versions:
            if version == served.version_label:
                return served
        loaded = [s.version_label for s in versions]
        raise not_found(f"model {versions[0].name} has no version {requests.short(version)} loaded here (loaded: "
                        f"{loaded}); leave the version empty for the newest, or ask for one of those")

    def serving(self, name: str, version: str = "") -> ModelEntry:
        """``model``, warm: a model still warming up answers UNAVAILABLE naming it and the wait."""
        served = self.model(name, version)
        if not served.ready:
            raise self.servicer.not_warm(served)
        return served

    def model_ready(self, name: str, version: str = "") -> bool:
        """True when that model (version) takes requests; false for a repository version that failed to load."""
        repository = self.repository
        if repository is not None and (name in repository.unloaded or (
                version.isdigit() and repository.failure(name, int(version)) is not None)):
            return False
        return self.model(name, version).ready and self.ready()

    def index(self, ready_only: bool = False) -> list[dict]:
        ready = self.ready()
        if self.repository is not None:
            entries = self.repository.index()
        else:
            entries = [{"name": m.name, "version": m.version, "state": "READY" if m.ready else "UNAVAILABLE",
                        "reason": "" if m.ready else "warming up"} for m in self.servicer.models.values()]
        if not ready:
            entries = [{**e, "state": "UNAVAILABLE", "reason": e["reason"] or "warming up or draining"}
                       for e in entries]
        return [e for e in entries if e["state"] == "READY" or not ready_only]

    def _repository(self):
        if self.repository is None:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, "this server has no model repository; start "
                               "it with `curvedit serve --model-repository DIR` to load and unload models")
        return self.repository

    async def load(self, name: str) -> None:
        """Load (or reload) a repository model: NOT_FOUND if it is not there, INTERNAL with the reason if its
        newest version fails (the version serving before keeps serving)."""
        try:
            await self._repository().load(name)
        except LookupError as exc:
            raise not_found(str(exc)) from None
        except RuntimeError as exc:
            raise ServiceError(grpc.StatusCode.INTERNAL, str(exc)) from None

    async def unload(self, name: str) -> None:
        try:
            await self._repository().unload(name)
        except LookupError as exc:
            raise not_found(str(exc)) from None

    async def infer(self, served: ModelEntry, inputs: list[InferTensor], outputs: list[str] | None,
                    editor_name: str, ticket: Ticket, seed: int | None = None,
                    translate_to: str = "") -> list[InferOutput]:
        """Run one request through admission's ticket and the batcher; the outputs asked for, in that order
        (with ``translate_to``: of the target model, see the module docstring)."""
        byname = {}
        allowed = [i["name"] for i in model_metadata(served)["inputs"]]
        for tensor in inputs:
            if tensor.name not in allowed or tensor.name in byname:
                raise invalid(f"input {requests.short(tensor.name)} is unknown or given twice; model "
                              f"{served.name} takes {allowed} (z or images, and optionally t)")
            byname[tensor.name] = tensor
        wanted = list(outputs) if outputs else ["z_edited", "images"]
        unknown = [o for o in wanted if o not in ("z_edited", "images")]
        if unknown or len(set(wanted)) != len(wanted):
            raise invalid(f"outputs {[requests.short(o) for o in wanted]} must be distinct names among "
                          "['z_edited', 'images']")
        if ("z" in byname) == ("images" in byname):
            raise invalid("give exactly one of the inputs z (FP32 [n, d]) and images (UINT8 [n, H, W, 3])")
        editor = requests.editor(served, editor_name)
        target = None
        if translate_to:
            translate_to = served.spec.check_translation_target(translate_to)
            target = self.serving(translate_to) if "images" in wanted else None
        real = "images" in byname
        x = served.spec.check_images(byname["images"].data) if real else self._latents(served, byname["z"])
        n = len(x)
        requests.check_count(n, self.servicer.max_items)
        kind = EDIT_IMAGES if "images" in wanted and not translate_to else EDIT
        key = (served.key, editor, from_images(kind) if real else kind)
        ticket.reserve(key, n)
        k = len(served.direction_index(editor))
        if "t" in byname:
            t = byname["t"].data
            if t.shape != (n, k) or not np.isfinite(t).all():
                raise invalid(f"input t has shape {list(t.shape)}, expected [{n}, {k}] (one row per item, one "
                              f"column per direction of editor {editor}: {served.spec.directions_of(editor)}), "
                              "finite")
        else:
            t = np.zeros((n, k), np.float32)
        fmt = pb.IMAGE_FORMAT_RAW if kind == EDIT_IMAGES else None  # the native Edit's finish: same checks
        seeds = served.sampling_seeds(seed, n)
        parts = await self.servicer._run(served, key, x, t, ticket, "ModelInfer", edit_finish(fmt), seeds)
        if translate_to:
            z = np.frombuffer(b"".join(p[0] for p in parts), np.float32).reshape(n, served.latent_dim)
            return await self._translated(served, z, translate_to, target, wanted, ticket)
        d, image = served.latent_dim, list(served.spec.image_shape)
        out = []
        for name in wanted:
            if name == "z_edited":
                out.append(InferOutput(name, "FP32", [n, d], b"".join(p[0] for p in parts)))
            else:
                out.append(InferOutput(name, "UINT8", [n, *image], b"".join(p[1] for p in parts)))
        return out

    async def _translated(self, served: ModelEntry, z: np.ndarray, to: str, target: ModelEntry | None,
                          wanted: list[str], ticket: Ticket) -> list[InferOutput]:
        """The edited latents translated into model ``to`` (off the event loop), rendered by ``target``."""
        translated = await served.translate(z, to)
        n, out = len(translated), []
        image = b""
        if target is not None:
            key = (target.key, "", GENERATE)
            ticket.reserve(key, n)
            parts = await self.servicer._run(target, key, translated, None, ticket, "ModelInfer",
                                             lambda rows, _start: np.ascontiguousarray(rows[0]).tobytes())
            image = b"".join(parts)
        for name in wanted:
            if name == "z_edited":
                out.append(InferOutput(name, "FP32", list(translated.shape), translated.tobytes()))
            else:
                out.append(InferOutput(name, "UINT8", [n, *target.spec.image_shape], image))
        return out

    @staticmethod
    def options(parameters: dict) -> tuple[str, int | None, str]:
        """The request parameters ``editor`` (a string, default ""), ``seed`` (an integer or ``None``) and
        ``translate_to`` (a string, default ""), from either front end's parameters as Python values."""
        editor, seed = parameters.get("editor", ""), parameters.get("seed")
        translate_to = parameters.get("translate_to", "")
        if not isinstance(editor, str) or not isinstance(translate_to, str):
            raise invalid("the parameters `editor` and `translate_to` must be strings (an editor's name, a "
                          "model's name)")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise invalid(f"the parameter `seed` must be an integer, got {requests.short(str(seed))}")
        return editor, seed, translate_to

    @staticmethod
    def _latents(served: ModelEntry, tensor: InferTensor) -> np.ndarray:
        if tensor.data.ndim != 2 or tensor.data.shape[1] != served.latent_dim:
            raise invalid(f"input z has shape {list(tensor.data.shape)}; model {served.name} takes FP32 "
                          f"[n, {served.latent_dim}]")
        if not np.isfinite(tensor.data).all():
            return served.spec.check_latents(tensor.data)  # its message names the first NaN/Inf
        return tensor.data
