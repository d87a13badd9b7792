# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Minimal bounds-checked protobuf wire-format reader (standard library only).

Shared by ``verdict.classify`` (KMS v2 ``EncryptedObject``) and ``etcd`` (``RangeResponse``). Input is
untrusted: every read is bounds-checked, the only exception raised is :class:`ProtoWireError`,
and error messages carry offsets and field numbers only, never payload bytes.

Length-delimited fields are reported as ``(start, stop)`` offsets into the caller's buffer so
that nested messages are walked in place without copying.
"""

from __future__ import annotations

from collections.abc import Iterator

VARINT = 0
I64 = 1
LEN = 2
I32 = 5

_MAX_FIELD_NUMBER = (1 << 29) - 1
_U64_LIMIT = 1 << 64


class ProtoWireError(ValueError):
    """Malformed protobuf wire data (message holds offsets only, never data)."""


def read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Decode an unsigned varint at ``buf[pos:end]``; return ``(value, next_pos)``."""
    result = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise ProtoWireError(f'truncated varint at offset {start}')
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift >= 70:
            raise ProtoWireError(f'varint longer than 10 bytes at offset {start}')
    if result >= _U64_LIMIT:
        raise ProtoWireError(f'varint overflows 64 bits at offset {start}')
    return result, pos


def to_int64(value: int) -> int:
    """Reinterpret a decoded uint64 as two's-complement int64 (proto ``int64`` fields)."""
    return value - _U64_LIMIT if value >= 1 << 63 else value


def iter_fields(buf: bytes, pos: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(field_number, wire_type, a, b)`` for each field of the message in ``buf[pos:end]``.

    - VARINT: ``a`` is the unsigned value, ``b`` is 0.
    - I64 / I32: ``a`` is the little-endian unsigned value, ``b`` is 0.
    - LEN: ``a, b`` are the start and stop offsets of the payload in ``buf``.

    Groups (wire types 3 and 4, deprecated) and invalid wire types raise ProtoWireError.
    """
    size = len(buf)
    if end is None:
        end = size
    if not 0 <= pos <= end <= size:
        raise ProtoWireError(f'message bounds [{pos}, {end}) outside a buffer of {size} bytes')
    while pos < end:
        start = pos
        tag = buf[pos]
        if tag < 0x80:  # one-byte tag: fields 1..15, the common case
            pos += 1
        else:
            tag, pos = read_varint(buf, pos, end)
        number = tag >> 3
        wire_type = tag & 7
        if number == 0 or number > _MAX_FIELD_NUMBER:
            raise ProtoWireError(f'invalid field number {number} at offset {start}')
        if wire_type == LEN:
            if pos < end and buf[pos] < 0x80:
                length = buf[pos]
                pos += 1
            else:
                length, pos = read_varint(buf, pos, end)
            stop = pos + length
            if stop > end:
                raise ProtoWireError(
                    f'field {number} at offset {start} declares {length} bytes but only {end - pos} remain'
                )
            payload_start = pos
            pos = stop
            yield number, LEN, payload_start, stop
        elif wire_type == VARINT:
            if pos < end and buf[pos] < 0x80:
                value = buf[pos]
                pos += 1
            else:
                value, pos = read_varint(buf, pos, end)
            yield number, VARINT, value, 0
        elif wire_type in (I64, I32):
            width = 8 if wire_type == I64 else 4
            if pos + width > end:
                raise ProtoWireError(f'truncated fixed{width * 8} field {number} at offset {start}')
            value = int.from_bytes(buf[pos:pos + width], 'little')
            pos += width
            yield number, wire_type, value, 0
        else:
            raise ProtoWireError(f'unsupported wire type {wire_type} for field {number} at offset {start}')
