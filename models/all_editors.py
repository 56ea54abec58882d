"""Imports every editor module so that each registers its kind with ``build_editor``."""

from curvedit.models import editors  # noqa: F401
