"""The PixelCNN's per-step networks (the graphs ONNX Runtime samples with) against the teacher-forced forward,
and a loop over them against the torch sampler."""

import pytest
import torch

from curvedit.models.pixelcnn import PixelCNN, PixelCNNConfig
from curvedit.models.pixelcnn_sampling import sample_loop
from curvedit.models.pixelcnn_steps import PixelStep, RowStep, step_rows

TINY = PixelCNNConfig(channels=8, layers=3, kernel=3, head=16, encoder_channels=8, encoder_hidden=32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PixelCNN(TINY).eval()


@pytest.mark.parametrize("row", [0, 1, 7, 15])
@torch.no_grad()
def test_the_steps_give_the_forwards_logits_at_every_column(model, row):
    classes, h = torch.randint(TINY.classes, (3, 16, 16)), torch.randn(3, 8)
    full = model.logits(classes, h)
    garbled = classes.clone()
    garbled[:, row + 1:] = torch.randint(TINY.classes, garbled[:, row + 1:].shape)  # rows below: unseen
    above = RowStep(model)(garbled, h, torch.full((3,), row))
    for col in (0, 1, 8, 15):
        current = classes[:, row].clone()
        current[:, col:] = 0  # the pixel itself and the ones right of it: unseen
        logits = PixelStep(model)(current, above, h, torch.full((3,), col))
        torch.testing.assert_close(logits, full[:, :, row, col], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_a_loop_over_the_steps_draws_the_torch_samplers_images(model):
    h, seeds = torch.randn(4, 8) * 2, [3, 1, 4, 1]
    rows = step_rows(RowStep(model), PixelStep(model), h)
    assert torch.equal(sample_loop(rows, seeds, 4, 16, "cpu"), model.sample(h, seeds))


def test_check_runs_after_every_pixel_and_can_stop_the_loop(model):
    seen = []

    class Stop(Exception):
        pass

    def check(step):
        seen.append(step)
        if step == 20:
            raise Stop

    with pytest.raises(Stop):
        model.sample(torch.randn(2, 8), [0, 1], check=check)
    assert seen == list(range(1, 21))
