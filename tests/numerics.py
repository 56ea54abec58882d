"""Rounding bounds for the tests, derived from the working precision and the map, not tuned to one run.

Three derivations, each used where it is sound and not uselessly loose:

- **Per layer pass** (``flow_passes``, ``pass_rounding``; round trips and commutation of whole edits): every layer
  pass (a coupling layer, the mixing layer, the alignment map; forward or inverse) adds a relative error of at
  most ``√w·ε``, ``ε`` the precision's machine epsilon and ``w`` the longest dot product in the layer (the coupling
  MLP's width or the latent dim): Higham's probabilistic bound for sums of ``w`` rounded terms (Accuracy and
  Stability of Numerical Algorithms, §4.2), valid for any summation order, so another BLAS kernel or CPU moves the
  measured values, not the bound. An error entering a map is amplified by at most the spectral norm of the rest of
  the map's Jacobian (``jacobian_norms``). Measured on the shipped flows: 0.13–0.25 ε per pass in float32 and
  float64 alike (the amplification belongs to the map, not the precision); one other machine rounded the faces
  round trip 8× worse than this one, which the bound covers.
- **Element by element** (``coupling_bound``, ``flow_bound``, ``edit_bound``; two float32 implementations of one
  layer or edit, e.g. a Triton kernel against the module): a worst-case first-order analysis carried alongside the
  map, 200–1,000× above the measured float32 differences; the fp16 coupling kernel still exceeds it 3–10×, so a
  kernel that lost precision fails.
- **Weights stored in float16** (``storage_bound``): a probabilistic bound, since the worst case through a deep
  network is 10⁵× loose.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

EPS = {torch.float32: float(np.finfo(np.float32).eps), torch.float64: float(np.finfo(np.float64).eps)}


def flow_passes(editor) -> int:
    """Layer passes of one DeCurvEd edit ``f⁻¹(f(z) + t)``: each coupling layer and the mixing layer, twice."""
    flow = editor.flow
    return 2 * (len(flow.layers) + (flow.mixing is not None))


def pass_rounding(editor, dtype: torch.dtype) -> float:
    """The relative rounding bound of one layer pass of ``editor``'s flow in ``dtype``: ``√w·ε``."""
    return math.sqrt(max(editor.flow.config.hidden, editor.latent_dim)) * EPS[dtype]


