"""A model repository in Triton's layout, with versions and hot reload (``serve --model-repository DIR``).

    DIR/<name>/<version>/      each version a curvedit bundle; <version> a positive integer (other entries
                               are ignored); the model is called <name>, whatever its manifest says

``ModelRepository.sync`` brings what is loaded in line with the directory: of each model, the newest ``keep``
versions that load are served (the newest takes requests that name no version; Triton's ``latest N`` policy),
older ones are unloaded. Run at start, every ``--repository-poll-s`` seconds, and by the OIP repository RPCs
(``load`` / ``unload``).

A new version takes traffic only once it is ready: ``load`` (in a thread of its own) reads the bundle, checking
every file's sha256 and building the engine (ONNX graphs included), then ``activate`` warms it up on its own
compute thread before adding it to the ``ModelSet``. A version that fails at any step never takes traffic: the
version serving before keeps serving, and the failure is logged, counted (``curvedit_model_load_failures_total``)
and reported (RepositoryIndex state UNAVAILABLE with the reason; ModelReady false for that version). It is
retried when its files change, or on an explicit load. An unloaded version is retired (no new requests) and
forgotten once its queued and computing work is done (``deactivate``), so in-flight requests finish on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from curvedit.service.model_set import ModelSet
from curvedit.service.models import ServedModel

log = logging.getLogger(__name__)


def check_root(root: str | Path) -> Path:
    """The repository directory, or a ``ValueError`` that says what a repository looks like."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"model repository {root} is not a directory; pass --model-repository DIR, laid out as "
                         "DIR/<model name>/<version number>/ with a bundle in each version directory")
    return root


def scan_versions(model_dir: Path) -> dict[int, Path]:
    """``{version: path}`` of the version directories (positive integers) of one model."""
    if not model_dir.is_dir():
        return {}
    return {int(p.name): p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0}


def scan(root: Path) -> dict[str, dict[int, Path]]:
    """``{name: {version: path}}`` of every model directory with at least one version."""
    models = {p.name: scan_versions(p) for p in sorted(root.iterdir())
              if p.is_dir() and not p.name.startswith(".")}
    return {name: versions for name, versions in models.items() if versions}


def stamp(path: Path) -> tuple:
    """What changes when a version directory's files do (names, sizes, modification times)."""
    return tuple(sorted((str(f.relative_to(path)), s.st_size, s.st_mtime_ns)
                        for f in path.rglob("*") if f.is_file() for s in (f.stat(),)))


