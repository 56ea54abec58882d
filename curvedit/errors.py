"""The one exception type for a caller's bad input.

``InputError`` is raised by validation only: ``curvedit.Model``'s checks (latents, amounts, editors, seeds,
images), image decoding, and the service's request reading. It subclasses ``ValueError``, so code that catches
``ValueError`` around the public API keeps working. Its point is the other direction: anything that is *not* an
``InputError`` — a ``ValueError`` from deep inside an engine included — is a fault of the server, not of the
request, and the service answers it with INTERNAL (logged once), never with INVALID_ARGUMENT.
"""

from __future__ import annotations


class InputError(ValueError):
    """The input is wrong; the message names the bad value and the fix."""


__all__ = ["InputError"]
