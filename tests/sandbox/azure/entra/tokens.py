"""Minting what the token endpoint hands out: v1 access tokens (app and user), v2 ID tokens, the emulator's
refresh tokens (HMAC-signed, read back by the refresh-token grant) and the token response bodies (v2, and v1 with
string times and ``resource``)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time

from aiohttp import web

from ...apiserver.jwtverify import b64url, b64url_decode
from .tenant import REFRESH_LIFETIME


def base_claims(entra, aud: str, lifetime: int) -> dict:
    now = int(time.time())
    return {"aud": aud, "iss": f"https://sts.windows.net/{entra.tenant}/", "iat": now - 300, "nbf": now - 300,
            "exp": now + lifetime, "aio": b64url(os.urandom(48)),
            "rh": f"0.A{b64url(os.urandom(24))}.", "tid": entra.tenant, "uti": b64url(os.urandom(16)),
            "ver": "1.0", "xms_tcdt": 1600000000}


def app_token(entra, app: dict, found, acr: str, cnf) -> tuple[str, int]:
    lifetime = 3599 + secrets.randbelow(1200)
    claims = base_claims(entra, found[1], lifetime)
    claims.update({"appid": app["client_id"], "appidacr": acr, "idp": claims["iss"], "idtyp": "app",
                   "oid": app["object_id"], "sub": app["object_id"]})
    if app.get("managed_identity"):
        claims["xms_mirid"] = app["resource_id"]
    if cnf:
        claims["cnf"] = cnf
    return entra.sign(claims), lifetime


def user_token(entra, app: dict, user: dict, found, acr: str, amr, cnf) -> tuple[str, int]:
    lifetime = 3599 + secrets.randbelow(1200)
    claims = base_claims(entra, found[1], lifetime)
    given, _, family = user["name"].partition(" ")
    claims.update({"acr": "1", "amr": list(amr), "appid": app["client_id"], "appidacr": acr,
                   "family_name": family or given, "given_name": given, "idtyp": "user", "ipaddr": "127.0.0.1",
                   "name": user["name"], "oid": user["object_id"],
                   "puid": hashlib.sha256(user["object_id"].encode()).hexdigest()[:16].upper(),
                   "scp": "user_impersonation",
                   "sub": b64url(hashlib.sha256(f"{user['object_id']}:{found[0]}".encode()).digest()),
                   "unique_name": user["upn"], "upn": user["upn"]})
    if cnf:
        claims["cnf"] = cnf
    return entra.sign(claims), lifetime


def id_token(entra, request, app: dict, user: dict, nonce: str | None) -> str:
    now = int(time.time())
    claims = {"aud": app["client_id"], "iss": f"https://{request.host}/{entra.tenant}/v2.0", "iat": now - 300,
              "nbf": now - 300, "exp": now + 3600, "name": user["name"], "oid": user["object_id"],
              "preferred_username": user["upn"], "rh": f"0.A{b64url(os.urandom(24))}.",
              "sub": b64url(hashlib.sha256(f"{user['object_id']}:{app['client_id']}".encode()).digest()),
              "tid": entra.tenant, "uti": b64url(os.urandom(16)), "ver": "2.0"}
    if nonce:
        claims["nonce"] = nonce
    return entra.sign(claims)


def refresh_token(entra, app: dict, user: dict, amr) -> str:
    now = int(time.time())
    payload = b64url(json.dumps({"cid": app["client_id"], "oid": user["object_id"], "iat": now,
                                 "exp": now + REFRESH_LIFETIME, "amr": list(amr),
                                 "n": b64url(os.urandom(12))}).encode())
    mac = b64url(hmac.new(entra.refresh_key, payload.encode(), hashlib.sha256).digest())
    return f"1.A{payload}.{mac}"


def read_refresh_token(entra, token: str) -> dict | None:
    if not token.startswith("1.A") or token.count(".") != 2:
        return None
    payload, mac = token[3:].split(".", 1)[0], token.rsplit(".", 1)[1]
    good = b64url(hmac.new(entra.refresh_key, payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(mac, good):
        return None
    try:
        return json.loads(b64url_decode(payload))
    except ValueError:
        return None


def token_body(v1: bool, token: str, lifetime: int, cnf, resource: str) -> dict:
    body = {"token_type": "pop" if cnf else "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime,
            "access_token": token}
    if v1:
        now = int(time.time())
        body = {"token_type": body["token_type"], "expires_in": str(lifetime), "ext_expires_in": str(lifetime),
                "expires_on": str(now + lifetime), "not_before": str(now - 300), "resource": resource,
                "access_token": token}
    return body


def token_response(v1, token, lifetime, cnf, resource) -> web.Response:
    return web.json_response(token_body(v1, token, lifetime, cnf, resource),
                             headers={"Cache-Control": "no-store, no-cache"})
