"""Whole images shrunk for the coarse member: exact block means, the same in numpy and in the graph."""

import numpy as np
import pytest
import torch

from anomaly_ae.shrink import factor_for, grow_maps, grow_tensor, shrink_images, shrink_tensor, shrunk_shape


@pytest.mark.parametrize("shape", [(300, 300, 1), (75, 75, 1), (480, 640, 3), (65, 200, 3)])
def test_the_factor_brings_the_longest_side_to_64_or_less(shape):
    k = factor_for(shape)
    h, w, c = shrunk_shape(shape, k)
    assert max(h, w) <= 64 and c == shape[2]
    assert k == 1 or max(shape[0], shape[1]) // (k - 1) > 64  # the smallest such factor


def test_each_pixel_is_the_rounded_mean_of_its_block():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 23, 17, 2), dtype=np.uint8)  # 23 and 17: rows and columns left over
    small = shrink_images(images, 4)
    assert small.shape == (3, 5, 4, 2) and small.dtype == np.uint8
    for n, i, j, c in [(0, 0, 0, 0), (1, 4, 3, 1), (2, 2, 1, 0)]:
        block = images[n, 4 * i: 4 * i + 4, 4 * j: 4 * j + 4, c].astype(np.float64)
        assert small[n, i, j, c] == np.floor(block.mean() + 0.5)  # halves up
    flat = np.full((1, 4, 4, 1), 7, np.uint8)
    flat[0, 0, 0, 0] = 15  # mean 7.5: rounds up to 8
    assert shrink_images(flat, 4)[0, 0, 0, 0] == 8
    assert shrink_images(images, 1) is images


def test_the_graph_shrinks_to_the_very_same_pixels():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 61, 47, 1), dtype=np.uint8)
    for k in (2, 3, 5, 10):
        ours = shrink_images(images, k)
        graph = shrink_tensor(torch.from_numpy(images).float(), k).numpy()
        np.testing.assert_array_equal(graph, ours.astype(np.float32))


def test_maps_grow_back_to_the_full_size_block_by_block():
    rng = np.random.default_rng(2)
    maps = rng.random((2, 5, 4)).astype(np.float32)
    grown = grow_maps(maps, 4, 23, 17)
    assert grown.shape == (2, 23, 17)
    assert grown[1, 4 * 3 + 2, 4 * 2 + 1] == maps[1, 3, 2]
    assert (grown[:, 20:, :16] == np.repeat(maps[:, 4:5, :], 4, axis=2)[:, :, :16]).all()  # rows left over: the last
    np.testing.assert_array_equal(grow_tensor(torch.from_numpy(maps), 4, 23, 17).numpy(), grown)
    assert grow_maps(maps, 1, 5, 4) is maps


def test_a_shrunk_member_is_named_by_the_size_it_looks_at():
    from anomaly_ae.shrink import member_label, member_tag

    assert member_label("draem", (300, 300, 1), 5) == "draem on the whole image at 60x60"
    assert member_tag("draem", (480, 640, 3), 10) == "draem@64x48"  # width x height, as sizes are said
    assert member_label("ae", (300, 300, 1)) == member_tag("ae", (300, 300, 1)) == "ae"
