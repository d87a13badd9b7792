"""Hand-written protobuf wire codec for what kube-apiserver stores in etcd.

Hand-written because the Kubernetes generated protobufs (``k8s.io/api``, ``k8s.io/apimachinery``) are only
published as Go; there is no Python package, and only a handful of messages is needed.

kube-apiserver's protobuf serializer writes ``b"k8s\\x00"`` then a ``runtime.Unknown``:
``typeMeta(1){apiVersion(1), kind(2)}, raw(2) = the object, contentEncoding(3) = "", contentType(4) = ""``.
Kubernetes' gogo-generated marshallers are *not* proto3-minimal: every non-pointer scalar field is written
even when empty (``1a 00``), messages embedded by value are always written, maps and repeated fields only when
non-empty, pointer fields only when set. :func:`encode_secret` reproduces that byte for byte (field order of
``k8s.io/apimachinery/pkg/apis/meta/v1/generated.pb.go`` and ``k8s.io/api/core/v1/generated.pb.go``);
``omit_empty=True`` instead drops empty fields of the Secret and its ObjectMeta (proto3 style), which is how
``tests/fixtures/etcd-values/identity-protobuf.bin`` was written.

Also the KMS v2 ``EncryptedObject`` (proto3, zero fields omitted), stored after ``k8s:enc:kms:v2:<name>:``.
"""

from __future__ import annotations

import base64
import datetime
import json

PROTOBUF_MAGIC = b"k8s\x00"

# --- wire primitives --------------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """Base-128 varint; negative int64 values are written as their 64-bit two's complement (as Go does)."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def field_varint(num: int, value: int) -> bytes:
    return varint(num << 3) + varint(value)


def field_bytes(num: int, value: bytes) -> bytes:
    return varint((num << 3) | 2) + varint(len(value)) + value


def iter_fields(buf: bytes):
    """Yield ``(field number, wire type, value)``; value is an int (varint/fixed) or bytes (length-delimited)."""
    i, n = 0, len(buf)
    while i < n:
        tag, i = read_varint(buf, i)
        num, wt = tag >> 3, tag & 7
        if wt == 0:
            val, i = read_varint(buf, i)
        elif wt == 2:
            ln, i = read_varint(buf, i)
            if i + ln > n:
                raise ValueError(f"field {num}: length {ln} runs past the end of the message")
            val, i = bytes(buf[i:i + ln]), i + ln
        elif wt == 1:
            val, i = int.from_bytes(buf[i:i + 8], "little"), i + 8
        elif wt == 5:
            val, i = int.from_bytes(buf[i:i + 4], "little"), i + 4
        else:
            raise ValueError(f"unsupported wire type {wt} (field {num})")
        if i > n:
            raise ValueError("truncated message")
        yield num, wt, val


def _s(num: int, value: str, omit_empty: bool) -> bytes:
    return b"" if omit_empty and not value else field_bytes(num, value.encode())


def _map_entries(num: int, items: dict, keys_sorted: bool = True) -> bytes:
    """Map fields: one ``{1: key, 2: value}`` entry per item, keys sorted (gogo ``sortkeys``)."""
    out = b""
    for k in sorted(items) if keys_sorted else items:
        v = items[k]
        v = v.encode() if isinstance(v, str) else bytes(v)
        out += field_bytes(num, field_bytes(1, k.encode()) + field_bytes(2, v))
    return out


def _parse_map_entry(buf: bytes) -> tuple[str, bytes]:
    k, v = "", b""
    for num, _, val in iter_fields(buf):
        if num == 1:
            k = val.decode()
        elif num == 2:
            v = val
    return k, v


# --- time -------------------------------------------------------------------------------------------------


def parse_time(value: str | None) -> int | None:
    """RFC 3339 (``2026-01-02T03:04:05Z``) to Unix seconds; None/empty is the zero time."""
    if not value:
        return None
    dt = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))  # 3.9-safe
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return int(dt.timestamp())


