"""Value transformers exactly as kube-apiserver writes Secrets to etcd, and its EncryptionConfiguration.

The product classifies raw etcd values by their bytes, so the sandbox must store byte-for-byte what a real
apiserver stores (layouts in /work/shared/reference/storage-formats.md, checked against the fixture values in
/work/shared/fixtures/etcd-values/):

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
transformer tried to read encrypted data``, ``failed to decrypt DEK, error: ...``).
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
    """A stored value that no configured provider can read (or a provider that failed to write)."""


class Transformer:
    """One provider: ``to_storage`` returns the full stored value, ``from_storage`` takes the part after
    ``prefix``."""

    kind = ""
    prefix = b""
    name = ""

    def to_storage(self, etcd_key: str, plain: bytes) -> bytes:
        raise NotImplementedError

    def from_storage(self, etcd_key: str, payload: bytes) -> bytes:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.prefix.decode() or '(identity)'}>"


class IdentityTransformer(Transformer):
    kind = "identity"

    def to_storage(self, etcd_key: str, plain: bytes) -> bytes:
        return plain

    def from_storage(self, etcd_key: str, payload: bytes) -> bytes:
        if payload.startswith(ENCRYPTED_PREFIX):
            raise TransformError("identity transformer tried to read encrypted data")
        return payload


class _LocalKey(Transformer):
    key_sizes = (16, 24, 32)

    def __init__(self, key_name: str = "key1", key: bytes | None = None):
        key = key if key is not None else os.urandom(32)
        if len(key) not in self.key_sizes:
            raise ValueError(f"{self.kind} key must be {'/'.join(map(str, self.key_sizes))} bytes, not {len(key)}")
        self.name = key_name
        self.key = key
        self.prefix = f"k8s:enc:{self.kind}:v1:{key_name}:".encode()


class AESCBCTransformer(_LocalKey):
    kind = "aescbc"

    def to_storage(self, etcd_key: str, plain: bytes) -> bytes:
        return self.prefix + _cbc_encrypt(self.key, plain)

    def from_storage(self, etcd_key: str, payload: bytes) -> bytes:
        return _cbc_decrypt(self.key, payload)


class AESGCMTransformer(_LocalKey):
    kind = "aesgcm"

    def to_storage(self, etcd_key: str, plain: bytes) -> bytes:
        return self.prefix + _gcm_encrypt(self.key, plain, etcd_key.encode())

    def from_storage(self, etcd_key: str, payload: bytes) -> bytes:
        return _gcm_decrypt(self.key, payload, etcd_key.encode())


class SecretboxTransformer(_LocalKey):
    kind = "secretbox"
    key_sizes = (32,)

    def to_storage(self, etcd_key: str, plain: bytes) -> bytes:
        return self.prefix + bytes(SecretBox(self.key).encrypt(plain, os.urandom(SecretBox.NONCE_SIZE)))

    def from_storage(self, etcd_key: str, payload: bytes) -> bytes:
        if len(payload) < SecretBox.NONCE_SIZE + SecretBox.MACBYTES:
            raise TransformError("the stored data was shorter than the required size")
        try:
            return SecretBox(self.key).decrypt(payload)
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
        except Exception as e:  # KMSError and friends
            raise TransformError(f"failed to encrypt DEK, error: {e}") from None
        if len(enc_dek) > 0xFFFF:
            raise TransformError(f"encrypted DEK is {len(enc_dek)} bytes, more than a uint16 length allows")
        return self.prefix + struct.pack(">H", len(enc_dek)) + enc_dek + _gcm_encrypt(dek, plain, etcd_key.encode())

    def from_storage(self, etcd_key: str, payload: bytes) -> bytes:
        if len(payload) < 2:
            raise TransformError("invalid data encountered by envelope transformer: missing cipher text length")
        (n,) = struct.unpack(">H", payload[:2])
        if len(payload) < 2 + n:
            raise TransformError("invalid data encountered by envelope transformer: length longer than available bytes")
        enc_dek, data = payload[2:2 + n], payload[2 + n:]
        try:
            dek = self.client.decrypt(enc_dek)
        except Exception as e:
            raise TransformError(f"failed to decrypt DEK, error: {e}") from None
        try:
            return _gcm_decrypt(dek, data, etcd_key.encode())
        except TransformError:
            return _cbc_decrypt(dek, data)  # values written before Kubernetes 1.25


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
            raise TransformError(f"failed to encrypt DEK, error: {e}") from None
        if not key_id:
            raise TransformError("failed to encrypt DEK, error: keyID is empty")
        info = os.urandom(INFO_SIZE)
        data = info + _gcm_encrypt(_hkdf_expand(seed, info), plain, etcd_key.encode())
        obj = codec.encode_encrypted_object(data, key_id, enc_seed, annotations,
                                            codec.HKDF_SHA256_XNONCE_AES_GCM_SEED)
        return self.prefix + obj

    def from_storage(self, etcd_key: str, payload: bytes) -> bytes:
        try:
            obj = codec.decode_encrypted_object(payload)
        except ValueError as e:
            raise TransformError(f"failed to unmarshal encrypted object: {e}") from None
        if not obj["keyID"]:
            raise TransformError("failed to validate encrypted object: keyID is empty")
        try:
            dek_source = self.client.decrypt(obj["encryptedDEKSource"], obj["keyID"], obj["annotations"],
                                             str(uuid.uuid4()))
        except Exception as e:
            raise TransformError(f"failed to decrypt DEK, error: {e}") from None
        data = obj["encryptedData"]
        if obj["encryptedDEKSourceType"] == codec.HKDF_SHA256_XNONCE_AES_GCM_SEED:
            if len(data) < INFO_SIZE:
                raise TransformError("the stored data was shorter than the required size")
            info = data[:INFO_SIZE]
            return _gcm_decrypt(_hkdf_expand(dek_source, info), data[INFO_SIZE:], etcd_key.encode())
        if obj["encryptedDEKSourceType"] == codec.AES_GCM_KEY:
            return _gcm_decrypt(dek_source, data, etcd_key.encode())
        raise TransformError(f"unknown encryptedDEKSourceType: {obj['encryptedDEKSourceType']}")


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
        errors = []
        for p in self.providers:
            if not stored.startswith(p.prefix):
                continue
            try:
                return p.from_storage(etcd_key, stored[len(p.prefix):])
            except TransformError as e:
                if not p.prefix:  # identity refusing encrypted data must not hide the real error
                    continue
                errors.append(str(e))
        if errors:
            raise TransformError(errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]")
        detail = ""
        if stored.startswith(ENCRYPTED_PREFIX):
            head = b":".join(stored.split(b":", 5)[:5]) + b":"  # k8s:enc:<kind>:<version>:<name>:
            configured = ", ".join(repr(p.prefix.decode()) for p in self.providers if p.prefix) or "identity only"
            detail = f" (value prefix {head.decode(errors='replace')!r}; configured: {configured})"
        raise TransformError("no matching prefix found" + detail)

    @classmethod
    def for_provider(cls, name: str, kms_client=None, key_name: str = "key1",
                     kms_provider_name: str = KMS_PROVIDER_NAME, key: bytes | None = None) -> EncryptionConfig:
        """The sandbox's configuration for ``name`` (one of :data:`PROVIDER_NAMES`): that provider first, then
        identity, so Secrets written before encryption was enabled stay readable, as on a real cluster.
        ``kms_client`` (a :class:`~.kms_client.KMSClient` of the matching API) is required for KMS;
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
