"""What serving a model needs to know about it without computing it: ``ModelEntry`` (torch-free).

An entry holds the model's ``spec`` (``curvedit.model_spec.ModelSpec``: names, shapes, editors, the input
checks), its batch key, the ``version`` label of its metrics, whether it is warm (``ready``), and what
``GetModel`` says about it. The request path (``servicer``, ``requests``, ``oip``) reads only this. Two kinds of
entries: ``models.ServedModel`` computes (it holds the model and its engine: the in-process server and the engine
process), ``frontend.RemoteModel`` forwards to the engine process that does (a front-end process of ``serve
--workers N``, which never imports torch). ``to_catalog``/``RemoteModel`` carry an entry between the two.

A served model's NAME is its bundle manifest's ``name``; its VERSION the manifest's ``version``. A model from a
model repository is named by its directory and carries its REPOSITORY VERSION (the version directory's number):
its batch key (``name/version``) and its metrics' ``version`` label are that number, so two loaded versions never
share a batch and in-flight work finishes on the version it started on.
"""

from __future__ import annotations

import numpy as np

from curvedit.model_spec import ModelSpec

EDIT, EDIT_IMAGES, GENERATE = "edit", "edit+images", "generate"
# Work that starts from real images (uint8 [n, H, W, 3] in the batch instead of latents): encode only, or encode
# then one of the kinds above.
ENCODE = "encode"


def from_images(kind: str) -> str:
    """The batch kind of ``kind`` (EDIT or EDIT_IMAGES) for a request whose input is real images."""
    return f"{ENCODE}+{kind}"


class ModelEntry:
    """One model (version) a server takes requests for. Subclasses say how it is computed and described."""

    def __init__(self, spec: ModelSpec, name: str = "", repository_version: int = 0):
        self.spec = spec
        self.name = name or spec.name
        self.version = spec.version
        self.repository_version = repository_version  # > 0 for a version of a model repository
        # The first element of this version's batch keys, and its compute stage.
        self.key = f"{self.name}/{repository_version}" if repository_version else self.name
        # The `version` label of its metrics: the repository version when there is one (as Triton labels them).
        self.version_label = str(repository_version) if repository_version else self.version
        self.latent_dim = spec.latent_dim
        self._index = {e: {d: k for k, d in enumerate(spec.directions_of(e))} for e in spec.editors}
        self.ready = False  # warmed up (or warm-up off): takes requests; see server.EditServer.start
        self.warmup_s: float | None = None
        self.warmup_failure = ""  # why its warm-up failed (it then answers UNAVAILABLE saying so)

    def direction_index(self, editor: str) -> dict[str, int]:
        """``{direction: column}`` of a resolved editor name."""
        return self._index[editor]

    def sampling_seeds(self, seed: int | None, n: int) -> np.ndarray | None:
        """A request's per-row sampling seeds int64 ``[n]`` (its one ``seed`` for every row), or ``None`` (seed
        0, ``pixelcnn.DEFAULT_SEED``); each entry carries its own, so requests with different seeds share a
        batch. ``InputError`` for a seed out of range."""
        return None if seed is None else self.spec.check_seeds(seed, n)

    # -- what subclasses provide --------------------------------------------------------------------------------
    @property
    def engine(self) -> str:
        """The engine that runs it (``ModelInfo.engine``)."""
        raise NotImplementedError

    def info(self, max_items: int):
        """``GetModel``'s answer (a ``curvedit.v1.ModelInfo``)."""
        raise NotImplementedError

    def sample_latents(self, seeds: list[int]) -> np.ndarray:
        """The generator's prior for ``seeds``: float32 ``[n, d]`` (run on the compute stage)."""
        raise NotImplementedError

    async def prior(self, seeds: list[int]) -> np.ndarray:
        """``sample_latents`` from wherever the generator is (a front end asks the engine process)."""
        return self.sample_latents(seeds)

    async def translate(self, z: np.ndarray, to: str) -> np.ndarray:
        """Checked latents ``[n, d]`` → latents of model ``to`` (a checked target)."""
        raise NotImplementedError


def to_catalog(entry: ModelEntry, max_items: int) -> dict:
    """An entry as JSON-ready data for another process (``frontend.RemoteModel``)."""
    return {"spec": entry.spec.to_dict(), "name": entry.name, "repository_version": entry.repository_version,
            "ready": entry.ready, "warmup_failure": entry.warmup_failure, "engine": entry.engine,
            "info": entry.info(max_items).SerializeToString().hex()}
