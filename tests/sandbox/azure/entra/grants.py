"""The token endpoint's grants, one function each: ``client_credentials`` (the client authenticated itself:
secret, certificate or federated assertion, :mod:`.client_auth`), and the user flows ``password``,
``device_code``, ``authorization_code`` (PKCE) and ``refresh_token``. A user flow answers the user, how they signed
in (``amr``), the scope and the nonce (:class:`UserGrant`), which :func:`.token.user_token_response` turns into
tokens; every grant may answer Entra's error instead."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from aiohttp import web

from ...apiserver.jwtverify import b64url
from .errors import error_response, unknown_resource, utc
from .tenant import DEVICE_CODE_GRANT, OIDC_SCOPES, find_resource
from .tokens import app_token, read_refresh_token, token_response


@dataclass
class TokenRequest:
    """A token request whose client has authenticated: the tenant segment (``seg``) and the tenant it names
    (``tid``), v1 or v2 endpoint, the form, the client app and its ``appidacr``, the requested scope (v1: from
    ``resource``) and the PoP ``cnf`` (None: a bearer token)."""
    request: web.Request
    seg: str
    tid: str
    v1: bool
    form: dict
    app: dict
    acr: str
    scope: str
    pop: dict | None


@dataclass
class UserGrant:
    user: dict
    amr: list
    scope: str
    nonce: str | None = None


def split_scopes(scope: str) -> tuple[list[str], set[str]]:
    parts = scope.split()
    return [s for s in parts if s.lower() not in OIDC_SCOPES], {s.lower() for s in parts} & OIDC_SCOPES


def client_credentials(entra, t: TokenRequest) -> web.Response:
    request, seg, tid, scope, app, acr, pop, v1 = t.request, t.seg, t.tid, t.scope, t.app, t.acr, t.pop, t.v1
    if tid in ("common", "organizations"):
        return error_response(request, 400, "invalid_request", 900023, f"Specified tenant identifier '{seg}' "
                              "is neither a valid DNS name, nor a valid external domain.")
    res_scopes, _ = split_scopes(scope)
    if not res_scopes:
        return error_response(request, 400, "invalid_request", 90014, "The required field 'scope' is missing "
                              "from the credential. Ensure that you have all the necessary parameters for the "
                              "login request.")
    if len(res_scopes) > 1 or not res_scopes[0].endswith("/.default"):
        return error_response(request, 400, "invalid_scope", 1002012, f"The provided value for scope "
                              f"{' '.join(res_scopes)} is not valid. Client credential flows must have a scope "
                              "value with /.default suffixed to the resource identifier (application ID URI).")
    found = find_resource(res_scopes[0][:-len("/.default")])
    if found is None:
        return unknown_resource(entra, request, res_scopes[0][:-len("/.default")])
    token, lifetime = app_token(entra, app, found, acr, pop)
    return token_response(v1, token, lifetime, pop, found[1])


def password(entra, t: TokenRequest) -> UserGrant | web.Response:
    request, form = t.request, t.form
    user = entra.users.get((form.get("username") or "").lower())
    if user is None:
        return error_response(request, 400, "invalid_grant", 50034, "The user account {EUII Hidden} does not "
                              f"exist in the {entra.domain} directory. To sign into this application, the account "
                              "must be added to the directory.")
    if not hmac.compare_digest(form.get("password") or "", user["password"]):
        return error_response(request, 400, "invalid_grant", 50126, "Error validating credentials due to "
                              "invalid username or password.")
    return UserGrant(user, ["pwd"], t.scope)


def device_code(entra, t: TokenRequest) -> UserGrant | web.Response:
    request, form, app = t.request, t.form, t.app
    entry = entra.device_codes.get(form.get("device_code") or "")
    if entry is None or entry["client_id"] != app["client_id"]:
        return error_response(request, 400, "invalid_grant", 70000, "Provided grant is invalid or malformed.")
    if entry["expires"] < time.time():
        entra.device_codes.pop(form.get("device_code"), None)
        return error_response(request, 400, "expired_token", 70020, "The provided value for the input "
                              "parameter 'device_code' is not valid. This device code has expired.")
    if entry.get("user") is None:
        return error_response(request, 400, "authorization_pending", 70016, "OAuth 2.0 device flow error. "
                              "Authorization is pending. Continue polling.")
    entra.device_codes.pop(form["device_code"], None)
    return UserGrant(entra.users[entry["user"]], ["pwd", "mfa"], t.scope or entry["scope"])


def authorization_code(entra, t: TokenRequest) -> UserGrant | web.Response:
    request, form, app = t.request, t.form, t.app
    entry = entra.auth_codes.pop(form.get("code") or "", None)
    if entry is None or entry["client_id"] != app["client_id"] or entry["expires"] < time.time():
        return error_response(request, 400, "invalid_grant", 70008, "The provided authorization code or "
                              "refresh token has expired due to inactivity. Send a new interactive authorization "
                              "request for this user and resource.")
    if entry["redirect_uri"] != form.get("redirect_uri"):
        return error_response(request, 400, "invalid_grant", 50148, "The redirect_uri does not match the one "
                              "of the authorization request.")
    if entry.get("challenge"):
        verifier = form.get("code_verifier") or ""
        if b64url(hashlib.sha256(verifier.encode()).digest()) != entry["challenge"]:
            return error_response(request, 400, "invalid_grant", 501481, "The Code_Verifier does not match the "
                                  "code_challenge supplied in the authorization request.")
    return UserGrant(entra.users[entry["user"]], ["pwd", "mfa"], t.scope or entry["scope"], entry.get("nonce"))


def refresh_token(entra, t: TokenRequest) -> UserGrant | web.Response:
    request, form, app = t.request, t.form, t.app
    grant_claims = read_refresh_token(entra, form.get("refresh_token") or "")
    if grant_claims is None or grant_claims["cid"] != app["client_id"]:
        return error_response(request, 400, "invalid_grant", 9002313, "Invalid request. Request is malformed "
                              "or invalid.")
    if grant_claims["exp"] < time.time() or (entra.expired_at is not None
                                             and grant_claims["iat"] <= entra.expired_at):
        return error_response(request, 400, "invalid_grant", 700082, "The refresh token has expired due to "
                              "inactivity. The token was issued on "
                              f"{utc(grant_claims['iat'])} and was inactive for 90.00:00:00.")
    user = next((u for u in entra.users.values() if u["object_id"] == grant_claims["oid"]), None)
    if user is None:
        return error_response(request, 400, "invalid_grant", 50034, "The user account {EUII Hidden} does not "
                              f"exist in the {entra.domain} directory.")
    return UserGrant(user, grant_claims.get("amr") or ["pwd"], t.scope)


# The user flows by grant_type (client_credentials is answered apart: an app token, no user).
USER_GRANTS = {"password": password, DEVICE_CODE_GRANT: device_code, "authorization_code": authorization_code,
               "refresh_token": refresh_token}
