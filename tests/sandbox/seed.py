"""Sandbox-only writes (the control port's ``seed``, ``write_secret`` and ``writes``): Secrets stored straight into
etcd as a kube-apiserver would have stored them, in bulk for benchmarks, or as written long ago or under another
provider (identity before encryption was enabled, a local key before KMS, a provider since retired), or as the
API cannot decrypt them; and the secret-write faults: a share of writes answered 429 (API Priority and
Fairness), a concurrent writer changing chosen secrets while a command runs.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

from . import codec, kube
from .processes.kms_plugin import MAGIC
from .objects import managed_entry, managed_fields_for, order_meta, storable, validate_update
from .store import SECRETS_PREFIX, EtcdDown, NotFound, Rejected, TransformFailure
from .transformers import EncryptionConfig, TransformError, split_v1

log = logging.getLogger("sandbox.seed")
UNKNOWN_KEY_ID = "key-9999"

LOCAL_KINDS = ("aescbc", "aesgcm", "secretbox")


async def seed_bulk(server, ns: str, count: int, prefix: str = "bulk-", size: int = 64, with_: str = "current",
                    labels: dict | None = None, start: int = 0) -> dict:
    """Write ``count`` Secrets ``<prefix><n>`` quickly (batched etcd transactions, encryption on worker
    threads), stored exactly as the API's create stores them: for benchmarks of scans over many secrets."""
    if with_ not in ("current", "identity"):
        raise ValueError(f"with must be 'identity' or 'current', not {with_!r}")
    if count < 0 or size < 0:
        raise ValueError("count and size must not be negative")
    server.namespaces.setdefault(ns, time.time())
    enc = server.store.encryption if with_ == "current" else EncryptionConfig.for_provider("identity")
    now = kube.now_rfc3339()

    def build(i: int) -> tuple[bytes, bytes]:
        name = f"{prefix}{i}"
        obj = {"metadata": {"name": name, "namespace": ns, "uid": kube.new_uid(), "creationTimestamp": now},
               "data": {"value": base64.b64encode(os.urandom(size)).decode()}, "type": "Opaque"}
        if labels:
            obj["metadata"]["labels"] = dict(labels)
        obj["metadata"]["managedFields"] = [managed_entry("sandbox-seed", "Update", now, obj)]
        obj["metadata"] = order_meta(obj["metadata"])
        key = f"{SECRETS_PREFIX}{ns}/{name}"
        return key.encode(), enc.write(key, codec.encode_secret(obj))

    started = time.monotonic()
    batch = 128
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=4) as pool:
        for lo in range(start, start + count, batch * 8):
            hi = min(start + count, lo + batch * 8)
            items = await asyncio.gather(*(loop.run_in_executor(pool, build, i) for i in range(lo, hi)))
            for j in range(0, len(items), batch):
                await server.store.call(server.store.etcd.put_many(items[j:j + batch]))
    return {"written": count, "seconds": round(time.monotonic() - started, 2)}