def format_time(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _encode_time(value: str | None) -> bytes:
    """metav1.Time: empty for the zero time, else Timestamp{seconds(1), nanos(2)} with nanos always written
    (metav1 drops sub-second precision, so nanos is always 0)."""
    secs = parse_time(value)
    if secs is None:
        return b""
    return field_varint(1, secs) + field_varint(2, 0)


def _decode_time(buf: bytes) -> str | None:
    secs = None
    for num, _, val in iter_fields(buf):
        if num == 1:
            secs = val - (1 << 64) if val >= 1 << 63 else val
    return format_time(secs) if secs is not None else None


# --- ObjectMeta / Secret ----------------------------------------------------------------------------------


def _fields_v1_raw(value) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":")).encode()


def _encode_managed_field(entry: dict) -> bytes:
    """ManagedFieldsEntry as gogo writes it: strings always, time/fieldsV1 only when set, subresource(8) last."""
    out = field_bytes(1, entry.get("manager", "").encode())
    out += field_bytes(2, entry.get("operation", "").encode())
    out += field_bytes(3, entry.get("apiVersion", "").encode())
    if entry.get("time"):
        out += field_bytes(4, _encode_time(entry["time"]))
    out += field_bytes(6, entry.get("fieldsType", "").encode())
    if entry.get("fieldsV1") is not None:
        out += field_bytes(7, field_bytes(1, _fields_v1_raw(entry["fieldsV1"])))
    out += field_bytes(8, entry.get("subresource", "").encode())
    return out


def _decode_managed_field(buf: bytes) -> dict:
    entry: dict = {}
    for num, _, val in iter_fields(buf):
        if num == 1:
            entry["manager"] = val.decode()
        elif num == 2:
            entry["operation"] = val.decode()
        elif num == 3:
            entry["apiVersion"] = val.decode()
        elif num == 4:
            entry["time"] = _decode_time(val)
        elif num == 6:
            entry["fieldsType"] = val.decode()
        elif num == 7:
            raw = b"".join(v for n, _, v in iter_fields(val) if n == 1)
            try:
                entry["fieldsV1"] = json.loads(raw) if raw else {}
            except ValueError:
                entry["fieldsV1"] = raw.decode(errors="replace")
        elif num == 8 and val:
            entry["subresource"] = val.decode()
    return {k: v for k, v in entry.items() if v not in ("", None)}


def encode_object_meta(meta: dict, omit_empty: bool = False) -> bytes:
    """ObjectMeta in gogo field order: 1 name, 2 generateName, 3 namespace, 4 selfLink, 5 uid,
    6 resourceVersion, 7 generation, 8 creationTimestamp, 11 labels, 12 annotations, 13 ownerReferences,
    14 finalizers, 17 managedFields. Field 15 (clusterName) was removed in 1.25: kube-apiserver v1.29.6 writes
    none (checked byte for byte against it, tests/sandbox/tests/test_sandbox_realserver.py)."""
    out = _s(1, meta.get("name", ""), omit_empty)
    out += _s(2, meta.get("generateName", ""), omit_empty)
    out += _s(3, meta.get("namespace", ""), omit_empty)
    out += _s(4, meta.get("selfLink", ""), omit_empty)
    out += _s(5, meta.get("uid", ""), omit_empty)
    # kube-apiserver clears resourceVersion before writing to etcd (the etcd revision is the version).
    out += _s(6, meta.get("resourceVersion", ""), omit_empty)
    generation = int(meta.get("generation", 0) or 0)
    if generation or not omit_empty:
        out += field_varint(7, generation)
    ts = _encode_time(meta.get("creationTimestamp"))
    if ts or not omit_empty:
        out += field_bytes(8, ts)
    out += _map_entries(11, meta.get("labels") or {})
    out += _map_entries(12, meta.get("annotations") or {})
    for ref in meta.get("ownerReferences") or []:
        out += field_bytes(13, _encode_owner_reference(ref))
    for finalizer in meta.get("finalizers") or []:
        out += field_bytes(14, str(finalizer).encode())
    for entry in meta.get("managedFields") or []:
        out += field_bytes(17, _encode_managed_field(entry))
    return out


