"""Imports every generator family module so that each registers itself with ``build_generator``."""

from curvedit.models import external, generator, infogan, known_chart, pixelcnn, vae  # noqa: F401
