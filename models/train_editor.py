"""Train an editor on a frozen generator, in one of two modes.

- ``unsupervised`` (the published recipe): a reconstructor R sees ``(G(z), G(z'))`` and predicts which
  direction moved (cross-entropy) and by how much (L1, weight ``amount_loss_weight``); amounts are
  ``±U[amount_min, amount_max]``; Adam for the editor and R.
- ``supervised``: direction k is tied to factor k by the frozen factor regressor φ. With ``Δ = φ(G(z')) − φ(G(z))``
  in standardised units, the loss is ``|Δ_k − t| + off_target_weight · mean_{j≠k} |Δ_j|``: an amount t moves
  factor k by about t standard deviations of the data and leaves the other factors alone.

Both add ``regulariser_weight ×`` the editor's own regulariser (DeCurvEd: mean log|det|² of the inverse pass).
Supervised training first lets the editor ``warm_start`` from factor readings (a DeCurvEd with a mixing layer
starts at the best linear chart).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from curvedit.models.editors import Editor
from curvedit.models.files import load_checkpoint, save_checkpoint
from curvedit.models.measure import factor_response, purity
from curvedit.models.reconstructor import Reconstructor
from curvedit.models.renderer import FACTOR_NAMES

MODES = ("unsupervised", "supervised")
LR_SCHEDULES = ("constant", "cosine")
WARM_START_SAMPLES = 4096  # latents whose factor readings start a supervised editor (``Editor.warm_start``)


@dataclass(frozen=True)
class EditorTrainConfig:
    mode: str = "supervised"
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-4
    amount_min: float = 0.1
    amount_max: float = 1.5
    regulariser_weight: float = 1.0
    amount_loss_weight: float = 0.25
    off_target_weight: float = 1.0
    lr_schedule: str = "constant"  # or "cosine": the learning rate decays to 0 over ``steps`` (cosine annealing)
    seed: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0 <= self.amount_min <= self.amount_max:
            raise ValueError(f"need 0 <= amount_min <= amount_max, got {self.amount_min}, {self.amount_max}")
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError(f"need steps >= 1 and batch_size >= 2, got {self.steps}, {self.batch_size}")

    def to_dict(self) -> dict:
        return asdict(self)


def factor_names(regressor) -> tuple[str, ...]:
    """The names of a regressor's outputs: its ``factor_names``, else the built-in renders' factors."""
    return tuple(getattr(regressor, "factor_names", FACTOR_NAMES))


def factor_indices(directions: list[str], names: tuple[str, ...] = FACTOR_NAMES) -> list[int]:
    """Supervised directions must be factor names (of the regressor: ``names``); returns each one's index."""
    unknown = [d for d in directions if d not in names]
    if unknown:
        raise ValueError(f"supervised directions must be factor names {list(names)}, got {unknown}")
    return [list(names).index(d) for d in directions]


def _sample_step(editor: Editor, config: EditorTrainConfig, latent_dim: int, rng: torch.Generator):
    n, k_count = config.batch_size, editor.num_directions
    z = torch.randn(n, latent_dim, generator=rng)
    k = torch.randint(k_count, (n,), generator=rng)
    magnitude = config.amount_min + (config.amount_max - config.amount_min) * torch.rand(n, generator=rng)
    sign = torch.where(torch.rand(n, generator=rng) < 0.5, -1.0, 1.0)
    eps = magnitude * sign
    amounts = torch.zeros(n, k_count)
    amounts[torch.arange(n), k] = eps
    return z, k, eps, amounts