def in_float64(module: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of ``module`` (eval mode): the same map, computed with ε = 2.2e-16."""
    return copy.deepcopy(module).double().eval()


def jacobian_norms(fn, points: torch.Tensor) -> torch.Tensor:
    """``‖J(x)‖₂`` of a batched map ``fn: [n, d] → [n, d']`` at each row of ``points [n, d]`` (float64
    recommended): how much ``fn`` amplifies an error in its input there."""
    def one(x):
        return fn(x[None])[0]
    return torch.stack([torch.linalg.matrix_norm(torch.autograd.functional.jacobian(one, x), 2) for x in points])


# -- running error bounds of a flow, element by element --------------------------------------------------------
# First-order rounding analysis computed alongside the map in float64: each value carries a bound on its error
# in the working precision. A dot product of w terms rounds by ≤ √w·ε·Σ|terms| (the probabilistic bound above, on
# the sum of magnitudes, so cancellation is covered); an error already in an input is carried through |W| (which
# bounds how far a linear layer can move it); SiLU and tanh are at most 1.1- and 1-Lipschitz; exp(s) turns an
# absolute error in s into the same relative error. Functions are rounded with an absolute ε·(|x| + 1) term on top,
# which covers implementations that compute them through cancelling formulas (tanh as 1 − 2/(e²ˣ + 1)).
def _linear(x, e, layer, eps):
    w, b = layer.weight.detach().double(), layer.bias.detach().double()
    terms = x.abs() @ w.abs().t() + b.abs()
    return x @ w.t() + b, e @ w.abs().t() + math.sqrt(w.shape[1] + 1) * eps * terms


def _silu(x, e, eps):
    y = torch.nn.functional.silu(x)  # x·σ(x): a product and a quotient, no cancellation
    return y, 1.1 * e + 3 * eps * y.abs()


def _scale_shift(layer, x1, e1, eps):
    h, e = x1, e1
    for module in layer.net:
        h, e = _linear(h, e, module, eps) if isinstance(module, torch.nn.Linear) else _silu(h, e, eps)
    (s_raw, shift), (e_raw, e_shift) = h.chunk(2, dim=1), e.chunk(2, dim=1)
    s = layer.clamp * torch.tanh(s_raw / layer.clamp)
    return s, e_raw + 2 * eps * (s.abs() + layer.clamp), shift, e_shift


def coupling_bound(layer, x: torch.Tensor, e: torch.Tensor, eps: float, reverse: bool = False):
    """``(y, e_y, logabsdet, e_logabsdet)`` of one ``AffineCoupling`` (forward, or inverse with ``reverse``) at
    ``x [batch, dim]`` whose elements are off by at most ``e``; values in float64."""
    x, e = x.double(), e.double()
    if reverse:
        x, e = x.index_select(1, layer.inv_perm), e.index_select(1, layer.inv_perm)
    x1, x2, e1, e2 = x[:, : layer.split], x[:, layer.split :], e[:, : layer.split], e[:, layer.split :]
    s, e_s, shift, e_shift = _scale_shift(layer, x1, e1, eps)
    sign = -1.0 if reverse else 1.0
    scale = torch.exp(sign * s)
    e_scale = scale * (e_s + eps)
    if reverse:
        diff = x2 - shift
        e_diff = e2 + e_shift + eps * diff.abs()
        y2 = diff * scale
        e_y2 = e_diff * scale + diff.abs() * e_scale + eps * y2.abs()
    else:
        y2 = x2 * scale + shift
        e_y2 = e2 * scale + x2.abs() * e_scale + e_shift + eps * ((x2 * scale).abs() + y2.abs())
    y, e_y = torch.cat([x1, y2], dim=1), torch.cat([e1, e_y2], dim=1)
    if not reverse:
        y, e_y = y.index_select(1, layer.perm), e_y.index_select(1, layer.perm)
    n = s.shape[1]
    return y, e_y, sign * s.sum(1), e_s.sum(1) + n * eps * s.abs().sum(1)


def mixing_bound(mixing, x: torch.Tensor, e: torch.Tensor, eps: float, reverse: bool = False):
    """``(y, e_y)`` of an ``InvertibleLinear`` (``W`` forward; the float32-rounded ``W⁻¹`` inverse)."""
    w = mixing.weight.detach().double()
    if reverse:
        w = torch.linalg.inv(w)  # stored rounded to the working precision: one more ε·|W⁻¹| per term
    terms = x.double().abs() @ w.abs().t()
    rounding = (math.sqrt(w.shape[1]) + reverse) * eps * terms
    return x.double() @ w.t(), e.double() @ w.abs().t() + rounding


def flow_bound(flow, x: torch.Tensor, eps: float, reverse: bool = False, e: torch.Tensor | None = None):
    """``(y, e_y)``: a ``CouplingFlow`` forward (or inverse) at ``x``, with each element's rounding bound."""
    y = x.double()
    e = torch.zeros_like(y) if e is None else e.double()
    if not reverse and flow.mixing is not None:
        y, e = mixing_bound(flow.mixing, y, e, eps)
    for layer in (reversed(flow.layers) if reverse else flow.layers):
        y, e, _, _ = coupling_bound(layer, y, e, eps, reverse)
    if reverse and flow.mixing is not None:
        y, e = mixing_bound(flow.mixing, y, e, eps, reverse=True)
    return y, e


def edit_bound(editor, z: torch.Tensor, t: torch.Tensor, eps: float):
    """``(z_edited, e)``: a DeCurvEd edit ``f⁻¹(f(z) + t)`` and each element's rounding bound."""
    with torch.no_grad():
        v, e = flow_bound(editor.flow, z, eps)
        shifted = v + editor.shift(t.double())
        return flow_bound(editor.flow, shifted, eps, reverse=True, e=e + eps * shifted.abs())


def assert_within(actual, expected, bound, what: str = "") -> None:
    """Every ``|actual − expected| ≤ bound`` (elementwise, broadcast); the message names the worst element."""
    actual, expected, bound = (torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a).double()
                               for a in (actual, expected, bound))
    diff = (actual - expected).abs()
    ratio = torch.where(bound > 0, diff / bound, torch.where(diff > 0, torch.inf, 0.0))
    worst = np.unravel_index(int(ratio.argmax()), ratio.shape)
    assert torch.all(ratio <= 1), f"{what}: |actual − expected| is {ratio.max().item():.2f}× its bound at {worst}"


# -- weights stored in half precision --------------------------------------------------------------------------
FLOAT16_STORAGE = 2.0**-11  # round to nearest: a float16 copy of a weight w is within 2⁻¹¹·|w| of it


def storage_bound(network: torch.nn.Sequential, x: torch.Tensor, unit: float = FLOAT16_STORAGE,
                  sigmas: float = 6.0) -> torch.Tensor:
    """A probabilistic bound on ``|network'(x) − network(x)|`` elementwise, where ``network'`` holds every weight
    and bias rounded with relative error ≤ ``unit``. Rounding errors are independent and uniform in ±unit·|w|
    (variance unit²/3·w²), so each output's error is a sum of many independent terms: its variance is
    (unit²/3)·(W²·x² + b²) from the layer's own weights plus W²·(variance in), times 1.1² through SiLU. The bound
    is ``sigmas`` standard deviations (6: P ≈ 2e-9 per element under the normal approximation). The worst-case
    first-order bound (|W| instead of W², no cancellation) is 10⁵× looser on the shipped encoders, useless here."""
    value, variance = x.double(), torch.zeros_like(x, dtype=torch.float64)
    for layer in network:
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
            squared = in_float64(layer)
            with torch.no_grad():
                squared.weight.pow_(2)
                squared.bias.pow_(2)
                own = squared(value.pow(2))  # W²·x² + b²
                squared.bias.zero_()
                variance = squared(variance) + unit**2 / 3 * own
                value = in_float64(layer)(value)
        elif isinstance(layer, (torch.nn.SiLU, torch.nn.Tanh)):
            value, variance = layer(value), (1.1 if isinstance(layer, torch.nn.SiLU) else 1.0) ** 2 * variance
        elif isinstance(layer, (torch.nn.Flatten, torch.nn.Unflatten)):
            value, variance = layer(value), layer(variance)
        else:
            raise TypeError(f"storage_bound does not know {type(layer).__name__}")
    return sigmas * variance.sqrt()
