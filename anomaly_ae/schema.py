"""Every Parquet table anomaly-ae writes: its schema, its version, validation and atomic writing.

Each file carries JSON under the footer key ``anomaly_ae`` with the table name and schema
version (plus table-specific metadata, such as a dataset's image shape and classes), so any
reader (pyarrow, DuckDB, pandas) can check what it holds without this package.

Pixels are stored row-major (height, width, channels) as uint8 bytes; masks as (height, width)
uint8 with 0 = normal and 255 = defect; error maps as little-endian float16 (height, width).
"""

from __future__ import annotations

import itertools
import json
import operator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from anomaly_ae.errors import SchemaError
from anomaly_ae.fsio import atomic_path

META_KEY = b"anomaly_ae"

_S, _I32, _I64, _F64 = pa.string(), pa.int32(), pa.int64(), pa.float64()

SCHEMAS: dict[str, tuple[int, pa.Schema]] = {
    "images": (1, pa.schema([
        ("image_id", _S), ("source", _S), ("label", _I32), ("class_name", _S), ("split", _S),
        ("orig_height", _I32), ("orig_width", _I32), ("orig_mode", _S), ("sha256", _S),
        ("pixels", pa.binary()), ("mask", pa.binary()),
    ])),
    "rejects": (1, pa.schema([("source", _S), ("reason", _S)])),
    "scores": (1, pa.schema([
        ("image_id", _S), ("path", _S), ("split", _S), ("label", _I32), ("class_name", _S),
        ("is_anomaly", pa.bool_()), ("score", _F64), ("p_value", _F64), ("flagged", pa.bool_()),
        ("rank", _I64), ("sha256", _S),
    ])),
    "examples": (1, pa.schema([
        ("image_id", _S), ("path", _S), ("kind", _S), ("class_name", _S), ("is_anomaly", pa.bool_()),
        ("score", _F64), ("p_value", _F64), ("flagged", pa.bool_()), ("pixels", pa.binary()),
        ("recon", pa.binary()), ("error_map", pa.binary()), ("mask", pa.binary()),
    ])),
    "error_maps": (1, pa.schema([
        ("image_id", _S), ("path", _S), ("score", _F64), ("error_map", pa.binary()),
    ])),
    # Decisions people make on a run's items (`anomaly_ae.reviews`): every decision a row, the last
    # one for an item counts; "clear" withdraws the earlier ones.
    "reviews": (1, pa.schema([
        ("item", _S), ("decision", _S), ("note", _S), ("time", _S), ("who", _S),
    ])),
    "ledger": (1, pa.schema([
        ("path", _S), ("sha256", _S), ("size", _I64), ("mtime_ns", _I64), ("run_id", _S),
        ("scored_at", _S), ("status", _S),
    ])),
}

NON_NULL = {
    "images": {"image_id", "source", "sha256", "pixels"},
    "scores": {"image_id", "path", "score", "p_value", "flagged", "rank"},
    "ledger": {"path", "sha256", "run_id", "status"},
    "reviews": {"item", "decision", "time"},
}


def schema(name: str) -> pa.Schema:
    """The Arrow schema of table `name`, with its name and version in the metadata."""
    version, sch = SCHEMAS[name]
    return sch.with_metadata({META_KEY: json.dumps({"table": name, "schema_version": version})})


def version(name: str) -> int:
    """The current schema version of table `name`."""
    return SCHEMAS[name][0]


def validate(table: pa.Table, name: str) -> pa.Table:
    """Check `table` against schema `name`; returns it cast to the exact schema.

    Raises:
        SchemaError: naming the missing, unexpected, mistyped or null-but-required columns.
    """
    expected = SCHEMAS[name][1]
    missing = [f.name for f in expected if f.name not in table.column_names]
    extra = [c for c in table.column_names if c not in expected.names]
    if missing or extra:
        raise SchemaError(f"Table '{name}' has wrong columns: missing {missing or 'none'}, "
                          f"unexpected {extra or 'none'}.")
    table = table.select(expected.names)
    wrong = [f"{f.name} ({table.schema.field(f.name).type}, expected {f.type})" for f in expected
             if not _castable(table.schema.field(f.name).type, f.type)]
    if wrong:
        raise SchemaError(f"Table '{name}' has columns of the wrong type: {', '.join(wrong)}.")
    table = table.cast(schema(name))
    nulls = [c for c in sorted(NON_NULL.get(name, ())) if table.column(c).null_count]
    if nulls:
        raise SchemaError(f"Table '{name}' has nulls in required columns: {', '.join(nulls)}.")
    return table


