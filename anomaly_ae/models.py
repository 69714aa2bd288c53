"""The autoencoders, as plain nn.Modules: a float image batch in [0, 1] in, its reconstruction out.

No data handling, devices, thresholds or I/O here; the detector owns those. Every model is
sized from the image shape: `stages` stride-2 convolutions bring the image down to a few
pixels a side (inputs are reflect-padded to a multiple of 2**stages and the output cropped
back), then a linear bottleneck of `latent_dim` values.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

MAX_STAGES = 6
MIN_BOTTLENECK_SIDE = 4


def auto_stages(height: int, width: int) -> int:
    """Stride-2 stages so that the smaller side ends at MIN_BOTTLENECK_SIDE pixels or more."""
    side = min(height, width)
    stages = 0
    while stages < MAX_STAGES and side / 2 ** (stages + 1) >= MIN_BOTTLENECK_SIDE:
        stages += 1
    return max(stages, 1)


# Widths of the reconstruction kinds when the configuration leaves them at 0: base / most channels
# of a five-stage network (images of 128 to 255 pixels a side and smaller), and for each stage past
# five (256 pixels and more) the base divided by 2**BASE_SHIFT and the cap by 2, so that a training
# step on a large image costs about what one on a 128-pixel image does. The full-resolution layers
# bound a CPU step: on 2 cores, 64 images of 256x256 took 4.1 s a step at 32/256 against 1.1 s for
# 64 images of 128x128 (bench/train256.py measures the widths against fit time and AUROC).
DEFAULT_BASE, DEFAULT_CAP = 32, 256
FULL_WIDTH_STAGES = 5
BASE_SHIFT = 2
RECONSTRUCTION_KINDS = ("ae", "denoising", "vae", "geometric")


def default_widths(kind: str, height: int, width: int) -> tuple[int, int]:
    """(base channels, most channels) of a model of `kind` on inputs of height x width when its
    configuration leaves them at 0. The discriminative kind has a fixed depth and divides these
    widths itself, so it always gets DEFAULT_BASE / DEFAULT_CAP."""
    if kind not in RECONSTRUCTION_KINDS:
        return DEFAULT_BASE, DEFAULT_CAP
    extra = max(0, auto_stages(height, width) - FULL_WIDTH_STAGES)
    return max(8, DEFAULT_BASE >> (BASE_SHIFT * extra)), DEFAULT_CAP >> extra


def _channels(base: int, cap: int, stages: int) -> list[int]:
    return [min(base * 2**i, cap) for i in range(stages)]


class ConvAutoencoder(nn.Module):
    """The classic convolutional autoencoder.

    Encoder: `stages` x (Conv2d 4x4 stride 2, BatchNorm, ReLU), then Linear to `latent_dim`.
    Decoder: Linear back, then ConvTranspose2d 4x4 stride 2 stages with BatchNorm and ReLU,
    and a sigmoid output.
    """

    # ModelConfig fields that the kind's training objective reads (set by build_model).
    OBJECTIVE_SETTINGS: tuple[str, ...] = ()

    def __init__(self, in_channels: int, height: int, width: int, latent_dim: int = 32,
                 base_channels: int = 32, max_channels: int = 256, stages: int | None = None):
        super().__init__()
        self.in_channels, self.height, self.width = in_channels, height, width
        self.stages = stages or auto_stages(height, width)
        m = 2**self.stages
        self.padded = (math.ceil(height / m) * m, math.ceil(width / m) * m)
        self.bottleneck = (self.padded[0] // m, self.padded[1] // m)
        chans = _channels(base_channels, max_channels, self.stages)
        enc, c_in = [], in_channels
        for c in chans:
            enc += [nn.Conv2d(c_in, c, 4, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.encoder = nn.Sequential(*enc)
        flat = chans[-1] * self.bottleneck[0] * self.bottleneck[1]
        self.to_latent = nn.Linear(flat, self._latent_out(latent_dim))
        self.from_latent = nn.Sequential(nn.Linear(latent_dim, flat), nn.ReLU(inplace=True))
        dec = []
        for c, c_next in zip(chans[::-1], chans[::-1][1:]):
            dec += [nn.ConvTranspose2d(c, c_next, 4, 2, 1, bias=False), nn.BatchNorm2d(c_next),
                    nn.ReLU(inplace=True)]
        dec += [nn.ConvTranspose2d(chans[0], in_channels, 4, 2, 1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*dec)
        self.latent_dim = latent_dim
        self._top = chans[-1]

    def _latent_out(self, latent_dim: int) -> int:
        return latent_dim

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.padded[0] - x.shape[-2], self.padded[1] - x.shape[-1]
        if ph or pw:
            mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (n, c, h, w) -> latent codes (n, latent_dim)."""
        return self.to_latent(self.encoder(self._pad(x)).flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent codes -> images (n, c, h, w) in [0, 1]."""
        h = self.from_latent(z).view(z.shape[0], self._top, *self.bottleneck)
        return self.decoder(h)[..., : self.height, : self.width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct a batch."""
        return self.decode(self.encode(x))

    def loss(self, x: torch.Tensor, train: bool, gen: torch.Generator | None = None) -> torch.Tensor:
        """The training objective on a clean batch: the squared reconstruction error."""
        return F.mse_loss(self(x).float(), x)


class DenoisingAutoencoder(ConvAutoencoder):
    """The classic autoencoder trained to restore images given Gaussian noise (``model.noise_std``)."""

    OBJECTIVE_SETTINGS = ("noise_std",)
    noise_std = 0.1

    def loss(self, x: torch.Tensor, train: bool, gen: torch.Generator | None = None) -> torch.Tensor:
        """Squared error of the reconstruction of a noisy copy (in training) against the clean batch."""
        x_in = (x + self.noise_std * torch.randn_like(x)).clamp_(0.0, 1.0) if train and self.noise_std > 0 else x
        return F.mse_loss(self(x_in).float(), x)


class VariationalAutoencoder(ConvAutoencoder):
    """The same network with a Gaussian latent: reparameterisation in training and a KL term.

    At inference the mean code is decoded, so reconstructions are deterministic.
    """

    OBJECTIVE_SETTINGS = ("kl_weight",)
    kl_weight = 0.01

    def _latent_out(self, latent_dim: int) -> int:
        return 2 * latent_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Mean latent code (n, latent_dim)."""
        return self._moments(x)[0]

    def _moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_latent(self.encoder(self._pad(x)).flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)

    def loss(self, x: torch.Tensor, train: bool, gen: torch.Generator | None = None) -> torch.Tensor:
        """In training: the error of the reconstruction of a sampled code plus ``kl_weight`` times the
        KL divergence per image per pixel; held out: the error of the mean code's reconstruction."""
        if not train:
            return F.mse_loss(self(x).float(), x)
        mu, logvar = self._moments(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1).mean()
        return F.mse_loss(self.decode(z).float(), x) + self.kl_weight * (kl / x[0].numel()).float()




def _conv_block(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class _Down(nn.Sequential):
    """Halve the resolution (stride-2 convolution), then one more convolution."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(*_conv_block(c_in, c_out, 2), *_conv_block(c_out, c_out))


class _Up(nn.Module):
    """Double the resolution (bilinear), optionally concatenate a skip, then two convolutions."""

    def __init__(self, c_in: int, c_skip: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_block(c_in + c_skip, c_out), *_conv_block(c_out, c_out))

    def forward(self, x: torch.Tensor, skip: torch.Tensor, use_skip: bool) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.body(torch.cat([x, skip], dim=1) if use_skip else x)


class _EncoderDecoder(nn.Module):
    """A fully convolutional encoder-decoder of `depth` stride-2 stages; U-Net skips when `skips`.

    With `stem_stride` 2 the stem halves the resolution and the output is interpolated back:
    full-resolution layers cost most on a CPU.
    """

    def __init__(self, c_in: int, c_out: int, base: int, cap: int, depth: int, skips: bool, stem_stride: int = 2):
        super().__init__()
        chans = [min(base * 2**i, cap) for i in range(depth + 1)]
        self.skips = skips
        self.stem = nn.Sequential(*_conv_block(c_in, chans[0], stem_stride), *_conv_block(chans[0], chans[0]))
        self.down = nn.ModuleList(_Down(a, b) for a, b in zip(chans, chans[1:]))
        self.up = nn.ModuleList(_Up(b, a if skips else 0, a) for a, b in zip(chans[::-1][1:], chans[::-1]))
        self.head = nn.Conv2d(chans[0], c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.stem(x)]
        for down in self.down:
            feats.append(down(feats[-1]))
        h = feats.pop()
        for up in self.up:
            h = up(h, feats.pop(), self.skips)
        return F.interpolate(self.head(h), size=x.shape[-2:], mode="bilinear", align_corners=False)


class DiscriminativeAutoencoder(nn.Module):
    """A reconstructive autoencoder and a segmentation network that compares image and reconstruction.

    Trained on normal images that carry simulated defects (anomaly_ae.simulate): the
    reconstructive part learns to restore the clean image (it is never shown a defect to keep),
    and the discriminative part, fed the image beside its reconstruction, learns to outline the
    defect. Both are fully convolutional, so they train on small crops and run on whole images of
    any size; the defect probability map is the anomaly map. ``forward`` returns the
    reconstruction, like the other autoencoders; ``defect_logits`` the segmentation.
    """

    DEPTH = 3
    # Both networks run at full resolution, so they are this many times narrower than the
    # classic autoencoder's ``base_channels`` / ``max_channels`` (32 / 256 -> 8 / 64): measured on
    # 2 CPU cores, 16 channels made training about 2.7 times slower.
    WIDTH_DIVISOR = 4
    # Focusing exponent of the focal loss on the defect mask.
    GAMMA = 2.0
    OBJECTIVE_SETTINGS: tuple[str, ...] = ()

    def __init__(self, in_channels: int, height: int, width: int, latent_dim: int = 32,
                 base_channels: int = 32, max_channels: int = 256, stages: int | None = None):
        super().__init__()
        self.in_channels, self.height, self.width = in_channels, height, width
        self.latent_dim = latent_dim  # unused: the bottleneck is spatial; kept for the common signature
        self.multiple = 2 ** (self.DEPTH + 1)  # the reconstruction's stem adds one halving
        base_channels = max(4, base_channels // self.WIDTH_DIVISOR)
        cap = max(base_channels, max_channels // self.WIDTH_DIVISOR)
        self.reconstructive = _EncoderDecoder(in_channels, in_channels, base_channels, cap, self.DEPTH, skips=False)
        # The segmentation works at half resolution too (its map is interpolated back): on generated
        # surfaces with one-pixel scratches, 200 steps at the discriminative learning rate gave AUROC
        # 0.93 in 28 s against 0.90 in 54 s with full-resolution first layers (2 CPU cores).
        self.discriminative = _EncoderDecoder(2 * in_channels, 1, base_channels, cap, self.DEPTH, skips=True)

    def loss(self, x: torch.Tensor, train: bool, gen: torch.Generator | None = None) -> torch.Tensor:
        """The objective on normal images given simulated defects (drawn with `gen`).

        Reconstruction: squared error plus SSIM loss against the clean image (the network must
        remove the defect, not copy it). Segmentation: focal loss of the defect logits against the
        simulated mask (defects cover a small share of the pixels; the focal term keeps the easy
        background from dominating).

        Held out: one minus the average precision of the defect map over the simulated defects'
        pixels. Early stopping watches how well defects are ranked above the surface, not how well
        texture is redrawn, nor the focal loss, which a map that marks nothing keeps low: on a paper
        type (26 images) that loss rose and fell five-fold from epoch to epoch and kept the
        weights of the first epoch (image AUROC 0.46).
        """
        from anomaly_ae.measures import ssim_map
        from anomaly_ae.simulate import synthesize

        x_in, mask = synthesize(x, gen)
        recon = self(x_in)
        logits = self.defect_logits(x_in, recon).float()
        if not train:
            return 1.0 - average_precision(logits.flatten(), mask.flatten())
        seg = focal_loss(logits, mask, self.GAMMA)
        return F.mse_loss(recon.float(), x) + (1.0 - ssim_map(recon.float(), x)).mean() + seg

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        m = self.multiple
        ph, pw = (-x.shape[-2]) % m, (-x.shape[-1]) % m
        if ph or pw:
            mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct a batch (n, c, h, w) of any size."""
        h, w = x.shape[-2:]
        return torch.sigmoid(self.reconstructive(self._pad(x)))[..., :h, :w]

    def defect_logits(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Per-pixel defect logits (n, 1, h, w) of images beside their reconstructions."""
        h, w = x.shape[-2:]
        return self.discriminative(self._pad(torch.cat([x, recon.to(x.dtype)], dim=1)))[..., :h, :w]

    def reconstruct_and_segment(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, defect probability (n, h, w)) of a batch."""
        recon = self(x)
        return recon, torch.sigmoid(self.defect_logits(x, recon).float()).squeeze(1)


def average_precision(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Average precision of `scores` ranking the positives of a {0, 1} `target` (flat tensors); 0 when
    there is no positive. Ties rank the negatives first, so a map that does not tell pixels apart
    gains nothing from their order."""
    negatives_first = torch.argsort(target, stable=True)
    order = negatives_first[torch.argsort(scores[negatives_first], descending=True, stable=True)]
    hits = target[order].float()
    precision = torch.cumsum(hits, 0) / torch.arange(1, len(hits) + 1, device=hits.device)
    return (precision * hits).sum() / hits.sum().clamp_min(1.0)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean binary focal loss (Lin et al. 2017) of per-pixel logits against a {0, 1} target."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_true = torch.exp(-ce)  # the probability given to the true class
    return ((1.0 - p_true) ** gamma * ce).mean()


MODELS = {"ae": ConvAutoencoder, "denoising": DenoisingAutoencoder, "vae": VariationalAutoencoder,
          "draem": DiscriminativeAutoencoder}


def build_model(config, shape: tuple[int, int, int], cls: type[nn.Module] | None = None) -> nn.Module:
    """The network of a `ModelConfig` for images (or tiles) of `shape` (height, width, channels), with
    the settings of its kind's training objective (``OBJECTIVE_SETTINGS``: noise, KL weight) taken
    from the configuration too; widths left at 0 are sized from the shape (`default_widths`). `cls`:
    the network class when the kind's is not one of MODELS (the geometric kind's, in its module)."""
    h, w, c = shape
    config = config.resolved(h, w)
    if cls is None and config.kind not in MODELS:
        raise ValueError(f"build_model: model kind {config.kind!r} has no network here; pass its class as "
                         f"cls= (the detector does: {config.kind} networks live in their own module)")
    cls = cls or MODELS[config.kind]
    model = cls(c, h, w, latent_dim=config.latent_dim, base_channels=config.base_channels,
                max_channels=config.max_channels)
    for name in cls.OBJECTIVE_SETTINGS:
        setattr(model, name, getattr(config, name))
    return model


def layer_table(module: nn.Module, shape: tuple[int, int, int]) -> list[dict]:
    """The layers a forward pass of one image of `shape` (h, w, c) goes through, in order: name,
    type, output shape (without the batch) and parameters (each layer's own), as torchsummary
    prints them. Layers holding others are left out; a layer run twice appears twice. The pass is
    the one scoring makes (for the discriminative kind: reconstruction, then segmentation; for the
    geometric kind: reconstruction, then its head)."""
    rows: list[dict] = []
    hooks = []

    def record(name):
        def hook(mod, _inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            rows.append({"layer": name, "type": type(mod).__name__,
                         "output": list(out.shape[1:]) if isinstance(out, torch.Tensor) else [],
                         "parameters": sum(p.numel() for p in mod.parameters(recurse=False))})
        return hook

    for name, mod in module.named_modules():
        if not any(True for _ in mod.children()) and (name or mod is module):  # a module of no layers: itself
            hooks.append(mod.register_forward_hook(record(name or "memory")))
    was_training = module.training
    try:
        module.eval()
        p = next(module.parameters(), next(module.buffers(), None))
        x = torch.zeros(1, shape[2], shape[0], shape[1], device=p.device if p is not None else "cpu")
        with torch.no_grad():
            getattr(module, "reconstruct_and_segment", module)(x)
            if hasattr(module, "transform_logits"):  # the geometric kind's head, on the encoder listed above
                seen, before = {r["layer"] for r in rows}, len(rows)
                module.transform_logits(x)
                rows[before:] = [r for r in rows[before:] if r["layer"] not in seen]
    finally:
        for h in hooks:
            h.remove()
        module.train(was_training)
    return rows
