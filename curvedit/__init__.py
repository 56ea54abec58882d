"""curvedit: commutative, nonlinear latent-space image editing (DeCurvEd) with fast engines and a service.

    import curvedit
    model = curvedit.load()                 # the shipped default model (shapes32); curvedit.list_models()
    z = model.sample(16, seed=0)            # float32 [16, d]
    z2 = model.edit(z, {"scale": 1.5, "x": -1.0})
    images = model.generate(z2)             # uint8 [16, H, W, 3]

Importing ``curvedit`` (or a part of it) does not import torch: the API below loads on first use, so a process
that never touches a model (a serving front end, ``curvedit --help``) starts without it.
"""

from curvedit.errors import InputError
from curvedit.models.bundle_files import BundleError

__version__ = "0.2.0"
__all__ = ["BundleError", "InputError", "Model", "__version__", "default_bundle_path", "list_models", "load",
           "resolve_model"]
_API = ("Model", "default_bundle_path", "list_models", "load", "resolve_model")


def __getattr__(name: str):
    if name in _API:
        from curvedit import api

        return getattr(api, name)
    raise AttributeError(f"module 'curvedit' has no attribute {name!r}")
