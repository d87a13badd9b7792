"""The secret store: Secrets in the real etcd exactly as kube-apiserver writes and reads them.

Written: the object without TypeMeta and resourceVersion, protobuf in the ``k8s\\x00`` envelope, then the
first provider of the EncryptionConfiguration; read back through every provider whose prefix matches (an
unreadable value fails with the apiserver's ``unable to transform key`` error). The resourceVersion is etcd's
mod revision. A plaintext cache by key and mod revision stands in for the apiserver's DEK cache. KMS calls are
blocking gRPC, so they run on worker threads.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import copy
import json
import os
from pathlib import Path

import grpc

from . import codec
from .etcdgrpc import EtcdClient, prefix_end
from .objects import finish_secret, storable
from .transformers import LOCAL_TRANSFORMERS

SECRETS_PREFIX = "/registry/secrets/"
CACHE_MAX = 200_000


class TransformFailure(Exception):
    """A stored value the EncryptionConfiguration cannot read; str() is the apiserver's wording."""

    def __init__(self, key: str, err: Exception):
        super().__init__(f'unable to transform key "{key}": {err}')


class EtcdDown(Exception):
    """etcd did not answer (the API answers 500 with this message)."""


class Expired(Exception):
    """A list continued at a compacted revision (410 Expired)."""


