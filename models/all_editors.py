"""Imports every editor module so that each registers its kind with ``build_editor``."""

from curvedit.models import (  # noqa: F401
    editors,
    known_chart,
    labelled_editors,
    linear_editors,
    neuralode_editor,
    rbf_editor,
)
