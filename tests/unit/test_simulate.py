"""Synthetic anomalies: mask shapes and sizes, fills that change what the mask covers and nothing
else, seeding, and any size, colour, dtype, memory format and device."""

import math

import numpy as np
import pytest
import torch

from anomaly_ae.errors import ConfigError, DataError
from anomaly_ae.simulate import FILLS, MIN_AREA, MIN_CHANGE, _perlin, perlin_mask, synthesize


def surface(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Textured images in [0, 1]: a smooth shading plus grain, different per image."""
    gen = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, h).view(1, 1, h, 1)
    xs = torch.linspace(0, 1, w).view(1, 1, 1, w)
    phase = 6 * torch.rand(n, c, 1, 1, generator=gen)
    shading = 0.5 + 0.25 * torch.sin(5 * (xs + ys) + phase)
    return (shading + 0.05 * torch.randn(n, c, h, w, generator=gen)).clamp(0, 1)


def check(x: torch.Tensor, out: torch.Tensor, masks: torch.Tensor, anomalous: torch.Tensor) -> None:
    """The contract of synthesize for inputs x and outputs (out, masks): `anomalous` says which
    images must carry a defect and which must come back unchanged."""
    n, c, h, w = x.shape
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert masks.shape == (n, 1, h, w) and masks.dtype == x.dtype and masks.device == x.device
    assert torch.all((masks == 0) | (masks == 1))
    assert out.min() >= 0 and out.max() <= 1
    inside = masks.bool().expand_as(x)
    assert torch.equal(out[~inside], x[~inside])  # untouched outside the mask, bit for bit
    area, anomalous = masks.flatten(1).sum(1), anomalous.to(masks.device)
    assert torch.equal(area > 0, anomalous)
    assert torch.all(area[anomalous] >= math.ceil(MIN_AREA * h * w))
    change = ((out - x).abs().double() * inside).flatten(1).sum(1) / (area * c).clamp_min(1)
    assert torch.all(change[anomalous] >= MIN_CHANGE - 1e-3), change[anomalous].min()


@pytest.mark.parametrize("c", [1, 3])
def test_every_image_gets_a_visible_defect_with_p_1(c):
    x = surface(48, c, 64, 64)
    out, masks = synthesize(x, torch.Generator().manual_seed(0), p=1.0)
    check(x, out, masks, torch.ones(48, dtype=torch.bool))


def test_no_image_changes_with_p_0():
    x = surface(16, 3, 32, 32)
    out, masks = synthesize(x, torch.Generator().manual_seed(0), p=0.0)
    assert torch.equal(out, x) and not masks.any()


def test_about_p_of_the_images_get_a_defect():
    x = surface(400, 1, 16, 16)
    out, masks = synthesize(x, torch.Generator().manual_seed(1), p=0.3)
    anomalous = masks.flatten(1).amax(1) > 0
    check(x, out, masks, anomalous)
    assert 80 <= int(anomalous.sum()) <= 160  # 120 expected; the binomial's sd is about 9


@pytest.mark.parametrize("shape", [(4, 1, 37, 53), (6, 3, 28, 28), (2, 3, 300, 300), (3, 1, 8, 8),
                                   (2, 3, 9, 100), (1, 1, 53, 37)])
def test_odd_small_large_and_non_square_images(shape):
    x = surface(*shape)
    out, masks = synthesize(x, torch.Generator().manual_seed(2), p=1.0)
    check(x, out, masks, torch.ones(shape[0], dtype=torch.bool))


def test_the_input_is_not_modified():
    x = surface(8, 3, 32, 32)
    before = x.clone()
    synthesize(x, torch.Generator().manual_seed(0), p=1.0)
    assert torch.equal(x, before)


def test_flat_images_still_change_visibly():
    # A flat image leaves blur, cut-paste from its twins and weak blends with nothing to change.
    for level in (0.0, 0.5, 1.0):
        x = torch.full((32, 1, 40, 40), level)
        out, masks = synthesize(x, torch.Generator().manual_seed(3), p=1.0)
        check(x, out, masks, torch.ones(32, dtype=torch.bool))


def test_same_seed_same_output_and_other_seeds_differ():
    x = surface(16, 3, 48, 48)
    first = synthesize(x, torch.Generator().manual_seed(7))
    again = synthesize(x, torch.Generator().manual_seed(7))
    other = synthesize(x, torch.Generator().manual_seed(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1]) and not torch.equal(first[0], other[0])


def test_consecutive_batches_differ():
    gen = torch.Generator().manual_seed(0)
    x = surface(8, 1, 32, 32)
    assert not torch.equal(synthesize(x, gen, 1.0)[1], synthesize(x, gen, 1.0)[1])


def test_channels_last_input_gives_the_same_result():
    x = surface(12, 3, 40, 56)
    out, masks = synthesize(x.to(memory_format=torch.channels_last), torch.Generator().manual_seed(4), p=1.0)
    ref_out, ref_masks = synthesize(x, torch.Generator().manual_seed(4), p=1.0)
    check(x, out, masks, torch.ones(12, dtype=torch.bool))
    assert torch.equal(masks, ref_masks)
    assert torch.allclose(out, ref_out, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes(dtype):
    x = surface(8, 3, 32, 32).to(dtype)
    out, masks = synthesize(x, torch.Generator().manual_seed(5), p=1.0)
    check(x, out, masks, torch.ones(8, dtype=torch.bool))


def test_mask_sizes_range_from_small_defects_to_large_areas():
    area = perlin_mask(300, 96, 96, torch.Generator().manual_seed(6)).mean((1, 2, 3))
    assert area.min() >= MIN_AREA
    assert (area < 0.02).float().mean() > 0.2  # thin cracks, scratches, pits
    assert (area > 0.10).float().mean() > 0.1  # stains and large patches
    assert len(area.unique()) > 200  # sizes vary, not a few fixed values


def test_masks_are_mostly_single_defects():
    # Most masks are gathered around one spot: their bounding boxes cover a part of the image.
    masks = perlin_mask(200, 64, 64, torch.Generator().manual_seed(9))[:, 0]
    rows, cols = masks.amax(2), masks.amax(1)
    box = rows.sum(1) * cols.sum(1) / 64**2
    assert (box < 0.25).float().mean() > 0.4


def test_perlin_mask_binary_and_never_empty():
    masks = perlin_mask(64, 20, 31, torch.Generator().manual_seed(1))
    assert masks.shape == (64, 1, 20, 31)
    assert torch.all((masks == 0) | (masks == 1))
    assert torch.all(masks.flatten(1).sum(1) >= math.ceil(MIN_AREA * 20 * 31))


def test_perlin_noise_matches_the_textbook_sum_over_corners():
    gen, ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    h, w = 21, 34
    cy, cx = torch.tensor([2.0, 8.0, 4.0]), torch.tensor([16.0, 2.0, 5.0])
    angle = torch.tensor([0.0, 0.7, -1.3])
    noise = _perlin(gen, h, w, cy, cx, angle, torch.device("cpu"))
    # The same draws, then the plain definition: fade-weighted dot products of each corner's
    # gradient with the offset from that corner.
    cos, sin = angle.cos(), angle.sin()
    span_u = (cos.abs() * (h - 1) + sin.abs() * (w - 1)) * cy / h
    span_v = (sin.abs() * (h - 1) + cos.abs() * (w - 1)) * cx / w
    theta = 2 * math.pi * torch.rand(3, math.ceil(span_u.max()) + 2, math.ceil(span_v.max()) + 2, generator=ref)
    phase = torch.rand(2, 3, generator=ref)
    fade = lambda t: t**3 * (t * (6 * t - 15) + 10)  # noqa: E731
    for i, y, x in [(0, 0, 0), (0, 20, 33), (1, 7, 11), (1, 13, 2), (2, 10, 30), (2, 3, 17)]:
        yc, xc = y - (h - 1) / 2, x - (w - 1) / 2
        u = float((cos[i] * yc - sin[i] * xc) * cy[i] / h + span_u[i] / 2 + phase[1, i])
        v = float((sin[i] * yc + cos[i] * xc) * cx[i] / w + span_v[i] / 2 + phase[0, i])
        expected = 0.0
        for du in (0, 1):
            for dv in (0, 1):
                iu, iv = math.floor(u) + du, math.floor(v) + dv
                g = float(theta[i, iu, iv])
                weight = (fade(u - math.floor(u)) if du else 1 - fade(u - math.floor(u))) * (
                    fade(v - math.floor(v)) if dv else 1 - fade(v - math.floor(v)))
                expected += weight * (math.sin(g) * (u - iu) + math.cos(g) * (v - iv))
        assert float(noise[i, y, x]) == pytest.approx(math.sqrt(2) * expected, abs=1e-4)


def test_bad_inputs_are_refused_with_a_clear_message():
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(DataError, match="float images"):
        synthesize(torch.zeros(2, 1, 16, 16, dtype=torch.uint8), gen)
    with pytest.raises(DataError, match="float images"):
        synthesize(torch.zeros(1, 16, 16), gen)
    with pytest.raises(ConfigError, match="probability"):
        synthesize(torch.zeros(2, 1, 16, 16), gen, p=1.5)
    for fills in ((), ("paste", "scratch")):
        with pytest.raises(ConfigError, match="fills must name some of paste, texture, change"):
            synthesize(torch.zeros(2, 1, 16, 16), gen, p=1.0, fills=fills)


def test_naming_every_fill_is_the_default_draw_for_draw():
    x = surface(12, 3, 40, 40)
    default = synthesize(x, torch.Generator().manual_seed(6), p=1.0)
    named = synthesize(x, torch.Generator().manual_seed(6), p=1.0, fills=FILLS)
    assert torch.equal(default[0], named[0]) and torch.equal(default[1], named[1])


@pytest.mark.parametrize("fill", FILLS)
def test_each_fill_alone_keeps_the_contract_and_differs_from_the_others(fill):
    x = surface(16, 1, 48, 48, seed=2)
    out, masks = synthesize(x, torch.Generator().manual_seed(9), p=1.0, fills=(fill,))
    check(x, out, masks, torch.ones(16, dtype=torch.bool))
    for other in FILLS:
        if other != fill:
            assert not torch.equal(out, synthesize(x, torch.Generator().manual_seed(9), p=1.0, fills=(other,))[0])


def test_a_pasted_fill_comes_from_the_other_image_of_the_batch():
    """Two flat images, black and white: a paste fills each one's defect with a blend of the two,
    one flat value; a procedural texture is mostly not flat (a faint one is replaced by a flat
    change)."""
    x = torch.stack([torch.zeros(1, 32, 32), torch.ones(1, 32, 32)])
    textured = 0
    for seed in range(5):
        out, masks = synthesize(x, torch.Generator().manual_seed(seed), p=1.0, fills=("paste",))
        inside = [out[i][masks[i] > 0] for i in range(2)]
        assert all(float(v.max() - v.min()) < 1e-6 for v in inside)
        assert float(inside[0][0]) >= 0.2 - 1e-6 and float(inside[1][0]) <= 0.8 + 1e-6  # at most 0.8 of the original kept
        out, masks = synthesize(x, torch.Generator().manual_seed(seed), p=1.0, fills=("texture",))
        textured += sum(float(out[i][masks[i] > 0].std()) > 1e-3 for i in range(2))
    assert textured >= 6


@pytest.mark.gpu
def test_cuda_batches_follow_the_same_contract():
    x = surface(32, 3, 64, 48).cuda()
    out, masks = synthesize(x, torch.Generator().manual_seed(0), p=1.0)
    check(x, out, masks, torch.ones(32, dtype=torch.bool))
    again = synthesize(x.half().to(memory_format=torch.channels_last), torch.Generator().manual_seed(0), p=0.5)
    check(x.half(), *again, again[1].flatten(1).amax(1).cpu() > 0)


def test_shuffled_patches_keep_every_patch_and_move_them_seeded():
    from anomaly_ae.simulate import shuffled_patches

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3, 34, 33, 2)).astype(np.uint8)  # sides not divisible by 4
    out = shuffled_patches(images, 7, grid=4)
    assert out.shape == images.shape and out.dtype == images.dtype
    np.testing.assert_array_equal(out[:, 32:], images[:, 32:])  # the rest stays in place
    np.testing.assert_array_equal(out[:, :, 32:], images[:, :, 32:])

    def patches(a):
        return sorted(a[i * 8:(i + 1) * 8, j * 8:(j + 1) * 8].tobytes() for i in range(4) for j in range(4))

    for k in range(3):
        assert patches(out[k]) == patches(images[k]) and not np.array_equal(out[k], images[k])
    np.testing.assert_array_equal(shuffled_patches(images, 7, grid=4), out)
    assert not np.array_equal(shuffled_patches(images, 8, grid=4), out)
