"""Minimal async etcd v3 KV client over gRPC, for the API server emulator.

kube-apiserver talks to etcd over gRPC; doing the same (instead of spawning etcdctl per request) keeps secret
create/get in the low milliseconds. Only the four KV calls the emulator needs are implemented, with a
hand-written protobuf codec (field numbers from etcd's ``rpc.proto``/``kv.proto``) so no generated code is
needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from .codec import field_bytes, field_varint, iter_fields, varint

# --- protobuf wire helpers (the sandbox codec's primitives; proto3 omits zero and empty fields) -----------


def _f_varint(num: int, value: int) -> bytes:
    return field_varint(num, value) if value else b""


def _f_bytes(num: int, value: bytes, always: bool = False) -> bytes:
    return field_bytes(num, value) if value or always else b""


# --- messages ---------------------------------------------------------------------------------------------


@dataclass
class KeyValue:
    key: bytes = b""
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    value: bytes = b""
    lease: int = 0


@dataclass
class RangeResult:
    kvs: list
    more: bool
    count: int
    revision: int


def _parse_header_revision(buf: bytes) -> int:
    for num, _, val in iter_fields(buf):
        if num == 3:
            return val
    return 0


def _parse_kv(buf: bytes) -> KeyValue:
    kv = KeyValue()
    for num, _, val in iter_fields(buf):
        if num == 1:
            kv.key = val
        elif num == 2:
            kv.create_revision = val
        elif num == 3:
            kv.mod_revision = val
        elif num == 4:
            kv.version = val
        elif num == 5:
            kv.value = val
        elif num == 6:
            kv.lease = val
    return kv


def _parse_range(buf: bytes) -> RangeResult:
    res = RangeResult([], False, 0, 0)
    for num, _, val in iter_fields(buf):
        if num == 1:
            res.revision = _parse_header_revision(val)
        elif num == 2:
            res.kvs.append(_parse_kv(val))
        elif num == 3:
            res.more = bool(val)
        elif num == 4:
            res.count = val
    return res


def _range_req(key: bytes, range_end: bytes = b"", limit: int = 0, keys_only: bool = False,
               count_only: bool = False, revision: int = 0) -> bytes:
    return (_f_bytes(1, key, always=True) + _f_bytes(2, range_end) + _f_varint(3, limit) + _f_varint(4, revision)
            + _f_varint(8, int(keys_only)) + _f_varint(9, int(count_only)))


def _put_req(key: bytes, value: bytes) -> bytes:
    return _f_bytes(1, key, always=True) + _f_bytes(2, value, always=True)


def _delete_req(key: bytes, prev_kv: bool = True) -> bytes:
    return _f_bytes(1, key, always=True) + _f_varint(3, int(prev_kv))


# Compare.target: VERSION=0 CREATE=1 MOD=2; Compare.result: EQUAL=0
def _compare(key: bytes, target: int, value: int) -> bytes:
    field = {0: 4, 1: 5, 2: 6}[target]
    # proto3 oneof: the value must be present even when zero, so encode it explicitly.
    return _f_varint(2, target) + _f_bytes(3, key, always=True) + varint(field << 3) + varint(value)


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with prefix (etcd's ``GetPrefixRangeEnd``)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[:i + 1])
    return b"\x00"


def _ident(b: bytes) -> bytes:
    return b


class EtcdClient:
    """Async etcd KV client with TLS client-certificate auth (as kube-apiserver's ``--etcd-certfile``)."""

    def __init__(self, endpoint: str, ca: bytes, cert: bytes, key: bytes):
        target = endpoint.split("://", 1)[-1]
        creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        # Short reconnect backoff: a restarted etcd (fault injection) is reached again within a second.
        self._channel = grpc.aio.secure_channel(target, creds, options=[
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000), ("grpc.max_receive_message_length", -1)])
        call = self._channel.unary_unary
        self._range = call("/etcdserverpb.KV/Range", request_serializer=_ident, response_deserializer=_ident)
        self._put = call("/etcdserverpb.KV/Put", request_serializer=_ident, response_deserializer=_ident)
        self._delete = call("/etcdserverpb.KV/DeleteRange", request_serializer=_ident,
                            response_deserializer=_ident)
        self._txn = call("/etcdserverpb.KV/Txn", request_serializer=_ident, response_deserializer=_ident)
        self.timeout = 5.0

    @classmethod
    def from_files(cls, endpoint: str, ca: str, cert: str, key: str) -> EtcdClient:
        def rd(p):
            with open(p, "rb") as f:
                return f.read()
        return cls(endpoint, rd(ca), rd(cert), rd(key))

    async def close(self) -> None:
        await self._channel.close()

    async def get(self, key: bytes) -> KeyValue | None:
        res = _parse_range(await self._range(_range_req(key), timeout=self.timeout))
        return res.kvs[0] if res.kvs else None

    async def range(self, start: bytes, end: bytes, limit: int = 0, keys_only: bool = False,
                    revision: int = 0) -> RangeResult:
        req = _range_req(start, end, limit, keys_only, revision=revision)
        return _parse_range(await self._range(req, timeout=self.timeout))

    async def count(self, start: bytes, end: bytes) -> int:
        return _parse_range(await self._range(_range_req(start, end, count_only=True), timeout=self.timeout)).count

    async def put(self, key: bytes, value: bytes) -> int:
        resp = await self._put(_put_req(key, value), timeout=self.timeout)
        for num, _, val in iter_fields(resp):
            if num == 1:
                return _parse_header_revision(val)
        return 0

    async def create(self, key: bytes, value: bytes) -> int | None:
        """Put only if the key does not exist (as the apiserver's GuaranteedUpdate/Create). None if it exists."""
        txn = (_f_bytes(1, _compare(key, 1, 0)) + _f_bytes(2, _f_bytes(2, _put_req(key, value))))
        return await self._txn_put(txn)

    async def update(self, key: bytes, value: bytes, mod_revision: int) -> int | None:
        """Put only if the key is still at mod_revision (optimistic concurrency). None on conflict."""
        txn = (_f_bytes(1, _compare(key, 2, mod_revision)) + _f_bytes(2, _f_bytes(2, _put_req(key, value))))
        return await self._txn_put(txn)

    async def _txn_put(self, txn: bytes) -> int | None:
        resp = await self._txn(txn, timeout=self.timeout)
        revision, succeeded = 0, False
        for num, _, val in iter_fields(resp):
            if num == 1:
                revision = _parse_header_revision(val)
            elif num == 2:
                succeeded = bool(val)
        return revision if succeeded else None

    async def put_many(self, items: list[tuple[bytes, bytes]]) -> int:
        """Unconditional puts in one transaction (etcd allows 128 operations per txn by default)."""
        txn = b"".join(_f_bytes(2, _f_bytes(2, _put_req(k, v))) for k, v in items)
        resp = await self._txn(txn, timeout=self.timeout)
        for num, _, val in iter_fields(resp):
            if num == 1:
                return _parse_header_revision(val)
        return 0

    async def delete(self, key: bytes) -> KeyValue | None:
        """Delete one key; the previous KeyValue, or None if it did not exist."""
        resp = await self._delete(_delete_req(key), timeout=self.timeout)
        for num, _, val in iter_fields(resp):
            if num == 3:
                return _parse_kv(val)
        return None
