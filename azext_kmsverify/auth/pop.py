# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Proof-of-possession tokens as kubelogin makes them (Azure/kubelogin pkg/internal/pop).

One RSA-2048 key per run, in memory only (never serialised). Its RFC 7638 thumbprint is the key id; the token
request carries ``token_type=pop``, ``key_id`` and ``req_cnf`` so Entra binds the access token to the key
(``cnf.kid``); each request to the cluster then carries a JWS signed with the key: header ``typ: pop``, ``alg``
and ``kid``; payload ``at`` (the access token), ``ts``, ``u``, ``cnf.jwk`` and a ``nonce``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b'=').decode('ascii')


def _int_b64(number: int) -> str:
    return _b64(number.to_bytes((number.bit_length() + 7) // 8 or 1, 'big'))


class PopKey:
    """The run's PoP key. ``repr`` shows the key id only."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self._key.public_key().public_numbers()
        self._e, self._n = _int_b64(numbers.e), _int_b64(numbers.n)
        # RFC 7638: the required members in lexicographic order, no whitespace.
        self.kid = _b64(hashlib.sha256(
            json.dumps({'e': self._e, 'kty': 'RSA', 'n': self._n}, separators=(',', ':')).encode()).digest())

    def __repr__(self) -> str:
        return f'PopKey(kid={self.kid})'

    __str__ = __repr__

    def jwk(self) -> dict:
        return {'e': self._e, 'kty': 'RSA', 'n': self._n, 'alg': 'RS256', 'kid': self.kid}

    def token_request_data(self) -> dict:
        """What the token request adds for a PoP token (MSAL's ``data``)."""
        req_cnf = _b64(json.dumps({'kid': self.kid, 'xms_ksl': 'sw'}, separators=(',', ':')).encode())
        return {'token_type': 'pop', 'key_id': self.kid, 'req_cnf': req_cnf}

    def sign(self, access_token: str, u: str, now: float | None = None) -> str:
        """The signed PoP token for one request or connection."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding
        header = {'typ': 'pop', 'alg': 'RS256', 'kid': self.kid}
        payload = {'at': access_token, 'ts': int(now if now is not None else time.time()), 'u': u,
                   'cnf': {'jwk': self.jwk()}, 'nonce': secrets.token_hex(16)}
        signing_input = '.'.join(_b64(json.dumps(part, separators=(',', ':')).encode()) for part in (header, payload))
        signature = self._key.sign(signing_input.encode('ascii'), padding.PKCS1v15(), hashes.SHA256())
        return f'{signing_input}.{_b64(signature)}'
