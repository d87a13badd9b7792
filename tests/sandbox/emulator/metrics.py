"""``/metrics`` as kube-apiserver 1.30 serves it: the Prometheus text format of client_golang, the KMS metrics
of ``staging/src/k8s.io/apiserver/pkg/storage/value/encrypt/envelope/metrics/metrics.go`` and the value
transformer metrics of ``.../storage/value/metrics.go``, and a few unrelated lines so parsers see a real page.

KMS v2 key-id-hash metrics (``RecordKeyID``, ``RecordKeyIDFromStatus``): labels ``transformation_type``
(``to_storage`` on each encryption, ``from_storage`` on each decryption of a value from etcd, the watch cache's
decode of each write included), ``provider_name``, ``key_id_hash`` (``sha256:`` + hex SHA-256 of the key id) and
``apiserver_id_hash`` (the same of the apiserver identity ``apiserver-<base32 of SHA-256(hostname, "kube-apiserver")
[:16]>``, server/config.go). Label sets live in a 10-entry LRU (``cacheSize``): the oldest set's series are
deleted when an 11th appears. KMS v1 records none of these (no key id), only ``dek_cache_fill_percent``.

Authorization: ``get`` on the non-resource URL ``/metrics``; the sandbox's restricted user is denied with the
apiserver's non-resource 403 (``forbidden: User "..." cannot get path "/metrics"``, empty details).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import decimal
import functools
import hashlib
import struct
import threading
import time

from aiohttp import web

from ..kube import dumps

FAMILIES = {  # name: (type, help as component-base annotates it)
    "apiserver_envelope_encryption_dek_cache_fill_percent": (
        "gauge", "[ALPHA] Percent of the cache slots currently occupied by cached DEKs."),
    "apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds": (
        "gauge", "[ALPHA] The last time in seconds when a keyID was used."),
    "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds": (
        "gauge", "[ALPHA] The last time in seconds when a keyID was returned by the Status RPC call."),
    "apiserver_envelope_encryption_key_id_hash_total": (
        "counter", "[ALPHA] Number of times a keyID is used split by transformation type, provider, and apiserver "
        "identity."),
    "apiserver_storage_envelope_transformation_cache_misses_total": (
        "counter", "[ALPHA] Total number of cache misses while accessing key decryption key(KEK)."),
    "apiserver_storage_objects": (
        "gauge", "[STABLE] Number of stored objects at the time of last check split by kind. In case of a fetching "
        "error, the value will be -1."),
    "apiserver_storage_transformation_operations_total": (
        "counter", "[ALPHA] Total number of transformations. Successful transformation will have a status 'OK' and "
        "a varied status string when the transformation fails. This status and transformation_type fields may be "
        "used for alerting on encryption/decryption failure using transformation_type from_storage for decryption "
        "and to_storage for encryption"),
    "process_start_time_seconds": ("gauge", "Start time of the process since unix epoch in seconds."),
}
KEY_ID_LABELS = ("transformation_type", "provider_name", "key_id_hash", "apiserver_id_hash")
LRU_SIZE = 10  # metrics.go cacheSize
DEK_CACHE_SIZE = 1000  # the KMS v1 cachesize default
STATUS_POLL = 60.0  # kmsv2PluginHealthzPositiveInterval: the apiserver's Status poll
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # expfmt.FmtText (client_golang 1.16, Kubernetes 1.30)


@functools.lru_cache(maxsize=1024)
def sha256_label(data: str) -> str:
    """getHash: ``sha256:<hex>``, empty for empty data."""
    return f"sha256:{hashlib.sha256(data.encode()).hexdigest()}" if data else ""


def apiserver_id(hostname: str) -> str:
    """The apiserver identity of server/config.go: cryptobyte uint16-length-prefixed hostname and
    ``kube-apiserver``, SHA-256, first 16 bytes, base32 without padding, lower case."""
    data = b"".join(struct.pack(">H", len(part)) + part for part in (hostname.encode(), b"kube-apiserver"))
    digest = hashlib.sha256(data).digest()[:16]
    return "apiserver-" + base64.b32encode(digest).decode().rstrip("=").lower()


def go_float(v: float) -> str:
    """strconv.FormatFloat(v, 'g', -1, 64), as client_golang writes sample values: the shortest digits that
    round-trip, in exponent form when the decimal exponent is < -4 or >= 6 (``eprec = 6`` for the shortest form):
    ``3``, ``0.25``, ``1.7234567891234567e+09``."""
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    if v == 0:
        return "0"
    sign, digits, exp = decimal.Decimal(repr(float(v))).as_tuple()
    digits = list(digits)
    while len(digits) > 1 and digits[-1] == 0:
        digits.pop()
        exp += 1
    nd, dp = len(digits), len(digits) + exp  # digit count, decimal point position
    ds, neg, x = "".join(map(str, digits)), "-" if sign else "", dp - 1
    if x < -4 or x >= 6:
        mant = ds[0] + ("." + ds[1:] if nd > 1 else "")
        return f"{neg}{mant}e{'-' if x < 0 else '+'}{abs(x):02d}"
    if dp <= 0:
        return f"{neg}0.{'0' * -dp}{ds}"
    if dp >= nd:
        return f"{neg}{ds}{'0' * (dp - nd)}"
    return f"{neg}{ds[:dp]}.{ds[dp:]}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """One apiserver's metrics (thread-safe: KMS transformers run on worker threads)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.started = time.time()
        self.hostname = "localhost"
        self.samples: dict[str, dict[tuple, float]] = collections.defaultdict(dict)
        self.key_id_lru: collections.OrderedDict = collections.OrderedDict()
        self.status_lru: collections.OrderedDict = collections.OrderedDict()
        self.dek_cache: collections.OrderedDict = collections.OrderedDict()
        self.last_status_poll = 0.0

    @property
    def apiserver_id_hash(self) -> str:
        if getattr(self, "_id_for", None) != self.hostname:
            self._id_for, self._id_hash = self.hostname, sha256_label(apiserver_id(self.hostname))
        return self._id_hash

    # -- recording ----------------------------------------------------------------------------------------------

    def transformation(self, transformation_type: str, prefix: str, status: str = "OK") -> None:
        """RecordTransformation (labels sorted by name when rendered)."""
        key = (("status", status), ("transformation_type", transformation_type), ("transformer_prefix", prefix))
        with self.lock:
            fam = self.samples["apiserver_storage_transformation_operations_total"]
            fam[key] = fam.get(key, 0) + 1

    def key_id(self, transformation_type: str, provider: str, key_id: str) -> None:
        """RecordKeyID: counter +1 and last-used time, the label set kept in a 10-entry LRU."""
        labels = (("apiserver_id_hash", self.apiserver_id_hash), ("key_id_hash", sha256_label(key_id)),
                  ("provider_name", provider), ("transformation_type", transformation_type))
        with self.lock:
            self._lru_add(self.key_id_lru, labels, ("apiserver_envelope_encryption_key_id_hash_total",
                                                    "apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds"))
            total = self.samples["apiserver_envelope_encryption_key_id_hash_total"]
            total[labels] = total.get(labels, 0) + 1
            self.samples["apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds"][labels] = time.time()

    def key_id_status(self, provider: str, key_id: str) -> None:
        """RecordKeyIDFromStatus: the key id a KMS v2 Status call returned."""
        labels = (("apiserver_id_hash", self.apiserver_id_hash), ("key_id_hash", sha256_label(key_id)),
                  ("provider_name", provider))
        with self.lock:
            self._lru_add(self.status_lru, labels,
                          ("apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds",))
            self.samples["apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds"][labels] = \
                time.time()
            self.last_status_poll = time.monotonic()

    def cache_miss(self) -> None:
        with self.lock:
            fam = self.samples["apiserver_storage_envelope_transformation_cache_misses_total"]
            fam[()] = fam.get((), 0) + 1

    def dek_cached(self, enc_dek: bytes) -> None:
        """A KMS v1 DEK entered the apiserver's LRU DEK cache (each write makes one, each uncached read adds one)."""
        digest = hashlib.sha256(enc_dek).digest()
        with self.lock:
            self.dek_cache[digest] = True
            self.dek_cache.move_to_end(digest)
            while len(self.dek_cache) > DEK_CACHE_SIZE:
                self.dek_cache.popitem(last=False)

    def _lru_add(self, lru: collections.OrderedDict, labels: tuple, families: tuple) -> None:
        lru[labels] = True
        lru.move_to_end(labels)
        while len(lru) > LRU_SIZE:
            old, _ = lru.popitem(last=False)
            for fam in families:  # the eviction func deletes the series
                self.samples[fam].pop(old, None)

    # -- rendering ----------------------------------------------------------------------------------------------

    def render(self, secrets: int) -> str:
        """The exposition text: families sorted by name, series by label values, labels by name."""
        with self.lock:
            fams = {k: dict(v) for k, v in self.samples.items() if v}
            fams["apiserver_envelope_encryption_dek_cache_fill_percent"] = {(): len(self.dek_cache) / DEK_CACHE_SIZE}
        fams.setdefault("apiserver_storage_envelope_transformation_cache_misses_total", {(): 0})
        fams["apiserver_storage_objects"] = {(("resource", "secrets"),): secrets}
        fams["process_start_time_seconds"] = {(): self.started}
        out = []
        for name in sorted(fams):
            kind, help_text = FAMILIES[name]
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            for labels in sorted(fams[name], key=lambda ls: tuple(v for _, v in ls)):
                value = fams[name][labels]
                inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                out.append(f"{name}{{{inner}}} {go_float(value)}" if inner else f"{name} {go_float(value)}")
        return "\n".join(out) + "\n"


