"""AUROC and fit time on the generated textured surfaces of tests/unit/test_draem.py.

    python -m bench.surfaces ae:10 draem:15 draem:20:lr=0.004 draem:20:seed=1
    python -m bench.surfaces --side 128 draem:15 ae:15 ae:15:tile=32
    python -m bench.surfaces --side 256 --train 96 --test 60 --seed 1 auto:15 ae:15

Each spec is kind:epochs[:key=value...] (keys of TrainConfig, e.g. lr, batch_size, seed, or of
ModelConfig, e.g. tile, latent_dim); batch size 32 and 20 steps an epoch unless set. Training:
160 clean surfaces (--train), 64x64 unless --side says otherwise; test: 100 clean and 100 with a
small scratch or pit (--test; drawn with other seeds: --seed S draws the training surfaces with
seed S and the test ones with 10S+1 and 10S+2). Used to choose the discriminative kind's learning rate
(anomaly_ae.config.KIND_LR), and to see how each kind fares as the same defects become a smaller
share of a larger image.
"""

from __future__ import annotations

import time


def main(argv=None) -> None:
    import argparse
    import dataclasses

    from anomaly_ae.config import ModelConfig
    from anomaly_ae.detector import AutoencoderDetector
    from tests.unit.test_draem import SIDE, _auroc, _fast, surfaces

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", type=int, default=SIDE, help="pixels a side of every surface (default %(default)s)")
    p.add_argument("--train", type=int, default=160, help="training surfaces (default %(default)s)")
    p.add_argument("--test", type=int, default=100, help="clean and defective test surfaces, each (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="which surfaces (default %(default)s)")
    p.add_argument("specs", nargs="+", metavar="kind:epochs[:key=value...]")
    args = p.parse_args(argv)
    s = args.seed
    train, ok, bad = (surfaces(args.train, s, side=args.side), surfaces(args.test, 10 * s + 1, side=args.side),
                      surfaces(args.test, 10 * s + 2, defect=True, side=args.side))
    model_keys = {f.name for f in dataclasses.fields(ModelConfig)}
    for spec in args.specs:
        kind, epochs, *rest = spec.split(":")
        options = {k: float(v) if "." in v else int(v) for k, v in (x.split("=", 1) for x in rest)}
        cfg = _fast(kind, epochs=int(epochs), **{k: v for k, v in options.items() if k not in model_keys})
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, **{k: v for k, v in options.items() if k in model_keys}))
        t0 = time.perf_counter()
        det = AutoencoderDetector(cfg).fit(train)
        fit = time.perf_counter() - t0
        auroc = _auroc(det, ok, bad)
        print(f"side {args.side:4d}  seed {s}  {spec:32s} AUROC {auroc:.3f}  fit {fit:.1f} s  "
              f"steps {det.history_['steps']}",
              flush=True)


if __name__ == "__main__":
    main()
