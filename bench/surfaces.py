"""AUROC and fit time on the generated textured surfaces of tests/unit/test_draem.py.

    python -m bench.surfaces ae:10 draem:15 draem:20:lr=0.004 draem:20:seed=1

Each spec is kind:epochs[:train_key=value...] (train keys of TrainConfig, e.g. lr, batch_size,
seed); batch size 32 and 20 steps an epoch unless set. Training: 160 clean 64x64 surfaces; test:
100 clean and 100 with a small scratch or pit (other seeds). Used to choose the discriminative
kind's learning rate (anomaly_ae.config.KIND_LR).
"""

from __future__ import annotations

import sys
import time


def main(argv=None) -> None:
    from anomaly_ae.detector import AutoencoderDetector
    from tests.unit.test_draem import _auroc, _fast, surfaces

    train, ok, bad = surfaces(160, 0), surfaces(100, 1), surfaces(100, 2, defect=True)
    for spec in argv if argv is not None else sys.argv[1:]:
        kind, epochs, *rest = spec.split(":")
        options = {k: float(v) if "." in v else int(v) for k, v in (x.split("=", 1) for x in rest)}
        t0 = time.perf_counter()
        det = AutoencoderDetector(_fast(kind, epochs=int(epochs), **options)).fit(train)
        fit = time.perf_counter() - t0
        auroc = _auroc(det, ok, bad)
        print(f"{spec:32s} AUROC {auroc:.3f}  fit {fit:.1f} s  steps {det.history_['steps']}", flush=True)


if __name__ == "__main__":
    main()