async def write_secret_as(server, ns: str, name: str, data: dict, with_: str = "current",
                          labels: dict | None = None, written_at: str | None = None,
                          prefix: str | None = None) -> dict:
    """Store a Secret as an apiserver configured with ``with_`` would have: "identity" reproduces a secret
    written before encryption was enabled; "aescbc"/"aesgcm"/"secretbox" one written with a local key
    before KMS was configured (the sandbox then keeps that key as a read-only provider after the first one,
    as such a cluster's EncryptionConfiguration does). ``written_at`` (RFC 3339) backdates creationTimestamp
    and the managedFields time. ``prefix`` replaces the provider prefix of the stored value (e.g.
    ``k8s:enc:kms:v1:retired-plugin:``): a value under a provider this apiserver no longer has, which it
    cannot read."""
    if with_ not in ("current", "identity") + LOCAL_KINDS:
        raise ValueError(f"with must be 'identity', 'current' or one of {', '.join(LOCAL_KINDS)}, not {with_!r}")
    if written_at is not None:
        kube.parse_ts(written_at)  # ValueError (400) for a malformed time
    server.namespaces.setdefault(ns, time.time())
    now = written_at or kube.now_rfc3339()
    obj = {"metadata": {"name": name, "namespace": ns, "uid": kube.new_uid(), "creationTimestamp": now},
           "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}, "type": "Opaque"}
    if labels:
        obj["metadata"]["labels"] = dict(labels)
    obj["metadata"]["managedFields"] = [managed_entry("kubectl-create", "Update", now, obj)]
    obj["metadata"] = order_meta(obj["metadata"])
    key = f"{SECRETS_PREFIX}{ns}/{name}"
    plain = codec.encode_secret(storable(obj))
    if with_ == "identity":
        writer = EncryptionConfig.for_provider("identity").writer
        value = writer.to_storage(key, plain)
    elif with_ == "current":  # as this apiserver would have written it (not counted in its metrics: a past write)
        writer = server.store.encryption.writer
        value = await server.store.offload(server.store.encryption.write, key, plain)
    else:
        writer = server.store.local_reader(with_)
        value = writer.to_storage(key, plain)
    if prefix is not None:
        value = prefix.encode() + value[len(writer.prefix):]
    rev = await server.store.call(server.store.etcd.put(key.encode(), value))
    if prefix is None:  # a cached plaintext would let the API read what it cannot decrypt
        info = (server.store.written_info(value) if with_ == "current"
                else server.store.encryption.read_info(key, value)[1])  # identity or a local key: no KMS call
        server.store.cache_put(key, rev, plain, info)
    else:
        server.store.cache.pop(key, None)
    stored_prefix = prefix.encode() if prefix is not None else (writer.prefix or b"k8s")
    return {"key": key, "resourceVersion": str(rev), "prefix": stored_prefix.decode("latin-1")}


# --- secret-write faults (ctl ``writes``) ----------------------------------------------------------------------


async def write_faults(server, spec: dict) -> dict:
    """``{"writes": {...}}`` on the control port; any of:

    - ``"throttle": {"share": 0.5, "retry_after": 2, "exempt_masters": false} | null``: that share of secret
      writes (POST, PUT, PATCH, DELETE; deterministic: every 1/share-th) is answered 429 as API Priority and
      Fairness answers it. A real APF exempts ``system:masters`` (flowschema ``exempt``): ``exempt_masters``.
    - ``"writer": {"secrets": ["ns/name", ...], "interval": 0.1, "key": "rotated", "manager": "..."} | null``:
      a concurrent client that updates ``data[key]`` of those secrets every ``interval`` seconds until stopped.
    - ``"undecryptable": {"namespace", "name", "data", "mode": "unknown-key" | "garbage"}``: a secret the API
      cannot decrypt (a KMS value whose key the plugin does not know, or random bytes after a valid prefix).

    Returns the state: throttle (and how many writes it rejected), the writer's counts."""
    if not isinstance(spec, dict):
        raise ValueError("writes must be an object with throttle, writer and/or undecryptable")
    unknown = set(spec) - {"throttle", "writer", "undecryptable"}
    if unknown:
        raise ValueError(f"unknown writes keys: {', '.join(sorted(unknown))} (expected throttle, writer, "
                         "undecryptable)")
    store = server.store
    result: dict = {}
    if "throttle" in spec:
        t = spec["throttle"]
        if t is not None:
            share = float(t.get("share", 1.0))
            if not 0 < share <= 1 or int(t.get("retry_after", 1)) < 0:
                raise ValueError("throttle.share must be in (0, 1] and retry_after >= 0")
        store.throttle, store.throttle_seen, store.throttled = (dict(t) if t else None), 0, 0
    if "writer" in spec:
        result["writer"] = await _stop_writer(store)
        w = spec["writer"]
        if w is not None:
            targets = [tuple(t.split("/", 1)) for t in w.get("secrets") or []]
            if not targets or any(len(t) != 2 for t in targets):
                raise ValueError('writer.secrets must list "namespace/name" strings')
            store.writer_stats = {"writes": 0, "rejected": 0, "errors": 0, "last": {}}
            store.writer_task = asyncio.create_task(_writer(store, targets, float(w.get("interval", 0.1)),
                                                            w.get("key", "rotated"),
                                                            w.get("manager", "sandbox-writer")))
    if "undecryptable" in spec:
        u = spec["undecryptable"]
        result["undecryptable"] = await write_undecryptable(server, u["namespace"], u["name"], u.get("data") or {},
                                                            u.get("mode", "unknown-key"))
    result["state"] = {"throttle": store.throttle, "throttled": store.throttled,
                       "writer": dict(store.writer_stats, running=bool(store.writer_task))}
    return result


async def _stop_writer(store) -> dict:
    task, store.writer_task = store.writer_task, None
    if task:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    return dict(store.writer_stats)


async def _writer(store, targets: list, interval: float, data_key: str, manager: str) -> None:
    """Another client's updates (a controller rotating a credential): each changes ``data[data_key]`` through
    the same GuaranteedUpdate as the API's PUT, with its own managedFields entry."""
    stats = store.writer_stats
    while True:
        for ns, name in targets:
            key = f"{SECRETS_PREFIX}{ns}/{name}"

            def bump(existing: dict, now: str = kube.now_rfc3339()) -> dict:
                new = copy.deepcopy(existing)
                new["data"] = dict(new.get("data") or {})
                new["data"][data_key] = base64.b64encode(os.urandom(12)).decode()
                new["metadata"]["managedFields"] = managed_fields_for(existing, new, manager, "Update", now)
                if validate_update(new, existing):
                    raise Rejected(None)  # an immutable secret: the API would answer 422
                new["metadata"] = order_meta({k: v for k, v in new["metadata"].items() if v is not None})
                return new

            try:
                obj, written = await store.guaranteed_update(key, bump)
                if written:
                    stats["writes"] += 1
                    stats["last"][f"{ns}/{name}"] = obj["metadata"]["resourceVersion"]
            except Rejected:
                stats["rejected"] += 1
            except (NotFound, TransformFailure, TransformError, EtcdDown) as e:
                stats["errors"] += 1
                log.debug("writer: %s/%s: %s", ns, name, e)
        await asyncio.sleep(interval)


async def write_undecryptable(server, ns: str, name: str, data: dict, mode: str) -> dict:
    """Store a Secret the API cannot read back: ``unknown-key`` (KMS only): the encrypted DEK (v1) or DEK seed
    and key id (v2) name a key the plugin never had (``key-9999``), so the plugin's Decrypt fails;
    ``garbage``: 64 bytes 0xff after the first provider's valid prefix. GET and PUT of it answer 500 with the
    transformer's error, LIST 500 with ``unable to transform key``."""
    if mode not in ("unknown-key", "garbage"):
        raise ValueError("undecryptable.mode must be 'unknown-key' or 'garbage'")
    writer = server.store.encryption.writer
    if not writer.prefix:
        raise ValueError("undecryptable needs an encrypting provider (this sandbox writes identity)")
    if mode == "unknown-key" and writer.kind != "kms":
        raise ValueError("undecryptable mode unknown-key needs a KMS provider; use garbage")
    result = await write_secret_as(server, ns, name, data)
    key = result["key"]
    value = await server.store.call(server.store.etcd.get(key.encode()))
    payload = value.value[len(writer.prefix):]
    kid = UNKNOWN_KEY_ID.encode()
    if mode == "garbage":
        payload = b"\xff" * 64  # deterministic: too long a DEK length (v1), an endless varint (v2)
    elif writer.prefix.startswith(b"k8s:enc:kms:v1:"):
        enc_dek, rest = split_v1(payload)
        forged = _forge(enc_dek, kid)
        payload = len(forged).to_bytes(2, "big") + forged + rest
    else:
        obj = codec.decode_encrypted_object(payload)
        payload = codec.encode_encrypted_object(obj["encryptedData"], UNKNOWN_KEY_ID,
                                                _forge(obj["encryptedDEKSource"], kid), obj["annotations"],
                                                obj["encryptedDEKSourceType"])
    rev = await server.store.call(server.store.etcd.put(key.encode(), writer.prefix + payload))
    server.store.cache.pop(key, None)
    return {"key": key, "resourceVersion": str(rev), "mode": mode}


def _forge(cipher: bytes, kid: bytes) -> bytes:
    """The sandbox plugin's ciphertext (``sbx1 | len | key id | nonce | ct``) with another key id."""
    n = cipher[len(MAGIC)]
    return MAGIC + bytes([len(kid)]) + kid + cipher[len(MAGIC) + 1 + n:]
