"""Translating latents between two models whose latent spaces are aligned (``curvedit.models.alignment``).

A source bundle stores one map per target model (``manifest["alignments"][TARGET]``) together with the target's
name, digest and editor at training time. ``Translator`` loads the target once, refuses it if its digest changed
(the map was learned for that exact model), and maps checked latents ``[n, d_s]`` to target latents ``[n, d_t]``.
A map also runs backwards, exactly (``LatentAlignment.inverse``): a model translates to every shipped model that
holds a map onto this very bundle (same name and digest), so ``faces-avatar`` translates to ``faces-photo`` with
the map ``faces-photo`` stores. ``align_bundle`` trains a map between two bundles and stores it in the source.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from curvedit.bundle import Bundle, add_alignment, load_bundle, read_manifest
from curvedit.errors import InputError
from curvedit.models.alignment import AlignmentTrainConfig, train_alignment, translate_latents
from curvedit.shipped import list_models, resolve_model, shipped_models_dir


def translation_fix(source: str) -> str:
    """How to get an alignment from model ``source``, for the message naming a target it has none to."""
    return (f"the shipped faces models are aligned by their recipes (`curvedit train recipe faces-avatar`, then "
            f"`curvedit train recipe faces-photo`); for another pair, align a bundle with "
            f"`curvedit.translation.align_bundle(BUNDLE_OF_{source.upper()}, TARGET)`")


class Translator:
    """The maps a source bundle holds, with their targets loaded lazily (one load per target)."""

    def __init__(self, bundle: Bundle, name: str):
        self.bundle, self.name = bundle, name
        self._targets: dict[str, Bundle] = {}
        self._reverse: list[str] | None = None  # shipped models holding a map onto this bundle (found lazily)

    @property
    def targets(self) -> list[str]:
        return sorted({*self.bundle.alignments, *self.reverse_targets})

    @property
    def reverse_targets(self) -> list[str]:
        """The shipped models whose stored map targets this very bundle (its name and digest): this model
        translates to each of them through that map's inverse."""
        if self._reverse is None:
            self._reverse = []
            for other in list_models():
                if other == self.name or other in self.bundle.alignments:
                    continue
                entry = read_manifest(shipped_models_dir() / other).get("alignments", {}).get(self.name)
                if entry is not None and entry["target"]["digest"] == self.bundle.digest:
                    self._reverse.append(other)
        return self._reverse

    def target(self, to: str) -> Bundle:
        """The target's bundle: checked against the digest the map was trained for, or (a map read backwards)
        the bundle holding the map, which was checked against this one when ``reverse_targets`` found it.
        ``to`` is checked already (``ModelSpec.check_translation_target``)."""
        if to not in self._targets:
            if to not in self.bundle.alignments:  # the shipped model reverse_targets found (not a folder named so)
                self._targets[to] = load_bundle(shipped_models_dir() / to)
                return self._targets[to]
            entry = self.bundle.manifest["alignments"][to]["target"]
            bundle = load_bundle(resolve_model(entry["name"]))
            if bundle.digest != entry["digest"]:
                raise InputError(f"model {self.name!r}'s alignment to {to!r} was trained against its bundle "
                                 f"{entry['digest'][:12]}…, but {to!r} is now {bundle.digest[:12]}…: the map does "
                                 f"not fit it; {translation_fix(self.name)}")
            self._targets[to] = bundle
        return self._targets[to]

    @torch.no_grad()
    def translate(self, z: np.ndarray, to: str) -> np.ndarray:
        """Checked source latents float32 ``[n, d_s]`` → target latents float32 ``[n, d_t]``."""
        target = self.target(to)
        if to in self.bundle.alignments:
            entry = self.bundle.manifest["alignments"][to]
            out = translate_latents(self.bundle.editors[entry["source_editor"]], self.bundle.alignments[to],
                                    target.editors[entry["target"]["editor"]], torch.tensor(z))
        else:  # the target holds the map onto this model: read it backwards
            entry = target.manifest["alignments"][self.name]
            out = translate_latents(self.bundle.editors[entry["target"]["editor"]], target.alignments[self.name],
                                    target.editors[entry["source_editor"]], torch.tensor(z), inverse=True)
        return out.numpy().astype(np.float32, copy=False)


def align_bundle(source: str | Path, target: str, config: AlignmentTrainConfig = AlignmentTrainConfig(),
                 progress: bool = True) -> dict:
    """Train the map of bundle ``source``'s latents onto model ``target``'s (a shipped name or a bundle path;
    both need a supervised DeCurvEd default editor over the same directions, and a factor regressor) and store it
    in ``source``. Returns the training report."""
    src, tgt = load_bundle(source), load_bundle(resolve_model(target))
    for role, bundle in (("source", src), ("target", tgt)):
        if bundle.regressor is None:
            raise ValueError(f"the {role} bundle {bundle.path} has no factor regressor: alignment reads factors")
    name = tgt.manifest.get("name", tgt.path.name)
    alignment, report = train_alignment(
        (src.generator, src.editors[src.default_editor], src.regressor),
        (tgt.generator, tgt.editors[tgt.default_editor], tgt.regressor), config, progress)
    entry = {"source_editor": src.default_editor, "training": report,
             "target": {"name": name, "digest": tgt.digest, "editor": tgt.default_editor}}
    add_alignment(source, name, alignment, entry)
    return report
