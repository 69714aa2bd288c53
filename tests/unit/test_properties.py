"""Property-based tests: thresholds and p-values, schema round trips, and a bounded fuzz of decoding."""

from __future__ import annotations

import io
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from anomaly_ae.imaging import Preprocess
from anomaly_ae.parallel import decode_one
from anomaly_ae.schema import write_table
from anomaly_ae.threshold import conformal_threshold, p_values

scores = st.lists(st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False), min_size=1, max_size=300)
fprs = st.floats(0.001, 0.999)


@given(scores, fprs)
def test_threshold_is_a_calibration_score_and_bounds_the_calibration_fpr(cal, a):
    t = conformal_threshold(cal, a)
    assert t["threshold"] in cal
    n = len(cal)
    assert t["rank"] == min(n, math.ceil((n + 1) * (1 - a) - 1e-9))
    exceed = sum(s > t["threshold"] for s in cal)
    assert exceed <= n - t["rank"]
    assert t["guaranteed_fpr"] <= a + 1e-12 or t["limited"]


@given(scores, fprs, fprs)
def test_threshold_decreases_as_the_target_rises(cal, a, b):
    lo, hi = sorted((a, b))
    assert conformal_threshold(cal, hi)["threshold"] <= conformal_threshold(cal, lo)["threshold"]


@given(scores, st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=50))
def test_p_values_are_valid_and_monotone(cal, new):
    p = p_values(new, cal)
    n = len(cal)
    assert np.all(p >= 1 / (n + 1) - 1e-12) and np.all(p <= 1 + 1e-12)
    order = np.argsort(new, kind="stable")
    assert np.all(np.diff(p[order]) <= 1e-12)  # higher score -> smaller (or equal) p-value


@given(scores, fprs)
def test_flag_iff_p_value_at_most_the_guaranteed_rate(cal, a):
    t = conformal_threshold(cal, a)
    probe = np.array(sorted(set(cal)) + [max(cal) + 1.0, min(cal) - 1.0])
    flagged = probe > t["threshold"]
    assert np.array_equal(flagged, p_values(probe, cal) <= t["guaranteed_fpr"] + 1e-12)


text = st.text(max_size=40)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(text, text), max_size=30))
def test_rejects_table_round_trip(tmp_path, rows):
    path = write_table(tmp_path / "r.parquet", "rejects",
                       {"source": [s for s, _ in rows], "reason": [r for _, r in rows]})
    back = pq.read_table(path).to_pylist()
    assert [(r["source"], r["reason"]) for r in back] == rows


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=64), st.one_of(st.none(), st.sampled_from(["a", "é", ""])),
                          st.one_of(st.none(), st.integers(-2**31, 2**31 - 1))), max_size=20))
def test_images_table_round_trip(tmp_path, rows):
    cols = {"image_id": [f"{k:016x}" for k in range(len(rows))], "source": [f"s{k}" for k in range(len(rows))],
            "label": [r[2] for r in rows], "class_name": [r[1] for r in rows], "split": [None] * len(rows),
            "orig_height": [1] * len(rows), "orig_width": [1] * len(rows), "orig_mode": ["L"] * len(rows),
            "sha256": ["0" * 64] * len(rows), "pixels": [r[0] for r in rows], "mask": [None] * len(rows)}
    back = pq.read_table(write_table(tmp_path / "i.parquet", "images", cols)).to_pydict()
    assert back == cols


def _seed_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)
    out = []
    for fmt, kw in (("PNG", {}), ("JPEG", {"quality": 80}), ("GIF", {}), ("TIFF", {}), ("BMP", {}),
                    ("WEBP", {"lossless": True})):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, fmt, **kw)
        out.append(buf.getvalue())
    return out


SEEDS = _seed_images()


@pytest.mark.slow
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(range(len(SEEDS))), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
       st.integers(0, 10**6), st.booleans())
def test_fuzzed_images_never_crash_the_decoder(tmp_path, seed, flips, cut, truncate):
    """Mutated files (flipped bytes, truncation) are decoded or rejected with a reason, never raise."""
    data = bytearray(SEEDS[seed])
    for pos, value in flips:
        data[pos % len(data)] = value
    if truncate:
        data = data[: cut % (len(data) + 1)]
    path = tmp_path / "fuzz.img"
    path.write_bytes(bytes(data))
    d = decode_one(path, None, Preprocess(12, 9, "RGB"), max_pixels=10**6)
    assert (d.pixels is None) == (d.reason is not None)
    if d.pixels is not None:
        assert len(d.pixels) == 12 * 9 * 3
