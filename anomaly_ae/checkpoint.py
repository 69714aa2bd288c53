"""Model folders: one plain-dict checkpoint (``model.pt``) plus a readable summary (``model.json``).

The checkpoint holds only tensors, numbers, strings, lists and dicts, and is always loaded
with ``torch.load(..., weights_only=True)``: loading a model someone sent you never runs code.
``model.json`` records the checkpoint's sha256, so a file changed after training is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import stat
import time
from pathlib import Path

import numpy as np
import torch

from anomaly_ae import __version__
from anomaly_ae.errors import DataError, ModelError
from anomaly_ae.fsio import atomic_write_files, json_text
from anomaly_ae.shrink import member_tag

log = logging.getLogger(__name__)

FORMAT = "anomaly-ae/checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "state_dict", "config", "image_shape", "preprocess",
            "threshold", "calibration_scores", "history", "versions")
# The largest checkpoint file read (8 GiB, far above any model anomaly-ae trains): a bigger file
# is not a checkpoint, and reading it whole would exhaust memory.
MAX_CHECKPOINT_BYTES = 8 * 1024**3


def model_file(path: Path | str) -> Path:
    """The checkpoint file of a model folder (or the file itself)."""
    path = Path(path)
    return path / "model.pt" if path.is_dir() or path.suffix != ".pt" else path


def versions() -> dict:
    """Versions recorded with every model and run."""
    return {"anomaly_ae": __version__, "torch": str(torch.__version__), "python": platform.python_version(),
            "numpy": np.__version__}


def plain(obj):
    """Only the types weights_only loading accepts: dict, list, str, int, float, bool, None, tensors."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, torch.Tensor) or obj is None or type(obj) in (str, int, float, bool):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (str, Path)):  # str subclasses (such as torch's version string) and paths
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def write(folder: Path, ckpt: dict) -> Path:
    """Write ``model.pt`` and ``model.json`` into `folder`: each atomically, and neither replaced
    unless both were written in full.

    The checkpoint is serialised in memory first: torch reports a file write that failed (a full
    disk) only as an obscure RuntimeError, a plain write as the OSError it is.
    """
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    data = buf.getvalue()
    summary = {k: v for k, v in ckpt.items() if k not in ("state_dict", "calibration_scores", "held_out_scores",
                                                               "calibration_hashes", "reviewed_hashes",
                                                               "seen_hashes")}
    summary["sha256"] = hashlib.sha256(data).hexdigest()
    summary["n_parameters"] = int(sum(v.numel() for v in ckpt["state_dict"].values()))
    target = folder / "model.pt"
    atomic_write_files({target: data, folder / "model.json": json_text(summary).encode("utf-8")})
    return target


def read(path: Path | str) -> dict:
    """Load and check a checkpoint without running any code from it.

    Raises:
        DataError: no such file.
        ModelError: truncated, damaged, tampered with, or of an unknown format version.
    """
    file = model_file(path)
    data = _read_checked(file, path)
    try:
        import io

        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{file} is not a loadable anomaly-ae checkpoint (truncated, damaged or a "
                         f"different kind of file): {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ModelError(f"{file} is not an anomaly-ae checkpoint.")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{file} has checkpoint format version {ckpt.get('format_version')}; this "
                         f"anomaly-ae reads version {FORMAT_VERSION}. Retrain, or use a matching anomaly-ae.")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise ModelError(f"{file} lacks {', '.join(missing)}; it is damaged. Retrain the model.")
    return ckpt


def _read_checked(file: Path, path, retry: bool = True) -> bytes:
    """The checkpoint's bytes, checked against model.json's checksum.

    A model being replaced (recalibrated, retrained) is briefly missing, or its two files are
    briefly of different versions: one retry after a moment tells that from real damage.
    """
    try:
        data = _read_regular(file)
        _check_digest(file, data)
        return data
    except (FileNotFoundError, ModelError):
        if retry:
            time.sleep(0.5)
            return _read_checked(file, path, retry=False)
        if not file.exists():
            raise DataError(f"No model at {path} (looked for {file}). Train one with `anomaly-ae train`.") from None
        raise


def _read_regular(file: Path) -> bytes:
    """The bytes of a regular file of at most MAX_CHECKPOINT_BYTES.

    A folder, pipe, device or socket is refused before it is read: a pipe would block for ever
    and a device such as /dev/zero never ends. Links are followed, and what they lead to is checked.
    """
    st = os.stat(file)
    _check_regular(file, st.st_mode, st.st_size)
    # O_NONBLOCK: should the file be swapped for a pipe since the check, opening it cannot hang.
    with os.fdopen(os.open(file, os.O_RDONLY | os.O_NONBLOCK), "rb") as fh:
        st = os.fstat(fh.fileno())
        _check_regular(file, st.st_mode, st.st_size)
        data = fh.read(MAX_CHECKPOINT_BYTES + 1)
    _check_regular(file, stat.S_IFREG, len(data))  # it may have grown since
    return data


