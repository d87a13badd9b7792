"""Checking Entra ID access tokens and AKS Arc PoP tokens, as the real resource servers check them.

- :class:`JWKSVerifier`: an RS256 access token against a JWKS document (the Entra emulator's, the same dict it
  serves at ``jwks_uri``): signature by ``kid``, ``iss``, ``aud``, ``exp``/``nbf``. Raises :class:`TokenError`
  whose ``kind`` says what failed (``malformed``, ``signature``, ``expired``, ``not_yet_valid``, ``audience``,
  ``issuer``), so ARM and the API server can answer with their own error shapes.
- :func:`verify_pop`: a PoP token as kubelogin ``--pop-enabled`` builds it (Azure/kubelogin
  ``pkg/internal/pop``) and the Arc cluster's guard checks it: a JWS with header ``{"typ": "pop", "alg": "RS256",
  "kid": <thumbprint>}`` and payload ``{"at": <access token>, "ts": <unix seconds>, "u": <cluster ARM id>,
  "cnf": {"jwk": <RSA public JWK>}, "nonce": ...}``, signed with the key of ``cnf.jwk``; the access token inside
  must be valid and bound to that key (its ``cnf.kid`` is the RFC 7638 thumbprint of the JWK).

PyJWT does the JWS and claim checks; nothing here is hand-written crypto.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time

import jwt
from jwt.algorithms import RSAAlgorithm

POP_VALIDITY = 15 * 60  # guard's PoP token validity: ts + 15 minutes


class TokenError(Exception):
    """A token that does not pass; ``kind`` is one of the kinds in the module docstring (or ``pop``)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwk_thumbprint(jwk: dict) -> str:
    """RFC 7638 SHA-256 thumbprint (base64url) of an RSA JWK: the required members e, kty, n in that order."""
    canonical = json.dumps({"e": jwk["e"], "kty": jwk["kty"], "n": jwk["n"]}, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode()).digest())


def unverified_claims(token: str) -> dict:
    """The payload of a JWS without checking anything (for choosing how to check it)."""
    try:
        claims = json.loads(b64url_decode(token.split(".")[1]))
    except (IndexError, ValueError):
        raise TokenError("malformed", "IDX14100: JWT is not well formed.") from None
    if not isinstance(claims, dict):
        raise TokenError("malformed", "IDX14100: JWT is not well formed.")
    return claims