# --- the route ----------------------------------------------------------------------------------------------


def forbidden_path(user: str, verb: str, path: str) -> web.Response:
    """responsewriters.Forbidden for a non-resource request: NewForbidden with an empty GroupResource."""
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f'forbidden: User "{user}" cannot {verb} path "{path}"', "reason": "Forbidden",
            "details": {}, "code": 403}
    return web.Response(status=403, text=dumps(body), content_type="application/json")


async def poll_status(server) -> None:
    """The apiserver polls each KMS v2 plugin's Status about once a minute and records the key id it returns;
    the sandbox does that lazily, when /metrics is scraped and the last poll is older than a minute."""
    m = server.store.metrics
    if time.monotonic() - m.last_status_poll < STATUS_POLL:
        return
    for p in server.store.encryption.kms_providers:
        if getattr(p.client, "api", "") != "v2":
            continue
        try:
            key_id = await asyncio.to_thread(p.client.key_id)
        except Exception:  # plugin down: the apiserver records nothing either
            continue
        if key_id:
            m.key_id_status(p.name, key_id)


async def handle(server, request: web.Request) -> web.StreamResponse:
    """GET /metrics (nonResourceURLs /metrics, verb get)."""
    user = request["user"]
    if getattr(user, "restricted", False):
        return forbidden_path(user.name, "get", "/metrics")
    await poll_status(server)
    try:
        secrets = await server.store.count_secrets()
    except Exception:  # etcd down: the apiserver reports -1 for a failed count
        secrets = -1
    resp = web.Response(body=server.store.metrics.render(secrets).encode())
    resp.headers["Content-Type"] = CONTENT_TYPE
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        resp.enable_compression(web.ContentCoding.gzip)
    return resp