class SecretStore:
    """etcd (async gRPC client), the EncryptionConfiguration and the plaintext cache of one API server."""

    def __init__(self, encryption, etcd_cfg: dict, read_keys: str | None = None):
        self.encryption = encryption
        self.etcd_cfg = etcd_cfg
        self.etcd: EtcdClient | None = None
        self.cache: collections.OrderedDict = collections.OrderedDict()
        self.read_keys = Path(read_keys) if read_keys else None
        self._load_read_keys()

    async def start(self) -> None:
        e = self.etcd_cfg
        self.etcd = EtcdClient.from_files(e["endpoint"], e["ca"], e["cert"], e["key"])

    async def close(self) -> None:
        if self.etcd:
            await self.etcd.close()

    # -- calls --------------------------------------------------------------------------------------------------

    def kms(self) -> bool:
        return bool(self.encryption.kms_providers)

    async def offload(self, fn, *args):
        """KMS transformers make blocking gRPC calls: run them off the event loop; local keys are quick."""
        if self.kms():
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    async def call(self, coro):
        """Await an etcd call; gRPC failures become Expired (compacted) or EtcdDown."""
        try:
            return await coro
        except grpc.RpcError as e:
            details = e.details() if hasattr(e, "details") else str(e)
            if e.code() == grpc.StatusCode.OUT_OF_RANGE or "compacted" in (details or ""):
                raise Expired(details) from None
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise EtcdDown("etcdserver: request timed out") from None
            raise EtcdDown(details or str(e)) from None

    # -- reading ------------------------------------------------------------------------------------------------

    def cache_put(self, key: str, rev: int, plain: bytes) -> None:
        self.cache[key] = (rev, plain)
        self.cache.move_to_end(key)
        while len(self.cache) > CACHE_MAX:
            self.cache.popitem(last=False)

    def _transform_reads(self, kvs) -> list[bytes]:
        """Plaintext of each KeyValue (may run on a worker thread: touches no shared state). Raises
        TransformFailure for the first unreadable value, as the apiserver fails a whole list on one bad value."""
        out = []
        for kv in kvs:
            try:
                out.append(self.encryption.read(kv.key.decode(), kv.value))
            except Exception as e:  # TransformError, or a crashed KMS client
                raise TransformFailure(kv.key.decode(), e) from None
        return out

    async def decoded(self, kvs) -> list[tuple]:
        """(kv, secret object with resourceVersion) for each KeyValue. Cached plaintext (by key and mod revision)
        stands in for the apiserver's DEK cache, so reads of what this server wrote need no KMS call."""
        plains: dict = {}
        misses = []
        for kv in kvs:
            hit = self.cache.get(kv.key.decode())
            if hit and hit[0] == kv.mod_revision:
                plains[kv.key] = hit[1]
            else:
                misses.append(kv)
        if misses:
            read = (await asyncio.to_thread(self._transform_reads, misses) if self.kms()
                    else self._transform_reads(misses))
            for kv, plain in zip(misses, read):
                self.cache_put(kv.key.decode(), kv.mod_revision, plain)
                plains[kv.key] = plain
        pairs = [(kv, plains[kv.key]) for kv in kvs]
        out = []
        for kv, plain in pairs:
            try:
                obj = codec.decode_secret(plain)
            except (ValueError, IndexError) as e:
                raise TransformFailure(kv.key.decode(), e) from None
            out.append((kv, finish_secret(obj, kv)))
        return out

    async def current(self, ns: str, name: str):
        """(key, kv, object, stored plaintext) of a Secret; (key, None, None, None) when there is none."""
        key = f"{SECRETS_PREFIX}{ns}/{name}"
        kv = await self.call(self.etcd.get(key.encode()))
        if kv is None:
            return key, None, None, None
        [(kv, obj)] = await self.decoded([kv])
        return key, kv, obj, codec.encode_secret(storable(obj)) if key not in self.cache else self.cache[key][1]

    async def namespaces(self) -> list[str]:
        """The namespaces that hold Secrets in etcd, one range call each (keys only, one key)."""
        found = []
        cursor, end = SECRETS_PREFIX.encode(), prefix_end(SECRETS_PREFIX.encode())
        while True:
            res = await self.call(self.etcd.range(cursor, end, limit=1, keys_only=True))
            if not res.kvs:
                return found
            ns = res.kvs[0].key.decode()[len(SECRETS_PREFIX):].split("/", 1)[0]
            found.append(ns)
            cursor = prefix_end(f"{SECRETS_PREFIX}{ns}/".encode())

    # -- writing ------------------------------------------------------------------------------------------------

    def encode(self, key: str, obj: dict) -> tuple[bytes, bytes]:
        """(plaintext, stored value) of a Secret object at ``key``, written by the first provider."""
        stored = copy.deepcopy(obj)
        stored.pop("kind", None)
        stored.pop("apiVersion", None)
        stored["metadata"].pop("resourceVersion", None)
        plain = codec.encode_secret(stored)
        return plain, self.encryption.write(key, plain)

    def is_stale(self, value: bytes) -> bool:
        """Whether an update must rewrite a value even when the object is unchanged: written by a provider that
        is not the first one, or (KMS v2) under a key id that is no longer current."""
        writer = self.encryption.writer
        if not writer.prefix:
            return value.startswith(b"k8s:enc:")
        if not value.startswith(writer.prefix):
            return True
        if writer.kind == "kms" and writer.prefix.startswith(b"k8s:enc:kms:v2:"):
            try:
                key_id = codec.decode_encrypted_object(value[len(writer.prefix):])["keyID"]
                return key_id != writer.client.key_id()
            except Exception:  # unreadable status: rewrite, as the apiserver would on doubt
                return True
        return False

    # -- local keys kept for reading ----------------------------------------------------------------------------

    def local_reader(self, kind: str):
        """The local-key transformer of ``kind`` the encryption config reads with, added after the first
        provider when missing (a cluster that moved from a local key to KMS keeps the old key for reading).
        An added key is kept in the read-keys file, so a resumed sandbox still reads what it wrote."""
        for p in self.encryption.providers:
            if p.kind == kind:
                return p
        t = LOCAL_TRANSFORMERS[kind]("key1")
        self.encryption.providers.insert(1, t)
        if self.read_keys:
            kept = self._read_keys_file()
            kept[kind] = base64.b64encode(t.key).decode()
            tmp = self.read_keys.with_name(self.read_keys.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(kept, f)
            os.replace(tmp, self.read_keys)
        return t

    def _read_keys_file(self) -> dict:
        try:
            return json.loads(self.read_keys.read_text())
        except FileNotFoundError:
            return {}

    def _load_read_keys(self) -> None:
        if not self.read_keys:
            return
        for kind, key in self._read_keys_file().items():  # in the order local_reader added them
            self.encryption.providers.insert(1, LOCAL_TRANSFORMERS[kind]("key1", base64.b64decode(key)))
