"""Who is asking and what they may do: the API server emulator's authentication and RBAC.

Authentication by client certificate (CN = user, O = groups), then by bearer token. Without the Entra emulator
the token is an Entra-like unsigned JWT (``aud`` the AKS Entra server id, unexpired, a ``upn``). With it
(``up --entra``, :class:`EntraAuthn` installed on the app by the server process) the cluster authenticates as an
AKS Arc cluster with Entra does: the access token must verify against the emulator's JWKS (signature, issuer,
audience ``6256c85f-...``, expiry), and with ``enforcePoP`` (the default) it must come inside a PoP token bound to
this cluster's ARM id (:func:`tests.sandbox.apiserver.jwtverify.verify_pop`); failures are 401 ``Status``
bodies that say why. RBAC as the sandbox's roles grant it: admins and Entra users everything, the
``restricted-user`` (and Entra users whose upn starts with ``restricted``) read-only on pods and secrets, without
``create pods/exec`` in kube-system. Denials are the real 403 ``Status`` bodies.
"""

from __future__ import annotations

import base64
import binascii
import json
import time

from aiohttp import web

from . import kube

AKS_SERVER_ID = "6dae42f8-4368-4678-94ff-3960e28e3630"
AKS_ARC_SERVER_ID = "6256c85f-0aad-4d50-b960-e6e9b21efe35"
ADMIN_GROUP = "system:masters"
RESTRICTED_USER = "restricted-user"


class User:
    def __init__(self, name: str, groups=(), restricted: bool = False):
        self.name = name
        self.groups = list(groups)
        self.restricted = restricted


# --- authentication ---------------------------------------------------------------------------------------


def _decode_jwt(token: str) -> dict | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    return claims if isinstance(claims, dict) else None


def _aud_ok(aud) -> bool:
    auds = aud if isinstance(aud, list) else [aud]
    for a in auds:
        if not isinstance(a, str):
            continue
        a = a[len("api://"):] if a.startswith("api://") else a
        a = a[:-len("/.default")] if a.endswith("/.default") else a
        if a == AKS_SERVER_ID:
            return True
    return False


def authenticate(request: web.Request) -> User | None:
    """Client certificate first, then the bearer token, as kube-apiserver's union authenticator orders them
    (x509 before tokens); None when neither authenticates."""
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport else None
    if cert:
        cn, orgs = "", []
        for rdn in cert.get("subject", ()):
            for k, v in rdn:
                if k == "commonName":
                    cn = v
                elif k == "organizationName":
                    orgs.append(v)
        if cn:
            return User(cn, orgs + ["system:authenticated"],
                        restricted=ADMIN_GROUP not in orgs and cn == RESTRICTED_USER)
    auth = request.headers.get("Authorization", "")
    if not auth.lower().startswith("bearer "):
        return None
    entra = request.app.get(ENTRA_AUTHN)
    if entra is not None:
        return entra.authenticate(auth[7:].strip())
    claims = _decode_jwt(auth[7:].strip())
    if not claims or not _aud_ok(claims.get("aud")):
        return None
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or exp < time.time():
        return None
    upn = claims.get("upn") or claims.get("unique_name") or claims.get("oid")
    if not upn:
        return None
    groups = list(claims.get("groups") or []) + ["system:authenticated"]
    return User(upn, groups, restricted=upn.lower().startswith("restricted"))


class EntraAuthn:
    """Bearer tokens as an AKS Arc cluster with Entra checks them (see the module docstring)."""

    def __init__(self, verifier, cluster_id: str, enforce_pop: bool = True):
        self.verifier = verifier  # a tests.sandbox.apiserver.jwtverify.JWKSVerifier on the Entra emulator's JWKS
        self.cluster_id = cluster_id
        self.enforce_pop = enforce_pop

    def authenticate(self, token: str) -> User:
        """The user of a valid token; raises 401 (a ``Status`` saying why) for any other."""
        from .apiserver.jwtverify import TokenError, b64url_decode, verify_pop
        try:
            header = json.loads(b64url_decode(token.split(".")[0]))
        except (ValueError, binascii.Error):
            header = None
        if not isinstance(header, dict):
            raise _unauthorized("Unauthorized: the bearer token is not a JWT")
        try:
            if str(header.get("typ", "")).lower() == "pop":
                claims = verify_pop(token, self.cluster_id, self.verifier, [AKS_ARC_SERVER_ID])
            elif self.enforce_pop:
                raise _unauthorized("Unauthorized: this cluster requires a PoP token (enforcePoP): a plain Bearer "
                                    "access token is not accepted; sign in with kubelogin --pop-enabled --pop-claims "
                                    f"\"u={self.cluster_id}\"")
            else:
                claims = self.verifier.verify(token, [AKS_ARC_SERVER_ID])
        except TokenError as e:
            raise _unauthorized(f"Unauthorized: invalid {'PoP ' if e.kind == 'pop' else ''}token: {e.message}") \
                from None
        name = claims.get("upn") or claims.get("unique_name") or claims.get("oid")
        if not name:
            raise _unauthorized("Unauthorized: the access token names no user (no upn, unique_name or oid)")
        groups = list(claims.get("groups") or []) + ["system:authenticated"]
        return User(name, groups, restricted=str(name).lower().startswith("restricted"))


ENTRA_AUTHN = web.AppKey("entra_authn", EntraAuthn)


def install_entra(app: web.Application, authn: EntraAuthn) -> None:
    """Make the API server's app authenticate bearer tokens with ``authn`` (the server process calls this)."""
    app[ENTRA_AUTHN] = authn


def _unauthorized(message: str) -> web.HTTPUnauthorized:
    """A 401 with a Status body; raised from the authentication middleware, so aiohttp answers it as it is."""
    return web.HTTPUnauthorized(text=kube.dumps(kube.status_obj(401, "Unauthorized", message)),
                                content_type=kube.JSON)


# --- authorization ----------------------------------------------------------------------------------------


def authorize(user: User, verb: str, resource: str, namespace: str | None, subresource: str | None = None) -> bool:
    """RBAC as the sandbox's roles grant it: admins and Entra users everything; the restricted user read-only
    on pods and secrets (no ``create pods/exec`` in kube-system, no secret writes)."""
    if not user.restricted:
        return True
    if verb in ("get", "list", "watch") and subresource is None:
        return True
    if resource == "pods" and subresource == "exec":
        return namespace != "kube-system"
    return False


def deny(request: web.Request, verb: str, resource: str, namespace: str | None, name: str | None = None,
         subresource: str | None = None) -> web.Response | None:
    """The 403 for the request's user (authenticated by the middleware), or None when RBAC allows it."""
    user: User = request["user"]
    if authorize(user, verb, resource, namespace, subresource):
        return None
    return kube.forbidden(user.name, verb, resource, namespace, name, subresource)
