"""Synthetic defects on normal images, for training a DRAEM-style discriminative autoencoder
(Zavrtanik et al., ICCV 2021) to restore the images and to segment the defects.

Masks are thresholded Perlin noise (blobs above a level, or cracks along a level line), mostly
gathered around one spot so that small defects are common. They are filled with a piece of another
image of the batch, a procedural texture or a local change of the image itself, blended at a random
opacity; a fill that barely changes the image is replaced, because a mask over unchanged pixels
would teach the segmentation head noise. Every random number comes from the caller's CPU generator.

Whole-image anomalies are made up too (`shuffled_patches`): the parts right, the whole wrong.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

from anomaly_ae.errors import ConfigError, DataError

MIN_AREA = 0.005  # smallest mask, as a fraction of the image (a smaller draw grows to it)
MIN_PERIOD_PX = 3  # finest lattice period: finer noise is speckle, not a defect
LEVEL = (0.45, 0.7)  # threshold of the noise, as a fraction of its range
SPOT_LEVEL = (0.2, 0.6)  # the same for noise gathered around a spot (of the spot's range)
SPOT_RADIUS = (0.5, 2.5)  # radii of a spot, in periods of the noise's lattice
SPOT_P = 0.5  # chance of gathering a coarse blob mask around a spot
SPOT_FALLOFF = 0.05  # how far the score drops away from a spot, so a grown mask grows around it
CRACK_FALLOFF = 3.0  # the same for cracks, whose score is a distance in pixels
MAX_FREE_CELLS = 8  # finer lattices, all over the image, look like speckle: always gathered
CRACK_P = 0.3  # share of cracks (thin bands along a level line)
CRACK_PERIOD_PX = 12  # finest lattice period of a crack
CRACK_WIDTH = (0.5, 1.5)  # half-width of a crack in pixels, at the centre of its spot
BETA_MAX = 0.8  # largest opacity of the original image inside the mask
MIN_CHANGE = 0.1  # smallest mean absolute change inside a mask; a weaker fill is replaced
# What fills a defect: a piece of another image, a procedural texture, a change of the image itself.
FILLS = ("paste", "texture", "change")
SHUFFLE_GRID = 4  # patches a side of the shuffled images (`shuffled_patches`)


def synthesize(x: torch.Tensor, gen: torch.Generator, p: float = 0.5,
               fills: tuple[str, ...] = FILLS) -> tuple[torch.Tensor, torch.Tensor]:
    """Put a synthetic defect on each image with probability `p`.

    Args:
        x: float images (n, c, h, w) in [0, 1], on any device and in any memory format.
        gen: CPU generator; every random number is drawn from it, so its state fixes the output.
        p: chance that an image gets a defect; the others come back unchanged with empty masks.
        fills: the kinds of fill drawn from (some of FILLS, each equally likely); all of them
            by default.

    Returns:
        (images, masks): images like `x` (shape, dtype, device) in [0, 1] and equal to `x` outside
        the mask; masks (n, 1, h, w) of 0. and 1. in the dtype of `x`. The mean absolute change
        inside each mask is at least MIN_CHANGE.

    Raises:
        DataError: `x` is not a batch of floating-point images.
        ConfigError: `p` is not in [0, 1], or `fills` names no kind or an unknown one.
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise DataError(f"synthesize needs float images (n, c, h, w); got {x.dtype} of shape {tuple(x.shape)}.")
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"The anomaly probability must be in [0, 1]; got {p}.")
    if not fills or not set(fills) <= set(FILLS):
        raise ConfigError(f"fills must name some of {', '.join(FILLS)}; got {fills!r}.")
    n, _, h, w = x.shape
    out, masks = x.clone(), x.new_zeros((n, 1, h, w))
    idx = (torch.rand(n, generator=gen) < p).nonzero().flatten()
    if len(idx) == 0:
        return out, masks
    at = idx.to(x.device)
    mask = perlin_mask(len(idx), h, w, gen, x.device)
    orig = x[at]
    beta = _per_image(_uniform(gen, len(idx), 0.0, BETA_MAX), x.device, 4)  # opacity of the original
    aug = _make_visible(orig.float(), torch.lerp(_fills(x, idx, gen, fills), orig.float(), beta), mask, gen)
    out[at] = torch.where(mask > 0, aug.to(x.dtype), orig)
    masks[at] = mask.to(x.dtype)
    return out, masks


