"""The server's configuration: one frozen dataclass, built from defaults < file < environment < flags here.

Nothing else in the service reads ``os.environ`` or a config file. Environment variables are the field
names upper-cased with a ``CURVEDIT_`` prefix (``CURVEDIT_MAX_BATCH_SIZE=64``); ``CURVEDIT_MODELS`` is a
``:``-separated list of bundle paths. A config file is JSON (or TOML on Python ≥ 3.11) with the same keys.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "CURVEDIT_"


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``curvedit serve`` can be told. Checked at construction: a bad value raises ``ValueError``."""

    host: str = "127.0.0.1"
    port: int = 50051  # 0 = any free port (tests)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 8002  # 0 = any free port; -1 = no metrics HTTP server
    http_port: int = 8000  # the Open Inference Protocol over HTTP/REST, on `host`; 0 = any free port; -1 = off
    models: tuple[str, ...] = ()  # shipped names or bundle paths; empty = models.default_models(); first = default
    model_repository: str = ""  # DIR/<name>/<version>/ bundles, served instead of `models` (see repository)
    repository_poll_s: float = 0.0  # rescan the model repository this often; 0 = only at start and on load RPCs
    repository_versions: int = 1  # how many of each model's newest versions stay loaded (Triton's latest N)
    log_format: str = "text"  # "text", or "json": one object per line (see logs)
    log_requests: bool = False  # a log line per RPC and HTTP request: id, model, code, duration
    expect_digests: tuple[str, ...] = ()  # one per model, in order: refuse a bundle whose digest differs
    engine: str = "auto"
    ort_threads: int = 0  # ONNX Runtime intra-op threads per model; 0 = every core this process may use
    max_batch_size: int = 256  # 1 = batching off
    max_queue_delay_ms: float = 5.0  # how long a batch filling while its model computes may wait (see batcher)
    max_queue_size: int = 8192  # items (not requests) waiting; beyond it RESOURCE_EXHAUSTED
    max_items_per_request: int = 4096
    max_concurrent_requests: int = 1024  # unary RPCs + stream messages in progress; beyond it RESOURCE_EXHAUSTED
    grace_s: float = 10.0  # how long SIGTERM waits for in-flight work
    max_message_mb: int = 64
    warmup: bool = True  # run every batch bucket once before a model takes requests
    # "all": health says SERVING once every model is warm (what code building a server expects); "default": once
    # the default (first) model is warm, the others warming after it, one at a time, each taking requests once
    # warm (UNAVAILABLE naming it before). `build_config` (the command line) defaults it to "default".
    ready_when: str = "all"
    # Front-end processes (`serve --workers N`, see workers): 1 = one process serves and computes (in-process);
    # N > 1 = N front ends on the same ports before one engine process holding the models.
    workers: int = 1
    # Where warm-up keeps what it learns across starts (the auto engine's routes: route_cache); "" = nowhere.
    # `build_config` (the command line) defaults it to $XDG_CACHE_HOME/curvedit (~/.cache/curvedit).
    cache_dir: str = ""
    reflection: bool = True  # grpc.reflection.v1alpha (grpcurl); off with --no-reflection
    tls_cert: str = ""  # PEM certificate chain; with tls_key, the port speaks TLS only
    tls_key: str = ""  # PEM private key of tls_cert
    tls_client_ca: str = ""  # PEM CA bundle: clients must present a certificate it signed (mutual TLS)
    auth_token_file: str = ""  # one bearer token per line; every RPC but health then needs one

    def __post_init__(self):
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        need(0 <= self.port <= 65535, f"port must be in 0..65535 (0 = any free port), got {self.port}")
        need(-1 <= self.http_port <= 65535,
             f"http_port must be in 0..65535, or -1 to switch HTTP/REST off, got {self.http_port}")
        need(-1 <= self.metrics_port <= 65535,
             f"metrics_port must be in 0..65535, or -1 to switch metrics off, got {self.metrics_port}")
        need(self.ort_threads >= 0, f"ort_threads must be >= 0 (0 = every core), got {self.ort_threads}")
        need(self.max_batch_size >= 1,
             f"max_batch_size must be at least 1 (1 switches batching off), got {self.max_batch_size}")
        need(self.max_queue_delay_ms >= 0, f"max_queue_delay_ms must be >= 0, got {self.max_queue_delay_ms}")
        need(self.max_items_per_request >= 1,
             f"max_items_per_request must be at least 1, got {self.max_items_per_request}")
        need(self.max_queue_size >= self.max_items_per_request,
             f"max_queue_size ({self.max_queue_size}) must be >= max_items_per_request "
             f"({self.max_items_per_request}), or a full-size request could never be queued; raise "
             f"--max-queue-size or lower --max-items-per-request")
        need(self.max_concurrent_requests >= 1,
             f"max_concurrent_requests must be at least 1, got {self.max_concurrent_requests}")
        need(self.grace_s >= 0, f"grace_s must be >= 0, got {self.grace_s}")
        need(not (self.model_repository and self.models),
             "pass either --model (bundles served as they are) or --model-repository DIR (versioned, hot "
             "reloaded), not both")
        need(not (self.model_repository and self.expect_digests),
             "--expect-digest pins a --model; a --model-repository version is checked against its own manifest")
        need(self.log_format in ("text", "json"), f"log_format must be 'text' or 'json', got {self.log_format!r}")
        need(self.workers >= 1, f"workers must be at least 1 (1 = one process), got {self.workers}")
        need(self.ready_when in ("default", "all"),
             f"ready_when must be 'default' (SERVING once the first model is warm) or 'all', got "
             f"{self.ready_when!r}")
        need(self.repository_poll_s >= 0, f"repository_poll_s must be >= 0 (0 = no polling), got "
             f"{self.repository_poll_s}")
        need(self.repository_versions >= 1,
             f"repository_versions must be at least 1 (the newest version), got {self.repository_versions}")
        need(bool(self.tls_cert) == bool(self.tls_key),
             "TLS needs both --tls-cert and --tls-key (PEM files), or neither")
        need(not self.tls_client_ca or bool(self.tls_cert),
             "--tls-client-ca (mutual TLS) needs TLS itself: pass --tls-cert and --tls-key too")
        need(1 <= self.max_message_mb <= 2047, f"max_message_mb must be in 1..2047, got {self.max_message_mb}")
        object.__setattr__(self, "models", tuple(str(m) for m in self.models))
        object.__setattr__(self, "expect_digests", tuple(str(d) for d in self.expect_digests))
        need(not self.expect_digests or len(self.expect_digests) == len(self.models),
             f"--expect-digest pins the --model given in the same position: got {len(self.expect_digests)} "
             f"digest(s) for {len(self.models)} model(s); pass one per --model")

    @property
    def max_queue_delay_s(self) -> float:
        return self.max_queue_delay_ms / 1000.0


