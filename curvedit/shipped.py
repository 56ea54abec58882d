"""The models shipped inside the package, by name: where they live, which there are, and what ``--model`` means.

A model is named by a shipped model's name (``"shapes32"``, the default) or by the path of a bundle directory;
``resolve_model`` gives every command, the API and translation the same meaning for it. Nothing here loads a
bundle (no torch): ``curvedit.api`` loads, ``curvedit.translation`` finds the targets of its maps here.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from curvedit.errors import InputError
from curvedit.models.bundle_files import MANIFEST

DEFAULT_MODEL = "shapes32"


def shipped_models_dir() -> Path:
    return Path(str(resources.files("curvedit") / "bundles"))


def list_models() -> list[str]:
    """The names of the models shipped inside the package, the default (``shapes32``) first."""
    names = sorted(p.name for p in shipped_models_dir().iterdir() if (p / MANIFEST).is_file())
    return sorted(names, key=lambda name: name != DEFAULT_MODEL)


def default_bundle_path() -> Path:
    """The default shipped bundle (``shapes32``: the shapes GAN with its editors)."""
    return shipped_models_dir() / DEFAULT_MODEL


def resolve_model(model: str | Path | None) -> Path:
    """A shipped model's name or a bundle directory → the bundle's path (``None`` = the default model).

    A path wins over a name when both exist; anything else raises ``ValueError`` listing the shipped names.
    """
    if model is None or str(model) == "":
        return default_bundle_path()
    path = Path(model)
    if path.is_dir():
        return path
    if str(model) in list_models():
        return shipped_models_dir() / str(model)
    raise InputError(f"no model {str(model)!r}: not a bundle directory, and the shipped models are "
                     f"{list_models()}")
