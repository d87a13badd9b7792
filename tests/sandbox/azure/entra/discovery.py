"""OIDC discovery (v2 ``/<tenant>/v2.0/.well-known/openid-configuration``, v1 ``/<tenant>/.well-known/
openid-configuration``) for the tenant id, its domain, ``common`` and ``organizations``; the JWKS (``/<tenant>/
discovery/v2.0/keys``, ``/<tenant>/discovery/keys``, ``/discovery/keys``); MSAL's user realm lookup. Each handler
takes the :class:`.server.Entra` first."""

from __future__ import annotations

import json

from aiohttp import web

from .errors import no_tenant


async def h_discovery_v2(entra, request):
    seg = request.match_info["tenant"]
    tid = entra.tenant_of(seg)
    if tid is None:
        return _discovery_error(request, seg)
    base = f"https://{request.host}"
    t = entra.tenant if tid == entra.tenant else tid
    issuer = f"{base}/{t if t == entra.tenant else '{tenantid}'}/v2.0"
    return web.json_response({
        "token_endpoint": f"{base}/{t}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": f"{base}/{t}/discovery/v2.0/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"], "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": issuer, "request_uri_parameter_supported": False,
        "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
        "authorization_endpoint": f"{base}/{t}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{base}/{t}/oauth2/v2.0/devicecode",
        "http_logout_supported": True, "frontchannel_logout_supported": True,
        "end_session_endpoint": f"{base}/{t}/oauth2/v2.0/logout",
        "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
                             "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr",
                             "nonce", "preferred_username",
                             "name", "tid", "ver", "at_hash", "c_hash", "email"],
        "kerberos_endpoint": f"{base}/{t}/kerberos", "tenant_region_scope": "NA",
        "cloud_instance_name": "microsoftonline.com", "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com", "rbac_url": "https://pas.windows.net"})


async def h_discovery_v1(entra, request):
    seg = request.match_info["tenant"]
    tid = entra.tenant_of(seg)
    if tid is None:
        return _discovery_error(request, seg)
    base = f"https://{request.host}"
    t = entra.tenant if tid == entra.tenant else tid
    return web.json_response({
        "token_endpoint": f"{base}/{t}/oauth2/token",
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": f"{base}/{t}/discovery/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"], "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
        "scopes_supported": ["openid"],
        "issuer": f"https://sts.windows.net/{t if t == entra.tenant else '{tenantid}'}/",
        "microsoft_multi_refresh_token": True,
        "authorization_endpoint": f"{base}/{t}/oauth2/authorize",
        "device_authorization_endpoint": f"{base}/{t}/oauth2/devicecode",
        "http_logout_supported": True, "frontchannel_logout_supported": True,
        "end_session_endpoint": f"{base}/{t}/oauth2/logout",
        "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
                             "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr",
                             "amr", "nonce", "email",
                             "given_name", "family_name", "nickname"],
        "check_session_iframe": f"{base}/{t}/oauth2/checksession",
        "userinfo_endpoint": f"{base}/{t}/openid/userinfo",
        "kerberos_endpoint": f"{base}/{t}/kerberos", "tenant_region_scope": "NA",
        "cloud_instance_name": "microsoftonline.com", "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com", "rbac_url": "https://pas.windows.net"})


def _discovery_error(request, seg):
    resp = no_tenant(request, seg)
    body = json.loads(resp.body)
    body["error"] = "invalid_tenant"
    return web.json_response(body, status=400)


async def h_keys(entra, request):
    seg = request.match_info.get("tenant", "common")
    tid = entra.tenant_of(seg)
    if tid is None:
        return _discovery_error(request, seg)
    issuer = None
    if "/v2.0/" in request.path:
        issuer = f"https://{request.host}/{tid if tid == entra.tenant else '{tenantid}'}/v2.0"
    return web.json_response(entra.jwks(issuer))


async def h_userrealm(entra, request):
    upn = request.match_info["username"]
    known = upn.lower() in entra.users or upn.lower().endswith(("@contoso.com", "@" + entra.domain))
    return web.json_response({"ver": "1.0", "account_type": "Managed" if known else "Unknown",
                              "domain_name": entra.domain if known else upn.rpartition("@")[2],
                              "cloud_instance_name": "microsoftonline.com",
                              "cloud_audience_urn": "urn:federation:MicrosoftOnline"})
