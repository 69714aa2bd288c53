"""Whole images shrunk by a whole factor, for a member of an ensemble that looks at the whole image.

Large images are scored at full resolution by members that see small local defects; a defect that
spans the image (a dark region, uneven shading across a cell) is seen better on the image shrunk.
Each output pixel is the mean of a ``factor`` x ``factor`` block, rounded to the nearest integer
(halves up), and the rows and columns past the last whole block are left out. Every step is exact
integer arithmetic, so the exported graph (`shrink_tensor`) gives the very pixels `shrink_images`
gives, and a member scores the same images in both. A member's map comes back to the full size by
repeating each value over its block (`grow_maps`, `grow_tensor`).
"""

from __future__ import annotations

import numpy as np

# The longest side a coarse member works at: the whole factor brings the image's longest side to at
# most this many pixels.
COARSE_SIDE = 64


def factor_for(shape: tuple[int, ...], side: int = COARSE_SIDE) -> int:
    """The smallest whole factor that brings the longest side of `shape` (h, w, ...) to `side` or less."""
    return max(1, -(-max(int(shape[0]), int(shape[1])) // side))


def shrunk_shape(shape: tuple[int, ...], factor: int) -> tuple[int, ...]:
    """(h, w, c...) of images of `shape` shrunk by `factor`."""
    return (int(shape[0]) // factor, int(shape[1]) // factor, *(int(v) for v in shape[2:]))


def member_label(kind: str, image_shape, shrink: int = 1) -> str:
    """How an ensemble's member is named to people: its kind, and for a shrunk member the size it
    looks at ('draem on the whole image at 60x60')."""
    if shrink <= 1:
        return kind
    h, w = shrunk_shape(tuple(image_shape), shrink)[:2]
    return f"{kind} on the whole image at {w}x{h}"


def member_tag(kind: str, image_shape, shrink: int = 1) -> str:
    """A member's short name, for lists and layer names: its kind, or kind@WxH for a shrunk member."""
    if shrink <= 1:
        return kind
    h, w = shrunk_shape(tuple(image_shape), shrink)[:2]
    return f"{kind}@{w}x{h}"


def shrink_images(images: np.ndarray, factor: int) -> np.ndarray:
    """uint8 images (n, h, w, c) shrunk by `factor`: each pixel the rounded mean of its block."""
    if factor == 1:
        return images
    n, h, w, c = images.shape
    hh, ww = h // factor, w // factor
    blocks = images[:, : hh * factor, : ww * factor].reshape(n, hh, factor, ww, factor, c)
    sums = blocks.sum(axis=(2, 4), dtype=np.int64)
    q = factor * factor
    return ((sums + q // 2) // q).astype(np.uint8)


def grow_maps(maps: np.ndarray, factor: int, height: int, width: int) -> np.ndarray:
    """Maps (n, h', w') of shrunk images back at (n, height, width): each value over its block, the
    rows and columns the blocks left out taking the nearest value."""
    if factor == 1:
        return maps
    out = np.repeat(np.repeat(maps, factor, axis=1), factor, axis=2)
    ph, pw = height - out.shape[1], width - out.shape[2]
    return np.pad(out, ((0, 0), (0, ph), (0, pw)), mode="edge") if ph or pw else out


def shrink_tensor(images, factor: int):
    """`shrink_images` on a float tensor of uint8 values (n, h, w, c), in operations ONNX can hold."""
    import torch

    if factor == 1:
        return images
    n, h, w, c = images.shape
    hh, ww = h // factor, w // factor
    blocks = images[:, : hh * factor, : ww * factor].reshape(-1, hh, factor, ww, factor, c)
    q = float(factor * factor)
    return torch.floor((blocks.sum(dim=(2, 4)) + float(factor * factor // 2)) / q)


def grow_tensor(maps, factor: int, height: int, width: int):
    """`grow_maps` on a tensor (n, h', w')."""
    from torch.nn import functional as F

    if factor == 1:
        return maps
    n, hh, ww = maps.shape
    out = maps[:, :, None, :, None].expand(-1, -1, factor, -1, factor).reshape(-1, 1, hh * factor, ww * factor)
    ph, pw = height - hh * factor, width - ww * factor
    return (F.pad(out, (0, pw, 0, ph), mode="replicate") if ph or pw else out)[:, 0]
