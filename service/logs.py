"""How ``curvedit serve`` logs: text lines (default) or one JSON object per line (``--log-format json``).

A JSON line always has ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger`` and ``message``; lines
about one request add ``request_id``, ``model``, ``method``, ``code`` (a gRPC status name, or the HTTP status)
and ``duration_ms``; a traceback comes as ``exception``. The same fields are in a text line's message.

Request lines come from ``log_request`` on the logger ``curvedit.requests``: one per RPC (and per OIP HTTP
request) with ``--log-requests``, off by default because a line per request costs throughput at thousands of
requests a second. Failures the server did not expect (INTERNAL) are logged with their request id either way.
"""

from __future__ import annotations

import json
import logging
import sys
import time

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REQUEST_FIELDS = ("request_id", "model", "method", "code", "duration_ms")
requests_log = logging.getLogger("curvedit.requests")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped by JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        line = {"time": f"{stamp}.{int(record.msecs):03d}Z", "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        for field in REQUEST_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup_logging(log_format: str = "text", level: int = logging.INFO) -> None:
    """Send every log record (Python warnings too) to stderr as ``log_format`` ("text" or "json")."""
    if log_format not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)


def log_request(method: str, request_id: str, model: str, code: str, seconds: float) -> None:
    """One request's line (``--log-requests``): what it was, for which model, how it ended, how long it took."""
    ms = round(seconds * 1e3, 3)
    requests_log.info("%s model=%s code=%s %.3f ms (request %s)", method, model or "-", code, ms, request_id,
                      extra={"request_id": request_id, "model": model, "method": method, "code": code,
                             "duration_ms": ms})
