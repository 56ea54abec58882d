"""PixelCNN sampling replayed from CUDA graphs: the same images as the eager fast loop (GPU only), and a clear
error where no GPU is."""

import pytest
import torch

from curvedit.models.pixelcnn import PixelCNN, PixelCNNConfig
from curvedit.models.pixelcnn_graphs import GraphSampler, bucket_for

CUDA = torch.cuda.is_available()
SMALL = PixelCNNConfig(channels=8, layers=2, kernel=3, head=16, encoder_channels=8, encoder_hidden=32)


def test_buckets_are_powers_of_two():
    assert [bucket_for(n) for n in (1, 2, 3, 4, 5, 16, 17, 256)] == [1, 2, 4, 4, 8, 16, 32, 256]


def test_a_graph_sampler_needs_a_cuda_model():
    with pytest.raises(ValueError, match=r"CUDA device.*PixelCNN\.sample"):
        GraphSampler(PixelCNN(SMALL).eval(), 4)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("config", [SMALL, PixelCNNConfig()], ids=["small", "default"])
def test_graph_replay_draws_the_eager_loops_images(config):
    torch.manual_seed(0)
    model = PixelCNN(config).eval().cuda()
    for n in (1, 3, 16):  # 3 is padded to the bucket of 4: padding rows must not touch the real ones
        h = torch.randn(n, model.latent_dim, generator=torch.Generator().manual_seed(n)).cuda()
        seeds = list(range(100, 100 + n))
        eager = model.sample(h, seeds, cuda_graphs=False)
        assert torch.equal(model.sample(h, seeds), eager)
        assert torch.equal(model.sample(h, seeds), eager)  # a second replay of the same graph
    steps = []
    model.sample(h[:2], [1, 2], check=steps.append)
    assert steps == [256]  # one check per batch: after its replay


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_moved_weights_are_recaptured():
    torch.manual_seed(0)
    model = PixelCNN(SMALL).eval().cuda()
    h = torch.randn(2, model.latent_dim).cuda()
    model.sample(h, [0, 1])
    model.cpu().cuda()  # new weight tensors: the old graphs would read freed memory
    assert torch.equal(model.sample(h, [0, 1]), model.sample(h, [0, 1], cuda_graphs=False))
