"""``curvedit eval --tiny`` end to end: known-chart bundle built, a DCGAN bundle evaluated, files written."""

import json
import shutil

from PIL import Image

from curvedit.cli import main


def test_eval_tiny_end_to_end(tiny_bundle, tmp_path, capsys):
    bundle = tmp_path / "tiny"
    shutil.copytree(tiny_bundle, bundle)
    out, work = tmp_path / "out", tmp_path / "work"
    code = main(["eval", "--model", str(bundle), "--tiny", "--curvatures", "0.5", "--work", str(work),
                 "--out", str(out)])
    assert code == 0
    table = (out / "evaluation_results.md").read_text()
    assert "| chart c=0.5 | decurved |" in table and "| tiny | decurved |" in table
    assert "best purity any linear editor reaches" in table
    results = json.loads((out / "evaluation_results.json").read_text())["results"]
    chart = next(r for r in results if r["label"] == "chart c=0.5")
    assert set(chart["editors"]) == {"chart", "decurved", "linear", "rbf", "ganspace", "sefa"}
    assert chart["editors"]["chart"]["factors"]["mean_purity"] > 0.999
    assert chart["editors"]["chart"]["geometry"]["amount=1"]["commutation_latent"] < 1e-5
    assert chart["editors"]["rbf"]["geometry"]["amount=1"]["commutation_latent"] > 1e-3
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert "purity_vs_curvature.png" in figures and "traversals_tiny.png" in figures
    assert "commutation_chart_c0.5.png" in figures
    for name in figures:
        assert Image.open(out / "figures" / name).size[0] > 100
    assert "| bundle | editor |" in capsys.readouterr().out
    # A second run reuses the prepared known-chart bundle (same recipe) instead of retraining it.
    manifest = (work / "known-chart-c0.5" / "manifest.json").stat().st_mtime_ns
    assert main(["eval", "--tiny", "--no-default", "--curvatures", "0.5", "--work", str(work),
                 "--out", str(out)]) == 0
    assert (work / "known-chart-c0.5" / "manifest.json").stat().st_mtime_ns == manifest
