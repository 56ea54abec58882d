"""Make an editor of any kind for a frozen generator: train it, or fit it (kinds with ``needs_training`` false).

Fitted kinds that read factors themselves: ``attrdiff`` (group-mean differences of latents, calibrated to gain +1
like the labelled components below) and ``axes`` (the generator's own ``code_axes()``, each factor matched with
the axis that moves it most purely; see ``models.labelled_editors``).

Fitted linear kinds (GANSpace, SeFa) find unnamed components. In supervised mode they are then *labelled*,
the way a user names PCA components: the signed factor response of every component is measured, each factor
takes the component that moves it most purely (greedy, purest pair first), and the column is scaled so that
an amount of +1 moves its factor by +1 standard deviation, like the trained supervised editors.

A generator that knows its true factors (``true_factors()``, the known-chart family: ``ψ(z)``) is read directly in
supervised training and measurement instead of the factor regressor on renders (no rendering, no regressor
error): ``factor_reader`` picks the instrument.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from curvedit.models.editors import EDITOR_KINDS, TRAINING_DEFAULTS, Editor, build_editor
from curvedit.models.known_chart import chart_editor
from curvedit.models.labelled_editors import AttributeVectorEditor, AxesEditor, group_difference, match_greedy
from curvedit.models.linear_editors import GANSpaceEditor, SeFaEditor, _FittedLinear
from curvedit.models.measure import factor_response, factor_responses, purity
from curvedit.models.train_editor import EditorTrainConfig, factor_indices, factor_names, train_editor


def factor_reader(generator, regressor) -> tuple[nn.Module, nn.Module]:
    """``(generator-like, regressor-like)`` whose composition maps ``z`` to standardised factors: the
    generator's own ``true_factors()`` when it has them, else ``regressor ∘ generator``."""
    truth = generator.true_factors()
    if truth is not None:
        return truth, nn.Identity()
    if regressor is None:
        raise ValueError("supervised editors need a factor regressor: the bundle has none, pass --regressor")
    return generator, regressor


@torch.no_grad()
def signed_response(generator, regressor, matrix: torch.Tensor, samples: int = 512, seed: int = 1) -> torch.Tensor:
    """``[K, F]``: mean factor change (signed) per unit amount along each column of ``matrix [d, K]``,
    from central differences at ±1."""
    z = torch.randn(samples, matrix.shape[0], generator=torch.Generator().manual_seed(seed))
    rows = []
    for k in range(matrix.shape[1]):
        up = regressor(generator(z + matrix[:, k]))
        down = regressor(generator(z - matrix[:, k]))
        rows.append(((up - down) / 2).mean(0))
    return torch.stack(rows)


def label_components(matrix: torch.Tensor, generator, regressor, directions: list[str],
                     samples: int = 512) -> torch.Tensor:
    """Columns of ``matrix [d, C]`` → ``[d, K]``, column k the component best tied to factor ``directions[k]``,
    signed and scaled to gain +1 (measured on ``samples`` latents)."""
    targets = factor_indices(directions, factor_names(regressor))
    response = signed_response(generator, regressor, matrix, samples)
    chosen = match_greedy(_shares(response), targets)
    return torch.stack([matrix[:, chosen[j]] / _gain(response[chosen[j], j]) for j in targets], dim=1)


def _shares(response: torch.Tensor) -> torch.Tensor:
    """``[C, F]`` signed responses → each component's share of its total |response| per factor."""
    return response.abs() / response.abs().sum(1, keepdim=True).clamp_min(1e-12)


def _gain(gain: torch.Tensor) -> torch.Tensor:
    """A component that barely moves its factor keeps a bounded (but large) scale instead of dividing by ~0."""
    return torch.where(gain < 0, -1.0, 1.0) * gain.abs().clamp_min(1e-2)


@torch.no_grad()
def fit_attrdiff(generator, regressor, directions: list[str], samples: int = 4096, seed: int = 0,
                 quantile: float = 0.25) -> AttributeVectorEditor:
    """Group-difference attribute vectors for ``directions`` (factor names) from ``samples`` latents whose images
    the reader labels, each scaled to gain +1 (measured by central differences on 512 other latents)."""
    reader_generator, reader = factor_reader(generator, regressor)
    targets = factor_indices(directions, factor_names(reader))
    z = torch.randn(samples, generator.latent_dim, generator=torch.Generator().manual_seed(seed + 2))
    factors = torch.cat([reader(reader_generator(chunk)) for chunk in z.split(512)])[:, targets]
    matrix = group_difference(z, factors, quantile)
    response = signed_response(reader_generator, reader, matrix)
    columns = [matrix[:, k] / _gain(response[k, j]) for k, j in enumerate(targets)]
    return AttributeVectorEditor.from_matrix(torch.stack(columns, dim=1), directions)


