"""The authorization endpoint (``/<tenant>/oauth2/v2.0/authorize``, v1 ``/<tenant>/oauth2/authorize``): interactive
sign-in without a person, redirecting back with a code (PKCE ``S256``) that the token endpoint's
``authorization_code`` grant (:func:`.grants.authorization_code`) redeems."""

from __future__ import annotations

import json
import os
import time
import uuid
from urllib.parse import urlencode

from aiohttp import web

from ...apiserver.jwtverify import b64url
from .errors import no_tenant


async def h_authorize(entra, request):
    """Interactive sign-in without a person: signs in as ``login_hint`` (or the operator) and redirects back
    with a code, as after the user entered their password (``az login`` and kubelogin ``--login interactive``
    work with a BROWSER that merely fetches the URL)."""
    seg = request.match_info["tenant"]
    if entra.tenant_of(seg) is None:
        return no_tenant(request, seg)
    q = request.query
    app = entra.apps.get((q.get("client_id") or "").lower())
    redirect = q.get("redirect_uri") or ""
    if app is None or not redirect.startswith(("http://localhost", "http://127.0.0.1", "https://")):
        return web.Response(status=400, text="AADSTS50011: The redirect URI specified in the request does not "
                            "match the redirect URIs configured for the application.\n")
    user = (q.get("login_hint") or entra.reg["users"][0]["upn"]).lower()
    if user not in entra.users:
        user = entra.reg["users"][0]["upn"].lower()
    code = f"1.A{b64url(os.urandom(48))}"
    if q.get("code_challenge") and q.get("code_challenge_method", "plain") != "S256":
        return web.Response(status=400, text="AADSTS501491: code_challenge_method must be S256.\n")
    entra.auth_codes[code] = {"client_id": app["client_id"], "user": user, "redirect_uri": redirect,
                             "scope": q.get("scope") or "", "challenge": q.get("code_challenge"),
                             "nonce": q.get("nonce"), "expires": time.time() + 600}
    params = {"code": code}
    if q.get("state"):
        params["state"] = q["state"]
    params["client_info"] = b64url(json.dumps({"uid": entra.users[user]["object_id"],
                                               "utid": entra.tenant}).encode())
    params["session_state"] = str(uuid.uuid4())
    sep = "&" if "?" in redirect else "?"
    raise web.HTTPFound(redirect + sep + urlencode(params))
