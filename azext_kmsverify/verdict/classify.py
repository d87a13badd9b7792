# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Classify a raw etcd value by the storage transformer that wrote it.

Pure and standard-library only (imported by the az command). The result describes the
prefix (transformer, provider or key name, KMS v2 key id) and never carries any other byte of
the value: no ciphertext, no plaintext. Formats: kube-apiserver's value transformers
(staging/src/k8s.io/apiserver/pkg/storage/value).
"""

from __future__ import annotations

from azext_kmsverify.etcd import protowire as pw

_ENC_PREFIX = b'k8s:enc:'
_KMS_V1 = b'k8s:enc:kms:v1:'
_KMS_V2 = b'k8s:enc:kms:v2:'
# Local-key providers: key name up to the next ':', then the ciphertext.
# min_len is the smallest well-formed payload: nonce/IV plus one tag/block.
_LOCAL_PROVIDERS = (
    (b'k8s:enc:aescbc:v1:', 'aescbc', 16 + 16),
    (b'k8s:enc:aesgcm:v1:', 'aesgcm', 12 + 16),
    (b'k8s:enc:secretbox:v1:', 'secretbox', 24 + 16),
)
_IDENTITY_PROTOBUF = b'k8s\x00'

#: Longest provider/key name looked for and returned. Names come from the
#: EncryptionConfiguration and are short; the cap bounds work on garbage input.
NAME_MAX_BYTES = 256
#: kube-apiserver rejects KMS v2 key ids longer than 1 KiB.
KEY_ID_MAX_BYTES = 1024
_DEK_SOURCE_MAX_BYTES = 1024
_ANNOTATIONS_MAX_BYTES = 32 * 1024
# KMS v1 payload after the DEK: AES-GCM nonce + tag (the smaller of the GCM and CBC layouts).
_KMS_V1_MIN_DATA = 12 + 16
_KMS_V2_DEK_SOURCE_TYPES = (0, 1)  # AES_GCM_KEY, HKDF_SHA256_XNONCE_AES_GCM_SEED

STORAGE_KINDS = ('kms', 'aescbc', 'aesgcm', 'secretbox', 'identity', 'unknown')


def _result(storage: str, *, encrypted: bool = False, kms_version: str | None = None,
            provider: str | None = None, key_id: str | None = None, malformed: str | None = None) -> dict:
    return {
        'storage': storage,
        'kmsVersion': kms_version,
        'provider': provider,
        'keyId': key_id,
        'encrypted': encrypted,
        'malformed': malformed,
    }


def _text(raw: bytes, cap: int) -> str:
    return raw[:cap].decode('utf-8', errors='replace')


def _is_printable(raw: bytes) -> bool:
    try:
        return raw.decode('utf-8').isprintable()
    except UnicodeDecodeError:
        return False


def classify(value: bytes) -> dict:
    """Return ``{"storage", "kmsVersion", "provider", "keyId", "encrypted", "malformed"}`` for ``value``.

    ``encrypted`` says the value carries an encrypting transformer's prefix; ``malformed`` is a
    short description (offsets and lengths only) when the structure after the prefix does not
    check out, else None. Never raises on any byte string.
    """
    if not isinstance(value, bytes):
        value = bytes(value)  # bytearray / memoryview
    if value.startswith(_ENC_PREFIX):
        if value.startswith(_KMS_V1):
            return _classify_kms_v1(value)
        if value.startswith(_KMS_V2):
            return _classify_kms_v2(value)
        for prefix, storage, min_len in _LOCAL_PROVIDERS:
            if value.startswith(prefix):
                return _classify_local(value, prefix, storage, min_len)
        return _result('unknown', malformed=_describe_unknown_transformer(value))
    if value.startswith(_IDENTITY_PROTOBUF) or value.startswith(b'{'):
        return _result('identity')
    return _result('unknown')


def _name_terminator(value: bytes, start: int) -> int:
    """Offset of the ':' ending a name that may not contain ':' (-1 when absent within the cap)."""
    return value.find(b':', start, min(len(value), start + NAME_MAX_BYTES + 1))


def _classify_local(value: bytes, prefix: bytes, storage: str, min_len: int) -> dict:
    start = len(prefix)
    colon = _name_terminator(value, start)
    if colon < 0:
        return _result(storage, encrypted=True,
                       malformed=f"no ':' ends the key name within {NAME_MAX_BYTES} bytes")
    if colon == start:
        return _result(storage, encrypted=True, malformed='empty key name')
    raw_name = value[start:colon]
    name = _text(raw_name, NAME_MAX_BYTES)
    payload = len(value) - colon - 1
    malformed = None
    if not _is_printable(raw_name):
        malformed = 'key name is not printable UTF-8'
    elif payload < min_len:
        malformed = f'{payload} bytes after the prefix, {storage} needs at least {min_len}'
    elif storage == 'aescbc' and payload % 16:
        malformed = f'{payload} bytes after the prefix is not a whole number of AES blocks'
    return _result(storage, encrypted=True, provider=name, malformed=malformed)


def _classify_kms_v1(value: bytes) -> dict:
    # The provider name may contain ':'. Try each ':' left to right and take the first one
    # after which a big-endian uint16 DEK length fits the rest of the value. A name cannot
    # run into non-printable bytes, which also stops the search at the binary DEK.
    start = len(_KMS_V1)
    limit = min(len(value), start + NAME_MAX_BYTES + 1)
    first_colon = -1
    first_problem = None
    pos = start
    while True:
        colon = value.find(b':', pos, limit)
        if colon < 0:
            break
        pos = colon + 1
        if colon == start:
            continue  # empty name is not a name
        if not _is_printable(value[start:colon]):
            break
        remaining = len(value) - colon - 1
        if remaining < 2:
            problem = f'{remaining} bytes after the provider name, too short for the DEK length'
        else:
            dek_len = int.from_bytes(value[colon + 1:colon + 3], 'big')
            if dek_len > 0 and 2 + dek_len + _KMS_V1_MIN_DATA <= remaining:
                return _result('kms', encrypted=True, kms_version='v1',
                               provider=_text(value[start:colon], NAME_MAX_BYTES))
            problem = (f'KMS v1 DEK length {dek_len} is inconsistent with the {remaining} bytes '
                       'after the provider name')
        if first_colon < 0:
            first_colon, first_problem = colon, problem
    if first_colon < 0:
        return _result('kms', encrypted=True, kms_version='v1',
                       malformed=f"no printable provider name ended by ':' within {NAME_MAX_BYTES} bytes")
    return _result('kms', encrypted=True, kms_version='v1',
                   provider=_text(value[start:first_colon], NAME_MAX_BYTES), malformed=first_problem)


def _classify_kms_v2(value: bytes) -> dict:
    start = len(_KMS_V2)
    colon = _name_terminator(value, start)
    if colon < 0:
        return _result('kms', encrypted=True, kms_version='v2',
                       malformed=f"no ':' ends the provider name within {NAME_MAX_BYTES} bytes")
    if colon == start:
        return _result('kms', encrypted=True, kms_version='v2', malformed='empty provider name')
    raw_name = value[start:colon]
    provider = _text(raw_name, NAME_MAX_BYTES)
    key_id, malformed = _read_encrypted_object(value, colon + 1)
    if malformed is None and not _is_printable(raw_name):
        malformed = 'provider name is not printable UTF-8'
    return _result('kms', encrypted=True, kms_version='v2', provider=provider, key_id=key_id,
                   malformed=malformed)


def _read_encrypted_object(value: bytes, pos: int) -> tuple[str | None, str | None]:
    """Read keyID from a KMS v2 EncryptedObject at ``value[pos:]``; return ``(key_id, malformed)``.

    Mirrors the apiserver's validation (non-empty data, key id and DEK source; size limits)
    so a value the apiserver could not read is reported, while unknown fields are skipped.
    """
    data_len = dek_len = annotations_len = 0
    key_span = None
    dek_type = 0
    try:
        for number, wire_type, a, b in pw.iter_fields(value, pos):
            if number in (1, 2, 3, 4) and wire_type != pw.LEN:
                return None, f'EncryptedObject field {number} has wire type {wire_type}, expected {pw.LEN}'
            if number == 5 and wire_type != pw.VARINT:
                return None, f'EncryptedObject field 5 has wire type {wire_type}, expected {pw.VARINT}'
            if number == 1:
                data_len = b - a
            elif number == 2:
                key_span = (a, b)
            elif number == 3:
                dek_len = b - a
            elif number == 4:
                for entry_number, entry_type, ea, eb in pw.iter_fields(value, a, b):
                    if entry_number in (1, 2) and entry_type == pw.LEN:
                        annotations_len += eb - ea
            elif number == 5:
                dek_type = a
    except pw.ProtoWireError as exc:
        return None, f'KMS v2 EncryptedObject does not parse: {exc}'

    key_id = None
    problems = []
    if key_span is None or key_span[0] == key_span[1]:
        problems.append('keyID is empty')
    else:
        raw = value[key_span[0]:key_span[1]]
        key_id = _text(raw, KEY_ID_MAX_BYTES)
        if len(raw) > KEY_ID_MAX_BYTES:
            problems.append(f'keyID is {len(raw)} bytes, over the {KEY_ID_MAX_BYTES}-byte limit')
    if data_len == 0:
        problems.append('encryptedData is empty')
    if dek_len == 0:
        problems.append('encryptedDEKSource is empty')
    elif dek_len > _DEK_SOURCE_MAX_BYTES:
        problems.append(f'encryptedDEKSource is {dek_len} bytes, over the {_DEK_SOURCE_MAX_BYTES}-byte limit')
    if annotations_len > _ANNOTATIONS_MAX_BYTES:
        problems.append(f'annotations total {annotations_len} bytes, over the {_ANNOTATIONS_MAX_BYTES}-byte limit')
    if dek_type not in _KMS_V2_DEK_SOURCE_TYPES:
        problems.append(f'unknown encryptedDEKSourceType {dek_type}')
    return key_id, ('; '.join(problems) or None)


def _describe_unknown_transformer(value: bytes) -> str:
    # Name the transformer ("k8s:enc:<kind>:<version>:") when those two tokens are plain text,
    # so a provider this tool does not know is still identifiable; nothing beyond them.
    parts = value[len(_ENC_PREFIX):len(_ENC_PREFIX) + 64].split(b':', 2)
    if len(parts) == 3 and all(p and p.isascii() and p.decode().isprintable() for p in parts[:2]):
        return f'unrecognized transformer prefix k8s:enc:{parts[0].decode()}:{parts[1].decode()}:'
    return 'unrecognized k8s:enc: transformer prefix'