def _check_regular(file: Path, mode: int, size: int) -> None:
    if stat.S_ISDIR(mode):
        raise ModelError(f"{file} is a directory, not a checkpoint file (a model folder holds model.pt as a "
                         "plain file). Retrain the model, or restore its model.pt.")
    if not stat.S_ISREG(mode):
        raise ModelError(f"{file} is not a regular file (a pipe, device or socket), so it was not read. "
                         "A checkpoint is a plain file: retrain the model, or restore its model.pt.")
    if size > MAX_CHECKPOINT_BYTES:
        raise ModelError(f"{file} is larger than a checkpoint may be ({size:,} bytes; the limit is "
                         f"{MAX_CHECKPOINT_BYTES:,}), so it was not read. Retrain the model or restore its "
                         "model.pt (from Python, raise anomaly_ae.checkpoint.MAX_CHECKPOINT_BYTES for a "
                         "larger genuine model).")


def _check_digest(file: Path, data: bytes) -> None:
    summary = file.parent / "model.json"
    if file.name != "model.pt" or not summary.exists():
        why = "not named model.pt, so model.json does not describe it" if file.name != "model.pt" else (
            "no model.json next to it")
        log.warning("checksum not checked for %s (%s): a damaged or changed checkpoint would go unnoticed. "
                    "Keep the model folder as train wrote it, or retrain the model.", file, why)
        return
    try:
        doc = json.loads(summary.read_text())
    except (OSError, ValueError):
        raise ModelError(f"{summary} is unreadable; it is damaged. Retrain the model.") from None
    if not isinstance(doc, dict):
        raise ModelError(f"{summary} is not a model summary (a JSON object): it holds {_json_kind(doc)}; it is "
                         "damaged. Retrain the model, or restore its model.json.")
    expected = doc.get("sha256")
    if not expected:
        log.warning("checksum not checked for %s (%s records no sha256): a damaged or changed checkpoint "
                    "would go unnoticed. Retrain the model to record one.", file, summary.name)
        return
    if not isinstance(expected, str) or hashlib.sha256(data).hexdigest() != expected:
        raise ModelError(f"{file} does not match the checksum recorded in {summary.name}: the checkpoint "
                         "was changed after training (damaged or tampered with). Retrain, or restore it.")


def _json_kind(value) -> str:
    """How a JSON value reads in a message: 'null', 'a JSON array', 'a number'..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return {list: "a JSON array", str: "a string"}.get(type(value), "a number")


def summary(out: Path, ckpt: dict, cached: bool) -> dict:
    """What `train` and `info` say of a model: kind, training, threshold, and how it was chosen."""
    h, t = ckpt["history"], ckpt["threshold"]
    kind = "ensemble" if "members" in ckpt else ckpt["config"]["model"]["kind"]
    return {"model": str(out), "cached": cached, "kind": kind,
            "score": ckpt["config"]["score"]["method"], "normal_classes": ckpt.get("normal_classes"),
            "n_train": ckpt.get("data", {}).get("n_train"), "n_calibration": t["n_calibration"],
            "n_reviewed_normals": ckpt.get("data", {}).get("n_reviewed_normals", 0),
            "epochs": _epochs(h), "kept": h.get("kept"), "compared_at": h.get("compared_at"), "best_epoch": h["best_epoch"] + 1,
            "train_loss": h["train_loss"][h["best_epoch"]], "held_out_loss": h["val_loss"][h["best_epoch"]],
            "seconds": h["seconds"], "device": h["device"], "threshold": t["threshold"],
            "stopped": "early" if h.get("stopped_early") else ("time, still improving" if h.get("still_improving")
                                                               else "time") if h.get("stopped_by_time") else None,
            "target_fpr": t["target_fpr"], "guaranteed_fpr": t.get("guaranteed_fpr"),
            "collapse": ckpt.get("collapse"), "selection": ckpt.get("selection"),
            # An ensemble's members trained apart: each one's epochs (its training record above is the first's).
            "member_epochs": {member_tag(m["config"]["model"]["kind"], ckpt["image_shape"], m.get("shrink", 1)):
                              _epochs(m["history"]) for m in ckpt["members"]} if "members" in ckpt else None,
            "score_choice": ckpt.get("score_choice"), "preprocess": ckpt.get("preprocess")}


def _epochs(history: dict) -> int:
    """Epochs a model trained: none for the nearest kind, which keeps images instead (``kept``)."""
    return 0 if history.get("kept") is not None else len(history["train_loss"])
