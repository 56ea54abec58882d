"""Measurements of an editor on a generator with a factor regressor: what each direction changes."""

from __future__ import annotations

import torch

from curvedit.models.editors import Editor


@torch.no_grad()
def factor_response(
    generator, editor: Editor, regressor, latents: torch.Tensor, amount: float = 1.0
) -> torch.Tensor:
    """``M [K, F]``: mean |Δ factor j| (standardised units) when direction k moves by ±``amount``.

    Half of the latents are edited by ``+amount``, half by ``-amount``.
    """
    return factor_responses(generator, editor, regressor, latents, amount)[0]


@torch.no_grad()
def factor_responses(
    generator, editor: Editor, regressor, latents: torch.Tensor, amount: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, S)``, both ``[K, F]``, from one pass: ``M`` as ``factor_response``; ``S[k, j]`` the signed mean change
    of factor j per unit amount (``Δ / ±amount``), so ``S[k, k]`` is direction k's gain (+1: calibrated)."""
    n = latents.shape[0]
    signs = torch.where(torch.arange(n, device=latents.device) % 2 == 0, 1.0, -1.0)
    before = regressor(generator(latents))
    rows, signed = [], []
    for k in range(editor.num_directions):
        amounts = torch.zeros(n, editor.num_directions, device=latents.device)
        amounts[:, k] = amount * signs
        delta = regressor(generator(editor.edit(latents, amounts))) - before
        rows.append(delta.abs().mean(0))
        signed.append((delta * signs[:, None]).mean(0) / amount)
    return torch.stack(rows).cpu(), torch.stack(signed).cpu()


def purity(response: torch.Tensor, matched: list[int] | None = None) -> torch.Tensor:
    """Per-direction purity ``[K]``: ``M[k, j_k] / Σ_j M[k, j]`` for the matched factor ``j_k``.

    ``matched`` defaults to each direction's largest factor (unsupervised editors have no assigned factor).
    """
    if matched is None:
        matched = response.argmax(dim=1).tolist()
    k = torch.arange(response.shape[0])
    return response[k, torch.tensor(matched)] / response.sum(dim=1).clamp_min(1e-12)
