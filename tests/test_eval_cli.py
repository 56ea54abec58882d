"""``curvedit eval --tiny`` end to end: known-chart bundle built, a DCGAN bundle evaluated, files written."""

import json
import shutil

from PIL import Image

from curvedit.cli import main


def test_eval_tiny_end_to_end(tiny_bundle, tiny_vae_bundle, tmp_path, capsys):
    bundle = tmp_path / "tiny"
    shutil.copytree(tiny_bundle, bundle)
    out, work = tmp_path / "out", tmp_path / "work"
    code = main(["eval", "--model", str(bundle), "--model", str(tiny_vae_bundle), "--tiny", "--curvatures", "0.5",
                 "--work", str(work), "--out", str(out)])
    assert code == 0
    table = (out / "evaluation_results.md").read_text()
    assert "| chart c=0.5 | decurved | curvilinear |" in table and "| tiny | decurved |" in table
    assert "best purity any linear editor reaches" in table
    assert "purity px" in table and "### Generators" in table and "| tinyvae | vae |" in table
    results = json.loads((out / "evaluation_results.json").read_text())["results"]
    chart = next(r for r in results if r["label"] == "chart c=0.5")
    assert set(chart["editors"]) == {"chart", "decurved", "linear", "rbf", "ganspace", "sefa", "attrdiff",
                                     "neuralode", "axes"}
    truth = chart["editors"]["chart"]
    assert truth["factors"]["mean_purity"] > 0.999
    assert truth["factors"]["calibration_error"] < 1e-4  # +1 moves its true factor by exactly +1
    assert truth["pixels"]["mean_purity"] > 0.6  # the pixel reader agrees without the regressor
    assert truth["geometry"]["amount=1"]["commutation_latent"] < 1e-5
    for kind in ("rbf", "neuralode"):
        assert chart["editors"][kind]["geometry"]["amount=1"]["commutation_latent"] > 1e-3
    assert "frechet_to_real" in chart["quality"] and "reconstruction_psnr" not in chart["quality"]
    vae = next(r for r in results if r["label"] == "tinyvae")
    assert vae["quality"]["reconstruction_psnr"] > 0 and vae["quality"]["frechet_real_floor"] >= 0
    prepared = json.loads((work / "known-chart-c0.5" / "manifest.json").read_text())["editors"]
    assert prepared["decurved"]["config"]["layers"] == 16  # TRAINING_DEFAULTS
    assert prepared["decurved"]["training"]["config"]["lr_schedule"] == "cosine"  # prepare.SCHEDULES
    assert prepared["rbf"]["training"]["config"]["lr_schedule"] == "constant"
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert "purity_vs_curvature.png" in figures and "traversals_tiny.png" in figures
    assert "commutation_chart_c0.5.png" in figures
    assert "samples.png" in figures and "purity_vs_quality.png" in figures
    for name in figures:
        assert Image.open(out / "figures" / name).size[0] > 100
    assert "| bundle | editor |" in capsys.readouterr().out
    # A second run reuses the prepared known-chart bundle (same recipe) instead of retraining it.
    manifest = (work / "known-chart-c0.5" / "manifest.json").stat().st_mtime_ns
    assert main(["eval", "--tiny", "--no-default", "--curvatures", "0.5", "--work", str(work),
                 "--out", str(out)]) == 0
    assert (work / "known-chart-c0.5" / "manifest.json").stat().st_mtime_ns == manifest
