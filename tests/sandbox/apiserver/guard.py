"""The token webhook of a sandbox with the real kube-apiserver: a TokenReview endpoint shaped like guard's
(the authentication webhook AKS Arc clusters run for Entra sign-in).

kube-apiserver (``--authentication-token-webhook-config-file``) POSTs ``TokenReview`` (``authentication.k8s.io/v1``)
with the bearer token; the answer is a ``TokenReview`` whose ``status`` says ``authenticated`` and the user, or
``error`` saying why not. With the Entra emulator the token is checked as :class:`.auth.EntraAuthn` checks it (the
access token against the JWKS; with enforcePoP only a PoP token bound to this cluster's ARM id); without it, the
unsigned Entra-like JWT of :func:`.auth.authenticate`. The groups are what the AKS Arc cluster's Entra groups give:
every identity but a ``restricted*`` one is in the admin group (bound to cluster-admin, :mod:`.kubeapiserver`).
"""

from __future__ import annotations

import json
import logging
import time

from aiohttp import web

from .. import auth
from .kubeapiserver import ADMIN_GROUP, RESTRICTED_GROUP

log = logging.getLogger("sandbox.guard")


class Guard:
    def __init__(self, entra_authn: auth.EntraAuthn | None):
        self.authn = entra_authn

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/tokenreview", self.h_review)
        return app

    def _user(self, token: str) -> tuple[str | None, str]:
        """(user name, "") or (None, why not)."""
        if self.authn is not None:
            try:
                user = self.authn.authenticate(token)
            except web.HTTPUnauthorized as e:
                try:
                    return None, json.loads(e.text)["message"]
                except (ValueError, KeyError, TypeError):
                    return None, "Unauthorized"
            return user.name, ""
        claims = auth._decode_jwt(token)
        if not claims or not auth._aud_ok(claims.get("aud")):
            return None, "Unauthorized: not an access token for the AKS server application"
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or exp < time.time():
            return None, "Unauthorized: the token has expired"
        name = claims.get("upn") or claims.get("unique_name") or claims.get("oid")
        return (name, "") if name else (None, "Unauthorized: the token names no user")

    async def h_review(self, request: web.Request) -> web.Response:
        try:
            review = await request.json()
            token = review["spec"]["token"]
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "not a TokenReview"}, status=400)
        name, why = self._user(token)
        if name is None:
            status = {"authenticated": False, "error": why}
            log.info("tokenreview: denied (%s)", why)
        else:
            restricted = str(name).lower().startswith("restricted")
            status = {"authenticated": True, "user": {
                "username": name, "groups": [RESTRICTED_GROUP if restricted else ADMIN_GROUP]}}
        return web.json_response({"apiVersion": review.get("apiVersion", "authentication.k8s.io/v1"),
                                  "kind": "TokenReview", "status": status})
