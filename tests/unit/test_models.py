"""The autoencoders map images to same-shape reconstructions in [0, 1]."""

import pytest
import torch

from anomaly_ae.models import ConvAutoencoder, VariationalAutoencoder, auto_stages, build_model


@pytest.mark.parametrize("shape", [(28, 28, 1), (8, 8, 1), (128, 128, 3), (100, 60, 3), (256, 256, 1)])
def test_shapes_and_range(shape):
    h, w, c = shape
    model = build_model("ae", shape, 16, 8, 32).eval()
    x = torch.rand(2, c, h, w)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and 0.0 <= float(y.min()) and float(y.max()) <= 1.0
    assert model.encode(x).shape == (2, 16)


def test_stages_bring_the_image_down_to_a_few_pixels():
    assert auto_stages(28, 28) == 2 and auto_stages(8, 8) == 1
    assert auto_stages(256, 256) == 6 and auto_stages(128, 128) == 5


def test_vae_training_outputs_and_deterministic_inference():
    model = VariationalAutoencoder(1, 28, 28, latent_dim=4, base_channels=8)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        recon, kl = model.training_outputs(x)
    assert recon.shape == x.shape and kl.item() >= 0.0
    model.eval()
    assert torch.equal(model(x), model(x))


def test_plain_autoencoder_adds_no_extra_loss():
    model = ConvAutoencoder(3, 16, 16, latent_dim=4, base_channels=4)
    _, extra = model.training_outputs(torch.rand(2, 3, 16, 16))
    assert float(extra) == 0.0
