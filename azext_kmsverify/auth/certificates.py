# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Certificate loading for service-principal sign-in (kubelogin ``spn`` with ``AZURE_CLIENT_CERTIFICATE_PATH``):
PEM or PKCS#12, as msal takes it. The key stays in memory."""

from __future__ import annotations


def certificate_credential(path: str, password: str | None) -> dict:
    """msal's certificate credential from a PEM or PKCS#12 file (kubelogin takes a pfx)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.serialization import pkcs12
    with open(path, 'rb') as handle:
        data = handle.read()
    if b'-----BEGIN' in data:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
        cert = x509.load_pem_x509_certificate(data)
    else:
        key, cert, _ = pkcs12.load_key_and_certificates(data, password.encode() if password else None)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {'private_key': pem, 'thumbprint': cert.fingerprint(hashes.SHA1()).hex(),  # x5t is SHA-1
            'public_certificate': cert.public_bytes(serialization.Encoding.PEM).decode()}