class JWKSVerifier:
    """RS256 access tokens signed by a key of ``jwks`` and issued by one of ``issuers``."""

    def __init__(self, jwks: dict, issuers, leeway: int = 0):
        self.keys = {k["kid"]: RSAAlgorithm.from_jwk(json.dumps(k)) for k in jwks["keys"]}
        self.issuers = list(issuers)
        self.leeway = leeway

    def verify(self, token: str, audiences) -> dict:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed", "IDX14100: JWT is not well formed.") from None
        if header.get("alg") != "RS256":
            raise TokenError("signature", f"IDX10511: Signature validation failed: algorithm '{header.get('alg')}' "
                             "is not accepted (RS256 only).")
        key = self.keys.get(header.get("kid"))
        if key is None:
            raise TokenError("signature", f"IDX10503: Signature validation failed. Token does not have a kid that "
                             f"matches a signing key of the issuer (kid: '{header.get('kid')}').")
        try:
            return jwt.decode(token, key, algorithms=["RS256"], audience=list(audiences), issuer=self.issuers,
                              leeway=self.leeway, options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            exp = unverified_claims(token).get("exp")
            raise TokenError("expired", f"IDX10223: Lifetime validation failed. The token is expired. ValidTo (UTC): "
                             f"'{_utc(exp)}', Current time (UTC): '{_utc(time.time())}'.") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("not_yet_valid", "IDX10222: Lifetime validation failed. The token is not yet valid.") \
                from None
        except jwt.InvalidAudienceError:
            aud = unverified_claims(token).get("aud")
            raise TokenError("audience", f"IDX10214: Audience validation failed. Audiences: '{aud}'. Did not match: "
                             f"validationParameters.ValidAudiences: '{', '.join(audiences)}'.") from None
        except jwt.InvalidIssuerError:
            iss = unverified_claims(token).get("iss")
            raise TokenError("issuer", f"IDX10205: Issuer validation failed. Issuer: '{iss}'. Did not match: "
                             f"validationParameters.ValidIssuers: '{', '.join(self.issuers)}'.") from None
        except jwt.InvalidSignatureError:
            raise TokenError("signature", "IDX10504: Signature validation failed. The token's signature does not "
                             "verify with the signing key.") from None
        except jwt.PyJWTError as e:
            raise TokenError("malformed", f"IDX14100: JWT is not well formed: {e}.") from None


def verify_pop(token: str, host: str, verifier: JWKSVerifier, audiences, now: float | None = None) -> dict:
    """The claims of the access token inside a valid PoP token for ``host`` (the cluster's ARM id, compared
    case-insensitively); TokenError ``pop`` (or the inner token's kind) otherwise. Messages follow guard's."""
    now = time.time() if now is None else now
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise TokenError("pop", f"PoP token invalid schema. Token length: {len(parts)}")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
    except ValueError as e:
        raise TokenError("pop", f"Could not parse PoP token. Error: {e}") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenError("pop", "Could not parse PoP token. Error: not a JSON object")
    if not header.get("kid"):
        raise TokenError("pop", "No KeyID found in PoP token header")
    if header.get("alg") != "RS256":
        raise TokenError("pop", f"Wrong algorithm found in PoP token header, expected 'RS256' having "
                         f"'{header.get('alg')}'")
    if not isinstance(header.get("typ"), str) or header["typ"].lower() != "pop":
        raise TokenError("pop", f"Wrong typ. Expected 'pop' having '{header.get('typ')}'")
    ts = claims.get("ts")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        raise TokenError("pop", "Invalid token. 'ts' claim is missing")
    if ts + POP_VALIDITY < now:
        raise TokenError("pop", f"Token is expired. Now: {_utc(now)}, Valid till: {_utc(ts + POP_VALIDITY)}")
    if ts - POP_VALIDITY > now:
        raise TokenError("pop", f"Token is not yet valid. Now: {_utc(now)}, Issued at: {_utc(ts)}")
    u = claims.get("u")
    if not isinstance(u, str):
        raise TokenError("pop", "Invalid token. 'u' claim is missing")
    if u.lower() != host.lower():
        raise TokenError("pop", f"Invalid Pop token due to host mismatch. Expected: {json.dumps(host)}, received: "
                         f"{json.dumps(u)}")
    cnf = claims.get("cnf")
    jwk = cnf.get("jwk") if isinstance(cnf, dict) else None
    if not isinstance(jwk, dict) or jwk.get("kty") != "RSA" or not jwk.get("n") or not jwk.get("e"):
        raise TokenError("pop", "failed while parsing 'jwk' claim in PoP token: an RSA key (kty, n, e) is required")
    try:
        key = RSAAlgorithm.from_jwk(json.dumps(jwk))
        jwt.PyJWS().decode(token, key, algorithms=["RS256"])
    except jwt.PyJWTError as e:
        raise TokenError("pop", f"RSA verify err: {e}") from None
    at = claims.get("at")
    if not isinstance(at, str):
        raise TokenError("pop", "Invalid token. 'at' claim is missing")
    inner = verifier.verify(at, audiences)
    thumbprint = jwk_thumbprint(jwk)
    bound = (inner.get("cnf") or {}).get("kid") if isinstance(inner.get("cnf"), dict) else None
    if bound != thumbprint:
        raise TokenError("pop", f"The access token is not bound to the PoP key: its cnf.kid is "
                         f"{json.dumps(bound)}, the key's thumbprint is {json.dumps(thumbprint)}")
    return inner


def _utc(ts) -> str:
    if not isinstance(ts, (int, float)):
        return "0001-01-01T00:00:00Z"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