def train_editor(editor: Editor, generator, config: EditorTrainConfig, regressor=None, progress: bool = True,
                 checkpoint: str | Path | None = None, checkpoint_every: int = 250, device: str = "cpu"):
    """Train ``editor`` in place on the frozen ``generator``.

    With ``checkpoint`` (a file path) the run is resumable: every ``checkpoint_every`` steps and at the end the
    editor, the reconstructor, the optimiser, the sampling RNG and the loss log are saved there (atomically),
    and a later call with the same editor and config continues from the last save and ends with the same
    weights as an uninterrupted run.

    Training runs on ``device`` (the editor, generator and regressor are moved there); random draws stay on the
    CPU, so a run is the same sequence of samples on any device.

    Returns a report dict: ``losses`` (mean loss per 50 steps), ``seconds``, and the end-of-training measure:
    reconstructor accuracy (unsupervised) or per-direction purity and gain (supervised).
    """
    if config.mode == "supervised" and regressor is None:
        raise ValueError("supervised training needs the factor regressor (regressor=...)")
    targets = factor_indices(editor.directions, factor_names(regressor)) if config.mode == "supervised" else None
    torch.manual_seed(config.seed)
    rng = torch.Generator().manual_seed(config.seed)
    editor.to(device)
    for frozen in (generator, regressor):
        if frozen is not None:
            frozen.to(device).eval().requires_grad_(False)
    params = list(editor.parameters())
    recon = None
    if config.mode == "unsupervised":
        recon = Reconstructor(editor.num_directions).to(device)
        params += list(recon.parameters())
    latent_dim = editor.latent_dim
    identity = None if checkpoint is None else {
        "config": config.to_dict(), "editor_kind": editor.kind, "editor_config": editor.config(),
        "generator_weights": fingerprint(generator), "regressor_weights": fingerprint(regressor)}
    state = _resume_state(checkpoint, identity)
    t0 = time.time()
    if state is None and targets is not None and editor.wants_warm_start:
        with torch.no_grad():  # its own latents: the training samples stay the same with or without it
            warm_rng = torch.Generator().manual_seed(config.seed + 1)
            z = torch.randn(WARM_START_SAMPLES, latent_dim, generator=warm_rng).to(device)
            editor.warm_start(z, regressor(generator(z))[:, targets])
    opt = torch.optim.Adam(params, lr=config.lr)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.steps) if config.lr_schedule == "cosine"
             else None)
    losses, window, start, seconds_before = [], [], 0, 0.0
    if state is not None:
        editor.load_state_dict(state["editor"])
        if recon is not None:
            recon.load_state_dict(state["reconstructor"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        rng.set_state(state["rng"])
        losses, window, start, seconds_before = state["losses"], state["window"], state["step"], state["seconds"]

    def save(step: int) -> None:
        save_checkpoint(checkpoint, {
            **identity, "step": step, "editor": editor.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else {},
            "reconstructor": recon.state_dict() if recon is not None else {}, "rng": rng.get_state(),
            "losses": losses, "window": window, "seconds": seconds_before + time.time() - t0,
        })

    editor.train()
    steps = tqdm(range(start, config.steps), initial=start, total=config.steps, disable=not progress,
                 desc=f"editor ({config.mode})", unit="step")
    for step in steps:
        z, k, eps, amounts = (x.to(device) for x in _sample_step(editor, config, latent_dim, rng))
        z_edited, regulariser = editor.training_edit(z, amounts)
        before, after = generator(z), generator(z_edited)
        if recon is not None:
            logits, amount_hat = recon(before, after)
            loss = F.cross_entropy(logits, k) + config.amount_loss_weight * (amount_hat - eps).abs().mean()
        else:
            delta = regressor(after) - regressor(before)
            target_factor = torch.tensor(targets, device=k.device)[k]
            on_target = delta[torch.arange(len(k)), target_factor]
            off_mask = torch.ones_like(delta).scatter_(1, target_factor[:, None], 0.0)
            off_target = (delta.abs() * off_mask).sum(1) / off_mask.sum(1)
            loss = (on_target - eps).abs().mean() + config.off_target_weight * off_target.mean()
        loss = loss + config.regulariser_weight * regulariser
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        window.append(loss.item())
        if len(window) == 50:
            losses.append(sum(window) / len(window))
            window = []
        if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == config.steps):
            save(step + 1)
    if window:
        losses.append(sum(window) / len(window))
    editor.eval()
    report = {"mode": config.mode, "losses": losses, "seconds": seconds_before + time.time() - t0}
    report.update(_final_measure(editor, generator, config, regressor, recon, targets, device))
    return report


def fingerprint(module: torch.nn.Module | None) -> str:
    """sha256 over a module's state (names and tensor bytes): a checkpoint resumes only on the same frozen
    generator and regressor."""
    digest = hashlib.sha256()
    for name, tensor in (module.state_dict().items() if module is not None else ()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _resume_state(checkpoint: str | Path | None, identity: dict | None) -> dict | None:
    """The saved state at ``checkpoint`` if there is one, after checking it belongs to this editor and config."""
    if checkpoint is None or not Path(checkpoint).is_file():
        return None
    state = load_checkpoint(checkpoint)
    for key, value in identity.items():
        if state.get(key) != value:
            what = key.replace("_", " ")
            raise ValueError(f"{checkpoint} was written for another {what} ({state.get(key)}, now {value}): "
                             "delete it to start afresh, or resume with the same settings")
    return state


@torch.no_grad()
def _final_measure(editor, generator, config, regressor, recon, targets, device) -> dict:
    held_out = torch.Generator().manual_seed(config.seed + 12345)
    if recon is not None:
        recon.eval()
        big = EditorTrainConfig(**{**config.to_dict(), "batch_size": 512})
        z, k, eps, amounts = (x.to(device) for x in _sample_step(editor, big, editor.latent_dim, held_out))
        logits, amount_hat = recon(generator(z), generator(editor.edit(z, amounts)))
        return {
            "reconstructor_accuracy": (logits.argmax(1) == k).float().mean().item(),
            "reconstructor_amount_mae": (amount_hat - eps).abs().mean().item(),
        }
    if regressor is None:
        return {}
    latents = torch.randn(512, editor.latent_dim, generator=held_out).to(device)
    response = factor_response(generator, editor, regressor, latents, amount=1.0)
    per_direction = purity(response, targets)
    return {
        "purity": dict(zip(editor.directions, per_direction.tolist(), strict=True)),
        "mean_purity": per_direction.mean().item(),
        "gain": dict(zip(editor.directions, response[torch.arange(len(targets)), targets].tolist(), strict=True)),
        "factor_response": response.tolist(),
    }