def perlin_mask(n: int, h: int, w: int, gen: torch.Generator, device=None) -> torch.Tensor:
    """(n, 1, h, w) binary float masks from thresholded Perlin noise at a random scale per image;
    each has at least MIN_AREA of the image set."""
    dev = torch.device(device or "cpu")
    if n == 0:
        return torch.zeros((0, 1, h, w), device=dev)
    crack = torch.rand(n, generator=gen) < CRACK_P
    # A crack wiggles at the lattice's period: at fine periods it would be a broken zigzag.
    cy, cx = _cells(gen, n, h), _cells(gen, n, w)
    cy = torch.where(crack, cy.clamp_max(max(2, h / CRACK_PERIOD_PX)), cy)
    cx = torch.where(crack, cx.clamp_max(max(2, w / CRACK_PERIOD_PX)), cx)
    angle = _uniform(gen, n, -math.pi / 2, math.pi / 2)
    noise = _normalise(_perlin(gen, h, w, cy, cx, angle, dev))
    # Fine noise all over the image looks like speckle or stripes, and a net of cracks like a pattern.
    spot = crack | (torch.maximum(cy, cx) > MAX_FREE_CELLS) | (torch.rand(n, generator=gen) < SPOT_P)
    bump = torch.where(_per_image(spot, dev), _bump(gen, h, w, h / cy, w / cx, angle, dev), 1.0)
    level = _per_image(torch.where(spot, _uniform(gen, n, *SPOT_LEVEL), _uniform(gen, n, *LEVEL)), dev)
    width = _per_image(_uniform(gen, n, *CRACK_WIDTH), dev)
    score = _normalise(noise * bump).sub_(level + SPOT_FALLOFF).add_(bump, alpha=SPOT_FALLOFF)  # > 0 in a blob
    if crack.any():
        at = crack.to(dev)
        score[at] = _crack_score(noise[at], bump[at], width[at])
    # A draw below MIN_AREA grows to a random size above it, so the smallest masks are not all alike.
    least = (MIN_AREA * h * w * _uniform(gen, n, 1.0, 3.0)).ceil().long().clamp(1, h * w)
    return _at_least(score, least.to(dev))[:, None].float()


