"""``ModelSet``: the models a server holds now, by name, and every loaded version of each, by batch key.

It reads as a mapping ``name → the version new requests go to`` (the newest loaded one), in the order models were
first added (the first is the default model). With a model repository, versions come and go while the server
runs (``repository``): all changes happen on the event loop, so a request handler that looked a version up
queues its work on that version before any other change can run. A version taken out of the name mapping stays
reachable by its batch key (``by_key``) until ``forget`` — the repository calls it once the version's queued and
computing work is done — so in-flight requests finish on the version they started on.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from curvedit.service.catalog import ModelEntry


class ModelSet(Mapping[str, ModelEntry]):
    def __init__(self, models: Mapping[str, ModelEntry] | None = None):
        self._versions: dict[str, dict[int, ModelEntry]] = {}  # name → {repository version → model}
        self._keys: dict[str, ModelEntry] = {}  # batch key → model, retiring versions included
        for served in (models or {}).values():
            self.add(served)

    # -- the mapping: name → the version serving new requests --------------------------------------------------
    def __getitem__(self, name: str) -> ModelEntry:
        versions = self._versions.get(name)
        if not versions:
            raise KeyError(name)
        return versions[max(versions)]

    def __iter__(self) -> Iterator[str]:
        return (name for name, versions in self._versions.items() if versions)

    def __len__(self) -> int:
        return sum(1 for versions in self._versions.values() if versions)

    # -- versions ----------------------------------------------------------------------------------------------
    def version(self, name: str, repository_version: int) -> ModelEntry | None:
        """A loaded version of ``name`` (``0`` = the newest), or ``None``."""
        versions = self._versions.get(name) or {}
        if repository_version == 0:
            return versions[max(versions)] if versions else None
        return versions.get(repository_version)

    def versions(self, name: str) -> list[ModelEntry]:
        """The loaded versions of ``name``, newest first."""
        versions = self._versions.get(name) or {}
        return [versions[v] for v in sorted(versions, reverse=True)]

    def by_key(self, key: str) -> ModelEntry:
        """The version a batch key's first element names (``ModelEntry.key``), retiring versions included."""
        return self._keys[key]

    def has_key(self, key: str) -> bool:
        return key in self._keys

    def add(self, served: ModelEntry) -> None:
        """Make ``served`` take requests (the newest version of its name serves those naming no version)."""
        versions = self._versions.setdefault(served.name, {})
        if served.repository_version in versions:
            raise ValueError(f"model {served.name} version {served.repository_version} is already loaded")
        if served.repository_version == 0 and versions:
            raise ValueError(f"two models are named {served.name!r}; model names come from the bundle manifest's "
                             "'name' and must be unique on one server")
        versions[served.repository_version] = served
        self._keys[served.key] = served

    def retire(self, served: ModelEntry) -> None:
        """Take ``served`` out of the name mapping: new requests no longer reach it; in-flight ones still do."""
        versions = self._versions.get(served.name, {})
        if versions.get(served.repository_version) is served:
            del versions[served.repository_version]

    def forget(self, served: ModelEntry) -> None:
        """Drop a retired version for good (its work is done)."""
        if self._keys.get(served.key) is served:
            del self._keys[served.key]