def _castable(src: pa.DataType, dst: pa.DataType) -> bool:
    if src == dst or pa.types.is_null(src):
        return True
    groups = (pa.types.is_integer, pa.types.is_floating, pa.types.is_string, pa.types.is_binary,
              pa.types.is_boolean)
    if pa.types.is_floating(dst) and pa.types.is_integer(src):
        return True
    return any(g(src) and g(dst) for g in groups) or (
        pa.types.is_large_string(src) and pa.types.is_string(dst))


def meta_bytes(name: str, extra: dict | None = None) -> dict:
    """Footer key-value metadata for table `name` plus table-specific facts."""
    payload = {"table": name, "schema_version": version(name), **(extra or {})}
    return {META_KEY: json.dumps(payload, sort_keys=True).encode()}


def fixed_binary(data: bytes, n: int) -> pa.BinaryArray:
    """`n` equal-length values stored back to back in `data`, as an Arrow binary array (no copy)."""
    size = len(data) // n if n else 0
    offsets = (np.arange(n + 1, dtype=np.int64) * size).astype(np.int32)
    return pa.BinaryArray.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data)])


OFFSETS_LIMIT = 2**31  # bytes one string or binary array's 32-bit offsets address


def column(values: list, type_: pa.DataType) -> pa.Array:
    """An Arrow array of Python values (None for null) built from its buffers, for the string,
    binary and int32 columns ingest writes: pyarrow's own conversion of a list imports pandas on
    its first use, a quarter of a second of every ingest. Other types, and values of another kind
    (or out of int32's range), go to pyarrow's conversion, whose errors they raise. The work per
    value is done by built-in functions (a column of 100,000 short names takes milliseconds)."""
    n = len(values)
    kind = str if type_ == pa.string() else bytes if type_ == pa.binary() else int if type_ == pa.int32() else None
    if kind is None or not set(map(type, values)) <= {kind, type(None)}:
        return pa.array(values, type_)
    nulls = values.count(None)
    bitmap, filled = None, values  # `filled`: the values with each null as an empty one, for the buffers
    if nulls:
        valid = np.fromiter(map(operator.is_not, values, itertools.repeat(None)), bool, n)
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little").tobytes())
        empty = 0 if kind is int else kind()
        filled = [empty if v is None else v for v in values]
    if kind is int:
        numbers = np.array(filled, np.int64)
        if n and (numbers.min() < -(2**31) or numbers.max() >= 2**31):
            return pa.array(values, type_)
        return pa.Array.from_buffers(type_, n, [bitmap, pa.py_buffer(numbers.astype(np.int32))], nulls)
    try:
        data = "".join(filled).encode() if kind is str else b"".join(filled)
    except UnicodeEncodeError:  # (a name that is not valid text)
        return pa.array(values, type_)
    ascii_or_bytes = kind is bytes or len(data) == sum(map(len, filled))
    sizes = map(len, filled if ascii_or_bytes else map(str.encode, filled))
    ends = np.fromiter(sizes, np.int64, n).cumsum()
    if n and ends[-1] >= OFFSETS_LIMIT:  # past what one array's 32-bit offsets address
        return pa.array(values, type_)
    offsets = np.concatenate([np.zeros(1, np.int32), ends.astype(np.int32)])
    return pa.Array.from_buffers(type_, n, [bitmap, pa.py_buffer(offsets), pa.py_buffer(data)], nulls)


def rejects_columns(rejects: list[tuple[str, str]]) -> dict:
    """The rejects table's columns from (source, reason) pairs."""
    return {"source": column([s for s, _ in rejects], _S), "reason": column([r for _, r in rejects], _S)}


