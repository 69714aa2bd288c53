"""The autoencoders map images to same-shape reconstructions in [0, 1]."""

import pytest
import torch

from anomaly_ae.config import ModelConfig
from anomaly_ae.models import (
    ConvAutoencoder,
    DenoisingAutoencoder,
    DiscriminativeAutoencoder,
    VariationalAutoencoder,
    auto_stages,
    build_model,
    default_widths,
)


@pytest.mark.parametrize("shape", [(28, 28, 1), (8, 8, 1), (128, 128, 3), (100, 60, 3), (256, 256, 1)])
def test_shapes_and_range(shape):
    h, w, c = shape
    model = build_model(ModelConfig(latent_dim=16, base_channels=8, max_channels=32), shape).eval()
    x = torch.rand(2, c, h, w)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and 0.0 <= float(y.min()) and float(y.max()) <= 1.0
    assert model.encode(x).shape == (2, 16)


def test_stages_bring_the_image_down_to_a_few_pixels():
    assert auto_stages(28, 28) == 2 and auto_stages(8, 8) == 1
    assert auto_stages(256, 256) == 6 and auto_stages(128, 128) == 5


def _first_conv(model):
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_widths_left_at_zero_are_sized_from_the_input():
    # Up to five stages (inputs under 256 a side) the classic widths; past that, narrower.
    assert default_widths("ae", 28, 28) == (32, 256) and default_widths("vae", 128, 128) == (32, 256)
    assert default_widths("ae", 256, 256) == (8, 128) and default_widths("denoising", 640, 480) == (8, 128)
    assert default_widths("draem", 256, 256) == (32, 256)  # it divides its widths itself
    assert _first_conv(build_model(ModelConfig(), (256, 256, 1))).out_channels == 8
    assert _first_conv(build_model(ModelConfig(), (128, 128, 1))).out_channels == 32
    # Set widths are kept (a model trained before widths could be left at 0 rebuilds as it was),
    # and one set width keeps the other sized.
    full = build_model(ModelConfig(base_channels=32, max_channels=256), (256, 256, 1))
    assert _first_conv(full).out_channels == 32 and full.to_latent.in_features == 256 * 4 * 4
    assert ModelConfig(base_channels=16).resolved(256, 256).max_channels == 128
    assert ModelConfig(max_channels=64).resolved(256, 256).base_channels == 8


def test_vae_objective_adds_its_weighted_kl_in_training_only_and_infers_deterministically():
    cfg = ModelConfig(kind="vae", latent_dim=4, base_channels=8, kl_weight=0.5)
    model = build_model(cfg, (28, 28, 1))
    assert isinstance(model, VariationalAutoencoder) and model.kl_weight == 0.5
    x = torch.rand(3, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        held_out = float(model.loss(x, train=False))
        assert held_out == pytest.approx(float(torch.nn.functional.mse_loss(model(x), x)))
        torch.manual_seed(0)
        trained = float(model.loss(x, train=True))
        model.kl_weight = 0.0
        torch.manual_seed(0)
        without_kl = float(model.loss(x, train=True))
    assert trained > without_kl  # the KL term is positive and weighted in
    assert torch.equal(model(x), model(x))


def test_plain_autoencoder_objective_is_the_reconstruction_error_alone():
    model = build_model(ModelConfig(latent_dim=4, base_channels=4), (16, 16, 3)).eval()
    assert type(model) is ConvAutoencoder
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = float(torch.nn.functional.mse_loss(model(x), x))
        assert float(model.loss(x, train=True)) == pytest.approx(expected)
        assert float(model.loss(x, train=False)) == pytest.approx(expected)


def test_denoising_objective_corrupts_the_input_in_training_only():
    model = build_model(ModelConfig(kind="denoising", latent_dim=4, base_channels=4, noise_std=0.3), (16, 16, 1))
    assert isinstance(model, DenoisingAutoencoder) and model.noise_std == 0.3
    model.eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        clean = float(torch.nn.functional.mse_loss(model(x), x))
        assert float(model.loss(x, train=False)) == pytest.approx(clean)
        noisy = [float(model.loss(x, train=True)) for _ in range(3)]
    assert len(set(noisy)) == 3 and all(v != pytest.approx(clean) for v in noisy)


def test_discriminative_objective_is_seeded_by_its_generator():
    model = build_model(ModelConfig(kind="draem"), (32, 32, 1)).eval()
    assert isinstance(model, DiscriminativeAutoencoder)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        a = float(model.loss(x, train=False, gen=torch.Generator().manual_seed(3)))
        b = float(model.loss(x, train=False, gen=torch.Generator().manual_seed(3)))
        full = float(model.loss(x, train=True, gen=torch.Generator().manual_seed(3)))
    assert a == b and full > a  # training adds the reconstruction terms to the segmentation term


def test_average_precision_ranks_positives_and_a_blank_map_scores_the_base_rate():
    from anomaly_ae.models import average_precision

    target = torch.tensor([0, 1, 0, 0, 1, 0, 0, 0.0])
    assert float(average_precision(target * 5.0, target)) == pytest.approx(1.0)
    assert float(average_precision(-target, target)) < 0.4  # positives ranked last
    assert float(average_precision(torch.tensor([0.9, 0.1, 0.8, 0.0]), torch.tensor([1.0, 0, 0, 1]))) == \
        pytest.approx((1 / 1 + 2 / 4) / 2)
    assert float(average_precision(torch.rand(8), torch.zeros(8))) == 0.0


def test_the_discriminative_kind_is_judged_held_out_by_how_it_ranks_defects():
    """The held-out loss is 1 - average precision of the defect map: a network that marks nothing
    (the focal loss's easy minimum) is judged as bad as it is."""
    model = build_model(ModelConfig(kind="draem"), (32, 32, 1)).eval()
    with torch.no_grad():
        for p in model.discriminative.parameters():
            p.zero_()
        loss = float(model.loss(torch.rand(4, 1, 32, 32), train=False, gen=torch.Generator().manual_seed(0)))
    assert loss > 0.8  # a constant map ranks defect pixels no better than their share of the image


@pytest.mark.parametrize("kind", ["ae", "vae", "draem"])
def test_layer_table_counts_every_parameter_and_ends_in_one_channel(kind):
    from anomaly_ae.config import ModelConfig
    from anomaly_ae.models import build_model, layer_table

    model = build_model(ModelConfig(kind=kind), (32, 32, 1))
    rows = layer_table(model, (32, 32, 1))
    assert sum(r["parameters"] for r in rows) == sum(p.numel() for p in model.parameters())
    assert rows[-1]["output"][0] == 1  # the gray reconstruction, or the defect map
    assert rows[0]["output"][-1] < 32 if kind == "draem" else rows[-1]["output"] == [1, 32, 32]
    assert all(r["type"] and r["layer"] for r in rows)
