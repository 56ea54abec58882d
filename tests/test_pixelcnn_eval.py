"""``curvedit eval`` on a generator that samples: the measurements that need few renders, and its table rows."""

import torch

from curvedit.bundle import load_bundle, write_bundle
from curvedit.evaluation.cli import TINY as TINY_EVAL
from curvedit.evaluation.evaluate import EvalConfig, evaluate_bundle
from curvedit.evaluation.report import GENERATOR_COLUMNS, generator_rows, rows
from curvedit.models.labelled_editors import AxesEditor
from curvedit.models.pixelcnn import PixelCNN, PixelCNNConfig

TINY = PixelCNNConfig(channels=8, layers=3, kernel=3, head=16, encoder_channels=8, encoder_hidden=32)


def test_a_sampler_is_evaluated_on_h_and_from_few_images(tmp_path):
    torch.manual_seed(0)
    path = write_bundle(tmp_path / "b", name="tiny-pixelcnn", version="0", generator=PixelCNN(TINY).eval(),
                        editors={"axes": (AxesEditor(8, ["x", "y"], [0, 1]), "supervised", {})},
                        default_editor="axes")
    config = EvalConfig(**{**EvalConfig().to_dict(), **TINY_EVAL})
    result = evaluate_bundle(load_bundle(path), "tiny", config, progress=lambda _line: None)
    entry = result["editors"]["axes"]
    assert entry["geometry"]["amount=1"]["commutation_latent"] < 1e-6  # axes commute exactly, on h
    assert entry["geometry"]["amount=1"]["round_trip"] < 1e-6
    assert "commutation_pixel" not in entry["geometry"]["amount=1"]
    assert 0 < entry["pixels"]["mean_purity"] <= 1  # the default editor's purity, from pixels (no regressor here)
    assert entry["probe_accuracy"] is None and "frechet" not in entry["quality"]
    x = result["x_edit"]
    assert x["images"] == 96 and set(x) >= {"x_shift_std", "y_drift_std", "psnr_db_mean"}
    row = generator_rows([result])[0]
    assert len(row) == len(GENERATOR_COLUMNS) and row[-1].count("(") == 1
    assert rows([result])[0][:2] == ["tiny", "axes"]


def test_the_factor_regressor_reads_16_pixel_images_as_their_nearest_32_pixel_upsampling():
    from curvedit.models.regressor import FactorRegressor

    torch.manual_seed(0)
    regressor, small = FactorRegressor().eval(), torch.rand(3, 3, 16, 16) * 2 - 1
    big = small.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    with torch.no_grad():
        torch.testing.assert_close(regressor(small), regressor(big))
        assert regressor.features(small).shape == (3, 128)
