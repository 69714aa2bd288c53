"""Reconstruction error maps and the image scores drawn from them (higher = more anomalous).

- ``mse``: mean squared error over the image (the classic score);
- ``topk``: mean of the largest `top_fraction` of a Gaussian-smoothed squared-error map, so a
  small defect moves the score instead of drowning in the image-wide mean;
- ``ssim``: 1 - SSIM per pixel (tolerates small shifts and contrast changes), then the same
  top-k pooling.
"""

from __future__ import annotations

import functools
import math

import torch
from torch.nn import functional as F

METHODS = ("mse", "topk", "ssim")


def gaussian_kernel(sigma: float, device=None) -> torch.Tensor:
    """A normalised 1-D Gaussian kernel, radius 3 sigma."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (n, c, h, w) maps, reflect-padded at the borders."""
    if sigma <= 0:
        return maps
    c = maps.shape[1]
    across, down = _blur_weights(float(sigma), int(c), maps.dtype, maps.device)
    r = (across.shape[-1] - 1) // 2
    pad_mode = "reflect" if min(maps.shape[-2:]) > r else "replicate"
    x = F.pad(maps, (r, r, 0, 0), mode=pad_mode)
    x = F.conv2d(x, across, groups=c)
    x = F.pad(x, (0, 0, r, r), mode=pad_mode)
    return F.conv2d(x, down, groups=c)


@functools.lru_cache(maxsize=64)
def _blur_weights(sigma: float, c: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The blur's two convolution weights, (c, 1, 1, k) and (c, 1, k, 1): made once per setting, so
    they are constants of known shape (an exported graph needs that) and cost nothing per call."""
    with torch.inference_mode(False), torch.no_grad():
        k = gaussian_kernel(sigma, device).to(dtype)
        return (k.view(1, 1, 1, -1).repeat(c, 1, 1, 1).contiguous(),
                k.view(1, 1, -1, 1).repeat(c, 1, 1, 1).contiguous())


def ssim_map(x: torch.Tensor, y: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM of (n, c, h, w) images in [0, 1], averaged over channels -> (n, h, w)."""
    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x, sigma), blur(y, sigma)
    vx = blur(x * x, sigma) - mx * mx
    vy = blur(y * y, sigma) - my * my
    cov = blur(x * y, sigma) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=1)


def anomaly_map(x: torch.Tensor, recon: torch.Tensor, method: str, sigma: float) -> torch.Tensor:
    """Per-pixel anomaly map (n, h, w): squared error (smoothed for ``topk``), or 1 - SSIM."""
    if method == "ssim":
        return (1.0 - ssim_map(x, recon)).clamp_min(0.0)
    maps = (x - recon).pow(2).mean(dim=1)
    return blur(maps.unsqueeze(1), sigma).squeeze(1) if method == "topk" else maps


def image_scores(maps: torch.Tensor, method: str, top_fraction: float, area: int | None = None) -> torch.Tensor:
    """Per-image scores (n,) from anomaly maps: the mean for ``mse``, else the mean of the largest
    `top_fraction` x `area` values (`area`: the map's own size by default; a tile's size for
    tiled models, so a defect counts as much in a large image as in one tile)."""
    flat = maps.flatten(1)
    if method == "mse":
        return flat.mean(dim=1)
    k = min(flat.shape[1], max(1, int(round(top_fraction * (area or flat.shape[1])))))
    return flat.topk(k, dim=1).values.mean(dim=1)
