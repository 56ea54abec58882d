"""Imports every editor module so that each registers its kind with ``build_editor``."""

from curvedit.models import editors, known_chart, linear_editors, rbf_editor  # noqa: F401
