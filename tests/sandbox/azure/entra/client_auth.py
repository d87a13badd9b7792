"""Client authentication at the token endpoint: a client secret (form or HTTP Basic), a certificate assertion (a
JWT signed by the app's registered certificate, found by ``x5t``/``x5t#S256``/``x5c``, RS256 or PS256, ``aud`` = the
token endpoint) or a federated assertion (a JWT from a trusted issuer matching one of the app's federated
credentials: issuer, subject, audience ``api://AzureADTokenExchange``); public clients present neither."""

from __future__ import annotations

import base64
import hmac
import time
from urllib.parse import unquote

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from ...apiserver.jwtverify import TokenError, b64url_decode, unverified_claims
from .errors import error_response, public_with_credential, utc
from .tenant import ASSERTION_LEEWAY, JWT_BEARER


def authenticate_client(entra, request, form, seg: str) -> tuple[dict, str] | web.Response:
    """The client of a token request and how it authenticated (``appidacr``: ``"0"`` a public client, ``"1"`` a
    client secret, ``"2"`` a certificate or federated assertion), or Entra's error answer."""
    client_id, secret = form.get("client_id"), form.get("client_secret")
    basic = request.headers.get("Authorization", "")
    if basic.lower().startswith("basic "):
        try:
            cid, _, pw = base64.b64decode(basic[6:].strip()).decode().partition(":")
            client_id, secret = unquote(cid), unquote(pw)
        except ValueError:
            return error_response(request, 401, "invalid_client", 7000215, "Invalid client secret provided.")
    if not client_id:
        return error_response(request, 400, "invalid_request", 900144, "The request body must contain the "
                              "following parameter: 'client_id'.")
    app = entra.apps.get(client_id.lower())
    if app is None:
        return error_response(request, 400, "unauthorized_client", 700016, f"Application with identifier "
                              f"'{client_id}' was not found in the directory '{entra.domain}'. This can happen if the "
                              "application has not been installed by the administrator of the tenant or consented "
                              "to by any user in the tenant. You may have sent your authentication request to the "
                              "wrong tenant.")
    assertion = form.get("client_assertion")
    acr = "0"
    if assertion is not None:
        if app.get("public"):
            return public_with_credential(request)
        if form.get("client_assertion_type") != JWT_BEARER:
            return error_response(request, 400, "invalid_request", 50027, "Invalid client_assertion_type: "
                                  f"'{form.get('client_assertion_type')}', expected '{JWT_BEARER}'.")
        problem = check_assertion(entra, request, app, assertion, seg)
        if problem is not None:
            return problem
        acr = "2"
    elif secret is not None:
        if app.get("public"):
            return public_with_credential(request)
        if not any(hmac.compare_digest(secret, s) for s in app["secrets"]):
            return error_response(request, 401, "invalid_client", 7000215, "Invalid client secret provided. Ensure "
                                  "the secret being sent in the request is the client secret value, not the client "
                                  f"secret ID, for a secret added to app '{app['client_id']}'.")
        if entra.expired_at is not None:
            return error_response(request, 401, "invalid_client", 7000222, f"The provided client secret keys for "
                                  f"app '{app['client_id']}' are expired. Visit the Azure portal to create new keys "
                                  "for your app: https://aka.ms/NewClientSecret, or consider using certificate "
                                  "credentials for added security: https://aka.ms/certCreds.")
        acr = "1"
    elif not app.get("public"):
        return error_response(request, 401, "invalid_client", 7000218, "The request body must contain the "
                              "following parameter: 'client_assertion' or 'client_secret'.")
    return app, acr


def _thumb(value) -> bytes | None:
    """A certificate thumbprint from a JWS header (base64url, padded or not, as MSAL sends it)."""
    if not isinstance(value, str):
        return None
    try:
        return b64url_decode(value.rstrip("="))
    except ValueError:
        return None


def _token_endpoints(entra, request, seg: str) -> list[str]:
    hosts = {request.host, entra.url.removeprefix("https://")} - {""}
    return [f"https://{h}/{t}/oauth2{v}/token" for h in hosts for t in {seg, entra.tenant} for v in ("/v2.0", "")]


