"""The geometric kind: a convolutional autoencoder whose encoder also learns which way each
normal image was turned and flipped (the self-supervised task of Golan and El-Yaniv, NeurIPS 2018,
and Hendrycks et al., NeurIPS 2019, here on the autoencoder's own encoder).

On natural images the anomaly is what the whole image shows (another object), and a reconstruction
error mostly measures how busy an image is; which way up an airplane or a ship is, the network can
only tell from what it learned of them. Measured in bench/README.md (CIFAR-10 section).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from anomaly_ae.models import ConvAutoencoder

# The least spread (of a log error) the standardisation divides by: errors that barely vary across
# normal images (a head that has learned nothing yet) would otherwise turn float rounding into score.
MIN_SPREAD = 0.1
# The least head error counted: below it a float32 log-softmax of a sure head is rounding (exactly 0,
# or steps of about 1e-7), and its log would jump by several spreads between two equal images.
MIN_NLL = 1e-3
MIN_MSE = 1e-10
# Fewer held-back images than this standardise on the training images instead (a spread of 1 or 2
# values says nothing).
MIN_STATS_IMAGES = 8


class GeometricAutoencoder(ConvAutoencoder):
    """The classic autoencoder whose encoder also learns which way an image was turned: a linear
    head on its pooled features names which of the image's turns and flips (8 for square images:
    4 quarter turns with and without a mirror; 4 otherwise: the half turn and the two mirrors) it
    was given. Trained on normal images, it recognises their orientation from what they show
    (an airplane's wings, a ship's hull), and fails on images of other things.

    Its image score (`image_scores`) is the larger of two, each the log of a per-image error
    standardised by the held-back normal images' mean and spread of it (`fit_score_stats`): how
    badly the head names the transformations (mean negative log-likelihood over all of them) and
    the mean squared reconstruction error; so it flags what either part finds unusual. The anomaly map is the
    reconstruction error, as for the classic kind.
    """

    def __init__(self, in_channels: int, height: int, width: int, latent_dim: int = 32,
                 base_channels: int = 32, max_channels: int = 256, stages: int | None = None):
        super().__init__(in_channels, height, width, latent_dim, base_channels, max_channels, stages)
        self.square = height == width
        self.head = nn.Linear(self._top, 8 if self.square else 4)
        # log-error mean and spread (transformations, reconstruction) of held-back normal images
        self.register_buffer("score_stats", torch.tensor([0.0, 1.0, 0.0, 1.0]))

    def transformed(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The batch under each transformation, in the order of the head's outputs."""
        if not self.square:
            return [x, torch.flip(x, dims=[3]), torch.flip(x, dims=[2]), torch.flip(x, dims=[2, 3])]
        views = []
        for v in (x, torch.flip(x, dims=[3])):  # then each turned a quarter more (torch.rot90, which
            for _ in range(4):                   # ONNX cannot express, as a flip and a transpose)
                views.append(v)
                v = torch.flip(v, dims=[3]).transpose(2, 3)
        return views

    def transform_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Images (n, c, h, w) -> logits (n, transformations) of which transformation they carry."""
        return self.head(self.encoder(self._pad(x)).mean(dim=(2, 3)))

    def transform_nll(self, x: torch.Tensor) -> torch.Tensor:
        """Per image: the head's mean negative log-likelihood of the right transformation, over all."""
        views = self.transformed(x)
        logp = F.log_softmax(self.transform_logits(torch.cat(views)).float(), dim=1)
        logp = logp.view(len(views), -1, logp.shape[1])  # (view, image, guess); -1: any batch in a graph
        return -torch.stack([logp[k, :, k] for k in range(len(views))]).mean(dim=0)

    def loss(self, x: torch.Tensor, train: bool, gen: torch.Generator | None = None) -> torch.Tensor:
        """The squared reconstruction error plus the head's cross-entropy over every transformation;
        held out (early stopping), the same error plus its share of wrong guesses instead of the cross-entropy, which
        grows as the head grows sure of itself even while it guesses better (on CIFAR-10 classes
        early stopping on it kept the first epoch)."""
        error = F.mse_loss(self(x).float(), x)
        if train:
            return error + self.transform_nll(x).mean()
        views = self.transformed(x)
        guesses = self.transform_logits(torch.cat(views)).argmax(dim=1)
        right = torch.arange(len(views), device=x.device).repeat_interleave(len(x))
        return error + (guesses != right).float().mean()

    def _log_errors(self, x: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.transform_nll(x).clamp_min(MIN_NLL).log(),
                (x - recon.float()).pow(2).flatten(1).mean(dim=1).clamp_min(MIN_MSE).log())

    @torch.no_grad()
    def fit_score_stats(self, batches) -> None:
        """Set the standardisation of `image_scores` from batches of normal images (held back from
        training: see MIN_STATS_IMAGES)."""
        parts = [torch.stack(self._log_errors(x, self(x))) for x in batches]
        errors = torch.cat(parts, dim=1).double()
        spread = (errors.std(dim=1) if errors.shape[1] > 1 else torch.ones_like(errors[:, 0])).clamp_min(MIN_SPREAD)
        self.score_stats.copy_(torch.stack([errors[0].mean(), spread[0], errors[1].mean(), spread[1]]).float())

    def image_scores(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Per image (n,): the larger of the two standardised log errors, through a softplus, which
        keeps the order and makes every score positive (exported scores are checked relatively)."""
        nll, mse = self._log_errors(x, recon)
        m = self.score_stats.float()
        return F.softplus(torch.maximum((nll - m[0]) / m[1], (mse - m[2]) / m[3]))
