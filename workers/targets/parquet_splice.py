"""A Parquet file rewritten without some rows by splicing, not re-encoding: the bytes of every row group that
keeps all its rows are copied as they are, only the row groups that lost rows are encoded again, and a new
footer points at where each row group now starts.

Re-encoding is what a rewrite costs (decoding is cheap next to dictionary-building and compressing), so a
purge that touches one row group of a file's ten pays for one, where a whole-file rewrite pays for ten.

Parquet's footer is a Thrift compact-protocol ``FileMetaData``; its only absolute positions are the page
offsets of each column chunk, the chunk's and the row group's ``file_offset``. This module reads and writes
that encoding generically (every field kept as read, in order) and shifts exactly those positions. A file
is spliced only when that is known to be exact, and otherwise ``plan`` returns None and the caller re-encodes
the whole file as before:

- the footer re-encodes to the very bytes it was read from (nothing this codec does not understand);
- no encryption, no page index, no bloom filters, no column chunk in another file (all hold positions
  this module would have to shift elsewhere in the file);
- every row group's column chunks are one contiguous byte range;
- the writer's schema for the re-encoded row groups (pyarrow, the file's own options) is the file's schema
  byte for byte, so a row group written now reads like its neighbours written before.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

MAGIC = b"PAR1"
COPY_CHUNK = 8 << 20  # bytes per read when copying a row group: memory stays flat whatever its size
STOP, TRUE, FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(13)

# Thrift field ids (parquet.thrift) of what a splice reads or shifts.
FILE_SCHEMA, FILE_NUM_ROWS, FILE_ROW_GROUPS, FILE_ENCRYPTION, FILE_SIGNING_KEY = 2, 3, 4, 8, 9
GROUP_COLUMNS, GROUP_NUM_ROWS, GROUP_FILE_OFFSET, GROUP_ORDINAL = 1, 3, 5, 7
CHUNK_PATH, CHUNK_FILE_OFFSET, CHUNK_META = 1, 2, 3
CHUNK_UNSUPPORTED = frozenset({4, 5, 6, 7, 8, 9})  # page index offsets/lengths, encryption
META_SIZE, META_DATA_PAGE, META_INDEX_PAGE, META_DICTIONARY_PAGE, META_BLOOM = 7, 9, 10, 11, 14

Field = list[Any]  # [field id, compact type, value]


class NotSpliceable(Exception):
    """The file holds something a splice would not carry over exactly: re-encode it whole."""


# --- Thrift compact protocol ---------------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise NotSpliceable("footer ends early")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise NotSpliceable("footer ends early")
        value = self.data[self.pos:self.pos + n]
        self.pos += n
        return value

    def struct(self) -> list[Field]:
        fields: list[Field] = []
        last = 0
        while True:
            head = self.byte()
            if head == STOP:
                return fields
            kind, delta = head & 0x0F, head >> 4
            fid = last + delta if delta else self.zigzag()
            fields.append([fid, kind, kind == TRUE if kind in (TRUE, FALSE) else self.value(kind)])
            last = fid

    def value(self, kind: int) -> Any:
        if kind == BYTE:
            return self.byte()
        if kind in (I16, I32, I64):
            return self.zigzag()
        if kind == DOUBLE:
            return self.raw(8)
        if kind == BINARY:
            return self.raw(self.varint())
        if kind in (LIST, SET):
            head = self.byte()
            size, element = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            # A bool in a container is one byte of its own (not folded into a field header): kept as read.
            return element, [self.byte() if element in (TRUE, FALSE) else self.value(element) for _ in range(size)]
        if kind == MAP:
            size = self.varint()
            types = self.byte() if size else 0
            return types, [(self.value(types >> 4), self.value(types & 0x0F)) for _ in range(size)]
        if kind == STRUCT:
            return self.struct()
        raise NotSpliceable(f"unknown Thrift type {kind}")


def _varint(n: int, out: bytearray) -> None:
    while True:
        if n < 0x80:
            out.append(n)
            return
        out.append((n & 0x7F) | 0x80)
        n >>= 7


def _zigzag(n: int, out: bytearray) -> None:
    _varint((n << 1) ^ (n >> 63), out)


def _write_struct(fields: list[Field], out: bytearray) -> None:
    last = 0
    for fid, kind, value in fields:
        wire = (TRUE if value else FALSE) if kind in (TRUE, FALSE) else kind
        if 0 < fid - last <= 15:
            out.append((fid - last) << 4 | wire)
        else:
            out.append(wire)
            _zigzag(fid, out)
        if kind not in (TRUE, FALSE):
            _write_value(kind, value, out)
        last = fid
    out.append(STOP)


def _write_value(kind: int, value: Any, out: bytearray) -> None:
    if kind == BYTE:
        out.append(value)
    elif kind in (I16, I32, I64):
        _zigzag(value, out)
    elif kind == DOUBLE:
        out += value
    elif kind == BINARY:
        _varint(len(value), out)
        out += value
    elif kind in (LIST, SET):
        element, items = value
        if len(items) < 15:
            out.append(len(items) << 4 | element)
        else:
            out.append(0xF0 | element)
            _varint(len(items), out)
        for item in items:
            if element in (TRUE, FALSE):
                out.append(item)
            else:
                _write_value(element, item, out)
    elif kind == MAP:
        types, pairs = value
        _varint(len(pairs), out)
        if pairs:
            out.append(types)
        for key, item in pairs:
            _write_value(types >> 4, key, out)
            _write_value(types & 0x0F, item, out)
    elif kind == STRUCT:
        _write_struct(value, out)
    else:
        raise NotSpliceable(f"unknown Thrift type {kind}")


def encode(fields: list[Field]) -> bytes:
    out = bytearray()
    _write_struct(fields, out)
    return bytes(out)


def _get(fields: list[Field], fid: int) -> Field | None:
    return next((field for field in fields if field[0] == fid), None)


# --- footers and row groups ----------------------------------------------------------------------------------


def read_footer(source: Any) -> tuple[list[Field], int]:
    """The FileMetaData of an open Parquet file (seekable, binary) and the file's size."""
    source.seek(0, os.SEEK_END)
    size = source.tell()
    if size < 12:
        raise NotSpliceable("too short for Parquet")
    source.seek(size - 8)
    tail = source.read(8)
    if tail[4:] != MAGIC:  # "PARE": an encrypted footer
        raise NotSpliceable("not a plain Parquet footer")
    length = int.from_bytes(tail[:4], "little")
    if length + 12 > size:
        raise NotSpliceable("footer longer than the file")
    source.seek(size - 8 - length)
    data = source.read(length)
    footer = _Reader(data).struct()
    if encode(footer) != data:
        raise NotSpliceable("footer holds an encoding this codec does not reproduce")
    return footer, size


