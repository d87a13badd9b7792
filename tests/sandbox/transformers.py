"""Value transformers exactly as kube-apiserver writes Secrets to etcd, and its EncryptionConfiguration.

The product classifies raw etcd values by their bytes, so the sandbox must store byte-for-byte what a real
apiserver stores (layouts in kube-apiserver's value transformers, checked against the fixture values in
tests/fixtures/etcd-values/):

- identity: the ``k8s\\x00`` protobuf value as is.
- aescbc: ``k8s:enc:aescbc:v1:<key>:`` + 16-byte IV + AES-CBC (PKCS#7).
- aesgcm: ``k8s:enc:aesgcm:v1:<key>:`` + 12-byte nonce + ciphertext + 16-byte tag; additional data = etcd key.
- secretbox: ``k8s:enc:secretbox:v1:<key>:`` + 24-byte nonce + NaCl secretbox (tag, then ciphertext).
- KMS v1: ``k8s:enc:kms:v1:<provider>:`` + uint16 BE length + the plugin's encryption of a 32-byte DEK +
  AES-GCM of the data under the DEK (12-byte nonce, ct, tag; AAD = etcd key). Reads also accept the pre-1.25
  AES-CBC data layout, as the apiserver does.
- KMS v2: ``k8s:enc:kms:v2:<provider>:`` + ``EncryptedObject`` (see codec.py). ``encryptedDEKSourceType`` = 1
  (HKDF_SHA256_XNONCE_AES_GCM_SEED, the default since Kubernetes 1.29): the plugin encrypts a random 32-byte
  seed; each write draws a random 32-byte ``info``, derives the AES-256 key as HKDF-SHA256 *Expand only*
  (PRK = seed, info = that ``info``, no salt/extract step), and ``encryptedData`` = info (32) + nonce (12) +
  ct + tag, AAD = etcd key -- the same construction as upstream ``aes_extended_nonce.go``, so the layout and
  lengths match real values. A fresh seed per write (upstream caches one per key id; the layout is the same).
  Reads also accept type 0 (AES_GCM_KEY: the DEK is the AES key, data = nonce + ct + tag).

:class:`EncryptionConfig` models ``EncryptionConfiguration.resources[secrets].providers``: the first provider
writes, every provider whose prefix matches is tried on read, and identity (empty prefix) reads any value not
starting with ``k8s:enc:``. Errors carry the apiserver's wording (``no matching prefix found``, ``identity
transformer tried to read encrypted data``, KMS v2 ``failed to decrypt DEK, error: ...``, KMS v1 the bare gRPC error).

Reads also say whether the value is *stale* (``staging/src/k8s.io/apiserver/pkg/storage/value/transformer.go``
and the envelope transformers): read by any provider but the first (``stale || i != 0``: plaintext or a local
key when KMS is first); KMS v1 read through the AES-CBC fallback of its GCM/CBC union (``config.go``
``unionTransformers``); KMS v2 written under a key id other than the current one or another DEK source type
(``kmsv2/envelope.go``). A KMS v1 value is NOT stale after a KEK rotation: the plugin's KEK is invisible to the
apiserver. An update whose encoding is unchanged writes only a stale value (etcd3 ``GuaranteedUpdate``).
"""

from __future__ import annotations

import os
import struct
import uuid

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from nacl.secret import SecretBox

from . import codec

ENCRYPTED_PREFIX = b"k8s:enc:"
KMS_PROVIDER_NAME = "kms-plugin"  # what AKS on Azure Local configures, for v1 and v2
DEK_SIZE = 32
SEED_SIZE = 32
INFO_SIZE = 32


class TransformError(Exception):
    """A stored value that no configured provider can read (or a provider that failed to write). ``code`` is the
    gRPC code name when a KMS call failed (the ``status`` label of ``apiserver_storage_transformation_operations_
    total``), ``label`` the ``transformer_prefix`` label of the provider that tried (``unknown``: none matched)."""

    def __init__(self, message: str, code: str | None = None, label: str | None = None):
        super().__init__(message)
        self.code = code
        self.label = label


