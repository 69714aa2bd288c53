"""The training loop: data resident as uint8 on the device, batches sliced by index.

AdamW with cosine decay, early stopping on the held-out loss (the best weights are kept),
channels_last everywhere and bf16 autocast on CUDA, a fixed seed for reproducible CPU runs, and an
optional state file written after every epoch so `resume` continues an interrupted run.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from anomaly_ae.config import ModelConfig, TrainConfig
from anomaly_ae.errors import ModelError
from anomaly_ae.fsio import atomic_path
from anomaly_ae.models import ConvAutoencoder
from anomaly_ae.tiles import TILES_PER_IMAGE, random_crops

log = logging.getLogger(__name__)

Progress = Callable[..., None]  # (done, total, **fields)
# Seed of the simulated defects in held-out batches (the same every epoch).
VAL_SEED = 1_000_003


@dataclass
class History:
    """What training did, epoch by epoch."""

    train_loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    best_epoch: int = 0
    steps: int = 0
    seconds: float = 0.0
    device: str = "cpu"
    stopped_early: bool = False
    stopped_by_time: bool = False

    def to_dict(self) -> dict:
        """Plain dict for checkpoints and reports."""
        return dict(self.__dict__)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not (name == "cpu" or name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise ModelError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}.")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for, but no CUDA device is available. Use --device auto or cpu.")
    return torch.device(name)


def to_device_uint8(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(n, h, w, c) uint8 numpy -> (n, c, h, w) uint8 tensor on `device` (1 byte per pixel)."""
    t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return t.to(device).contiguous()


