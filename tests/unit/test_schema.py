"""Schemas: validation names the columns; files carry name and version; writes are atomic."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from anomaly_ae.errors import SchemaError
from anomaly_ae.schema import META_KEY, read_meta, validate, write_table


def test_missing_and_extra_columns_are_named():
    with pytest.raises(SchemaError, match=r"missing \['reason'\], unexpected \['why'\]"):
        validate(pa.table({"source": ["a"], "why": ["b"]}), "rejects")


def test_wrong_types_are_named():
    with pytest.raises(SchemaError, match="reason"):
        validate(pa.table({"source": ["a"], "reason": [1.5]}), "rejects")


def test_required_columns_cannot_be_null():
    cols = {c: [None] for c in ("path", "sha256", "size", "mtime_ns", "run_id", "scored_at", "status")}
    with pytest.raises(SchemaError, match="path"):
        validate(pa.table(cols), "ledger")


def test_write_read_round_trip(tmp_path):
    path = write_table(tmp_path / "r.parquet", "rejects", {"source": ["a.png"], "reason": ["empty"]}, extra={"n": 1})
    meta = read_meta(path, "rejects")
    assert meta["table"] == "rejects" and meta["schema_version"] == 1 and meta["n"] == 1
    assert pq.read_table(path).to_pylist() == [{"source": "a.png", "reason": "empty"}]
    assert [p.name for p in tmp_path.iterdir()] == ["r.parquet"]  # no temporary left behind


def test_wrong_table_and_newer_version_are_refused(tmp_path):
    path = write_table(tmp_path / "r.parquet", "rejects", {"source": [], "reason": []})
    with pytest.raises(SchemaError, match="holds table 'rejects'"):
        read_meta(path, "scores")
    table = pq.read_table(path).replace_schema_metadata({META_KEY: json.dumps({"table": "rejects", "schema_version": 99})})
    pq.write_table(table, tmp_path / "new.parquet")
    with pytest.raises(SchemaError, match="newer than this"):
        read_meta(tmp_path / "new.parquet", "rejects")
    (tmp_path / "junk.parquet").write_bytes(b"junk")
    with pytest.raises(SchemaError, match="not a readable Parquet"):
        read_meta(tmp_path / "junk.parquet")


@pytest.mark.parametrize("values, type_", [
    (["a", "bé", None, ""], pa.string()),
    ([b"x", None, b"yz", b""], pa.binary()),
    ([1, None, -3, 2**31 - 1, -(2**31)], pa.int32()),
    ([], pa.string()),
    ([None] * 9, pa.int32()),
    (["plain", "names", ""], pa.string()),
    (["bé", "ü/ß.png", "x"], pa.string()),
    ([b"x", b"", b"yz"], pa.binary()),
    ([0, 7, -1], pa.int32()),
    ([None, "a"], pa.string()),
])
def test_columns_built_from_buffers_equal_pyarrows_conversion(values, type_):
    from anomaly_ae.schema import column

    built = column(values, type_)
    built.validate(full=True)
    assert built.type == type_ and built.equals(pa.array(values, type_))
    assert built.null_count == sum(v is None for v in values)


def test_a_column_past_its_offsets_goes_to_pyarrow_with_its_nulls(monkeypatch):
    """Values too long for one array's offsets are converted by pyarrow, nulls kept as nulls."""
    from anomaly_ae import schema

    monkeypatch.setattr(schema, "OFFSETS_LIMIT", 4)
    for values, type_ in [([b"abc", None, b"xy"], pa.binary()), (["abc", None, "xy"], pa.string())]:
        built = schema.column(values, type_)
        assert built.equals(pa.array(values, type_)) and built.null_count == 1


@pytest.mark.parametrize("values, type_", [(["\udcff"], pa.string()), ([2**31], pa.int32())])
def test_a_column_refuses_what_pyarrow_refuses(values, type_):
    from anomaly_ae.schema import column

    with pytest.raises((ValueError, pa.ArrowInvalid, pa.ArrowTypeError, OverflowError)):
        column(values, type_)


def test_ingest_leaves_pandas_unimported(tmp_path):
    """pyarrow imports pandas the first time it converts a list: ingest builds its columns itself."""
    import subprocess
    import sys

    from PIL import Image

    for i in range(5):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    code = ("import sys; from anomaly_ae import steps; "
            f"steps.ingest({str(tmp_path)!r}, {str(tmp_path / 'ds')!r}, workers=1); "
            "print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-2000:]
