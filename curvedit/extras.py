"""The optional extras, and the one error for a feature whose extra is not installed.

``pip install curvedit`` serves, edits, encodes, translates and runs batch jobs; a few features need more:

- ``export``: writing ONNX graphs (``curvedit export``, training that writes a bundle's graphs), onnx + onnxscript;
- ``train``: the digits data (scikit-learn ships it);
- ``ray``: batch jobs on Ray Data and Parquet input (ray, pyarrow);
- ``peers``: the servers ``curvedit bench peers`` measures beside curvedit.

``require_extra`` checks that a feature's modules are installed or raises ``MissingExtra``, a ``ValueError``
whose message names the extra to install; the command line prints it on one line and exits with code 2.
"""

from __future__ import annotations

import importlib.util

EXTRAS = {
    "export": ("onnx", "onnxscript"),
    "train": ("sklearn",),
    "ray": ("ray", "pyarrow"),
    "peers": ("litserve",),
}


class MissingExtra(ValueError):
    """A feature needs an optional extra that is not installed."""

    def __init__(self, feature: str, extra: str, module: str, alternative: str = ""):
        self.feature, self.extra, self.module = feature, extra, module
        super().__init__(f"{feature} needs the optional '{extra}' extra ({module} is not installed): "
                         f"pip install 'curvedit[{extra}]'" + (f", or {alternative}" if alternative else ""))


def missing_module(extra: str) -> str | None:
    """The first of ``extra``'s modules that is not installed here, or ``None`` (found, not imported: cheap)."""
    return next((m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None), None)


def require_extra(extra: str, feature: str, alternative: str = "") -> None:
    """Raise ``MissingExtra`` naming ``feature`` (what the user asked for) unless ``extra`` is installed."""
    module = missing_module(extra)
    if module is not None:
        raise MissingExtra(feature, extra, module, alternative)