def _encode_owner_reference(ref: dict) -> bytes:
    """OwnerReference (generated.proto): 1 kind, 3 name, 4 uid, 5 apiVersion, 6 controller, 7 blockOwnerDeletion."""
    out = _s(1, ref.get("kind", ""), False) + _s(3, ref.get("name", ""), False) + _s(4, ref.get("uid", ""), False)
    out += _s(5, ref.get("apiVersion", ""), False)
    for num, key in ((6, "controller"), (7, "blockOwnerDeletion")):
        if ref.get(key) is not None:
            out += field_varint(num, 1 if ref[key] else 0)
    return out


def _decode_owner_reference(buf: bytes) -> dict:
    names = {1: "kind", 3: "name", 4: "uid", 5: "apiVersion"}
    ref: dict = {}
    for num, _, val in iter_fields(buf):
        if num in names:
            ref[names[num]] = val.decode()
        elif num in (6, 7):
            ref["controller" if num == 6 else "blockOwnerDeletion"] = bool(val)
    order = ("apiVersion", "kind", "name", "uid", "controller", "blockOwnerDeletion")  # JSON field order
    return {k: ref[k] for k in order if k in ref}


def decode_object_meta(buf: bytes) -> dict:
    """ObjectMeta to its JSON shape (empty fields omitted, as Go's ``omitempty``; creationTimestamp kept)."""
    meta: dict = {}
    labels: dict = {}
    annotations: dict = {}
    managed: list = []
    created = None
    names = {1: "name", 2: "generateName", 3: "namespace", 4: "selfLink", 5: "uid", 6: "resourceVersion"}
    for num, _, val in iter_fields(buf):
        if num in names:
            if val:
                meta[names[num]] = val.decode()
        elif num == 7:
            if val:
                meta["generation"] = val
        elif num == 8:
            created = _decode_time(val)
        elif num == 11:
            k, v = _parse_map_entry(val)
            labels[k] = v.decode()
        elif num == 12:
            k, v = _parse_map_entry(val)
            annotations[k] = v.decode()
        elif num == 13:
            meta.setdefault("ownerReferences", []).append(_decode_owner_reference(val))
        elif num == 14:
            meta.setdefault("finalizers", []).append(val.decode())
        elif num == 17:
            managed.append(_decode_managed_field(val))
    meta["creationTimestamp"] = created
    if labels:
        meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    if managed:
        meta["managedFields"] = managed
    return meta


def encode_secret_raw(obj: dict, omit_empty: bool = False) -> bytes:
    """v1.Secret (no TypeMeta; protobuf carries it in runtime.Unknown): 1 metadata, 2 data (sorted map),
    3 type (always written), 5 immutable (only when set). stringData is never stored (the apiserver merges
    it into data), so it is merged here too."""
    data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    data.update({k: v.encode() for k, v in (obj.get("stringData") or {}).items()})
    out = field_bytes(1, encode_object_meta(obj.get("metadata") or {}, omit_empty))
    out += _map_entries(2, data)
    out += _s(3, obj.get("type", ""), omit_empty)
    if obj.get("immutable") is not None:
        out += field_varint(5, int(bool(obj["immutable"])))
    return out


def encode_unknown(api_version: str, kind: str, raw: bytes) -> bytes:
    """``k8s\\x00`` + runtime.Unknown; contentEncoding and contentType are written empty, as the apiserver does."""
    type_meta = field_bytes(1, api_version.encode()) + field_bytes(2, kind.encode())
    unknown = field_bytes(1, type_meta) + field_bytes(2, raw) + field_bytes(3, b"") + field_bytes(4, b"")
    return PROTOBUF_MAGIC + unknown


