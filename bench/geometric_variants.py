"""The variants measured before the geometric kind was built (bench/README.md, CIFAR-10 section):
which-way-turned prediction as a one-class score, outside the product's training loop.

    PYTHONPATH=. python bench/geometric_variants.py DATASET TASKS SIZE EPOCHS
        a separate 8-layer classifier of the 8 turns and mirrors (TASKS: comma-separated, or all)
    PYTHONPATH=. python bench/geometric_variants.py geo DATASET TASKS SIZE EPOCHS VARIANTS
        the product's ConvAutoencoder with a head on its pooled encoder; VARIANTS: comma-separated
        EXTRA:RECON_WEIGHT (EXTRA 1: a 3x3 convolution after each stage), e.g. 0:1,1:1,1:0; prints
        the head's error, the reconstruction error, and their standardised sum and maximum

DATASET is a `bench.quality` dataset name (its data in ../shared/data); logs of the runs are in
bench/results/geometric-scratch-*.log.
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from bench.quality import _datasets, _load_task


def transforms(x):
    """x (n,c,h,w) -> (n*8, c,h,w), labels 0..7: 4 rotations x flip."""
    outs = []
    for f in (False, True):
        xf = torch.flip(x, dims=[3]) if f else x
        for k in range(4):
            outs.append(torch.rot90(xf, k, dims=[2, 3]))
    return outs


class Net(nn.Module):
    def __init__(self, c, n_out=8, w=32):
        super().__init__()
        layers, ci = [], c
        for co in (w, w * 2, w * 4, w * 4):
            layers += [nn.Conv2d(ci, co, 3, padding=1), nn.BatchNorm2d(co), nn.ReLU(),
                       nn.Conv2d(co, co, 3, padding=1), nn.BatchNorm2d(co), nn.ReLU(), nn.MaxPool2d(2)]
            ci = co
        self.f = nn.Sequential(*layers)
        self.head = nn.Linear(ci, n_out)

    def forward(self, x):
        return self.head(self.f(x).mean((2, 3)))


BATCH = 64


def _optimiser(net, n, epochs):
    """AdamW with a one-cycle rate over `epochs` of `n` images in batches of BATCH."""
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=5e-4)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * -(-n // BATCH))


def _shuffled(x):
    """One epoch of `x` in shuffled batches of BATCH."""
    perm = torch.randperm(len(x))
    for i in range(0, len(x), BATCH):
        yield x[perm[i:i + BATCH]]


def prep(a, size):
    x = torch.from_numpy(a).float().permute(0, 3, 1, 2) / 255.0
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return x


def score(net, x, bs=256):
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), bs):
            xb = x[i:i + bs]
            ts = transforms(xb)
            s = 0
            for k, t in enumerate(ts):
                s = s - F.log_softmax(net(t), 1)[:, k]
            out.append(s / len(ts))
    return torch.cat(out).numpy()


def run(fit, test, y, size, epochs, seed=0, w=32, shift=True):
    torch.manual_seed(seed)
    x = prep(fit, size)
    xt = prep(test, size)
    net = Net(x.shape[1], w=w)
    opt, sched = _optimiser(net, len(x), epochs)
    t0 = time.time()
    for ep in range(epochs):
        net.train()
        for xb in _shuffled(x):
            if shift:  # random translation (reflect pad + crop) so the net does not read the border
                p = size // 8
                xp = F.pad(xb, (p, p, p, p), mode="reflect")
                dx, dy = np.random.randint(0, 2 * p + 1, 2)
                xb = xp[:, :, dy:dy + size, dx:dx + size]
            ts = transforms(xb)
            xin = torch.cat(ts)
            lab = torch.arange(len(ts)).repeat_interleave(len(xb))
            loss = F.cross_entropy(net(xin), lab)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if ep % 5 == 4 or ep == epochs - 1:
            s = score(net, xt)
            print(f"  ep {ep+1} loss {loss.item():.3f} auroc {roc_auc_score(y, s):.3f} {time.time()-t0:.0f}s", flush=True)
    return score(net, xt)


class GeoAE(nn.Module):
    """Scratch: the product's ConvAutoencoder plus a transform head on the pooled encoder output."""

    def __init__(self, c, size, extra=False, recon_w=1.0):
        super().__init__()
        from anomaly_ae.models import ConvAutoencoder
        self.ae = ConvAutoencoder(c, size, size, latent_dim=32)
        if extra:  # a 3x3 conv after every stride-2 conv
            new = []
            for m in self.ae.encoder:
                new.append(m)
                if isinstance(m, nn.ReLU):
                    co = new[-3].out_channels
                    new += [nn.Conv2d(co, co, 3, padding=1, bias=False), nn.BatchNorm2d(co), nn.ReLU()]
            self.ae.encoder = nn.Sequential(*new)
        self.head = nn.Linear(self.ae._top, 8)
        self.recon_w = recon_w

    def forward(self, x):  # transform logits
        return self.head(self.ae.encoder(self.ae._pad(x)).mean((2, 3)))

    def recon_loss(self, x):
        return F.mse_loss(self.ae(x), x)


