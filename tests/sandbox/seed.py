"""Sandbox-only writes (the control port's ``seed`` and ``write_secret``): Secrets stored straight into etcd as
a kube-apiserver would have stored them, in bulk for benchmarks, or as written long ago or under another
provider (identity before encryption was enabled, a local key before KMS, a provider since retired).
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from concurrent.futures import ThreadPoolExecutor

from . import codec, kube
from .objects import managed_entry, order_meta, storable
from .store import SECRETS_PREFIX
from .transformers import EncryptionConfig

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
    elif with_ == "current":
        writer = server.store.encryption.writer
        plain, value = await server.store.offload(server.store.encode, key, obj)
    else:
        writer = server.store.local_reader(with_)
        value = writer.to_storage(key, plain)
    if prefix is not None:
        value = prefix.encode() + value[len(writer.prefix):]
    rev = await server.store.call(server.store.etcd.put(key.encode(), value))
    if prefix is None:  # a cached plaintext would let the API read what it cannot decrypt
        server.store.cache_put(key, rev, plain)
    else:
        server.store.cache.pop(key, None)
    stored_prefix = prefix.encode() if prefix is not None else (writer.prefix or b"k8s")
    return {"key": key, "resourceVersion": str(rev), "prefix": stored_prefix.decode("latin-1")}
