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

import torch

from anomaly_ae.config import ModelConfig, TrainConfig
from anomaly_ae.device import as_float, autocast
from anomaly_ae.errors import ModelError
from anomaly_ae.fsio import atomic_path
from anomaly_ae.tiles import TILES_PER_IMAGE, random_crops

log = logging.getLogger(__name__)

Progress = Callable[..., None]  # (done, total, **fields)
# Seed of the simulated defects in held-out batches (the same every epoch).
VAL_SEED = 1_000_003
# Offset of the seed of the simulated defects in training batches.
DEFECT_SEED = 7919


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
    # Stopped by the time budget while the held-out loss still fell fast: likely undertrained.
    still_improving: bool = False

    def to_dict(self) -> dict:
        """Plain dict for checkpoints and reports."""
        return dict(self.__dict__)


@torch.no_grad()
def evaluate(model, data: torch.Tensor, batch_size: int) -> float:
    """Mean held-out loss (the model's own objective) over `data` (uint8 on the device) in eval mode."""
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(data), batch_size):
        x = as_float(data[i: i + batch_size])
        with autocast(x.device):
            gen = torch.Generator().manual_seed(VAL_SEED + i)
            total += float(model.loss(x, train=False, gen=gen)) * len(x)
        n += len(x)
    return total / max(n, 1)


def train(model: torch.nn.Module, data: torch.Tensor, val: torch.Tensor | None, model_cfg: ModelConfig,
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
    defects = torch.Generator().manual_seed(cfg.seed + DEFECT_SEED)  # simulated defects (draem)
    hist, best = History(device=str(device)), None
    start_epoch = 0
    if resume and state_path is not None and state_path.exists():
        start_epoch, best = _load_state(state_path, model, opt, sched, gen, hist)
        log.info("resuming training at epoch %d of %d", start_epoch + 1, cfg.epochs)
    t0 = time.perf_counter() - hist.seconds
    planned = cfg.epochs  # until the time budget says how many fit
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        order = torch.cat([torch.randperm(n, generator=gen) for _ in range(math.ceil(steps_per_epoch * batch / n))])
        order = order.to(device)
        running = 0.0
        for step in range(steps_per_epoch):
            x = data[order[step * batch: (step + 1) * batch]]
            x = as_float(random_crops(x, *tile, gen) if tile else x)
            with autocast(device):
                loss = model.loss(x, train=True, gen=defects)
            if not torch.isfinite(loss.detach()):
                raise ModelError(f"Training diverged: the loss became {float(loss.detach())} at epoch {epoch + 1}. "
                                 "Lower train.lr, or check the images.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
        hist.steps += steps_per_epoch
        hist.train_loss.append(running / steps_per_epoch)
        hist.val_loss.append(evaluate(model, val, 4 * batch) if val is not None and len(val) else hist.train_loss[-1])
        if best is None or hist.val_loss[-1] < hist.val_loss[hist.best_epoch] or epoch == 0:
            hist.best_epoch, best = epoch, copy.deepcopy(model.state_dict())
        hist.seconds = time.perf_counter() - t0
        if cfg.max_minutes and epoch == start_epoch:
            planned = _plan_for_budget(sched, cfg, epoch, hist.seconds, steps_per_epoch)
        if progress:
            progress(epoch + 1, max(planned, epoch + 1), loss=hist.train_loss[-1], held_out=hist.val_loss[-1])
        if state_path is not None:
            _save_state(state_path, epoch + 1, model, opt, sched, gen, hist, best)
        if epoch - hist.best_epoch >= cfg.patience:
            hist.stopped_early = True
            break
        if cfg.max_minutes and hist.seconds * (epoch + 2) / (epoch + 1) > 60 * cfg.max_minutes and epoch + 1 < cfg.epochs:
            hist.stopped_by_time = True
            log.info("stopping after epoch %d: the next would pass the %.3g-minute budget", epoch + 1, cfg.max_minutes)
            _say_if_still_improving(hist, cfg)
            break
    model.load_state_dict(best)
    model.eval()
    return hist


def _plan_for_budget(sched, cfg: TrainConfig, epoch: int, seconds: float, steps_per_epoch: int) -> int:
    """Fit the learning-rate decay to the epochs that the time budget leaves room for; their number."""
    per_epoch = seconds / (epoch + 1)
    epochs = max(epoch + 1, min(cfg.epochs, int(60 * cfg.max_minutes / max(per_epoch, 1e-9))))
    sched.T_max = epochs * steps_per_epoch
    log.info("%.0f s an epoch: %d epochs fit the %.3g-minute budget", per_epoch, epochs, cfg.max_minutes)
    return epochs


# A last epoch that lowered the held-out loss by more than this share: training had not levelled off.
STILL_IMPROVING = 0.05


def _say_if_still_improving(hist: History, cfg: TrainConfig) -> None:
    """Warn when the time budget stopped training while its last epoch still lowered the held-out loss
    by more than ``STILL_IMPROVING`` (the model then is the last epoch's, far from what more would give)."""
    val = hist.val_loss
    if len(val) < 2 or hist.best_epoch != len(val) - 1 or not val[-2] > 0:
        return
    drop = (val[-2] - val[-1]) / val[-2]
    if drop > STILL_IMPROVING:
        hist.still_improving = True
        log.warning("training stopped at the %.3g-minute budget after %d of %d epochs while the held-out loss still "
                    "fell (by %.0f%% in the last epoch): the model is likely undertrained and may miss what a "
                    "longer training finds. Give it more time (--max-minutes), or fewer or smaller images (--size)",
                    cfg.max_minutes, len(val), cfg.epochs, 100 * drop)


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
