"""Who is asking and what they may do: the API server emulator's authentication and RBAC.

Authentication by client certificate (CN = user, O = groups) or an Entra-like bearer JWT (``aud`` the AKS Entra
server id, unexpired, a ``upn``); RBAC as the sandbox's roles grant it: admins and Entra users everything, the
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
