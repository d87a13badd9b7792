"""Which provider and key a value stored by the sandbox is under, read from its bytes (a test-side oracle)."""

from __future__ import annotations

from tests.sandbox import codec

V1_PREFIX = b'k8s:enc:kms:v1:kms-plugin:'
V2_PREFIX = b'k8s:enc:kms:v2:kms-plugin:'


def written_under(value: bytes) -> str:
    """``identity``, ``aescbc`` (or another local-key provider), ``v1:<KEK id>`` (the sandbox plugin's
    ciphertext names the KEK that wrapped the DEK) or ``v2:<key id>``."""
    if value.startswith(b'k8s\x00'):
        return 'identity'
    if value.startswith(V2_PREFIX):
        return 'v2:' + codec.decode_encrypted_object(value[len(V2_PREFIX):])['keyID']
    if value.startswith(V1_PREFIX):
        body = value[len(V1_PREFIX):]
        enc_dek = body[2:2 + int.from_bytes(body[:2], 'big')]
        return 'v1:' + enc_dek[5:5 + enc_dek[4]].decode()
    return value.split(b':')[2].decode()
