"""Checkpoints: a plain dict loaded without running code, checked against model.json's checksum."""

import pytest
import torch

from anomaly_ae import checkpoint
from anomaly_ae.detector import AutoencoderDetector
from anomaly_ae.errors import DataError, ModelError


def test_checkpoint_tampered_truncated_or_malicious_is_refused(mnist_model, tmp_path):
    import shutil

    m = tmp_path / "m"
    shutil.copytree(mnist_model, m)
    data = (m / "model.pt").read_bytes()
    (m / "model.pt").write_bytes(data[:-10] + b"0123456789")
    with pytest.raises(ModelError, match="changed after training"):
        AutoencoderDetector.load(m)
    (m / "model.json").unlink()
    (m / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="not a loadable"):
        AutoencoderDetector.load(m)

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    torch.save({"format": "anomaly-ae/checkpoint", "x": Evil()}, m / "model.pt", pickle_protocol=2)
    with pytest.raises(ModelError, match="not a loadable"):
        AutoencoderDetector.load(m)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(DataError, match="No model"):
        AutoencoderDetector.load(tmp_path / "none")


def test_wrong_format_version_is_refused(mnist_model, tmp_path):
    ckpt = checkpoint.read(mnist_model)
    ckpt["format_version"] = 99
    (tmp_path / "m").mkdir()
    torch.save(ckpt, tmp_path / "m" / "model.pt")
    with pytest.raises(ModelError, match="format version 99"):
        AutoencoderDetector.load(tmp_path / "m")


def test_the_detector_writes_only_what_weights_only_loading_accepts(mnist_model):
    import io

    det = AutoencoderDetector.load(mnist_model)
    ckpt = det.to_checkpoint()
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    again = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert again["config"] == det.config.to_dict() and again["threshold"] == det.threshold_info_
    assert all(k in again for k in checkpoint.REQUIRED)
    with pytest.raises(TypeError, match="cannot store"):
        checkpoint.plain({"x": object()})
