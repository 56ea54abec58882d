"""The DeCurvEd ablation runner: variants start from a fixed recipe, results are measured like the table and
cached per variant."""

import json

import pytest

from curvedit.evaluation import ablation


def test_variants_start_from_the_recipe_before_the_change():
    """The baseline is the 8-layer DeCurvEd whatever TRAINING_DEFAULTS say now, so the table stays
    reproducible."""
    result = ablation.run_variant("baseline", 0.5, {"steps": 3}, {})
    assert result["options"] == {"mixing": True, "layers": 8}
    assert result["config"]["steps"] == 3 and result["config"]["lr"] == 3e-3
    assert result["commutation_latent"] < 1e-5 and result["round_trip"] < 1e-5
    assert 0 < result["mean_purity"] <= 1 and len(result["purity"]) == 6


def test_constructor_variants_apply_to_decurved_only():
    with pytest.raises(ValueError, match="constructor"):
        ablation.run_variant("deep", 0.5, {"steps": 1}, {"layers": 16}, method="linear")


def test_cli_reuses_cached_variants(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ablation, "run_variant", lambda name, *args, **kwargs: calls.append(name) or {
        "variant": name, "mean_purity": 0.5, "pure_factors": 1, "commutation_latent": 1e-7, "round_trip": 1e-7,
        "seconds": 1})
    argv = ["--curvature", "0.5", "--variants", "baseline", "deep", "--work", str(tmp_path / "w"),
            "--out", str(tmp_path / "o" / "table")]
    assert ablation.main(argv) == 0 and ablation.main(argv) == 0
    assert calls == ["baseline", "deep"]
    assert "| decurved | deep | cosine, 16 coupling layers |" in (tmp_path / "o" / "table.md").read_text()
    assert json.loads((tmp_path / "o" / "table.json").read_text())["command"].startswith("python -m")
