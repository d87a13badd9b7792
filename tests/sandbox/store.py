"""The secret store: Secrets in the real etcd exactly as kube-apiserver writes and reads them.

Written: the object without TypeMeta and resourceVersion, protobuf in the ``k8s\\x00`` envelope, then the
first provider of the EncryptionConfiguration; read back through every provider whose prefix matches (an
unreadable value fails a list with the apiserver's ``unable to transform key "<key>": <err>`` and a get or an
update with the bare error). The resourceVersion is etcd's mod revision. A plaintext cache by key and mod
revision stands in for the apiserver's DEK cache (it also keeps how the value was read: stale or not, its KMS v2
key id). KMS calls are blocking gRPC, so they run on worker threads.

Updates are etcd3 ``store.GuaranteedUpdate`` (staging/src/k8s.io/apiserver/pkg/storage/etcd3/store.go): the
update function runs on the current object; when the new encoding equals the stored (decrypted) encoding and
the read was not stale, nothing is written (same resourceVersion, same etcd ModRevision); otherwise the value
is written by the first provider in a transaction conditioned on the ModRevision read, retried on a conflict.
Metrics (:mod:`.emulator.metrics`) are recorded where kube-apiserver records them.
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
from .emulator.metrics import Metrics
from .objects import finish_secret, order_meta, storable
from .transformers import LOCAL_TRANSFORMERS, ReadInfo, TransformError, split_v1

SECRETS_PREFIX = "/registry/secrets/"
CACHE_MAX = 200_000


class TransformFailure(Exception):
    """A stored value the EncryptionConfiguration cannot read. ``str()`` is GetList's wording
    (``unable to transform key "<key>": <err>``); ``bare`` is what Get and GuaranteedUpdate report
    (``storage.NewInternalError(err.Error())``)."""

    def __init__(self, key: str, err: Exception):
        super().__init__(f'unable to transform key "{key}": {err}')
        self.key = key
        self.bare = str(err)


class NotFound(Exception):
    """The key is not in etcd (any more)."""


class Rejected(Exception):
    """The update function refused the update; ``response`` is what the API answers (409, 422, ...)."""

    def __init__(self, response):
        super().__init__("update rejected")
        self.response = response


class EtcdDown(Exception):
    """etcd did not answer (the API answers 500 with this message)."""


class Expired(Exception):
    """A list continued at a compacted revision (410 Expired)."""


class SecretStore:
    """etcd (async gRPC client), the EncryptionConfiguration, the plaintext cache and the metrics of one API
    server, and the write faults the control port sets (``throttle``)."""

    def __init__(self, encryption, etcd_cfg: dict, read_keys: str | None = None):
        self.encryption = encryption
        self.etcd_cfg = etcd_cfg
        self.etcd: EtcdClient | None = None
        self.cache: collections.OrderedDict = collections.OrderedDict()
        self.read_keys = Path(read_keys) if read_keys else None
        self.metrics = Metrics()
        self.throttle: dict | None = None  # ctl writes.throttle: {"share", "retry_after", "exempt_masters"}
        self.throttle_seen = 0
        self.throttled = 0
        self.writer_task: asyncio.Task | None = None  # ctl writes.writer (seed.py)
        self.writer_stats: dict = {}
        self._load_read_keys()

    async def start(self) -> None:
        e = self.etcd_cfg
        self.etcd = EtcdClient.from_files(e["endpoint"], e["ca"], e["cert"], e["key"])

    async def close(self) -> None:
        if self.writer_task:
            self.writer_task.cancel()
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

    # -- metrics ------------------------------------------------------------------------------------------------

    def record_read(self, info: ReadInfo) -> None:
        """A TransformFromStorage that succeeded: the transformation counter of each nested prefix transformer
        and, for KMS v2, RecordKeyID(from_storage) with the value's key id."""
        for label in info.labels:
            self.metrics.transformation("from_storage", label)
        if info.key_id:
            self.metrics.key_id("from_storage", info.provider, info.key_id)

    def written_info(self, value: bytes) -> ReadInfo:
        """How a value the first provider just wrote reads back: not stale, its KMS v2 key id."""
        writer = self.encryption.writer
        key_id = None
        if writer.kind == "kms" and writer.prefix.startswith(b"k8s:enc:kms:v2:"):
            key_id = codec.decode_encrypted_object(value[len(writer.prefix):])["keyID"]
        return ReadInfo(False, key_id, writer.name if writer.kind == "kms" else "", writer.labels)

    def record_write(self, value: bytes) -> ReadInfo:
        """A TransformToStorage that succeeded: the counters, KMS v2 RecordKeyID(to_storage), the KMS v1 DEK
        entering the DEK cache. Returns how the value reads back."""
        writer = self.encryption.writer
        info = self.written_info(value)
        for label in writer.labels if writer.kind in LOCAL_TRANSFORMERS else (writer.prefix.decode(),):
            self.metrics.transformation("to_storage", label)
        if info.key_id:
            self.metrics.key_id("to_storage", writer.name, info.key_id)
        elif writer.kind == "kms":
            self.metrics.dek_cached(split_v1(value[len(writer.prefix):])[0])
        return info

    def record_watch_decode(self, info: ReadInfo) -> None:
        """The watch cache decodes every write it sees in etcd's watch (etcd3 watcher.go): one more from_storage."""
        self.record_read(info)

    # -- reading ------------------------------------------------------------------------------------------------

    def cache_put(self, key: str, rev: int, plain: bytes, info: ReadInfo) -> None:
        self.cache[key] = (rev, plain, info)
        self.cache.move_to_end(key)
        while len(self.cache) > CACHE_MAX:
            self.cache.popitem(last=False)

    def _transform_reads(self, kvs) -> list[tuple[bytes, ReadInfo]]:
        """(plaintext, ReadInfo) of each KeyValue (may run on a worker thread: touches only the metrics, which
        lock). Raises TransformFailure for the first unreadable value, as the apiserver fails a whole list on one
        bad value."""
        out = []
        for kv in kvs:
            try:
                plain, info = self.encryption.read_info(kv.key.decode(), kv.value)
            except Exception as e:  # TransformError, or a crashed KMS client
                code = getattr(e, "code", None) or "unknown-non-grpc"
                self.metrics.transformation("from_storage", getattr(e, "label", None) or "unknown", code)
                raise TransformFailure(kv.key.decode(), e) from None
            if info.provider:  # a KMS value not in the cache: a DEK cache miss and a KMS call
                self.metrics.cache_miss()
                if kv.value.startswith(b"k8s:enc:kms:v1:"):
                    self.metrics.dek_cached(split_v1(kv.value.split(b":", 5)[5])[0])
            out.append((plain, info))
        return out

    async def decoded(self, kvs, record: bool = True) -> list[tuple]:
        """(kv, secret object with resourceVersion) for each KeyValue. Cached plaintext (by key and mod revision)
        stands in for the apiserver's DEK cache, so reads of what this server wrote need no KMS call; each value
        counts as a TransformFromStorage all the same (``record``), as in kube-apiserver."""
        return [(kv, obj) for kv, obj, _, _ in await self._decode(kvs, record)]

    async def _decode(self, kvs, record: bool = True) -> list[tuple]:
        reads: dict = {}
        misses = []
        for kv in kvs:
            hit = self.cache.get(kv.key.decode())
            if hit and hit[0] == kv.mod_revision:
                reads[kv.key] = (hit[1], hit[2])
            else:
                misses.append(kv)
        if misses:
            read = (await asyncio.to_thread(self._transform_reads, misses) if self.kms()
                    else self._transform_reads(misses))
            for kv, (plain, info) in zip(misses, read):
                self.cache_put(kv.key.decode(), kv.mod_revision, plain, info)
                reads[kv.key] = (plain, info)
        out = []
        for kv in kvs:
            plain, info = reads[kv.key]
            if record:
                self.record_read(info)
            try:
                obj = codec.decode_secret(plain)
            except (ValueError, IndexError) as e:
                raise TransformFailure(kv.key.decode(), e) from None
            out.append((kv, finish_secret(obj, kv), plain, info))
        return out

    async def read_state(self, key: str, record: bool = True) -> tuple:
        """(kv, object, stored plaintext, ReadInfo) of a key; (None, None, None, None) when there is none.
        TransformFailure when the value cannot be read."""
        kv = await self.call(self.etcd.get(key.encode()))
        if kv is None:
            return None, None, None, None
        [state] = await self._decode([kv], record)
        return state

    async def current(self, ns: str, name: str):
        """(key, kv, object, stored plaintext) of a Secret; (key, None, None, None) when there is none."""
        key = f"{SECRETS_PREFIX}{ns}/{name}"
        kv, obj, plain, _ = await self.read_state(key, record=False)
        return key, kv, obj, plain

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

    async def count_secrets(self) -> int:
        """``apiserver_storage_objects{resource="secrets"}``: a count-only range over the secrets prefix."""
        return await self.call(self.etcd.count(SECRETS_PREFIX.encode(), prefix_end(SECRETS_PREFIX.encode())))

    # -- writing ------------------------------------------------------------------------------------------------

    def encode(self, key: str, obj: dict) -> tuple[bytes, bytes]:
        """(plaintext, stored value) of a Secret object at ``key``, written by the first provider."""
        plain, value, _ = self.encode_info(key, obj)
        return plain, value

    def encode_info(self, key: str, obj: dict) -> tuple[bytes, bytes, ReadInfo]:
        """(plaintext, stored value, how it reads back), recording the TransformToStorage."""
        stored = copy.deepcopy(obj)
        stored.pop("kind", None)
        stored.pop("apiVersion", None)
        stored["metadata"].pop("resourceVersion", None)
        plain = codec.encode_secret(stored)
        try:
            value = self.encryption.write(key, plain)
        except TransformError as e:
            writer = self.encryption.writer
            self.metrics.transformation("to_storage", writer.prefix.decode(), e.code or "unknown-non-grpc")
            raise
        return plain, value, self.record_write(value)

    def is_stale(self, info: ReadInfo) -> bool:
        """Whether an update must write even an unchanged object (the ``stale`` of TransformFromStorage): read by
        a provider that is not the first, through a fallback inside one (KMS v1 CBC, KMS v2 another DEK source
        type), or (KMS v2) under a key id that is not the current one. The current key id is the plugin's Status
        answer (a real apiserver learns it from its Status poll, up to a minute later). KMS v1: never stale by
        a KEK rotation."""
        if info.stale:
            return True
        writer = self.encryption.writer
        if info.key_id is None or not (writer.kind == "kms" and writer.prefix.startswith(b"k8s:enc:kms:v2:")):
            return False
        try:
            current = writer.client.key_id()
        except Exception:  # plugin down: the apiserver's state keeps the last key id; assume unchanged
            return False
        self.metrics.key_id_status(writer.name, current)
        return info.key_id != current

    async def create(self, key: str, obj: dict) -> int | None:
        """Create ``key`` (the etcd transaction: only if absent); the new revision, or None if it exists.
        TransformError when the first provider cannot write."""
        plain, value, info = await self.offload(self.encode_info, key, obj)
        rev = await self.call(self.etcd.create(key.encode(), value))
        if rev is not None:
            self.cache_put(key, rev, plain, info)
            self.record_watch_decode(info)
        return rev

    async def guaranteed_update(self, key: str, try_update, dry_run: bool = False) -> tuple[dict, bool]:
        """etcd3 GuaranteedUpdate: ``try_update(existing object) -> new object`` (raises Rejected) runs on the
        current object; returns (object, written). An unchanged encoding of a value that is not stale is not
        written; a ModRevision conflict re-reads and runs ``try_update`` again. The first state stands for the
        watch cache's copy (no TransformFromStorage counted); the etcd re-read before a no-op and after a
        conflict count, as in kube-apiserver. NotFound, TransformFailure, TransformError as they come."""
        kv, obj, plain, info = await self.read_state(key, record=False)
        current = False
        while True:
            if kv is None:
                raise NotFound(key)
            new = try_update(copy.deepcopy(obj))
            if dry_run:
                return new, False
            new_plain = codec.encode_secret(storable(new))
            if new_plain == plain:
                if not current:  # the cached copy matched: refresh from etcd before skipping the write
                    kv, obj, fresh, info = await self.read_state(key)
                    current = True
                    if kv is None or fresh != plain:
                        plain = fresh
                        continue
                if not await self.offload(self.is_stale, info):
                    return obj, False
            _, value, written = await self.offload(self.encode_info, key, new)
            rev = await self.call(self.etcd.update(key.encode(), value, kv.mod_revision))
            if rev is None:  # the ModRevision moved: the state from etcd, and try again
                kv, obj, plain, info = await self.read_state(key)
                current = True
                continue
            self.cache_put(key, rev, new_plain, written)
            self.record_watch_decode(written)
            new["metadata"]["resourceVersion"] = str(rev)
            new["metadata"] = order_meta(new["metadata"])
            return new, True

    def throttled_write(self, user) -> int | None:
        """The ``writes.throttle`` fault: the Retry-After seconds when this write is to be rejected as API
        Priority and Fairness rejects it (a deterministic share of the writes), else None."""
        t = self.throttle
        if not t:
            return None
        if t.get("exempt_masters") and "system:masters" in (getattr(user, "groups", None) or []):
            return None  # the exempt priority level (flowschema "exempt": group system:masters)
        share = float(t.get("share", 1.0))
        before = int(self.throttle_seen * share)
        self.throttle_seen += 1
        if int(self.throttle_seen * share) > before:
            self.throttled += 1
            return int(t.get("retry_after", 1))
        return None

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
