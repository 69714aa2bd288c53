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


def _channels(base: int, cap: int, stages: int) -> list[int]:
    return [min(base * 2**i, cap) for i in range(stages)]


class ConvAutoencoder(nn.Module):
    """The classic convolutional autoencoder.

    Encoder: `stages` x (Conv2d 4x4 stride 2, BatchNorm, ReLU), then Linear to `latent_dim`.
    Decoder: Linear back, then ConvTranspose2d 4x4 stride 2 stages with BatchNorm and ReLU,
    and a sigmoid output.
    """

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

    def training_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, extra loss term) for training; plain autoencoders add nothing."""
        return self(x), x.new_zeros(())


class VariationalAutoencoder(ConvAutoencoder):
    """The same network with a Gaussian latent: reparameterisation in training and a KL term.

    At inference the mean code is decoded, so reconstructions are deterministic.
    """

    def _latent_out(self, latent_dim: int) -> int:
        return 2 * latent_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Mean latent code (n, latent_dim)."""
        return self._moments(x)[0]

    def _moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_latent(self.encoder(self._pad(x)).flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)

    def training_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction of a sampled code, KL divergence per image per pixel)."""
        mu, logvar = self._moments(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1).mean()
        return self.decode(z), kl / x[0].numel()


MODELS = {"ae": ConvAutoencoder, "denoising": ConvAutoencoder, "vae": VariationalAutoencoder}


def build_model(kind: str, shape: tuple[int, int, int], latent_dim: int, base_channels: int,
                max_channels: int) -> ConvAutoencoder:
    """The network for model `kind` and image shape (height, width, channels)."""
    h, w, c = shape
    return MODELS[kind](c, h, w, latent_dim=latent_dim, base_channels=base_channels,
                        max_channels=max_channels)