def _group_range(group: list[Field]) -> tuple[int, int]:
    """[start, end) of a row group's bytes: its column chunks, one after another."""
    ranges = []
    columns = _get(group, GROUP_COLUMNS)
    if columns is None or not columns[2][1]:
        raise NotSpliceable("a row group without columns")
    for chunk in columns[2][1]:
        if _get(chunk, CHUNK_PATH) is not None or any(f[0] in CHUNK_UNSUPPORTED for f in chunk):
            raise NotSpliceable("a column chunk with a page index, encryption or in another file")
        meta = _get(chunk, CHUNK_META)
        if meta is None:
            raise NotSpliceable("a column chunk without metadata")
        fields = {f[0]: f[2] for f in meta[2]}
        if META_BLOOM in fields or fields.get(META_INDEX_PAGE):
            raise NotSpliceable("a column chunk with a bloom filter or index page")
        start = fields.get(META_DICTIONARY_PAGE) or fields[META_DATA_PAGE]
        if fields.get(META_DICTIONARY_PAGE) and fields[META_DICTIONARY_PAGE] > fields[META_DATA_PAGE]:
            raise NotSpliceable("a dictionary page after the data pages")
        ranges.append((start, start + fields[META_SIZE]))
    ranges.sort()
    for (_, end), (start, _) in pairwise(ranges):
        if start != end:
            raise NotSpliceable("a row group's column chunks are not contiguous")
    return ranges[0][0], ranges[-1][1]


