"""Where tensors live: the device a configuration names, uint8 batches on it, and bf16 on CUDA."""

from __future__ import annotations

import numpy as np
import torch

from anomaly_ae.errors import ModelError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not (name == "cpu" or name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise ModelError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}.")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("device cuda was asked for, but no CUDA device is available. Use device auto or cpu.")
    return torch.device(name)


def to_device_uint8(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(n, h, w, c) uint8 numpy -> (n, c, h, w) uint8 tensor on `device` (1 byte per pixel)."""
    t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return t.to(device).contiguous()


def as_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (n, c, h, w) -> float in [0, 1], channels_last (faster convolutions on CPU and GPU)."""
    return batch.float().div_(255.0).contiguous(memory_format=torch.channels_last)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)