def _crack_score(noise: torch.Tensor, bump: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Score (> 0 inside) of cracks along the level line of `noise` through the centre of each spot
    (the top of `bump`), `width` pixels wide there and narrowing away from it; measuring the
    distance to the line in pixels (the difference over the slope) keeps the crack unbroken."""
    line = noise.flatten(1).gather(1, bump.flatten(1).argmax(1, keepdim=True)).view(-1, 1, 1)
    dist = (noise - line).abs_().div_(torch.hypot(*torch.gradient(noise, dim=(1, 2))).clamp_min_(1e-6))
    return width * bump - dist - CRACK_FALLOFF * (1 - bump)


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    """n numbers uniform in [lo, hi), drawn on the CPU."""
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _per_image(t: torch.Tensor, dev: torch.device, ndim: int = 3) -> torch.Tensor:
    """Per-image values t (n,) shaped to broadcast over images of `ndim` dimensions, on dev."""
    return t.view((-1,) + (1,) * (ndim - 1)).to(dev)


def _cells(gen: torch.Generator, n: int, side: int) -> torch.Tensor:
    """Lattice cells along a side, per image: 2, 4, ... 32, with periods of at least MIN_PERIOD_PX."""
    top = min(5, max(1, int(math.log2(side / MIN_PERIOD_PX))))
    return 2.0 ** torch.randint(1, top + 1, (n,), generator=gen)


def _perlin(gen: torch.Generator, h: int, w: int, cy: torch.Tensor, cx: torch.Tensor, angle: torch.Tensor,
            dev: torch.device) -> torch.Tensor:
    """Gradient (Perlin) noise (n, h, w), about in [-1, 1], on a lattice of cy x cx cells over the
    image, turned by `angle`, at a random phase.

    The noise at lattice position (u, v) is the fade-weighted sum over its cell's corners (i, j) of
    g . ((u, v) - (i, j)) = u B(gu) + v B(gv) - B(i gu + j gv), with B the interpolation of a table
    over the lattice: one grid_sample of three tables does every lookup.
    """
    n, cos, sin = len(cy), angle.cos(), angle.sin()
    span_u = (cos.abs() * (h - 1) + sin.abs() * (w - 1)) * cy / h
    span_v = (sin.abs() * (h - 1) + cos.abs() * (w - 1)) * cx / w
    size_u, size_v = math.ceil(span_u.max()) + 2, math.ceil(span_v.max()) + 2
    theta = 2 * math.pi * torch.rand(n, size_u, size_v, generator=gen)
    phase = torch.rand(2, n, generator=gen)
    gu, gv = theta.sin(), theta.cos()
    table = torch.stack([gu, gv, gu * torch.arange(size_u)[:, None] + gv * torch.arange(size_v)], 1).to(dev)
    # Lattice positions (v, u) of the pixels, all >= 0: centred pixel coordinates turned, scaled
    # to cells and shifted to start at the phase.
    along_y, along_x = torch.stack([sin * cx / w, cos * cy / h]), torch.stack([cos * cx / w, -sin * cy / h])
    start = torch.stack([span_v / 2 + phase[0], span_u / 2 + phase[1]])
    pos = _plane(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, along_y, along_x, start, dev)
    corner = pos.floor()
    frac = pos - corner
    # At corner + fade(frac), linear interpolation weighs the corners with Perlin's fade curve.
    grid = frac.mul(6).sub_(15).mul_(frac).add_(10).mul_(frac).mul_(frac).mul_(frac).add_(corner)
    grid = grid.mul_(torch.tensor([2 / (size_v - 1), 2 / (size_u - 1)], device=dev).view(1, 2, 1, 1)).sub_(1)
    b = F.grid_sample(table, grid.permute(0, 2, 3, 1), mode="bilinear", align_corners=True)
    return b[:, 0].mul_(pos[:, 1]).addcmul_(b[:, 1], pos[:, 0]).sub_(b[:, 2]).mul_(math.sqrt(2))


def _plane(ys: torch.Tensor, xs: torch.Tensor, along_y: torch.Tensor, along_x: torch.Tensor, start: torch.Tensor,
           dev: torch.device) -> torch.Tensor:
    """(n, 2, h, w) points start + y along_y + x along_x for coordinates ys (h,) and xs (w,) and
    per-image 2-vectors (2, n), on dev."""
    along_y, along_x, start = (t.T.reshape(-1, 2, 1, 1).to(dev) for t in (along_y, along_x, start))
    return (ys.view(1, 1, -1, 1).to(dev) * along_y + start) + xs.view(1, 1, 1, -1).to(dev) * along_x


def _normalise(t: torch.Tensor) -> torch.Tensor:
    """Each image of t (n, h, w) scaled to [0, 1]."""
    lo, hi = t.amin((1, 2), keepdim=True), t.amax((1, 2), keepdim=True)
    return (t - lo).div_((hi - lo).clamp_min_(1e-6))


def _bump(gen: torch.Generator, h: int, w: int, period_u: torch.Tensor, period_v: torch.Tensor,
          angle: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """(n, h, w) Gaussian bumps in (0, 1] at random spots, on ellipses along the noise's lattice
    (turned by `angle`) with radii (at 1/e) of SPOT_RADIUS lattice periods: a soft window that
    keeps one or a few of the noise's blobs without cutting them along a curve."""
    n = len(angle)
    cy, cx = _uniform(gen, n, 0, h - 1), _uniform(gen, n, 0, w - 1)
    ry = (period_u * torch.exp(_uniform(gen, n, *map(math.log, SPOT_RADIUS)))).clamp_min(1)
    rx = (period_v * torch.exp(_uniform(gen, n, *map(math.log, SPOT_RADIUS)))).clamp_min(1)
    dy = torch.arange(h, device=dev).view(1, -1, 1) - _per_image(cy, dev)
    dx = torch.arange(w, device=dev).view(1, 1, -1) - _per_image(cx, dev)
    a = _per_image(angle.cos() / ry, dev) * dy - _per_image(angle.sin() / ry, dev) * dx
    b = _per_image(angle.sin() / rx, dev) * dy + _per_image(angle.cos() / rx, dev) * dx
    return a.square_().add_(b.square_()).neg_().exp_()


def _at_least(score: torch.Tensor, least: torch.Tensor) -> torch.Tensor:
    """score > 0, except that an image with fewer than least[i] such pixels gets its least[i] highest."""
    mask = score > 0
    small = mask.flatten(1).sum(1) < least
    if small.any():
        top = score[small].flatten(1).topk(int(least[small].max()), dim=1).values
        kth = top.gather(1, least[small, None] - 1)
        mask[small] = score[small] >= kth.view(-1, 1, 1)
    return mask


def _fills(x: torch.Tensor, idx: torch.Tensor, gen: torch.Generator, allowed: tuple[str, ...]) -> torch.Tensor:
    """What goes into the defects of images x[idx], float32 in [0, 1]: per image, one of the
    `allowed` FILLS: a cut-paste from another image of the batch, a procedural texture, or a
    change of the image itself."""
    (n, c, h, w), dev = x.shape, x.device
    choices = torch.tensor(sorted({FILLS.index(f) for f in allowed}))  # a repeated name counts once
    kind = choices[torch.randint(0, len(choices), (len(idx),), generator=gen)]
    shift = int(torch.randint(1, max(n, 2), (1,), generator=gen))  # the batch rolled by `shift`
    fill = torch.empty((len(idx), c, h, w), device=dev)
    for j, make in enumerate([lambda i: _cut_paste(x[((i - shift) % n).to(dev)].float(), gen),
                              lambda i: _texture(gen, len(i), c, h, w, dev),
                              lambda i: _intensity(x[i.to(dev)].float(), gen)]):
        if (kind == j).any():
            fill[(kind == j).to(dev)] = make(idx[kind == j])
    return fill


def _cut_paste(src: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """src (k, c, h, w) under a random rotation, scale (0.5 to 2) and shift, borders reflected."""
    k, _, h, w = src.shape
    angle = _uniform(gen, k, -math.pi, math.pi)
    zoom = torch.exp(_uniform(gen, k, math.log(0.5), math.log(2.0)))
    shift = _uniform(gen, 2 * k, -1.0, 1.0).view(2, k)
    cos, sin = angle.cos() / zoom, angle.sin() / zoom
    # grid_sample works in [-1, 1] on both axes (pixel centres here); the h/w factors keep the
    # rotation rigid in pixels.
    grid = _plane(torch.linspace(1 / h - 1, 1 - 1 / h, h), torch.linspace(1 / w - 1, 1 - 1 / w, w),
                  torch.stack([-sin * h / w, cos]), torch.stack([cos, sin * w / h]), shift, src.device)
    return F.grid_sample(src, grid.permute(0, 2, 3, 1), padding_mode="reflection", align_corners=False)


def _texture(gen: torch.Generator, k: int, c: int, h: int, w: int, dev: torch.device) -> torch.Tensor:
    """(k, c, h, w) procedural textures (a grating, stripes, a checkerboard or fractal noise)
    between two random colours, or grey levels for c = 1."""
    kind = _per_image(torch.randint(0, 4, (k,), generator=gen), dev)
    freq = _per_image(torch.exp(_uniform(gen, k, math.log(2), math.log(24))), dev)  # cycles per side
    angle = _per_image(_uniform(gen, k, 0, math.pi), dev)
    phase = _uniform(gen, 2 * k, 0, 2 * math.pi).view(2, -1, 1, 1).to(dev)
    ys = torch.arange(h, device=dev).view(1, -1, 1) * (2 * math.pi / max(h, w))
    xs = torch.arange(w, device=dev).view(1, 1, -1) * (2 * math.pi / max(h, w))
    a = (freq * (angle.cos() * xs + angle.sin() * ys) + phase[0]).sin()
    b = (freq * (angle.cos() * ys - angle.sin() * xs) + phase[1]).sin()
    t = torch.where(kind == 0, 0.5 + 0.5 * a, (a * torch.where(kind == 2, b, 1.0) > 0).float())
    noisy = (kind == 3).view(-1)
    if noisy.any():  # fractal noise: four octaves, each with twice the cells and half the amplitude
        m = int(noisy.sum())
        cells = (2.0 ** torch.randint(1, 4, (m,), generator=gen)).repeat(4) * 2 ** torch.arange(4).repeat_interleave(m)
        cells = cells.clamp_max(min(h, w) / MIN_PERIOD_PX)
        octaves = _perlin(gen, h, w, cells, cells, _uniform(gen, m, 0, math.pi).repeat(4), dev).view(4, m, h, w)
        t[noisy] = _normalise(torch.tensordot(0.5 ** torch.arange(4.0, device=dev), octaves, 1))
    colours = torch.rand(2, k, c, 1, 1, generator=gen).to(dev)
    return torch.lerp(colours[0], colours[1], t[:, None])


def _intensity(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x (k, c, h, w) changed in one way per image: brighter or darker, more or less contrast,
    blurred, or noisier; clamped to [0, 1]."""
    k, dev = len(x), x.device
    kind = torch.randint(0, 4, (k,), generator=gen)
    up = torch.rand(k, generator=gen) < 0.5
    delta = _per_image(torch.where(up, 1.0, -1.0) * _uniform(gen, k, 0.15, 0.5), dev, 4)
    gain = _per_image(torch.where(up, _uniform(gen, k, 1.5, 3.0), _uniform(gen, k, 0.1, 0.5)), dev, 4)
    out = torch.where(_per_image(kind == 0, dev, 4), x + delta, torch.lerp(x.mean((1, 2, 3), keepdim=True), x, gain))
    blur, noisy = kind == 2, kind == 3
    if blur.any():
        out[blur.to(dev)] = _blur(x[blur.to(dev)], _uniform(gen, int(blur.sum()), 1.0, 4.0))
    if noisy.any():
        spread = _uniform(gen, int(noisy.sum()), 0.05, 0.3).view(-1, 1, 1, 1)
        noise = spread * torch.randn((int(noisy.sum()),) + x.shape[1:], generator=gen)
        out[noisy.to(dev)] = x[noisy.to(dev)] + noise.to(dev)
    return out.clamp_(0, 1)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x (k, c, h, w) blurred by a separable Gaussian with standard deviation sigma[i] per image."""
    k, c, h, w = x.shape
    r = math.ceil(3 * float(sigma.max()))
    kernel = torch.exp(-(torch.arange(-r, r + 1.0)[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0).to(x.device)
    # One group per image and channel: each image gets its own kernel in one call.
    y = F.pad(x.reshape(1, k * c, h, w), (0, 0, r, r), mode="replicate")
    y = F.conv2d(y, kernel[:, None, :, None], groups=k * c)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=k * c)
    return y.reshape(k, c, h, w)


def _make_visible(x: torch.Tensor, aug: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """aug, except for images whose mean absolute change inside the mask is under MIN_CHANGE: those
    are brightened or darkened instead, by s = 0.3 to 0.6 towards the far end of the range from their
    mean in the mask (clamped, that changes the pixels by at least s/2 on average)."""
    area = mask.sum((1, 2, 3)) * x.shape[1]
    weak = (mask * (aug - x).abs()).sum((1, 2, 3)) / area < MIN_CHANGE
    step = _uniform(gen, len(x), 0.3, 0.6).to(x.device)
    if weak.any():
        away = torch.where((mask[weak] * x[weak]).sum((1, 2, 3)) / area[weak] > 0.5, -1.0, 1.0)
        aug[weak] = (x[weak] + (step[weak] * away).view(-1, 1, 1, 1)).clamp_(0, 1)
    return aug


def shuffled_patches(images: np.ndarray, seed: int, grid: int = SHUFFLE_GRID) -> np.ndarray:
    """Each image (n, h, w, c) with its grid x grid patches in a random order (the rest, when a side
    does not divide, stays in place): an anomaly of the whole image whose every part looks normal."""
    rng = np.random.default_rng(seed)
    n, h, w, _ = images.shape
    ph, pw = h // grid, w // grid
    out = images.copy()
    cells = [(i, j) for i in range(grid) for j in range(grid)]
    for k in range(n):
        order = rng.permutation(len(cells))
        for (i, j), src in zip(cells, order):
            si, sj = cells[src]
            out[k, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw] = images[k, si * ph:(si + 1) * ph, sj * pw:(sj + 1) * pw]
    return out
