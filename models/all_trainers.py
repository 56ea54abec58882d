"""Imports every module that registers a generator family's training recipe (``register_training``), so that
``train_recipe`` finds it: the training modules import their family, never the other way round."""

from curvedit.models import train_generator, train_infogan, train_pixelcnn, vae  # noqa: F401
