"""The Open Inference Protocol over HTTP/REST (``--http-port``, default 8000 as Triton's), on the server's loop.

A small HTTP/1.1 server on asyncio streams (keep-alive, ``Content-Length`` bodies, ``Expect: 100-continue``), so
it shares the event loop — and so the admission, batcher and metrics — of the gRPC server; TLS and bearer tokens
as configured for gRPC (health paths need no token). Routes:

    GET  /v2/health/live | /v2/health/ready          200, or 503 when not ready
    GET  /v2                                          server metadata
    GET  /v2/models/{name}[/versions/{v}]             model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready       200, or 503
    POST /v2/models/{name}[/versions/{v}]/infer       JSON tensors, or the binary-data extension
    POST /v2/repository/index                         [{"name", "version", "state", "reason"}]
    POST /v2/repository/models/{name}/load | unload   with --model-repository (see ``repository``)

Binary data: a request whose JSON is followed by raw tensor bytes says where the JSON ends in the header
``Inference-Header-Content-Length``, and each input so sent has ``"parameters": {"binary_data_size": N}``;
outputs come back that way when asked for (``"parameters": {"binary_data": true}`` on an output, or
``"binary_data_output": true`` on the request), else as JSON ``data``. Errors are ``{"error": "..."}`` with the
HTTP status of the gRPC code (400, 401, 404, 429 + ``Retry-After``, 499, 500, 503, 504).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse

import grpc
import numpy as np

from curvedit.service import security
from curvedit.service.errors import PUSHBACK_KEY, invalid, to_status, unauthenticated
from curvedit.service.http_response import HttpError, Response, json_response
from curvedit.service.logs import log_request
from curvedit.service.oip import Inference, model_metadata, server_metadata, tensor_from_bytes, tensor_from_values
from curvedit.service.servicer import request_id
from curvedit.service.studio import Studio

log = logging.getLogger(__name__)
HEADER_LENGTH = "inference-header-content-length"
STATUS = {grpc.StatusCode.OK: 200, grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
          grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.FAILED_PRECONDITION: 400,
          grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.CANCELLED: 499,
          grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503,
          grpc.StatusCode.DEADLINE_EXCEEDED: 504}
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           411: "Length Required", 413: "Payload Too Large", 429: "Too Many Requests", 431: "Request Header "
           "Fields Too Large", 499: "Client Closed Request", 500: "Internal Server Error",
           503: "Service Unavailable", 504: "Gateway Timeout"}
MAX_HEADERS = 100


class HttpFront:
    """The HTTP/REST front end. ``await start(host, port)`` → bound port; ``await stop()``."""

    def __init__(self, inference: Inference, metrics, max_body: int, tokens: list[bytes] | None = None,
                 ssl_context=None):
        self.inference, self.metrics, self.max_body = inference, metrics, max_body
        self.tokens, self.ssl = tokens, ssl_context
        self.admission = inference.servicer.admission
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self.studio = Studio(inference, max_body)  # the browser studio at /

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Listen on ``host:port`` (``reuse_port``: beside the other front-end processes on the same port)."""
        self._server = await asyncio.start_server(self._connection, host, port, ssl=self.ssl, limit=1 << 16,
                                                  reuse_port=reuse_port or None)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.close()
            await self._server.wait_closed()

    # -- HTTP/1.1 ---------------------------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                try:
                    method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
                    headers = await self._headers(reader)
                    body = await self._body(reader, writer, headers)
                except HttpError as exc:
                    await self._send(writer, json_response(exc.status, {"error": str(exc)}), close=True)
                    return
                except ValueError:
                    await self._send(writer, json_response(400, {"error": "malformed HTTP request"}), close=True)
                    return
                response = await self._route(method, target, headers, body)
                close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
                await self._send(writer, response, close)
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _headers(self, reader: asyncio.StreamReader) -> dict[str, str]:
        headers: dict[str, str] = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                return headers
            if len(headers) >= MAX_HEADERS:
                raise HttpError(431, f"more than {MAX_HEADERS} headers")
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()

    async def _body(self, reader, writer, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise HttpError(411, "chunked request bodies are not supported; send Content-Length")
        length = int(headers.get("content-length", "0") or 0)
        if length > self.max_body:
            raise HttpError(413, f"the body is {length} bytes, over the {self.max_body}-byte limit (the server's "
                                 "--max-message-mb); send fewer items per request")
        if length and headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return await reader.readexactly(length) if length else b""

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, response: Response, close: bool) -> None:
        head = [f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Error')}",
                f"Content-Length: {len(response.body)}"]
        head += [f"{k}: {v}" for k, v in response.headers.items()]
        if close:
            head.append("Connection: close")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)
        await writer.drain()

    # -- the protocol -----------------------------------------------------------------------------------------
    async def _route(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        path = urllib.parse.unquote(urllib.parse.urlsplit(target).path).rstrip("/")
        parts = path.split("/")[1:]
        start, route, rid = time.perf_counter(), "other", request_id()
        try:
            if parts[:2] == ["v2", "health"] and len(parts) == 3 and parts[2] in ("live", "ready"):
                route = f"/v2/health/{parts[2]}"
                ok = True if parts[2] == "live" else self.inference.ready()
                response = json_response(200 if ok else 503, {parts[2]: ok})
            elif self.studio.owns(path):
                route, response = await self.studio.handle(method, target, body, headers, self._authenticate)
            else:
                self._authenticate(headers)
                route, response = await self._protected(method, parts, headers, body, rid)
        except Exception as exc:
            response = self._error(exc, rid)
        seconds = time.perf_counter() - start
        self.metrics.http_request(route, response.status, seconds)
        if self.inference.servicer.log_requests:
            model = parts[2] if parts[:2] == ["v2", "models"] and len(parts) > 2 else ""
            log_request(f"{method} {route}", rid, model, str(response.status), seconds)
        return response

    def _authenticate(self, headers: dict[str, str]) -> None:
        if self.tokens is not None and not security.token_matches(headers.get("authorization"), self.tokens):
            self.metrics.rejected("unauthenticated")
            raise unauthenticated(security.UNAUTHENTICATED)

    async def _protected(self, method: str, parts: list[str], headers, body: bytes,
                         rid: str) -> tuple[str, Response]:
        if parts == ["v2"]:
            return "/v2", json_response(200, server_metadata())
        if parts == ["v2", "repository", "index"] and method == "POST":
            ready = bool(json.loads(body or b"{}").get("ready", False))
            return "/v2/repository/index", json_response(200, self.inference.index(ready))
        if parts[:3] == ["v2", "repository", "models"] and len(parts) == 5 and parts[4] in ("load", "unload"):
            if method != "POST":
                raise HttpError(405, f"{parts[4]} takes POST")
            await (self.inference.load if parts[4] == "load" else self.inference.unload)(parts[3])
            return f"/v2/repository/models/{{name}}/{parts[4]}", json_response(200, {})
        if len(parts) < 3 or parts[:2] != ["v2", "models"]:
            raise HttpError(404, f"no route {'/'.join(parts)!r}; see the Open Inference Protocol's /v2 paths")
        name, rest, version = parts[2], parts[3:], ""
        if rest[:1] == ["versions"] and len(rest) >= 2:
            version, rest = rest[1], rest[2:]
        if rest == []:
            return "/v2/models/{name}", json_response(200, model_metadata(self.inference.model(name, version)))
        if rest == ["ready"]:
            ok = self.inference.model_ready(name, version)
            return "/v2/models/{name}/ready", json_response(200 if ok else 503, {"ready": ok})
        if rest == ["infer"]:
            if method != "POST":
                raise HttpError(405, "infer takes POST")
            return "/v2/models/{name}/infer", await self._infer(name, version, headers, body, rid)
        raise HttpError(404, f"no route {'/'.join(parts)!r}")

    async def _infer(self, name: str, version: str, headers: dict[str, str], body: bytes, rid: str) -> Response:
        try:
            ticket = self.admission.enter(None)
        except Exception as exc:
            return self._failed(name, exc, rid)
        try:
            served = self.inference.serving(name, version)
            request, binary = self._split(headers, body)
            inputs, offset = [], 0
            for spec in request.get("inputs") or []:
                size = (spec.get("parameters") or {}).get("binary_data_size")
                if size is not None:
                    raw, offset = binary[offset : offset + int(size)], offset + int(size)
                    inputs.append(tensor_from_bytes(spec.get("name", ""), spec.get("datatype", ""),
                                                    spec.get("shape", []), raw))
                else:
                    inputs.append(tensor_from_values(spec.get("name", ""), spec.get("datatype", ""),
                                                     spec.get("shape", []), spec.get("data", [])))
            asked = request.get("outputs") or []
            params = request.get("parameters") or {}
            editor, seed, translate_to = self.inference.options(params)
            outputs = await self.inference.infer(served, inputs, [o.get("name", "") for o in asked], editor,
                                                 ticket, seed, translate_to)
        except Exception as exc:
            return self._failed(name, exc, rid)
        finally:
            ticket.leave()
        binary_all = bool(params.get("binary_data_output", False))
        as_binary = {o.get("name"): bool((o.get("parameters") or {}).get("binary_data", binary_all))
                     for o in asked}
        return self._infer_response(served, request.get("id", ""), outputs, as_binary, binary_all)

    def _failed(self, name: str, exc: Exception, rid: str) -> Response:
        """An inference request's failure: one status (``to_status``, which logs an INTERNAL once), counted."""
        code, message, pushback = to_status(exc, rid)
        self.inference.servicer._count_failure(_Named(name), exc, code)
        return self._status(code, message, pushback)

    @staticmethod
    def _split(headers: dict[str, str], body: bytes) -> tuple[dict, bytes]:
        length = headers.get(HEADER_LENGTH)
        json_part, binary = (body, b"") if length is None else (body[: int(length)], body[int(length):])
        try:
            request = json.loads(json_part or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise invalid(f"the request body is not JSON ({exc}); send the protocol's inference request") from None
        if not isinstance(request, dict):
            raise invalid("the request body must be a JSON object with `inputs`")
        return request, binary

    @staticmethod
    def _infer_response(served, request_id_: str, outputs, as_binary: dict, binary_all: bool) -> Response:
        blobs, specs = [], []
        for out in outputs:
            spec = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
            if as_binary.get(out.name, binary_all):
                spec["parameters"] = {"binary_data_size": len(out.data)}
                blobs.append(out.data)
            else:
                dtype = np.dtype("<f4") if out.datatype == "FP32" else np.dtype("u1")
                spec["data"] = np.frombuffer(out.data, dtype=dtype).tolist()
            specs.append(spec)
        head = json.dumps({"model_name": served.name, "model_version": served.version_label, "id": request_id_,
                           "outputs": specs}).encode()
        if not blobs:
            return Response(200, head, {"Content-Type": "application/json"})
        return Response(200, head + b"".join(blobs), {"Content-Type": "application/octet-stream",
                                                      "Inference-Header-Content-Length": str(len(head))})

    @classmethod
    def _error(cls, exc: BaseException, rid: str) -> Response:
        if isinstance(exc, HttpError):
            return json_response(exc.status, {"error": str(exc)})
        return cls._status(*to_status(exc, rid))

    @staticmethod
    def _status(code: grpc.StatusCode, message: str, pushback: int) -> Response:
        headers = {}
        if pushback:
            headers = {PUSHBACK_KEY: str(pushback), "Retry-After": str(max(1, -(-pushback // 1000)))}
        return json_response(STATUS.get(code, 500), {"error": message}, headers)


class _Named:
    """Stands for a request in ``_count_failure`` (it reads the model's name)."""

    def __init__(self, model_name: str):
        self.model_name = model_name