def write_options(name: str) -> dict:
    """Parquet writer settings: zstd level 1 (as small as the default level here, and several
    times faster), dictionaries and statistics only for the short repeated columns; pixels and
    other per-image blobs are stored plain."""
    small = [f.name for f in SCHEMAS[name][1] if f.type != pa.binary()
             and f.name not in ("image_id", "sha256", "path", "source")]
    return {"compression": "zstd", "compression_level": 1, "use_dictionary": small, "write_statistics": small}


def write_table(path: Path | str, name: str, table: pa.Table | dict, extra: dict | None = None,
                row_group_rows: int | None = None) -> Path:
    """Validate and write a whole table atomically (zstd). Returns the path."""
    if isinstance(table, dict):
        table = pa.Table.from_pydict(table, schema=SCHEMAS[name][1])
    table = validate(table, name).replace_schema_metadata(meta_bytes(name, extra))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_rows or 65536, **write_options(name))
    return Path(path)


class TableWriter:
    """Write a table row group by row group to a path the caller makes atomic.

    Row groups are compressed and written on a background thread (pyarrow releases the GIL),
    one at a time, while the caller prepares the next. `set_metadata` may be called any time
    before `close`; it lands in the file footer.
    """

    def __init__(self, path: Path, name: str):
        from concurrent.futures import ThreadPoolExecutor

        self.name = name
        # Metadata goes in the footer at close (it may hold counts known only then).
        self._writer = pq.ParquetWriter(path, SCHEMAS[name][1], **write_options(name))
        self._meta: dict = {}
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="parquet-writer")
        self._pending = None
        self.rows = 0

    def write(self, columns: dict | pa.Table) -> None:
        """Append one row group from a table or a dict of equally long columns."""
        if isinstance(columns, dict):
            columns = pa.Table.from_pydict(columns, schema=SCHEMAS[self.name][1])
        table = validate(columns, self.name).replace_schema_metadata(None)
        self._wait()
        self._pending = self._thread.submit(self._writer.write_table, table, row_group_size=max(1, table.num_rows))
        self.rows += table.num_rows

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()  # re-raises a failed write here
            self._pending = None

    def set_metadata(self, extra: dict) -> None:
        """Footer metadata: the table's name and version plus `extra`."""
        self._meta = dict(extra)

    def close(self) -> None:
        """Finish the file (footer written)."""
        try:
            self._wait()
            self._writer.add_key_value_metadata(meta_bytes(self.name, self._meta))
        finally:
            self._thread.shutdown(wait=True)
            self._writer.close()


def read_parquet(path: Path | str, columns: list[str] | None = None) -> pa.Table:
    """A Parquet file anomaly-ae wrote (a run's scores or reviews, say), or SchemaError naming it
    when it is damaged (a missing file raises FileNotFoundError, for callers that allow none)."""
    try:
        return pq.read_table(path, columns=columns)
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowInvalid, KeyError) as exc:
        raise SchemaError(f"{path} is not a readable Parquet file: {exc}") from None


def first_rejects(path: Path | str, limit: int) -> list[tuple[str, str]]:
    """(file, reason) of the first `limit` rows of a rejects table ([] when there is none)."""
    if not Path(path).exists():
        return []
    table = read_parquet(path, columns=["source", "reason"]).slice(0, limit)
    return list(zip(table["source"].to_pylist(), table["reason"].to_pylist()))


def read_meta(path: Path | str, name: str | None = None) -> dict:
    """The ``anomaly_ae`` footer metadata of a Parquet file, checked against `name`.

    Raises:
        SchemaError: not a Parquet file of this package, another table, or a newer version.
    """
    try:
        md = pq.read_metadata(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as exc:
        raise SchemaError(f"{path} is not a readable Parquet file: {exc}") from None
    if META_KEY not in md:
        raise SchemaError(f"{path} was not written by anomaly-ae (no '{META_KEY.decode()}' metadata).")
    meta = json.loads(md[META_KEY])
    if name is not None:
        if meta.get("table") != name:
            raise SchemaError(f"{path} holds table '{meta.get('table')}', expected '{name}'.")
        if int(meta.get("schema_version", 0)) > version(name):
            raise SchemaError(
                f"{path} has {name} schema version {meta['schema_version']}, newer than this "
                f"anomaly-ae understands ({version(name)}). Upgrade anomaly-ae."
            )
    return meta
