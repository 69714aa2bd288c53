"""The nearest kind: an image's "reconstruction" is the training image closest to it.

A memory of normal images instead of a network: the image score is the reconstruction error
against the nearest normal training image (Euclidean distance of the pixels), and the heat map
shows where the image departs from it. Nothing is learned, so it fits in the time it takes to
store the images, and it cannot learn to reproduce a defect. It suits images that show the same
part in the same place (a cell, a board, a label), where a defective item departs from every good
one as a whole; on textures that shift from image to image every image is far from every other.
`auto` keeps it as a member on the whole image shrunk (measured in bench/README.md).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

# The most pixel values (images x height x width x channels) the memory keeps: 16 MiB as stored
# (uint8), 64 MiB as compared (float32). Larger training sets keep a seeded draw of their images.
MAX_BANK_VALUES = 2**24


def bank_size(n_images: int, values_per_image: int) -> int:
    """How many of `n_images` training images the memory keeps (at least one)."""
    return max(1, min(n_images, MAX_BANK_VALUES // max(1, values_per_image)))


class NearestNormal(nn.Module):
    """The nearest normal image, as a module: (n, c, h, w) in [0, 1] -> the stored training image
    closest to each (squared Euclidean distance of the pixels), as a reconstruction would be.

    The images are kept as uint8 (`bank`, one row each), exactly as the detector stores its
    inputs, so a training image's own nearest image is itself (distance 0)."""

    OBJECTIVE_SETTINGS: tuple[str, ...] = ()

    def __init__(self, in_channels: int, height: int, width: int, **_widths):
        super().__init__()
        self.shape = (in_channels, height, width)
        self.register_buffer("bank", torch.zeros(0, in_channels * height * width, dtype=torch.uint8))

    def remember(self, images: torch.Tensor, seed: int) -> int:
        """Keep the uint8 images (n, c, h, w), or a seeded draw of them when there are more than
        the memory holds; returns how many were kept."""
        n = len(images)
        keep = bank_size(n, self.bank.shape[1])
        rows = torch.arange(n) if keep == n else torch.from_numpy(
            np.sort(np.random.default_rng(seed).choice(n, keep, replace=False)))
        self.bank = images[rows.to(images.device)].reshape(keep, -1).to(torch.uint8).contiguous()
        return keep

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        stored = state_dict.get(prefix + "bank")
        if stored is not None:  # as many images as were kept
            self.bank = torch.zeros_like(stored, device=self.bank.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In float32 whatever the autocast (bf16 on a GPU would blur which image is nearest).
        with torch.autocast(x.device.type, enabled=False):
            flat = x.float().flatten(1)
            bank = self.bank.float() / 255.0
            # |x - b|^2 = |x|^2 - 2 x.b + |b|^2; |x|^2 is the same for every b of a row.
            distance = (bank * bank).sum(1).unsqueeze(0) - 2.0 * flat @ bank.t()
            nearest = bank[distance.argmin(1)]
        return nearest.reshape(-1, *self.shape).to(x.dtype)

    def loss(self, x: torch.Tensor, train: bool, gen: torch.Generator | None = None) -> torch.Tensor:
        """The mean squared error to the nearest stored image (nothing is trained)."""
        return (x - self(x)).pow(2).mean()