def mse_scores(net, x, bs=256):
    net.eval()
    with torch.no_grad():
        return torch.cat([((net.ae(x[i:i + bs]) - x[i:i + bs]) ** 2).mean((1, 2, 3)) for i in range(0, len(x), bs)]).numpy()


def run_geo(fit, test, y, size, epochs, extra=False, recon_w=1.0, seed=0, held=None):
    torch.manual_seed(seed)
    x, xt = prep(fit, size), prep(test, size)
    net = GeoAE(x.shape[1], size, extra, recon_w)
    opt, sched = _optimiser(net, len(x), epochs)
    t0 = time.time()
    for ep in range(epochs):
        net.train()
        for xb in _shuffled(x):
            ts = transforms(xb)
            lab = torch.arange(len(ts)).repeat_interleave(len(xb))
            loss = F.cross_entropy(net(torch.cat(ts)), lab)
            if recon_w:
                loss = loss + recon_w * net.recon_loss(xb)
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        if ep % 5 == 4 or ep == epochs - 1:
            s = score(net, xt)
            print(f"  geo extra={extra} rw={recon_w} ep {ep+1} auroc {roc_auc_score(y, s):.3f} {time.time()-t0:.0f}s", flush=True)
    if held is not None:
        xh = prep(held, size)
        n_t, n_h = score(net, xt), score(net, xh)
        m_t, m_h = mse_scores(net, xt), mse_scores(net, xh)
        z = lambda a, ref: (a - ref.mean()) / (ref.std() + 1e-12)
        zl = lambda a, ref: (np.log(a) - np.log(ref).mean()) / (np.log(ref).std() + 1e-12)
        print(f"  RESULT nll {roc_auc_score(y, n_t):.3f} mse {roc_auc_score(y, m_t):.3f} "
              f"zsum {roc_auc_score(y, z(n_t, n_h) + z(m_t, m_h)):.3f} "
              f"zlogsum {roc_auc_score(y, zl(n_t, n_h) + zl(m_t, m_h)):.3f} "
              f"zmax {roc_auc_score(y, np.maximum(zl(n_t, n_h), zl(m_t, m_h))):.3f}", flush=True)


def main_geo():
    ds, tasks, size, epochs, variants = sys.argv[2], sys.argv[3].split(","), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    for name, src, opts, normal in _datasets(Path("../shared/data"), None)[ds]:
        if name not in tasks and tasks != ["all"]:
            continue
        fit, held, test, y, _ = _load_task(src, opts, normal)
        print(name, flush=True)
        for v in variants.split(","):
            extra, rw = v.split(":")
            run_geo(fit, test, y, size, epochs, extra == "1", float(rw), held=held)


if __name__ == "__main__" and sys.argv[1] == "geo":
    torch.set_num_threads(2)
    main_geo()
elif __name__ == "__main__":
    torch.set_num_threads(2)
    ds, tasks, size, epochs = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4])
    for name, src, opts, normal in _datasets(Path("../shared/data"), None)[ds]:
        if tasks != ["all"] and name not in tasks:
            continue
        fit, held, test, y, _ = _load_task(src, opts, normal)
        print(name, fit.shape, test.shape, y.mean(), flush=True)
        run(fit, test, y, size, epochs)

