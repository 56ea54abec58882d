"""The browser studio: a page at ``/`` of the HTTP port that edits images with sliders, through the service.

The page (``static/``: plain HTML, JavaScript and CSS, no build step, nothing fetched from elsewhere) does every
edit, render and encode with the Open Inference Protocol's own ``POST /v2/models/{name}/infer`` (binary tensors),
so it goes through the same admission, batcher, limits and metrics as any client. It needs three things the
protocol does not say, served here:

    GET  /                                            the page (and /studio/static/{studio.js, studio.css})
    GET  /studio/api/models                           models, editors, directions and their units
    GET  /studio/api/models/{name}/sample?seed=N      the latent ``Model.sample(1, seed=N)`` (float list [d])
    POST /studio/api/models/{name}/fit                an image file's bytes → uint8 [H, W, 3] fitted to the
                                                      model (``curvedit.images.decode_image_file``'s rules)

The page is public (no secrets in it); the API takes the server's bearer token like every other route. Errors are
the front end's ``{"error": ...}`` with the matching status.
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from importlib import resources

from curvedit.errors import InputError
from curvedit.images import MAX_FILE_BYTES, decode_image_file
from curvedit.service.errors import invalid
from curvedit.service.http_response import HttpError, Response, json_response
from curvedit.service.oip import Inference

STATIC = {"studio.js": "text/javascript; charset=utf-8", "studio.css": "text/css; charset=utf-8"}
# The page may only talk to this server: a CDN or any other origin is refused by the browser itself.
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                                      "base-uri 'none'; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
MAX_SEED = 2**53 - 1  # the largest integer a JavaScript number holds exactly
UNITS = {"supervised": "standardised units: 1 = one standard deviation of the factor in the training data",
         "unsupervised": "unsupervised direction: amounts have no physical unit"}


def _read(name: str) -> bytes:
    return resources.files(__name__).joinpath("static", name).read_bytes()


class Studio:
    """The studio's routes on the HTTP front end (``HttpFront`` calls ``handle`` for paths it ``owns``)."""

    def __init__(self, inference: Inference, max_body: int):
        self.inference = inference
        self.max_upload = min(MAX_FILE_BYTES, max_body)
        self.files = {"index.html": ("text/html; charset=utf-8", _read("index.html"))}
        self.files.update({name: (kind, _read(name)) for name, kind in STATIC.items()})

    @staticmethod
    def owns(path: str) -> bool:
        """Whether ``path`` (URL-decoded, trailing ``/`` stripped) is the studio's: ``/`` or under ``/studio``."""
        return path in ("", "/studio") or path.startswith("/studio/")

    async def handle(self, method: str, target: str, body: bytes, headers: dict,
                     authenticate) -> tuple[str, Response]:
        """``(route template, response)`` for a studio path; ``authenticate(headers)`` raises without a token."""
        split = urllib.parse.urlsplit(target)
        parts = urllib.parse.unquote(split.path).rstrip("/").split("/")[1:]
        if parts in ([], [""], ["studio"]):
            return "/", self._file(method, "index.html")
        if parts[:2] == ["studio", "static"] and len(parts) == 3 and parts[2] in STATIC:
            return "/studio/static", self._file(method, parts[2])
        if parts[:2] != ["studio", "api"]:
            raise HttpError(404, f"no studio page {split.path!r}; the studio is at /")
        authenticate(headers)
        if parts == ["studio", "api", "models"]:
            self._method(method, "GET")
            return "/studio/api/models", json_response(200, self.models())
        if len(parts) == 5 and parts[2] == "models" and parts[4] == "sample":
            self._method(method, "GET")
            query = urllib.parse.parse_qs(split.query)
            return "/studio/api/models/{name}/sample", json_response(200, await self.sample(parts[3], query))
        if len(parts) == 5 and parts[2] == "models" and parts[4] == "fit":
            self._method(method, "POST")
            return "/studio/api/models/{name}/fit", json_response(200, await self.fit(parts[3], body))
        raise HttpError(404, f"no studio API route {split.path!r}")

    def _file(self, method: str, name: str) -> Response:
        self._method(method, "GET")
        kind, data = self.files[name]
        return Response(200, data, {"Content-Type": kind, **HEADERS})

    @staticmethod
    def _method(method: str, allowed: str) -> None:
        if method != allowed:
            raise HttpError(405, f"this route takes {allowed}, not {method}")

    def models(self) -> dict:
        """Every served model with what the page needs: editors, their directions and units, image size."""
        out = []
        for entry in self.inference.index():
            served = self.inference.model(entry["name"])
            spec = served.spec  # what the model takes and gives, in this process (a front end has no weights)
            out.append({
                "name": served.name, "version": served.version, "latent_dim": served.latent_dim,
                "image_shape": list(spec.image_shape), "can_encode": bool(spec.can_encode),
                "default_editor": spec.default_editor,
                "editors": [{"name": name, "directions": list(spec.directions_of(name)),
                             "mode": spec.editor_modes.get(name, ""),
                             "units": UNITS.get(spec.editor_modes.get(name, ""), "")}
                            for name in spec.editors],
            })
        return {"models": out, "max_upload_bytes": self.max_upload}

    async def sample(self, name: str, query: dict) -> dict:
        served = self.inference.model(name)
        values = query.get("seed", [])
        try:
            seed = int(values[0]) if len(values) == 1 else None
        except ValueError:
            seed = None
        if seed is None or not 0 <= seed <= MAX_SEED:
            raise invalid(f"give one integer seed in 0..{MAX_SEED} (?seed=N), got {values[:2]}")
        z = (await served.prior([seed]))[0]
        return {"model": served.name, "seed": seed, "z": [float(v) for v in z]}

    async def fit(self, name: str, body: bytes) -> dict:
        served = self.inference.model(name)
        if not served.spec.can_encode:
            encoders = [m["name"] for m in self.models()["models"] if m["can_encode"]]
            raise invalid(f"model {served.name} has no encoder, so it cannot start from an image; models that "
                          f"can: {encoders}")
        if len(body) > self.max_upload:
            raise invalid(f"the file is {len(body):,} bytes, over the {self.max_upload:,}-byte upload limit; "
                          "send a smaller image")
        # Decoding a large file takes a while: off the event loop, so other requests keep being served.
        try:
            image = await asyncio.to_thread(decode_image_file, body, tuple(served.spec.image_shape),
                                            "the uploaded file")
        except InputError as exc:  # Pillow names its in-memory file object: noise on a page
            raise invalid(re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc))) from None
        return {"shape": list(image.shape), "data": image.reshape(-1).tolist()}

