"""The evaluation's Markdown tables: one row per (bundle, editor) with the headline numbers at amount 1, and one
row per generator with its image quality."""

from __future__ import annotations

COLUMNS = (
    ("bundle", "bundle"),
    ("editor", "editor"),
    ("approach", "the editor's family: cartesian (the generator's own axes), oblique (linear arithmetic), local "
                 "(vector fields), curvilinear"),
    ("comm. Z", "relative commutation error in latent space"),
    ("comm. px", "… in pixel space"),
    ("comm. fac", "… in factor space"),
    ("loop", "commutator-cycle error"),
    ("round trip", "‖E₋ₜ(Eₜ(z)) − z‖ / ‖Eₜ(z) − z‖"),
    ("curv. Z", "path midpoint deviation / chord (amount 2)"),
    ("purity", "mean purity of the directions (factor regressor, or the true factors of a known chart)"),
    ("purity px", "mean purity from pixel statistics, held out: no regressor involved"),
    ("pure", "factors with a direction of purity > 0.8"),
    ("calib.", "mean |gain − 1|, gain = signed change of the direction's factor per unit amount"),
    ("DCI D/C", "DCI-style disentanglement / completeness"),
    ("probe", "fresh-probe accuracy"),
    ("FD edit", "Fréchet distance, regressor features, edited vs unedited (noise floor in brackets)"),
    ("atyp.", "mean |‖z'‖² − d|/d after a ±1 edit"),
    ("ms b1", "ms per edit call, batch 1 (torch)"),
    ("ms b256", "ms per edit call, batch 256 (torch)"),
    ("trained", "needs training"),
)


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if value == 0:
        return "0"
    if abs(value) < 1e-2 or abs(value) >= 1e4:
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


def rows(results: list[dict]) -> list[list[str]]:
    out = []
    for bundle in results:
        for name, e in bundle["editors"].items():
            g1 = e["geometry"]["amount=1"]
            g2 = e["geometry"].get("amount=2", g1)
            f = e.get("factors", {})
            px = e.get("pixels", {})
            q = e["quality"]
            fd = None if "frechet" not in q else f"{_fmt(q['frechet'])} ({_fmt(q['frechet_noise_floor'])})"
            dci = "–" if not f else f"{_fmt(f['dci_disentanglement'])}/{_fmt(f['dci_completeness'])}"
            out.append([
                bundle["label"], name, e.get("approach") or "–", _fmt(g1["commutation_latent"]),
                _fmt(g1.get("commutation_pixel")), _fmt(g1.get("commutation_factor")), _fmt(g1["loop"]),
                _fmt(g1["round_trip"]), _fmt(g2["path_curvature"]), _fmt(f.get("mean_purity")),
                _fmt(px.get("mean_purity")), _fmt(f.get("pure_factors")), _fmt(f.get("calibration_error")), dci,
                _fmt(e["probe_accuracy"]), fd or "–", _fmt(q["atypicality"]), _fmt(e["cost"]["ms_batch1"]),
                _fmt(e["cost"]["ms_batch256"]), _fmt(e["needs_training"]),
            ])
    return out


GENERATOR_COLUMNS = (
    ("bundle", "bundle"),
    ("family", "generator family"),
    ("trained under", "the constraint the generator was trained under, if any (β-VAE, InfoGAN)"),
    ("data", "training data"),
    ("FD real", "Fréchet distance in regressor features between generated and real images (noise floor: two real "
                "sets)"),
    ("PSNR", "reconstruction PSNR in dB of held-out real images (encoders)"),
    ("x +1 px", "an x = +1 edit of 96 Pillow-drawn shapes (encoders): the pixel centroid's mean move right, in "
                "standard deviations of the x factor (y drift in brackets); measured from images, no regressor"),
)


def generator_rows(results: list[dict]) -> list[list[str]]:
    out = []
    for bundle in results:
        q = bundle.get("quality", {})
        fd = None if "frechet_to_real" not in q else (f"{_fmt(q['frechet_to_real'])} "
                                                      f"({_fmt(q['frechet_real_floor'])})")
        x = bundle.get("x_edit")
        moved = "–" if not x else f"{_fmt(x['x_shift_std'])} ({_fmt(x['y_drift_std'])})"
        out.append([bundle["label"], bundle["generator"], bundle.get("constraint") or "–", q.get("data", "–"),
                    fd or "–", _fmt(q.get("reconstruction_psnr"), 1), moved])
    return out


def generator_table(results: list[dict]) -> str:
    """One row per generator: its family, constraint, and image quality."""
    lines = ["| " + " | ".join(c for c, _ in GENERATOR_COLUMNS) + " |", "|" + "---|" * len(GENERATOR_COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in generator_rows(results)]
    lines += ["", "Columns: " + "; ".join(f"**{c}** = {meaning}" for c, meaning in GENERATOR_COLUMNS[1:]) + "."]
    return "\n".join(lines) + "\n"


def markdown_table(results: list[dict]) -> str:
    """The table, then one line per known-chart bundle with its computed linear ceiling."""
    lines = ["| " + " | ".join(c for c, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(results)]
    ceilings = [(b["label"], b["linear_ceiling"]) for b in results if "linear_ceiling" in b]
    if ceilings:
        lines.append("")
        for label, ceiling in ceilings:
            per = ", ".join(f"{v:.2f}" for v in ceiling["purity"])
            lines.append(f"- {label}: best purity any linear editor reaches (computed): "
                         f"**{ceiling['mean_purity']:.3f}** (per factor {per})")
    lines += ["", "Columns: " + "; ".join(f"**{c}** = {meaning}" for c, meaning in COLUMNS[2:]) + "."]
    return "\n".join(lines) + "\n"
