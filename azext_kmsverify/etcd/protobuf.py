# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""``etcdctl get -w protobuf`` output (a raw ``etcdserverpb.RangeResponse``) as a RangeResult. Pure.

The product reads protobuf only: it is exact for binary values and the cheapest to parse.
"""

from __future__ import annotations

from azext_kmsverify.etcd import protowire as pw
from azext_kmsverify.etcd.records import EtcdOutputError, KeyValue, RangeResult


def _check_consistency(result: RangeResult, fmt: str) -> RangeResult:
    # Count is the size of the whole range and More says the limit cut it short. A response
    # truncated after its kvs loses more/count (they are encoded last), which shows up here.
    n = len(result.kvs)
    if n > result.count:
        raise EtcdOutputError(f'etcdctl {fmt} output has {n} key(s) but count {result.count}: truncated?')
    if result.more and n >= result.count:
        raise EtcdOutputError(f'etcdctl {fmt} output says more keys follow but count is {result.count}')
    return result


def parse_protobuf(data: bytes) -> RangeResult:
    """Parse ``etcdctl get -w protobuf`` output (a raw ``etcdserverpb.RangeResponse``)."""
    if not isinstance(data, bytes):
        data = bytes(data)
    if not data:
        raise EtcdOutputError('etcdctl protobuf output is empty')
    try:
        result = _parse_range_response(data)
    except pw.ProtoWireError as exc:
        message = f'etcdctl protobuf output does not parse: {exc}'
    else:
        return _check_consistency(result, 'protobuf')
    raise EtcdOutputError(message)


def _parse_range_response(buf: bytes) -> RangeResult:
    iter_fields = pw.iter_fields
    to_int64 = pw.to_int64
    LEN, VARINT = pw.LEN, pw.VARINT
    revision = None
    kvs: list[KeyValue] = []
    more = False
    count = 0
    for number, wire_type, a, b in iter_fields(buf):
        if number == 2:
            if wire_type != LEN:
                raise pw.ProtoWireError(f'RangeResponse.kvs has wire type {wire_type}')
            kvs.append(_parse_key_value(buf, a, b))
        elif number == 1:
            if wire_type != LEN:
                raise pw.ProtoWireError(f'RangeResponse.header has wire type {wire_type}')
            revision = 0
            for hn, ht, ha, _hb in iter_fields(buf, a, b):
                if hn == 3:
                    if ht != VARINT:
                        raise pw.ProtoWireError(f'ResponseHeader.revision has wire type {ht}')
                    revision = to_int64(ha)
        elif number in (3, 4):
            if wire_type != VARINT:
                raise pw.ProtoWireError(f'RangeResponse field {number} has wire type {wire_type}')
            if number == 3:
                more = a != 0
            else:
                count = to_int64(a)
    if revision is None:
        raise pw.ProtoWireError('RangeResponse has no header')
    return RangeResult(revision, kvs, more, count)


def _parse_key_value(buf: bytes, start: int, stop: int) -> KeyValue:
    """The ``mvccpb.KeyValue`` at ``buf[start:stop]``."""
    to_int64 = pw.to_int64
    LEN, VARINT = pw.LEN, pw.VARINT
    key = value = b''
    create_rev = mod_rev = version = lease = 0
    for kn, kt, ka, kb in pw.iter_fields(buf, start, stop):
        if kn in (1, 5):
            if kt != LEN:
                raise pw.ProtoWireError(f'KeyValue field {kn} has wire type {kt}')
            if kn == 5:
                value = buf[ka:kb]
            else:
                key = buf[ka:kb]
        elif 2 <= kn <= 6:
            if kt != VARINT:
                raise pw.ProtoWireError(f'KeyValue field {kn} has wire type {kt}')
            if kn == 2:
                create_rev = to_int64(ka)
            elif kn == 3:
                mod_rev = to_int64(ka)
            elif kn == 4:
                version = to_int64(ka)
            else:
                lease = to_int64(ka)
    return KeyValue(key, value, create_rev, mod_rev, version, lease)