@torch.no_grad()
def fit_axes(generator, regressor, directions: list[str], mode: str, samples: int = 512) -> AxesEditor:
    """The generator's own axes (``code_axes()``). Supervised: each factor of ``directions`` takes the axis that
    moves it most purely — by the measure purity uses, mean |Δ factor| under ±1 on ``samples`` latents — and
    ``fit_report`` records every candidate axis's response (absolute and signed) and the matching with its
    purity. Unsupervised: the first K axes, named as given."""
    candidates = generator.code_axes()
    if mode == "unsupervised":
        return AxesEditor(generator.latent_dim, directions, candidates[: len(directions)]).eval()
    reader_generator, reader = factor_reader(generator, regressor)
    targets = factor_indices(directions, factor_names(reader))
    every_axis = AxesEditor(generator.latent_dim, [f"axis{c}" for c in candidates], candidates).eval()
    z = torch.randn(samples, generator.latent_dim, generator=torch.Generator().manual_seed(1))
    response, signed = factor_responses(reader_generator, every_axis, reader, z)  # [C, F] each
    shares = _shares(response)
    chosen = match_greedy(shares, targets)
    editor = AxesEditor(generator.latent_dim, directions, [candidates[chosen[j]] for j in targets]).eval()
    names = factor_names(reader)
    editor.fit_report = {"matching": {
        "candidates": candidates, "factors": list(names), "response": response.tolist(),
        "signed_response": signed.tolist(), "axis_of": {names[j]: candidates[chosen[j]] for j in targets},
        "purity": {names[j]: shares[chosen[j], j].item() for j in targets},
        "signed_gain": {names[j]: signed[chosen[j], j].item() for j in targets}}}
    return editor


def fit_editor(method: str, generator, directions: list[str], mode: str, regressor=None, seed: int = 0,
               samples: int = 512) -> Editor:
    """A fitted editor (``ganspace``, ``sefa``, ``attrdiff``, ``axes``, ``chart``); supervised mode labels the
    components."""
    if method == "chart":
        return chart_editor(generator, directions)
    if method == "axes":
        return fit_axes(generator, regressor, directions, mode, samples)
    if method == "attrdiff":
        if mode != "supervised":
            raise ValueError("attrdiff needs labels: fit it in supervised mode, with a factor regressor (or a "
                             "generator that knows its factors)")
        return fit_attrdiff(generator, regressor, directions, seed=seed)
    if method not in ("ganspace", "sefa"):
        raise ValueError(f"{method!r} is not a fitted editor kind (ganspace, sefa, attrdiff, axes, chart)")
    if mode == "unsupervised":
        return _fit_components(method, generator, directions, seed)
    full = _fit_components(method, generator, [f"c{k}" for k in range(generator.latent_dim)], seed)
    reader_generator, reader = factor_reader(generator, regressor)
    cls = type(full)
    labelled = label_components(full.weight, reader_generator, reader, directions, samples)
    return cls.from_matrix(labelled, directions)


def _fit_components(method: str, generator, directions: list[str], seed: int) -> _FittedLinear:
    if method == "ganspace":
        return GANSpaceEditor.fit(generator, directions, seed=seed)
    return SeFaEditor.fit(generator, directions)


def make_editor(method: str, generator, directions: list[str], config: EditorTrainConfig, regressor=None,
                options: dict | None = None, progress: bool = True, measure_samples: int = 512,
                checkpoint=None, device: str = "cpu") -> tuple[Editor, dict]:
    """Build and train (or fit) an editor of kind ``method``; returns ``(editor, report)``.

    ``options`` are extra constructor arguments (e.g. ``{"orthonormal": True}`` for ``linear``), over
    ``TRAINING_DEFAULTS``; ``measure_samples`` latents label fitted components and measure them (trained kinds
    measure on 512); ``checkpoint`` is a file that makes training resumable (see ``train_editor``; fitted kinds
    ignore it). Trained kinds train on ``device`` and come back on the CPU; fitted kinds are fitted on the CPU.
    """
    if method not in EDITOR_KINDS:
        raise ValueError(f"unknown editor kind {method!r}; known kinds: {sorted(EDITOR_KINDS)}")
    latent_dim = generator.latent_dim
    if not EDITOR_KINDS[method].needs_training:
        t0 = time.time()
        editor = fit_editor(method, generator, directions, config.mode, regressor, config.seed, measure_samples)
        report = {"mode": config.mode, "fitted": True, "seconds": time.time() - t0,
                  **getattr(editor, "fit_report", {})}
        if config.mode == "supervised":
            report.update(_supervised_measure(editor, generator, regressor, config.seed, measure_samples))
        return editor, report
    options = {**TRAINING_DEFAULTS.get(method, {}), **(options or {})}
    editor = build_editor(method, {"latent_dim": latent_dim, "directions": directions, **options})
    if config.mode == "supervised":
        reader_generator, reader = factor_reader(generator, regressor)
        report = train_editor(editor, reader_generator, config, regressor=reader, progress=progress,
                              checkpoint=checkpoint, device=device)
    else:
        report = train_editor(editor, generator, config, progress=progress, checkpoint=checkpoint, device=device)
    for module in (editor, generator, regressor):
        if module is not None:
            module.cpu()
    return editor, report


def _supervised_measure(editor: Editor, generator, regressor, seed: int, samples: int) -> dict:
    reader_generator, reader = factor_reader(generator, regressor)
    latents = torch.randn(samples, editor.latent_dim, generator=torch.Generator().manual_seed(seed + 12345))
    targets = factor_indices(editor.directions, factor_names(reader))
    response = factor_response(reader_generator, editor, reader, latents, amount=1.0)
    per_direction = purity(response, targets)
    return {"purity": dict(zip(editor.directions, per_direction.tolist(), strict=True)),
            "mean_purity": per_direction.mean().item(),
            "gain": dict(zip(editor.directions, response[torch.arange(len(targets)), targets].tolist(),
                             strict=True)),
            "factor_response": response.tolist()}
