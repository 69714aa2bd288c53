"""Tiles: train on random crops of large images and reconstruct them tile by tile at full size.

With ``model.tile = T`` the autoencoder is built for T x T tiles instead of the whole image, so
large images keep their full resolution (a defect of a few pixels is not resized away).

- Training draws random T x T crops of the normal images (`random_crops`).
- Reconstruction (`reconstruct`) covers the image with tiles at a stride of T/2 and keeps only
  the central T/2 x T/2 of each: a tile's borders, which the model reconstructs with less
  context, never reach the error map (on DeepPCB, keeping whole non-overlapping tiles put the
  seams above the defects). The image is reflect-padded so its own border pixels also fall in
  some tile's centre.
- Early stopping watches non-overlapping tiles of the held-back images (`grid_tiles`).

A side that is not larger than T is not tiled (the tile spans it).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

# Random tiles drawn per training image in one epoch (at most the image's count of whole tiles).
TILES_PER_IMAGE = 8
# Held-back tiles that decide early stopping (evenly spaced over the grid tiles of the images).
MAX_VAL_TILES = 4096


def tile_shape(image_shape: tuple[int, ...], tile: int) -> tuple[int, int]:
    """(tile height, tile width) for images (h, w, ...) and ``model.tile`` (0 = whole image)."""
    h, w = int(image_shape[0]), int(image_shape[1])
    return (h, w) if tile <= 0 else (min(tile, h), min(tile, w))


def is_tiled(image_shape: tuple[int, ...], tile: int) -> bool:
    """True when the model sees tiles smaller than the image."""
    return tile_shape(image_shape, tile) != (int(image_shape[0]), int(image_shape[1]))


def random_crops(batch: torch.Tensor, th: int, tw: int, gen: torch.Generator) -> torch.Tensor:
    """One random (th, tw) crop of each image of `batch` (n, c, h, w); offsets drawn from `gen`."""
    n, _, h, w = batch.shape
    if (th, tw) == (h, w):
        return batch
    oy = torch.randint(0, h - th + 1, (n,), generator=gen).to(batch.device)
    ox = torch.randint(0, w - tw + 1, (n,), generator=gen).to(batch.device)
    rows = (oy[:, None] + torch.arange(th, device=batch.device))[:, :, None]  # (n, th, 1)
    cols = (ox[:, None] + torch.arange(tw, device=batch.device))[:, None, :]  # (n, 1, tw)
    idx = torch.arange(n, device=batch.device)[:, None, None]
    # Advanced indexing on (n, h, w, c) gives (n, th, tw, c); back to (n, c, th, tw).
    return batch.permute(0, 2, 3, 1)[idx, rows, cols].permute(0, 3, 1, 2).contiguous()


def grid_tiles(images: torch.Tensor, th: int, tw: int, limit: int = MAX_VAL_TILES) -> torch.Tensor:
    """The non-overlapping (th, tw) tiles of images (n, c, h, w), at most `limit` of them, evenly
    spaced (deterministic): (k, c, th, tw)."""
    _, c, h, w = images.shape
    t = images[:, :, : h // th * th, : w // tw * tw].unfold(2, th, th).unfold(3, tw, tw)
    t = t.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, th, tw)
    if len(t) > limit:
        t = t[torch.linspace(0, len(t) - 1, limit, device=t.device).round().long()]
    return t.contiguous()


def _layout(side: int, t: int) -> tuple[int, int, int, int]:
    """(stride, margin, tile count, padded side) along one side: tiles at `stride`, each keeping
    [margin, margin + stride) of itself; the side is padded by `margin` in front."""
    if t >= side:
        return side, 0, 1, side
    s = max(1, t // 2)
    m = (t - s) // 2
    k = math.ceil(side / s)
    return s, m, k, (k - 1) * s + t


def reconstruct(model: torch.nn.Module, x: torch.Tensor, th: int, tw: int, max_tiles: int = 1024) -> torch.Tensor:
    """Reconstruction of full images x (n, c, h, w) by a model of (th, tw) tiles: overlapping
    tiles at half-tile strides, each contributing its centre. Runs the model `max_tiles` at a time."""
    n, c, h, w = x.shape
    if (th, tw) == (h, w):
        return model(x)
    sh, mh, kh, ph = _layout(h, th)
    sw, mw, kw, pw = _layout(w, tw)
    pads = (mw, pw - w - mw, mh, ph - h - mh)  # left, right, top, bottom
    mode = "reflect" if max(pads[:2]) < w and max(pads[2:]) < h else "replicate"
    xp = F.pad(x, pads, mode=mode) if any(pads) else x
    tiles = xp.unfold(2, th, sh).unfold(3, tw, sw)  # (n, c, kh, kw, th, tw)
    tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, th, tw).contiguous(memory_format=torch.channels_last)
    out = torch.cat([model(tiles[i: i + max_tiles])[:, :, mh: mh + sh, mw: mw + sw]
                     for i in range(0, len(tiles), max_tiles)])
    out = out.reshape(n, kh, kw, c, sh, sw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, kh * sh, kw * sw)
    return out[:, :, :h, :w].contiguous(memory_format=torch.channels_last)
