"""curvedit: commutative, nonlinear latent-space image editing (DeCurvEd) with fast engines and a service.

    import curvedit
    model = curvedit.load()                 # the shipped default model (shapes32); curvedit.list_models()
    z = model.sample(16, seed=0)            # float32 [16, d]
    z2 = model.edit(z, {"scale": 1.5, "x": -1.0})
    images = model.generate(z2)             # uint8 [16, H, W, 3]
"""

from curvedit.api import Model, default_bundle_path, list_models, load, resolve_model
from curvedit.bundle import BundleError
from curvedit.errors import InputError

__version__ = "0.2.0"
__all__ = ["BundleError", "InputError", "Model", "__version__", "default_bundle_path", "list_models", "load",
           "resolve_model"]
