"""Ingest (or scoring) against decode-only, this tree against an earlier revision, in alternating rounds.

On a shared 2-core machine one ingest of 100,000 PNGs swings by a second from run to run, more
than most changes to ingest gain. This checks out `BASE` (a git revision) in a temporary worktree
and runs, round after round: the decode-only pass (`bench.speed.decode_only_rate`), then
`anomaly-ae ingest` of the same folder from this tree and from `BASE` (the order alternating), and
prints each round and the medians: the ratio to decode-only of each, and new time / base time.
With ``--command score`` the command is `anomaly-ae score` of the folder (its defaults: ``--backend
auto``) with `bench.speed`'s small digit model, trained once by this tree. ``--folder`` and
``--model`` time another folder and model instead (a folder of large images scored by a model
trained on them, say: what a scoring run does where the model, not decoding, is the cost).

    python -m bench.ingest_ab BASE [--rounds 10] [--images 100000] [--command ingest|score]
    python -m bench.ingest_ab BASE --command score --folder ../shared/data/elpv/test --model M --rounds 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.speed import WORK, _model, decode_only_rate, mnist_pngs, user_env

HERE = Path(__file__).resolve().parent.parent
CLI = 'import sys; import flows.cli as c; sys.argv[0] = "anomaly-ae"; c.main()'


def ingest_seconds(tree: Path, folder: Path, out: Path, *more: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command's own process: user + system, not its decode
    workers) of `anomaly-ae ingest folder` with the package imported from `tree`; `more` = ("score",
    "--model", MODEL, ...) times that command instead. The CPU seconds swing far less than the wall
    time on a shared machine, and on 2 cores every second of them is taken from the decode workers."""
    shutil.rmtree(out, ignore_errors=True)
    env = user_env(PYTHONPATH=str(tree))
    command = [more[0], str(folder), *more[1:]] if more else ["ingest", str(folder)]
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CLI, *command, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tempfile.gettempdir())
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # (collected here: Popen must not wait for it again)
    if proc.returncode != 0:
        raise RuntimeError(f"{command[0]} from {tree} failed")
    return wall, usage.ru_utime + usage.ru_stime


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base", help="the git revision to compare with")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--command", choices=("ingest", "score"), default="ingest")
    p.add_argument("--folder", type=Path, help="images to time (default: --images generated MNIST PNGs)")
    p.add_argument("--model", type=Path, help="the model --command score scores with (default: a small digit model)")
    args = p.parse_args(argv)
    folder = args.folder.resolve() if args.folder else mnist_pngs(WORK / "mnist_pngs", args.images)
    model = args.model.resolve() if args.model else _model(WORK)
    more = ("score", "--model", str(model), "--no-report") if args.command == "score" else ()
    files = sorted(str(f) for f in folder.rglob("*.png"))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", str(base), args.base], check=True,
                       capture_output=True)
        try:
            times: dict[str, list[float]] = {"decode-only": [], "base": [], "new": []}
            cpu: dict[str, list[float]] = {"base": [], "new": []}
            for tree in (HERE, base):  # once untimed: each tree's bytecode cache written
                ingest_seconds(tree, folder, Path(tmp) / "ds", *more)
            for r in range(args.rounds):
                times["decode-only"].append(len(files) / decode_only_rate(files))
                trees = [("new", HERE), ("base", base)]
                for name, tree in trees if r % 2 == 0 else trees[::-1]:
                    wall, own = ingest_seconds(tree, folder, Path(tmp) / "ds", *more)
                    times[name].append(wall)
                    cpu[name].append(own)
                d, b, n = (times[k][-1] for k in ("decode-only", "base", "new"))
                print(f"round {r}: decode-only {d:.2f} s, base {b:.2f} s ({d / b:.2f}x, own CPU {cpu['base'][-1]:.2f} s), "
                      f"new {n:.2f} s ({d / n:.2f}x, own CPU {cpu['new'][-1]:.2f} s)", flush=True)
        finally:
            subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force", str(base)], capture_output=True)
    m = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.command}: median of {args.rounds} rounds, {len(files)} files: decode-only {m['decode-only']:.2f} s, "
          f"base ({args.base}) {m['base']:.2f} s = {m['decode-only'] / m['base']:.2f}x, "
          f"new {m['new']:.2f} s = {m['decode-only'] / m['new']:.2f}x; new / base time {m['new'] / m['base']:.2f}; "
          f"own CPU (median) base {statistics.median(cpu['base']):.2f} s, new {statistics.median(cpu['new']):.2f} s")


if __name__ == "__main__":  # decode workers import this module: the work must not run again there
    main()