class ReadInfo:
    """How a stored value was read: ``stale`` (a provider other than the first, or a fallback inside one),
    ``key_id`` (KMS v2: the value's key id, compared with the current one when an update decides whether to
    write), ``provider`` (the KMS provider name), ``labels`` (the ``transformer_prefix`` labels of the read)."""

    __slots__ = ("stale", "key_id", "provider", "labels", "first")

    def __init__(self, stale: bool, key_id: str | None = None, provider: str = "", labels: tuple = (),
                 first: bool = True):
        self.stale = stale
        self.key_id = key_id
        self.provider = provider
        self.labels = labels
        self.first = first


def aggregate(messages: list[str]) -> str:
    """utilerrors.NewAggregate(...).Error(): one message bare, several deduplicated in brackets."""
    seen: list[str] = []
    for m in messages:
        if m not in seen:
            seen.append(m)
    return seen[0] if len(seen) == 1 else "[" + ", ".join(seen) + "]"


class Transformer:
    """One provider: ``to_storage`` returns the full stored value, ``from_storage`` takes the part after
    ``prefix``."""

    kind = ""
    prefix = b""
    name = ""

    def to_storage(self, etcd_key: str, plain: bytes) -> bytes:
        raise NotImplementedError

    def from_storage(self, etcd_key: str, payload: bytes) -> bytes:
        return self.from_storage_info(etcd_key, payload)[0]

    def from_storage_info(self, etcd_key: str, payload: bytes) -> tuple[bytes, bool, str | None]:
        """(plaintext, stale, KMS v2 key id or None)."""
        raise NotImplementedError

    @property
    def labels(self) -> tuple:
        """``transformer_prefix`` labels of a read by this provider: the provider's prefix, then (local keys) the
        key's prefix within it, as the nested prefix transformers record them."""
        return (self.prefix.decode() or "identity",)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.prefix.decode() or '(identity)'}>"


class IdentityTransformer(Transformer):
    kind = "identity"

    def to_storage(self, etcd_key: str, plain: bytes) -> bytes:
        return plain

    def from_storage_info(self, etcd_key: str, payload: bytes) -> tuple[bytes, bool, str | None]:
        if payload.startswith(ENCRYPTED_PREFIX):
            raise TransformError("identity transformer tried to read encrypted data")
        return payload, False, None


class _LocalKey(Transformer):
    key_sizes = (16, 24, 32)

    def __init__(self, key_name: str = "key1", key: bytes | None = None):
        key = key if key is not None else os.urandom(32)
        if len(key) not in self.key_sizes:
            raise ValueError(f"{self.kind} key must be {'/'.join(map(str, self.key_sizes))} bytes, not {len(key)}")
        self.name = key_name
        self.key = key
        self.prefix = f"k8s:enc:{self.kind}:v1:{key_name}:".encode()

    @property
    def labels(self) -> tuple:
        return (f"k8s:enc:{self.kind}:v1:", f"{self.name}:")


class AESCBCTransformer(_LocalKey):
    kind = "aescbc"

    def to_storage(self, etcd_key: str, plain: bytes) -> bytes:
        return self.prefix + _cbc_encrypt(self.key, plain)

    def from_storage_info(self, etcd_key: str, payload: bytes) -> tuple[bytes, bool, str | None]:
        return _cbc_decrypt(self.key, payload), False, None


class AESGCMTransformer(_LocalKey):
    kind = "aesgcm"

    def to_storage(self, etcd_key: str, plain: bytes) -> bytes:
        return self.prefix + _gcm_encrypt(self.key, plain, etcd_key.encode())

    def from_storage_info(self, etcd_key: str, payload: bytes) -> tuple[bytes, bool, str | None]:
        return _gcm_decrypt(self.key, payload, etcd_key.encode()), False, None


class SecretboxTransformer(_LocalKey):
    kind = "secretbox"
    key_sizes = (32,)

    def to_storage(self, etcd_key: str, plain: bytes) -> bytes:
        return self.prefix + bytes(SecretBox(self.key).encrypt(plain, os.urandom(SecretBox.NONCE_SIZE)))

    def from_storage_info(self, etcd_key: str, payload: bytes) -> tuple[bytes, bool, str | None]:
        if len(payload) < SecretBox.NONCE_SIZE + SecretBox.MACBYTES:
            raise TransformError("the stored data was shorter than the required size")
        try:
            return SecretBox(self.key).decrypt(payload), False, None
        except Exception:  # nacl CryptoError; upstream's (odd) wording for a failed Open
            raise TransformError("output array was not large enough for encryption") from None


