"""The peers anomaly-ae is compared with, behind one small interface: fit(normals) and score(images).

- IsolationForest on raw pixels (scikit-learn);
- PyOD's fully connected AutoEncoder on raw pixels;
- the classic tutorial convolutional autoencoder (Conv/MaxPool encoder, Upsample decoder, no
  bottleneck layer), trained the tutorial way: a torchvision-style Dataset with ToTensor and a
  DataLoader, Adam, MSE, fixed epochs; scored by mean squared reconstruction error.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset


def flat(images: np.ndarray) -> np.ndarray:
    """uint8 (n, h, w, c) -> float32 (n, h*w*c) in [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


class IForest:
    """IsolationForest on pixels."""

    name = "iforest"

    def fit(self, images):
        from sklearn.ensemble import IsolationForest

        self.model = IsolationForest(n_estimators=200, random_state=0).fit(flat(images))
        return self

    def score(self, images):
        return -self.model.score_samples(flat(images))


class PyODAutoEncoder:
    """PyOD's AutoEncoder (fully connected) with its default settings."""

    name = "pyod_ae"

    def fit(self, images):
        from pyod.models.auto_encoder import AutoEncoder

        # PyOD drops incomplete batches: keep at least one batch on tiny training sets.
        self.model = AutoEncoder(verbose=0, random_state=0, device="cpu", batch_size=min(32, max(2, len(images) // 2)))
        self.model.fit(flat(images))
        return self

    def score(self, images):
        return self.model.decision_function(flat(images))


class TutorialConvAE(nn.Module):
    """The classic tutorial convolutional autoencoder (16-8-8 filters, max-pooling, upsampling)."""

    def __init__(self, channels: int):
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.dec = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2),
            nn.Conv2d(16, channels, 3, padding=1), nn.Sigmoid())

    def forward(self, x):
        h, w = x.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        y = self.dec(self.enc(F.pad(x, (0, pw, 0, ph))))
        return y[..., :h, :w]


class ArrayImages(Dataset):
    """A torchvision-style dataset: one PIL image per item, converted with ToTensor."""

    def __init__(self, images: np.ndarray):
        from PIL import Image
        from torchvision import transforms

        c = images.shape[-1]
        self.images = [Image.fromarray(im[..., 0] if c == 1 else im) for im in images]
        self.to_tensor = transforms.ToTensor()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.to_tensor(self.images[i])
        return x, x


def tutorial_fit(model: nn.Module, images: np.ndarray, epochs: int, batch_size: int = 64, lr: float = 1e-3,
                 seed: int = 0) -> nn.Module:
    """The tutorial training loop: DataLoader(shuffle) -> model -> MSE -> Adam."""
    torch.manual_seed(seed)
    loader = DataLoader(ArrayImages(images), batch_size=batch_size, shuffle=True)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for x, target in loader:
            opt.zero_grad()
            loss = F.mse_loss(model(x), target)
            loss.backward()
            opt.step()
    return model.eval()


class TutorialAE:
    """The tutorial conv AE, trained for the tutorial's 50 epochs (at least 600 steps on tiny sets)."""

    name = "tutorial_conv_ae"

    def __init__(self, epochs: int = 50):
        self.epochs = epochs

    def fit(self, images):
        epochs = max(self.epochs, math.ceil(600 / math.ceil(len(images) / 64)))
        self.model = tutorial_fit(TutorialConvAE(images.shape[-1]), images, epochs)
        return self

    @torch.no_grad()
    def score(self, images):
        out = []
        for i in range(0, len(images), 256):
            x = torch.from_numpy(images[i:i + 256]).permute(0, 3, 1, 2).float() / 255.0
            out.append(((self.model(x) - x) ** 2).flatten(1).mean(1).numpy())
        return np.concatenate(out)


BASELINES = {"iforest": IForest, "pyod_ae": PyODAutoEncoder, "tutorial_conv_ae": TutorialAE}