def check_assertion(entra, request, app: dict, assertion: str, seg: str) -> web.Response | None:
    """None when ``assertion`` authenticates ``app`` (its certificate, or a matching federated credential)."""
    import jwt
    try:
        header = jwt.get_unverified_header(assertion)
        claims = unverified_claims(assertion)
    except (jwt.PyJWTError, TokenError):
        return error_response(request, 401, "invalid_client", 50027, "JWT token is invalid or malformed.")
    now = time.time()
    if claims.get("iss") == app["client_id"]:  # a certificate credential
        found = None
        x5t, x5t256, x5c = header.get("x5t"), header.get("x5t#S256"), header.get("x5c")
        for cert, sha1, sha256 in entra.certs.get(app["client_id"].lower(), []):
            der = cert.public_bytes(serialization.Encoding.DER)
            if _thumb(x5t) == sha1 or _thumb(x5t256) == sha256 or (
                    isinstance(x5c, list) and x5c and x5c[0] == base64.b64encode(der).decode()):
                found = cert
        if found is None:
            shown = x5t256 or x5t or "none"
            return error_response(request, 401, "invalid_client", 700027, "The certificate with identifier used to "
                                  "sign the client assertion is not registered on application. [Reason - The key was "
                                  f"not found., Thumbprint of key used by client: '{shown}', Please visit the Azure "
                                  "Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id "
                                  f"'{app['client_id']}'.]")
        try:
            jwt.decode(assertion, found.public_key(), algorithms=["RS256", "PS256"],
                       audience=_token_endpoints(entra, request, seg), leeway=ASSERTION_LEEWAY,
                       options={"require": ["exp", "aud", "iss", "sub"]})
        except jwt.InvalidSignatureError:
            return error_response(request, 401, "invalid_client", 7000274, "Key was found, but use of the key to "
                                  "verify the signature failed.")
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
            return _time_range(request, claims, now)
        except jwt.InvalidAudienceError:
            return error_response(request, 401, "invalid_client", 700212, f"The audience '{claims.get('aud')}' of "
                                  "the client assertion is not this tenant's token endpoint.")
        except jwt.PyJWTError as e:
            return error_response(request, 401, "invalid_client", 50027, f"JWT token is invalid or malformed: {e}.")
        if claims.get("sub") != app["client_id"]:
            return error_response(request, 401, "invalid_client", 700021, "Client assertion application identifier "
                                  "doesn't match 'client_id' parameter.")
        return None
    iss = claims.get("iss")  # a federated credential
    if iss not in entra.issuers or not any(f["issuer"] == iss for f in app["federated"]):
        return error_response(request, 400, "invalid_request", 700211, f"No matching federated identity record "
                              f"found for presented assertion issuer '{iss}'. Please check your federated identity "
                              "credential Subject, Audience and Issuer against the presented assertion. "
                              "https://learn.microsoft.com/entra/workload-id/workload-identity-federation")
    key, kid = entra.issuers[iss]
    try:
        jwt.decode(assertion, key.public_key(), algorithms=["RS256"], leeway=ASSERTION_LEEWAY,
                   options={"verify_aud": False, "require": ["exp", "iss", "sub", "aud"]})
    except jwt.InvalidSignatureError:
        return error_response(request, 401, "invalid_client", 50013, "Assertion failed signature validation. "
                              f"[Reason - The key was not found., Thumbprint of key used by client: "
                              f"'{header.get('kid')}']")
    except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
        return _time_range(request, claims, now)
    except jwt.PyJWTError as e:
        return error_response(request, 401, "invalid_client", 50027, f"JWT token is invalid or malformed: {e}.")
    auds = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    matching = [f for f in app["federated"] if f["issuer"] == iss]
    if not any(f["subject"] == claims["sub"] for f in matching):
        return error_response(request, 400, "invalid_request", 700213, f"No matching federated identity record "
                              f"found for presented assertion subject '{claims['sub']}'. Please check your federated "
                              "identity credential Subject, Audience and Issuer against the presented assertion.")
    if not any(a in f["audiences"] for f in matching for a in auds):
        return error_response(request, 400, "invalid_request", 700212, f"No matching federated identity record "
                              f"found for presented assertion audience '{', '.join(map(str, auds))}'. Please check "
                              "your federated identity credential Subject, Audience and Issuer against the presented "
                              "assertion.")
    return None


def _time_range(request, claims, now):
    return error_response(request, 400, "invalid_client", 700024, f"Client assertion is not within its valid time "
                          f"range. Current time: {utc(now)}, assertion valid from {utc(claims.get('nbf') or 0)}, "
                          f"expiry time of assertion {utc(claims.get('exp') or 0)}.")