class KMSv1Transformer(Transformer):
    kind = "kms"

    def __init__(self, client, provider_name: str = KMS_PROVIDER_NAME):
        self.client = client
        self.name = provider_name
        self.prefix = f"k8s:enc:kms:v1:{provider_name}:".encode()

    def to_storage(self, etcd_key: str, plain: bytes) -> bytes:
        dek = os.urandom(DEK_SIZE)
        try:
            enc_dek, _, _ = self.client.encrypt(dek)
        except Exception as e:  # KMSError: upstream returns the gRPC error unwrapped ("Do NOT wrap this err")
            raise TransformError(str(e), getattr(e, "code", None)) from None
        if len(enc_dek) > 0xFFFF:
            raise TransformError(f"encrypted DEK is {len(enc_dek)} bytes, more than a uint16 length allows")
        return self.prefix + struct.pack(">H", len(enc_dek)) + enc_dek + _gcm_encrypt(dek, plain, etcd_key.encode())

    def from_storage_info(self, etcd_key: str, payload: bytes) -> tuple[bytes, bool, str | None]:
        """envelope.go: a uint16-length-prefixed encrypted DEK, then the data under the DEK, read by
        ``unionTransformers{GCM, CBC}``: the CBC fallback (values written before 1.25) is a stale read. The
        plugin's KEK never shows: a value is not stale after a KEK rotation."""
        enc_dek, data = split_v1(payload)
        try:
            dek = self.client.decrypt(enc_dek)
        except Exception as e:  # the gRPC error, unwrapped, as upstream returns it
            raise TransformError(str(e), getattr(e, "code", None)) from None
        errors = []
        for stale, read in ((False, lambda: _gcm_decrypt(dek, data, etcd_key.encode())),
                            (True, lambda: _cbc_decrypt(dek, data))):
            try:
                return read(), stale, None
            except TransformError as e:
                errors.append(str(e))
        raise TransformError(aggregate(errors))


def split_v1(payload: bytes) -> tuple[bytes, bytes]:
    """(encrypted DEK, data) of a KMS v1 value after its prefix (cryptobyte ReadUint16LengthPrefixed)."""
    if len(payload) < 2 or len(payload) < 2 + struct.unpack(">H", payload[:2])[0]:
        raise TransformError("invalid data encountered by envelope transformer: failed to read uint16 length "
                             "prefixed data")
    (n,) = struct.unpack(">H", payload[:2])
    return payload[2:2 + n], payload[2 + n:]


def decode_v2(payload: bytes) -> dict:
    """The EncryptedObject of a KMS v2 value after its prefix, validated as kmsv2 ``doDecode`` does (same
    checks, same order, same words)."""
    try:
        obj = codec.decode_encrypted_object(payload)
    except (ValueError, IndexError):
        raise TransformError("proto: cannot parse invalid wire-format data") from None
    if obj["encryptedDEKSourceType"] not in (codec.AES_GCM_KEY, codec.HKDF_SHA256_XNONCE_AES_GCM_SEED):
        raise TransformError(f"unknown encryptedDEKSourceType: {obj['encryptedDEKSourceType']}")
    if not obj["encryptedData"]:
        raise TransformError("encrypted data is empty")
    if not obj["encryptedDEKSource"]:
        raise TransformError("failed to validate encrypted DEK source: encrypted DEK source is empty")
    if len(obj["encryptedDEKSource"]) > 1024:
        raise TransformError(f"failed to validate encrypted DEK source: encrypted DEK source is "
                             f"{len(obj['encryptedDEKSource'])} bytes, which exceeds the max size of 1024")
    if not obj["keyID"]:
        raise TransformError("failed to validate key id: keyID is empty")
    if len(obj["keyID"]) > 1024:
        raise TransformError(f"failed to validate key id: keyID is {len(obj['keyID'])} bytes, which exceeds the "
                             "max size of 1024")
    return obj