def as_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (n, c, h, w) -> float in [0, 1], channels_last (faster convolutions on CPU and GPU)."""
    return batch.float().div_(255.0).contiguous(memory_format=torch.channels_last)


class _Loss:
    """The training objective of a model configuration."""

    def __init__(self, cfg: ModelConfig, seed: int = 0):
        self.cfg = cfg

    def __call__(self, model: ConvAutoencoder, x: torch.Tensor, train: bool,
                 gen: torch.Generator | None = None) -> torch.Tensor:
        x_in = x
        if train and self.cfg.kind == "denoising" and self.cfg.noise_std > 0:
            x_in = (x + self.cfg.noise_std * torch.randn_like(x)).clamp_(0.0, 1.0)
        if train:
            recon, extra = model.training_outputs(x_in)
        else:
            recon, extra = model(x_in), x.new_zeros(())
        loss = F.mse_loss(recon.float(), x)
        return loss + self.cfg.kl_weight * extra.float() if self.cfg.kind == "vae" else loss


class _DefectLoss:
    """The discriminative autoencoder's objective on normal images given simulated defects.

    Reconstruction: squared error plus SSIM loss against the clean image (the network must
    remove the defect, not copy it). Segmentation: focal loss of the defect logits against the
    simulated mask (defects cover a small share of the pixels; the focal term keeps the easy
    background from dominating). The held-out loss is the segmentation term alone, on defects
    from a generator seeded by the caller, so every epoch is measured on the same defects.
    """

    GAMMA = 2.0

    def __init__(self, cfg: ModelConfig, seed: int = 0):
        self.cfg = cfg
        self.gen = torch.Generator().manual_seed(seed + 7919)

    def __call__(self, model, x: torch.Tensor, train: bool, gen: torch.Generator | None = None) -> torch.Tensor:
        from anomaly_ae.measures import ssim_map
        from anomaly_ae.simulate import synthesize

        x_in, mask = synthesize(x, gen or self.gen)
        recon = model(x_in)
        seg = focal_loss(model.defect_logits(x_in, recon).float(), mask, self.GAMMA)
        if not train:  # early stopping watches how well defects are found, not how well texture is redrawn
            return seg
        return F.mse_loss(recon.float(), x) + (1.0 - ssim_map(recon.float(), x)).mean() + seg


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean binary focal loss (Lin et al. 2017) of per-pixel logits against a {0, 1} target."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_true = torch.exp(-ce)  # the probability given to the true class
    return ((1.0 - p_true) ** gamma * ce).mean()


def loss_for(cfg: ModelConfig, seed: int = 0):
    """The training objective of a model configuration."""
    return _DefectLoss(cfg, seed) if cfg.kind == "draem" else _Loss(cfg, seed)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def evaluate(model, data: torch.Tensor, loss_fn: _Loss, batch_size: int) -> float:
    """Mean loss over `data` (uint8 on the device) in eval mode."""
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(data), batch_size):
        x = as_float(data[i: i + batch_size])
        with autocast(x.device):
            gen = torch.Generator().manual_seed(VAL_SEED + i)
            total += float(loss_fn(model, x, train=False, gen=gen)) * len(x)
        n += len(x)
    return total / max(n, 1)


def train(model: ConvAutoencoder, data: torch.Tensor, val: torch.Tensor | None, model_cfg: ModelConfig,
          cfg: TrainConfig, *, progress: Progress | None = None, state_path: Path | None = None,
          resume: bool = False, tile: tuple[int, int] | None = None, crops_per_image: int = TILES_PER_IMAGE) -> History:
    """Train `model` in place on uint8 `data` (n, c, h, w); returns the history.

    With `tile` (height, width), smaller than the images, each step trains on one random tile of
    each image of the batch, and an epoch draws up to `crops_per_image` tiles per image; `val`
    then holds tiles of that size. With ``cfg.max_minutes`` the epochs that fit the budget are
    planned after the first (the learning rate decays over them) and training stops when the
    next epoch would not fit.

    Raises:
        ModelError: fewer than 2 images, or a loss that becomes NaN or infinite.
    """
    n = len(data)
    if n < 2:
        raise ModelError(f"Training needs at least 2 normal images, got {n}.")
    device = data.device
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    batch = min(cfg.batch_size, n)
    per_image = min(crops_per_image, max(1, (data.shape[-2] // tile[0]) * (data.shape[-1] // tile[1]))) if tile else 1
    steps_per_epoch = max(math.ceil(n * per_image / batch), cfg.min_steps_per_epoch)
    model.to(memory_format=torch.channels_last)
    # The fused AdamW kernel updates every parameter in one pass (measured faster on CPU too).
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr_for(model_cfg.kind), weight_decay=cfg.weight_decay,
                            fused=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    loss_fn = loss_for(model_cfg, cfg.seed)
    hist, best = History(device=str(device)), None
    start_epoch = 0
    if resume and state_path is not None and state_path.exists():
        start_epoch, best = _load_state(state_path, model, opt, sched, gen, hist)
        log.info("resuming training at epoch %d of %d", start_epoch + 1, cfg.epochs)
    t0 = time.perf_counter() - hist.seconds
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        order = torch.cat([torch.randperm(n, generator=gen) for _ in range(math.ceil(steps_per_epoch * batch / n))])
        order = order.to(device)
        running = 0.0
        for step in range(steps_per_epoch):
            x = data[order[step * batch: (step + 1) * batch]]
            x = as_float(random_crops(x, *tile, gen) if tile else x)
            with autocast(device):
                loss = loss_fn(model, x, train=True)
            if not torch.isfinite(loss.detach()):
                raise ModelError(f"Training diverged: the loss became {float(loss)} at epoch {epoch + 1}. "
                                 "Lower --lr, or check the images.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
        hist.steps += steps_per_epoch
        hist.train_loss.append(running / steps_per_epoch)
        hist.val_loss.append(evaluate(model, val, loss_fn, 4 * batch) if val is not None and len(val) else hist.train_loss[-1])
        if best is None or hist.val_loss[-1] < hist.val_loss[hist.best_epoch] or epoch == 0:
            hist.best_epoch, best = epoch, copy.deepcopy(model.state_dict())
        hist.seconds = time.perf_counter() - t0
        if cfg.max_minutes and epoch == start_epoch:
            _plan_for_budget(sched, cfg, epoch, hist.seconds, steps_per_epoch)
        if progress:
            progress(epoch + 1, cfg.epochs, loss=hist.train_loss[-1], held_out=hist.val_loss[-1])
        if state_path is not None:
            _save_state(state_path, epoch + 1, model, opt, sched, gen, hist, best)
        if epoch - hist.best_epoch >= cfg.patience:
            hist.stopped_early = True
            break
        if cfg.max_minutes and hist.seconds * (epoch + 2) / (epoch + 1) > 60 * cfg.max_minutes and epoch + 1 < cfg.epochs:
            hist.stopped_by_time = True
            log.info("stopping after epoch %d: the next would pass the %g-minute budget", epoch + 1, cfg.max_minutes)
            break
    model.load_state_dict(best)
    model.eval()
    return hist


def _plan_for_budget(sched, cfg: TrainConfig, epoch: int, seconds: float, steps_per_epoch: int) -> None:
    """Fit the learning-rate decay to the epochs that the time budget leaves room for."""
    per_epoch = seconds / (epoch + 1)
    epochs = max(epoch + 1, min(cfg.epochs, int(60 * cfg.max_minutes / max(per_epoch, 1e-9))))
    sched.T_max = epochs * steps_per_epoch
    log.info("%.0f s an epoch: %d epochs fit the %g-minute budget", per_epoch, epochs, cfg.max_minutes)


def _save_state(path: Path, epoch, model, opt, sched, gen, hist: History, best) -> None:
    state = {"epoch": epoch, "model": model.state_dict(), "opt": opt.state_dict(),
             "sched": sched.state_dict(), "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
             "history": hist.to_dict(), "best": best}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_state(path: Path, model, opt, sched, gen, hist: History):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
    except Exception as exc:
        raise ModelError(f"Cannot resume from {path}: {exc}. Delete it to train from the start.") from None
    gen.set_state(state["gen"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    hist.__dict__.update(state["history"])
    return state["epoch"], state["best"]
