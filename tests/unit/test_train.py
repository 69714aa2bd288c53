"""The training loop: reproducible on the CPU, resumable from its state file, stopped early with the
best weights kept, and a diverging loss reported with the setting to change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly_ae.config import ModelConfig, TrainConfig
from anomaly_ae.device import to_device_uint8
from anomaly_ae.errors import ModelError
from anomaly_ae.models import build_model
from anomaly_ae.train import train

MODEL = ModelConfig(latent_dim=8, base_channels=4, max_channels=16)


def data(n: int = 48, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 200, (1, 16, 16, 1))
    return to_device_uint8((base + rng.integers(-40, 40, (n, 16, 16, 1))).clip(0, 255).astype(np.uint8),
                           torch.device("cpu"))


def fresh(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(MODEL, (16, 16, 1))


def weights(model) -> list[torch.Tensor]:
    return [v.detach().clone() for v in model.state_dict().values()]


def test_the_same_seed_trains_the_same_weights():
    cfg = TrainConfig(epochs=3, batch_size=16, min_steps_per_epoch=2, device="cpu")
    a, b = fresh(), fresh()
    hist_a = train(a, data(), data(8, seed=1), MODEL, cfg)
    hist_b = train(b, data(), data(8, seed=1), MODEL, cfg)
    assert hist_a.train_loss == hist_b.train_loss and len(hist_a.train_loss) == 3
    assert all(torch.equal(x, y) for x, y in zip(weights(a), weights(b)))


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    cfg = TrainConfig(epochs=4, batch_size=16, min_steps_per_epoch=2, device="cpu", patience=10)
    whole = fresh()
    hist = train(whole, data(), None, MODEL, cfg)
    state = tmp_path / "state.pt"
    first = fresh()
    train(first, data(), None, MODEL, TrainConfig(**{**cfg.__dict__, "epochs": 2}), state_path=state)
    assert state.exists()
    resumed = fresh(seed=5)  # other initial weights: all of them come from the state file
    again = train(resumed, data(), None, MODEL, cfg, state_path=state, resume=True)
    # The learning-rate schedule of the two-epoch run was shorter, so the losses are not identical;
    # what resuming must give is the epochs already done plus the rest, not a fresh start.
    assert len(again.train_loss) == len(hist.train_loss) == 4
    assert again.train_loss[:2] == pytest.approx(train(fresh(), data(), None, MODEL,
                                                       TrainConfig(**{**cfg.__dict__, "epochs": 2})).train_loss)


def test_early_stopping_keeps_the_best_epochs_weights(monkeypatch):
    cfg = TrainConfig(epochs=8, batch_size=16, min_steps_per_epoch=1, device="cpu", patience=2)
    seen = {}
    held_out = iter([0.5, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])

    def evaluate(model, val, batch_size):
        loss = next(held_out)
        seen[loss] = weights(model)
        return loss

    monkeypatch.setattr("anomaly_ae.train.evaluate", evaluate)
    model = fresh()
    hist = train(model, data(), data(8, seed=1), MODEL, cfg)
    assert hist.best_epoch == 1 and hist.stopped_early and len(hist.val_loss) == 4
    assert all(torch.equal(x, y) for x, y in zip(weights(model), seen[0.2]))


def test_a_diverging_loss_names_the_learning_rate(monkeypatch):
    model = fresh()
    monkeypatch.setattr(type(model), "loss", lambda self, x, train, gen=None: self(x).sum() * float("nan"))
    with pytest.raises(ModelError, match=r"diverged.*train\.lr"):
        train(model, data(), None, MODEL, TrainConfig(epochs=2, min_steps_per_epoch=1, device="cpu"))


@pytest.mark.parametrize("losses, warned", [([0.9, 0.6, 0.4, 0.3], True), ([0.9, 0.5, 0.49, 0.48], False)])
def test_a_time_budget_that_stops_a_still_improving_training_says_so(monkeypatch, caplog, losses, warned):
    import itertools
    import logging
    import types

    clock = itertools.count(0, 10)  # every epoch takes 10 s: 3 epochs fit a half-minute budget
    monkeypatch.setattr("anomaly_ae.train.time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    held_out = iter(losses)
    monkeypatch.setattr("anomaly_ae.train.evaluate", lambda model, val, batch_size: next(held_out))
    seen = []
    cfg = TrainConfig(epochs=8, batch_size=16, min_steps_per_epoch=1, device="cpu", max_minutes=0.5)
    with caplog.at_level(logging.WARNING):
        hist = train(fresh(), data(), data(8, seed=1), MODEL, cfg, progress=lambda done, total, **_: seen.append(total))
    assert hist.stopped_by_time and len(hist.val_loss) == 3 and hist.still_improving is warned
    assert ("likely undertrained" in caplog.text) is warned
    assert seen == [3, 3, 3]  # the epochs the budget leaves room for, not the 8 asked for