class KMSv2Transformer(Transformer):
    kind = "kms"

    def __init__(self, client, provider_name: str = KMS_PROVIDER_NAME):
        if ":" in provider_name:
            raise ValueError("KMS v2 provider names may not contain ':'")
        self.client = client
        self.name = provider_name
        self.prefix = f"k8s:enc:kms:v2:{provider_name}:".encode()

    def to_storage(self, etcd_key: str, plain: bytes) -> bytes:
        seed = os.urandom(SEED_SIZE)
        try:
            enc_seed, key_id, annotations = self.client.encrypt(seed, str(uuid.uuid4()))
        except Exception as e:
            raise TransformError(f"failed to encrypt DEK, error: {e}", getattr(e, "code", None)) from None
        if not key_id:
            raise TransformError("failed to encrypt DEK, error: keyID is empty")
        info = os.urandom(INFO_SIZE)
        data = info + _gcm_encrypt(_hkdf_expand(seed, info), plain, etcd_key.encode())
        obj = codec.encode_encrypted_object(data, key_id, enc_seed, annotations,
                                            codec.HKDF_SHA256_XNONCE_AES_GCM_SEED)
        return self.prefix + obj

    def from_storage_info(self, etcd_key: str, payload: bytes) -> tuple[bytes, bool, str | None]:
        """kmsv2/envelope.go: decode and validate the EncryptedObject, decrypt the DEK source (``failed to decrypt
        DEK, error: ...``), then the data. The key id comes back so the caller can tell stale (a key id other
        than the current one) at the time it matters; another DEK source type than the one written is stale."""
        obj = decode_v2(payload)
        try:
            dek_source = self.client.decrypt(obj["encryptedDEKSource"], obj["keyID"], obj["annotations"],
                                             str(uuid.uuid4()))
        except Exception as e:
            raise TransformError(f"failed to decrypt DEK, error: {e}", getattr(e, "code", None)) from None
        data = obj["encryptedData"]
        if obj["encryptedDEKSourceType"] == codec.HKDF_SHA256_XNONCE_AES_GCM_SEED:
            if len(data) < INFO_SIZE:
                raise TransformError("the stored data was shorter than the required size")
            info = data[:INFO_SIZE]
            plain = _gcm_decrypt(_hkdf_expand(dek_source, info), data[INFO_SIZE:], etcd_key.encode())
            return plain, False, obj["keyID"]
        # AES_GCM_KEY: not the DEK source type 1.30 writes, so stale
        return _gcm_decrypt(dek_source, data, etcd_key.encode()), True, obj["keyID"]


LOCAL_TRANSFORMERS = {"aescbc": AESCBCTransformer, "aesgcm": AESGCMTransformer, "secretbox": SecretboxTransformer}


# --- primitives -------------------------------------------------------------------------------------------


def _hkdf_expand(seed: bytes, info: bytes) -> bytes:
    return HKDFExpand(algorithm=hashes.SHA256(), length=DEK_SIZE, info=info).derive(seed)


def _gcm_encrypt(key: bytes, plain: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plain, aad)


def _gcm_decrypt(key: bytes, data: bytes, aad: bytes) -> bytes:
    if len(data) < 12 + 16:
        raise TransformError("the stored data was shorter than the required size")
    try:
        return AESGCM(key).decrypt(data[:12], data[12:], aad)
    except Exception:  # InvalidTag
        raise TransformError("cipher: message authentication failed") from None


def _cbc_encrypt(key: bytes, plain: bytes) -> bytes:
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv + enc.update(padded) + enc.finalize()


def _cbc_decrypt(key: bytes, data: bytes) -> bytes:
    if len(data) < 32 or len(data) % 16:
        raise TransformError("the stored data is not a multiple of the block size" if len(data) >= 16
                             else "the stored data was shorter than the required size")
    dec = Cipher(algorithms.AES(key), modes.CBC(data[:16])).decryptor()
    padded = dec.update(data[16:]) + dec.finalize()
    try:
        unpadder = padding.PKCS7(128).unpadder()
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise TransformError("invalid PKCS7 data (empty or not padded)") from None


# --- EncryptionConfiguration ------------------------------------------------------------------------------