def _moved(group: list[Field], shift: int, ordinal: int) -> list[Field]:
    """A copy of a row group's metadata whose positions are ``shift`` bytes later, numbered ``ordinal``."""
    out: list[Field] = []
    for fid, kind, value in group:
        if fid == GROUP_COLUMNS:
            chunks = []
            for chunk in value[1]:
                moved = []
                for cid, ckind, cvalue in chunk:
                    if cid == CHUNK_FILE_OFFSET and cvalue > 0:
                        cvalue += shift
                    elif cid == CHUNK_META:
                        cvalue = [[mid, mkind, mvalue + shift if mid in (META_DATA_PAGE, META_DICTIONARY_PAGE)
                                   and mvalue else mvalue] for mid, mkind, mvalue in cvalue]
                    moved.append([cid, ckind, cvalue])
                chunks.append(moved)
            value = (value[0], chunks)
        elif fid == GROUP_FILE_OFFSET and value > 0:
            value += shift
        elif fid == GROUP_ORDINAL:
            value = ordinal
        out.append([fid, kind, value])
    return out


@dataclass
class Plan:
    """A file that can be spliced: its footer, row groups' byte ranges, and the options to encode with."""

    footer: list[Field]
    schema: Any  # the file's Arrow schema, which re-encoded row groups are written with
    groups: list[list[Field]]
    ranges: list[tuple[int, int]]
    options: dict[str, Any]


def plan(source: Any, schema: Any, options: dict[str, Any]) -> Plan | None:
    """How to splice an open Parquet file (None: re-encode it whole). ``schema``: its Arrow schema;
    ``options``: the ParquetWriter options that keep its format version and compression."""
    try:
        footer, _ = read_footer(source)
        if _get(footer, FILE_ENCRYPTION) or _get(footer, FILE_SIGNING_KEY):
            raise NotSpliceable("encrypted")
        row_groups = _get(footer, FILE_ROW_GROUPS)
        groups = row_groups[2][1] if row_groups else []
        ranges = [_group_range(group) for group in groups]
        if _schema_of(_encoded(schema, None, options)[0]) != _schema_of(footer):
            raise NotSpliceable("pyarrow would write another schema than the file's")
    except (NotSpliceable, KeyError, IndexError, TypeError):
        return None
    return Plan(footer, schema, groups, ranges, options)


def _schema_of(footer: list[Field]) -> bytes:
    field = _get(footer, FILE_SCHEMA)
    return encode([field]) if field else b""


def _encoded(schema: Any, table: Any, options: dict[str, Any]) -> tuple[list[Field], bytes]:
    """A Parquet file of ``table`` (None: no rows) in one row group, as (footer, bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, schema, **options) as writer:
        if table is not None:
            writer.write_table(table, row_group_size=table.num_rows)
    data = sink.getvalue().to_pybytes()
    footer, _ = read_footer(pa.BufferReader(data))
    return footer, data


def splice(source: Any, sink: Any, spliced: Plan, replaced: dict[int, Any], heartbeat: Callable[[], None]) -> None:
    """Write ``source``'s row groups to ``sink`` (a path, or a binary output stream): each index in
    ``replaced`` as its table (re-encoded; dropped when it has no rows), every other one as its bytes;
    ``heartbeat`` after each row group."""
    out = open(sink, "wb") if isinstance(sink, str | os.PathLike) else sink  # noqa: SIM115 - closed below
    try:
        out.write(MAGIC)
        position = len(MAGIC)
        groups: list[list[Field]] = []
        rows = 0
        for i, (group, (start, end)) in enumerate(zip(spliced.groups, spliced.ranges, strict=True)):
            if i in replaced:
                table = replaced[i]
                if table.num_rows == 0:
                    heartbeat()
                    continue
                footer, data = _encoded(spliced.schema, table, spliced.options)
                group = _get(footer, FILE_ROW_GROUPS)[2][1][0]  # type: ignore[index]
                start, end = _group_range(group)
                out.write(data[start:end])
            else:
                source.seek(start)
                left = end - start
                while left:
                    chunk = source.read(min(left, COPY_CHUNK))
                    if not chunk:
                        raise OSError("a Parquet file ended inside a row group")
                    out.write(chunk)
                    left -= len(chunk)
            groups.append(_moved(group, position - start, len(groups)))
            rows += _get(group, GROUP_NUM_ROWS)[2]  # type: ignore[index]
            position += end - start
            heartbeat()
        fields: list[Field] = []
        for fid, kind, value in spliced.footer:
            if fid == FILE_NUM_ROWS:
                value = rows
            elif fid == FILE_ROW_GROUPS:
                value = (value[0], groups)
            fields.append([fid, kind, value])
        footer_bytes = encode(fields)
        out.write(footer_bytes)
        out.write(len(footer_bytes).to_bytes(4, "little"))
        out.write(MAGIC)
    finally:
        if out is not sink:
            out.close()
