"""What the HTTP port's routes answer with: a ``Response``, or an ``HttpError`` that the front end turns into one.
Shared by the Open Inference Protocol's routes (``oip_http``, which serves them) and the browser studio's
(``studio``)."""

from __future__ import annotations

import json


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes = b"", headers: dict | None = None):
        self.status, self.body, self.headers = status, body, headers or {}


def json_response(status: int, value, headers: dict | None = None) -> Response:
    return Response(status, json.dumps(value).encode(), {"Content-Type": "application/json", **(headers or {})})
