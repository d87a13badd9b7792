"""The token endpoint (``/<tenant>/oauth2/v2.0/token``, v1 ``/<tenant>/oauth2/token``): the tenant, the client's
authentication (:mod:`.client_auth`), the scope (v1: ``resource``), a PoP request (:mod:`.pop`), then the grant
(:mod:`.grants`, one function each) and, for a user flow, the tokens: access token, ``refresh_token`` (v1, or with
``offline_access``), ``id_token`` (v1, or with ``openid``), ``client_info`` when asked."""

from __future__ import annotations

import json

from aiohttp import web

from ...apiserver.jwtverify import b64url
from . import grants
from .client_auth import authenticate_client
from .errors import error_response, no_tenant, unknown_resource
from .pop import req_cnf
from .tenant import find_resource
from .tokens import id_token, refresh_token, token_body, user_token


async def h_token(entra, request: web.Request) -> web.Response:
    seg = request.match_info["tenant"]
    v1 = request.path.endswith("/oauth2/token")
    tid = entra.tenant_of(seg)
    if tid is None:
        return no_tenant(request, seg)
    form = await request.post()
    grant = form.get("grant_type")
    if not grant:
        return error_response(request, 400, "invalid_request", 900144, "The request body must contain the "
                              "following parameter: 'grant_type'.")
    client = authenticate_client(entra, request, form, seg)
    if isinstance(client, web.Response):
        return client
    app, acr = client
    if v1:
        resource = form.get("resource")
        scope = (resource.rstrip("/") + "/.default" if resource else "") + " " + (form.get("scope") or "")
    else:
        scope = form.get("scope") or ""
    pop = req_cnf(request, form)
    if isinstance(pop, web.Response):
        return pop
    t = grants.TokenRequest(request, seg, tid, v1, form, app, acr, scope, pop)
    if grant == "client_credentials":
        return grants.client_credentials(entra, t)
    user_grant = grants.USER_GRANTS.get(grant)
    if user_grant is None:
        return error_response(request, 400, "unsupported_grant_type", 70003, f"The app requested an unsupported "
                              f"grant type '{grant}'.")
    got = user_grant(entra, t)
    if isinstance(got, web.Response):
        return got
    return user_token_response(entra, t, got)


def user_token_response(entra, t: grants.TokenRequest, g: grants.UserGrant) -> web.Response:
    """The answer to a user flow: a user access token for the one resource of the scope (Microsoft Graph when
    none), with a refresh token and an ID token as the scope and endpoint ask."""
    request, v1, form, app, acr, pop = t.request, t.v1, t.form, t.app, t.acr, t.pop
    user, amr, scope, nonce = g.user, g.amr, g.scope, g.nonce
    res_scopes, oidc = grants.split_scopes(scope)
    if len({s.rsplit("/", 1)[0] for s in res_scopes}) > 1:
        return error_response(request, 400, "invalid_scope", 28000, f"Provided value for the input parameter scope "
                              f"is not valid because it contains more than one resource. Scope {scope} is not valid.")
    if res_scopes:
        resource = res_scopes[0].rsplit("/", 1)[0] if "/" in res_scopes[0] else "https://graph.microsoft.com"
    else:
        resource = "https://graph.microsoft.com"
    found = find_resource(resource)
    if found is None:
        return unknown_resource(entra, request, resource)
    token, lifetime = user_token(entra, app, user, found, acr, amr, pop)
    body = token_body(v1, token, lifetime, pop, found[1])
    body["scope"] = " ".join(res_scopes) if res_scopes else "User.Read"
    if v1 or "offline_access" in oidc:
        body["refresh_token"] = refresh_token(entra, app, user, amr)
    if "openid" in oidc or v1:
        body["id_token"] = id_token(entra, request, app, user, nonce)
    if form.get("client_info") == "1":
        body["client_info"] = b64url(json.dumps({"uid": user["object_id"], "utid": entra.tenant}).encode())
    return web.json_response(body, headers={"Cache-Control": "no-store, no-cache"})