PROVIDER_NAMES = ("kms-v1", "kms-v2", "aescbc", "aesgcm", "secretbox", "identity")


class EncryptionConfig:
    """The ``secrets`` resource of an EncryptionConfiguration: an ordered list of transformers."""

    def __init__(self, providers: list[Transformer]):
        if not providers:
            raise ValueError("an EncryptionConfiguration needs at least one provider")
        self.providers = list(providers)

    @property
    def writer(self) -> Transformer:
        return self.providers[0]

    @property
    def kms_providers(self) -> list[Transformer]:
        """The KMS transformers (each with ``.client`` and ``.name``), in order: the apiserver's
        ``kms-provider-N`` health checks."""
        return [p for p in self.providers if p.kind == "kms"]

    def write(self, etcd_key: str, plain: bytes) -> bytes:
        """The value to store at ``etcd_key`` (the first provider writes)."""
        return self.writer.to_storage(etcd_key, plain)

    def read(self, etcd_key: str, stored: bytes) -> bytes:
        """The plaintext of a stored value: every provider whose prefix matches is tried, in order."""
        return self.read_info(etcd_key, stored)[0]

    def read_info(self, etcd_key: str, stored: bytes) -> tuple[bytes, ReadInfo]:
        """(plaintext, :class:`ReadInfo`) as ``prefixTransformers.TransformFromStorage``: the first provider whose
        prefix matches and reads it wins, and the read is stale when that provider is not the first one
        (``stale || i != 0``); identity refusing encrypted data does not hide the real error; no match is
        ``no matching prefix found``. A TransformError carries the ``transformer_prefix`` label that failed."""
        errors, codes, labels = [], [], []
        for i, p in enumerate(self.providers):
            if not stored.startswith(p.prefix):
                continue
            try:
                plain, stale, key_id = p.from_storage_info(etcd_key, stored[len(p.prefix):])
            except TransformError as e:
                if not p.prefix:
                    continue
                errors.append(str(e))
                codes.append(e.code)
                labels.append(p.labels[0])
                continue
            return plain, ReadInfo(stale or i != 0, key_id, p.name if p.kind == "kms" else "", p.labels,
                                   first=i == 0)
        if errors:
            raise TransformError(aggregate(errors), codes[0], labels[0])
        detail = ""  # a sandbox addition (commit 74b958c): upstream's error is the bare "no matching prefix found"
        if stored.startswith(ENCRYPTED_PREFIX):
            head = b":".join(stored.split(b":", 5)[:5]) + b":"  # k8s:enc:<kind>:<version>:<name>:
            configured = ", ".join(repr(p.prefix.decode()) for p in self.providers if p.prefix) or "identity only"
            detail = f" (value prefix {head.decode(errors='replace')!r}; configured: {configured})"
        raise TransformError("no matching prefix found" + detail, None, "unknown")

    @classmethod
    def for_provider(cls, name: str, kms_client=None, key_name: str = "key1",
                     kms_provider_name: str = KMS_PROVIDER_NAME, key: bytes | None = None) -> EncryptionConfig:
        """The sandbox's configuration for ``name`` (one of :data:`PROVIDER_NAMES`): that provider first, then
        identity, so Secrets written before encryption was enabled stay readable, as on a real cluster.
        ``kms_client`` (a :class:`~.processes.kms_client.KMSClient` of the matching API) is required for KMS;
        ``key`` is the local key for aescbc/aesgcm/secretbox (random if omitted)."""
        if name == "identity":
            return cls([IdentityTransformer()])
        if name in ("kms-v1", "kms-v2"):
            if kms_client is None:
                raise ValueError(f"{name} needs a kms_client")
            want = name.split("-")[1]
            if getattr(kms_client, "api", want) != want:
                raise ValueError(f"{name} needs a {want} KMS client, got {kms_client.api}")
            t = (KMSv1Transformer if want == "v1" else KMSv2Transformer)(kms_client, kms_provider_name)
            return cls([t, IdentityTransformer()])
        if name in LOCAL_TRANSFORMERS:
            return cls([LOCAL_TRANSFORMERS[name](key_name, key), IdentityTransformer()])
        raise ValueError(f"unknown provider {name!r} (expected one of {', '.join(PROVIDER_NAMES)})")
