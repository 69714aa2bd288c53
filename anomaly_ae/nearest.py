"""The nearest kind: an image's "reconstruction" is the training image closest to it.

A memory of normal images instead of a network: the image score is the reconstruction error
against the nearest normal training image (Euclidean distance of the pixels), and the heat map
shows where the image departs from it. Nothing is learned, so it fits in the time it takes to
store the images, and it cannot learn to reproduce a defect. It suits images that show the same
part in the same place (a cell, a board, a label), where a defective item departs from every good
one as a whole; on textures that shift from image to image every image is far from every other.
`auto` keeps it as a member on the whole image shrunk (measured in bench/README.md).

When the training images do not all fit its memory at full size, it keeps them all shrunk (each
pixel the rounded mean of a k x k block, the smallest whole k at which they fit, down to the size
`auto`'s shrunk members look at) rather than a draw of them: a memory that holds every good image at
a coarser size finds nearer ones (on ELPV's cells, measured in bench/README.md). Inputs are then
compared shrunk the same way, and the reconstruction is the input with its block means replaced by
the nearest kept image's, so the heat map is the coarse difference at full size. The rows and
columns past the last whole block (fewer than k at the bottom and right edges) are not compared:
their map repeats the nearest block's.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from anomaly_ae.shrink import factor_for, grow_tensor, shrink_tensor

# The most pixel values (images x height x width x channels) the memory keeps: 16 MiB as stored
# (uint8), 64 MiB as compared (float32). Larger training sets are kept shrunk (`compare_factor`),
# and a seeded draw of them where even the smallest size allowed does not hold them all.
MAX_BANK_VALUES = 2**24
SHRINK_BATCH = 64  # images shrunk at a time when they are kept shrunk


def bank_size(n_images: int, values_per_image: int) -> int:
    """How many of `n_images` training images the memory keeps (at least one)."""
    return max(1, min(n_images, MAX_BANK_VALUES // max(1, values_per_image)))


def compare_factor(n_images: int, shape: tuple[int, int, int]) -> int:
    """The whole factor the memory compares `n_images` images of `shape` (c, h, w) shrunk by: the
    smallest at which all of them fit, at most the one that brings the longest side to
    `shrink.COARSE_SIDE` (beyond it a seeded draw is kept); 1 when they fit at full size."""
    c, h, w = shape
    most = min(factor_for((h, w)), h, w)  # (a block never larger than the short side)
    for k in range(1, most + 1):
        if n_images * c * (h // k) * (w // k) <= MAX_BANK_VALUES:
            return k
    return most


class NearestNormal(nn.Module):
    """The nearest normal image, as a module: (n, c, h, w) in [0, 1] -> the stored training image
    closest to each (squared Euclidean distance of the pixels), as a reconstruction would be.

    The images are kept as uint8 (`bank`, one row each), exactly as the detector stores its
    inputs, so a training image's own nearest image is itself (distance 0). With a ``factor`` above
    1 they are kept and compared shrunk by it, and the reconstruction is the input whose
    k x k block means are replaced by the nearest kept image's (see the module's docstring); a
    training image's is then itself to within the blocks' rounding (half a grey level)."""

    OBJECTIVE_SETTINGS: tuple[str, ...] = ()

    def __init__(self, in_channels: int, height: int, width: int, **_widths):
        super().__init__()
        self.shape = (in_channels, height, width)
        self.factor = 1  # the whole factor images are kept and compared shrunk by
        self.register_buffer("bank", torch.zeros(0, in_channels * height * width, dtype=torch.uint8))
        self.register_buffer("shrink", torch.tensor(1, dtype=torch.int64))

    @property
    def compared(self) -> tuple[int, int, int]:
        """(c, h, w) of the images as kept and compared."""
        c, h, w = self.shape
        return c, h // self.factor, w // self.factor

    def remember(self, images: torch.Tensor, seed: int) -> int:
        """Keep the uint8 images (n, c, h, w), shrunk when they do not all fit the memory at full
        size (`compare_factor`), or a seeded draw of them when they do not fit even shrunk; returns
        how many were kept."""
        n = len(images)
        self.factor = compare_factor(n, self.shape)
        self.shrink = torch.tensor(self.factor, dtype=torch.int64, device=self.shrink.device)
        keep = bank_size(n, int(np.prod(self.compared)))
        rows = torch.arange(n) if keep == n else torch.from_numpy(
            np.sort(np.random.default_rng(seed).choice(n, keep, replace=False)))
        rows = rows.to(images.device)
        if self.factor == 1:
            self.bank = images[rows].reshape(keep, -1).to(torch.uint8).contiguous()
            return keep
        # Shrunk as `shrink.shrink_images` shrinks (exact integers), uint8 as stored; a batch at a
        # time, so that a large training set is never copied whole in float32.
        self.bank = torch.empty(keep, int(np.prod(self.compared)), dtype=torch.uint8, device=images.device)
        for lo in range(0, keep, SHRINK_BATCH):
            part = images[rows[lo: lo + SHRINK_BATCH]].permute(0, 2, 3, 1).float()
            self.bank[lo: lo + SHRINK_BATCH] = shrink_tensor(part, self.factor).permute(0, 3, 1, 2).flatten(1)
        return keep

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        stored = state_dict.get(prefix + "bank")
        if stored is not None:  # as many images as were kept, at the size they were kept at
            self.bank = torch.zeros_like(stored, device=self.bank.device)
        # Models saved before images could be kept shrunk compare them at full size.
        state_dict.setdefault(prefix + "shrink", torch.tensor(1, dtype=torch.int64))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.factor = int(self.shrink)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.factor
        # In float32 whatever the autocast (bf16 on a GPU would blur which image is nearest).
        with torch.autocast(x.device.type, enabled=False):
            full = x.float()
            coarse = F.avg_pool2d(full, k) if k > 1 else full
            bank = self.bank.float() / 255.0
            # |x - b|^2 = |x|^2 - 2 x.b + |b|^2; |x|^2 is the same for every b of a row.
            distance = (bank * bank).sum(1).unsqueeze(0) - 2.0 * coarse.flatten(1) @ bank.t()
            nearest = bank[distance.argmin(1)].reshape(-1, *self.compared)
            if k > 1:  # the input with its coarse content replaced by the nearest image's
                nearest = full + _grow(nearest - coarse, k, *self.shape[1:])
        return nearest.to(x.dtype)

    def loss(self, x: torch.Tensor, train: bool, gen: torch.Generator | None = None) -> torch.Tensor:
        """The mean squared error to the nearest stored image (nothing is trained)."""
        return (x - self(x)).pow(2).mean()


def _grow(maps: torch.Tensor, k: int, height: int, width: int) -> torch.Tensor:
    """(n, c, h', w') back at (n, c, height, width), as `shrink.grow_tensor` grows a map."""
    n, c, hh, ww = maps.shape
    return grow_tensor(maps.reshape(n * c, hh, ww), k, height, width).reshape(n, c, height, width)