_FIELDS = {f.name: f for f in fields(ServeConfig)}


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = type(getattr(ServeConfig(), name))
    try:
        if kind is tuple:
            if isinstance(value, str):
                return tuple(v for v in value.split(os.pathsep) if v)
            return tuple(str(v) for v in value)
        if kind is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(lowered)
                return lowered in ("1", "true", "yes", "on")
            return bool(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: {name} must be a {kind.__name__}, got {value!r}") from None


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Keys of a JSON (``.json``) or TOML (``.toml``) config file; unknown keys are refused."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist; pass --config with a .json or .toml file")
    if path.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI (a dependency there)
            import tomli as tomllib

        data = tomllib.loads(path.read_text())
    else:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"config file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold an object of settings, got {type(data).__name__}")
    return data


def build_config(flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
                 config_file: str | os.PathLike | None = None) -> ServeConfig:
    """Merge defaults < ``config_file`` < ``env`` (``CURVEDIT_*``) < ``flags`` (``None`` values ignored).

    Two defaults differ from ``ServeConfig()``'s, for a server run from the command line: ``ready_when`` is
    "default" (SERVING once the first model is warm) and ``cache_dir`` the user's cache (``default_cache_dir``)."""
    values: dict[str, Any] = {}
    sources: list[tuple[str, Mapping[str, Any]]] = []
    if config_file is not None:
        sources.append((f"config file {config_file}", read_config_file(config_file)))
    if env is not None:
        sources.append(("environment", {k[len(ENV_PREFIX):].lower(): v for k, v in env.items()
                                        if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX):].lower() in _FIELDS}))
    if flags is not None:
        sources.append(("flags", {k: v for k, v in flags.items() if v is not None and v != ()}))
    for source, data in sources:
        for name, value in data.items():
            if name not in _FIELDS:
                raise ValueError(f"{source}: unknown setting {name!r}; known settings: {sorted(_FIELDS)}")
            values[name] = _coerce(name, value, source)
    values.setdefault("ready_when", "default")  # `curvedit serve`: SERVING once the default model is warm
    if "cache_dir" not in values:
        values["cache_dir"] = default_cache_dir(env or {})
    elif values["cache_dir"] == "off":
        values["cache_dir"] = ""
    return ServeConfig(**values)


def default_cache_dir(env: Mapping[str, str]) -> str:
    """``$XDG_CACHE_HOME/curvedit``, else ``~/.cache/curvedit`` (``""``, no cache, where neither is known)."""
    if env.get("XDG_CACHE_HOME"):
        return str(Path(env["XDG_CACHE_HOME"]) / "curvedit")
    return str(Path(env["HOME"]) / ".cache" / "curvedit") if env.get("HOME") else ""


def replace(config: ServeConfig, **changes) -> ServeConfig:
    return dataclasses.replace(config, **changes)


__all__ = ["ENV_PREFIX", "ServeConfig", "build_config", "default_cache_dir", "read_config_file", "replace"]