class ModelRepository:
    """Loads, swaps and unloads versions of the models under ``root`` into ``models``.

    ``load(name, version, path)`` builds a version (blocking; run on the repository's own thread);
    ``activate(served)`` warms it up and adds it to ``models``; ``deactivate(served)`` retires it and forgets it
    once its work is done; ``failed(name, version)`` reports a version that did not load (a metric). Calls are
    serialised: one load, poll or unload at a time.
    """

    def __init__(self, root: str | Path, models: ModelSet, load: Callable[[str, int, Path], ServedModel],
                 activate: Callable[[ServedModel], Awaitable[None]],
                 deactivate: Callable[[ServedModel], Awaitable[None]],
                 failed: Callable[[str, int], None] = lambda name, version: None, keep: int = 1):
        if keep < 1:
            raise ValueError(f"repository_versions must be at least 1 (the newest version), got {keep}")
        self.root = check_root(root)
        self.models, self.keep = models, keep
        self._load, self._activate, self._deactivate, self._failed = load, activate, deactivate, failed
        self.failures: dict[tuple[str, int], tuple[tuple, str]] = {}  # (name, version) → (stamp, reason)
        self.unloaded: set[str] = set()  # unloaded by RPC: polling leaves them alone until loaded again
        self._lock = asyncio.Lock()
        self._thread = ThreadPoolExecutor(1, "curvedit-repository")

    def failure(self, name: str, version: int) -> str | None:
        """Why that version failed to load, or ``None``."""
        entry = self.failures.get((name, version))
        return None if entry is None else entry[1]

    async def poll(self) -> None:
        """Sync every model on disk, and every loaded one (a model whose directory went is unloaded)."""
        async with self._lock:
            names = set(scan(self.root)) | set(self.models)
            for name in sorted(names - self.unloaded):
                await self._sync(name)

    async def load(self, name: str) -> None:
        """Load (or reload) ``name``'s newest versions, retrying failed ones. Raises ``LookupError`` when no such
        model is in the repository and ``RuntimeError`` when its newest version fails (whatever served before
        keeps serving)."""
        async with self._lock:
            versions = scan_versions(self.root / name) if name and "/" not in name and name[0] != "." else {}
            if not versions:
                raise LookupError(f"no model {name!r} in repository {self.root}: expected version directories "
                                  f"{self.root / (name or '<name>')}/<n>/ (n = 1, 2, ...), each a bundle")
            self.unloaded.discard(name)
            for key in [k for k in self.failures if k[0] == name]:
                del self.failures[key]
            await self._sync(name)
            newest = max(versions)
            reason = self.failure(name, newest)
            if reason is not None:
                serving = self.models.version(name, 0)
                still = (f"version {serving.repository_version} keeps serving" if serving is not None
                         else "no version of it is serving")
                raise RuntimeError(f"model {name} version {newest} failed to load ({reason}); {still}")

    async def unload(self, name: str) -> None:
        """Stop serving every version of ``name`` (in-flight requests finish); polling leaves it unloaded."""
        async with self._lock:
            served = self.models.versions(name)
            if not served and not scan_versions(self.root / name):
                raise LookupError(f"no model {name!r} is loaded or in repository {self.root}")
            self.unloaded.add(name)
            for version in served:
                await self._deactivate(version)
            log.info("model %s unloaded (versions %s)", name, [s.repository_version for s in served])

    def index(self) -> list[dict]:
        """Loaded versions and versions that failed to load: ``{name, version, state, reason}`` each."""
        entries = [{"name": s.name, "version": str(s.repository_version), "state": "READY", "reason": ""}
                   for name in self.models for s in self.models.versions(name)]
        entries += [{"name": name, "version": str(v), "state": "UNAVAILABLE",
                     "reason": f"failed to load: {reason}"}
                    for (name, v), (_, reason) in sorted(self.failures.items())]
        entries += [{"name": name, "version": "", "state": "UNAVAILABLE", "reason": "unloaded"}
                    for name in sorted(self.unloaded)]
        return entries

    async def _sync(self, name: str) -> None:
        on_disk = scan_versions(self.root / name)
        loaded = {s.repository_version: s for s in self.models.versions(name)}
        keep: list[int] = []
        for version in sorted(on_disk, reverse=True):
            if len(keep) == self.keep:
                break
            if version in loaded:
                keep.append(version)
                continue
            if await self._try_load(name, version, on_disk[version]):
                keep.append(version)
        for version, served in loaded.items():
            if version not in keep:
                await self._deactivate(served)
                log.info("model %s version %d unloaded (%s)", name, version,
                         "a newer version serves" if version in on_disk else "its directory is gone")
        for key in [k for k in self.failures if k[0] == name and k[1] not in on_disk]:
            del self.failures[key]

    async def _try_load(self, name: str, version: int, path: Path) -> bool:
        now = stamp(path)
        before = self.failures.get((name, version))
        if before is not None and before[0] == now:
            return False  # failed already, and its files have not changed since
        try:
            loop = asyncio.get_running_loop()
            served = await loop.run_in_executor(self._thread, self._load, name, version, path)
            await self._activate(served)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self.failures[(name, version)] = (now, reason)
            serving = self.models.version(name, 0)
            log.error("model %s version %d failed to load from %s; %s. %s", name, version, path,
                      f"version {serving.repository_version} keeps serving" if serving else "nothing serves it",
                      reason)
            self._failed(name, version)
            return False
        self.failures.pop((name, version), None)
        log.info("model %s version %d (bundle %s %s) loaded from %s and serving", name, version, served.model.name,
                 served.version, path)
        return True

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