def decode_unknown(value: bytes) -> tuple[str, str, bytes]:
    """Split a ``k8s\\x00`` value into (apiVersion, kind, raw object bytes)."""
    if not value.startswith(PROTOBUF_MAGIC):
        raise ValueError("not a kube-apiserver protobuf value (missing k8s\\x00 prefix)")
    api_version = kind = ""
    raw = b""
    for num, _, val in iter_fields(value[len(PROTOBUF_MAGIC):]):
        if num == 1:
            for n2, _, v2 in iter_fields(val):
                if n2 == 1:
                    api_version = v2.decode()
                elif n2 == 2:
                    kind = v2.decode()
        elif num == 2:
            raw = val
    return api_version, kind, raw


def encode_secret(obj: dict, omit_empty: bool = False) -> bytes:
    """A Secret (Kubernetes JSON shape, ``data`` values base64) as kube-apiserver stores it with identity."""
    raw = encode_secret_raw(obj, omit_empty)
    return encode_unknown(obj.get("apiVersion", "v1"), obj.get("kind", "Secret"), raw)


def decode_secret(value: bytes) -> dict:
    """Inverse of :func:`encode_secret`; also accepts a JSON-stored value (starts with ``{``)."""
    if value[:1] == b"{":
        return json.loads(value)
    api_version, kind, raw = decode_unknown(value)
    if kind != "Secret":
        raise ValueError(f"stored object is a {kind or 'object without kind'}, not a Secret")
    obj: dict = {"apiVersion": api_version, "kind": kind, "metadata": {}}
    data: dict = {}
    for num, _, val in iter_fields(raw):
        if num == 1:
            obj["metadata"] = decode_object_meta(val)
        elif num == 2:
            k, v = _parse_map_entry(val)
            data[k] = base64.b64encode(v).decode()
        elif num == 3:
            if val:
                obj["type"] = val.decode()
        elif num == 5:
            obj["immutable"] = bool(val)
    if data:
        obj["data"] = data
    # JSON key order as the apiserver prints it: metadata, data, then type.
    for key in ("type", "immutable"):
        if key in obj:
            obj[key] = obj.pop(key)
    return obj


# --- KMS v2 EncryptedObject -------------------------------------------------------------------------------

AES_GCM_KEY = 0
HKDF_SHA256_XNONCE_AES_GCM_SEED = 1


def encode_encrypted_object(encrypted_data: bytes, key_id: str, encrypted_dek_source: bytes,
                            annotations: dict[str, bytes] | None = None,
                            dek_source_type: int = HKDF_SHA256_XNONCE_AES_GCM_SEED) -> bytes:
    """KMS v2 EncryptedObject (proto3): 1 encryptedData, 2 keyID, 3 encryptedDEKSource, 4 annotations
    (entries sorted by key), 5 encryptedDEKSourceType; zero/empty fields omitted."""
    out = field_bytes(1, encrypted_data) if encrypted_data else b""
    out += field_bytes(2, key_id.encode()) if key_id else b""
    out += field_bytes(3, encrypted_dek_source) if encrypted_dek_source else b""
    out += _map_entries(4, annotations or {})
    out += field_varint(5, dek_source_type) if dek_source_type else b""
    return out


def decode_encrypted_object(buf: bytes) -> dict:
    """EncryptedObject to ``{encryptedData, keyID, encryptedDEKSource, annotations, encryptedDEKSourceType}``."""
    obj = {"encryptedData": b"", "keyID": "", "encryptedDEKSource": b"", "annotations": {},
           "encryptedDEKSourceType": AES_GCM_KEY}
    for num, wt, val in iter_fields(buf):
        if num == 1 and wt == 2:
            obj["encryptedData"] = val
        elif num == 2 and wt == 2:
            obj["keyID"] = val.decode()
        elif num == 3 and wt == 2:
            obj["encryptedDEKSource"] = val
        elif num == 4 and wt == 2:
            k, v = _parse_map_entry(val)
            obj["annotations"][k] = v
        elif num == 5 and wt == 0:
            obj["encryptedDEKSourceType"] = val
    return obj
