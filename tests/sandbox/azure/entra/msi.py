"""The managed-identity endpoint, on its own plain-HTTP port, App Service style (``IDENTITY_ENDPOINT`` +
``IDENTITY_HEADER``): ``GET /msi/token?resource=...&api-version=2019-08-01`` with ``X-IDENTITY-HEADER``; ``ctl
{"managed_identity": "down"|"error"|"up"}`` closes its port (connection refused), answers 500, or restores it
(:func:`set_mode`)."""

from __future__ import annotations

import hmac
import time
import uuid

from aiohttp import web

from .tenant import find_resource
from .tokens import app_token


async def h_msi(entra, request):
    corr = str(uuid.uuid4())
    if entra.msi_mode == "error":
        return web.json_response({"statusCode": 500, "message": "An unexpected error occured while fetching the "
                                  "AAD Token.", "correlationId": corr}, status=500)
    if not hmac.compare_digest(request.headers.get("X-IDENTITY-HEADER", ""), entra.msi_header):
        return web.json_response({"statusCode": 401, "message": "Unauthorized: the X-IDENTITY-HEADER header is "
                                  "missing or does not match IDENTITY_HEADER.", "correlationId": corr}, status=401)
    q = request.query
    if q.get("api-version") != "2019-08-01":
        return web.json_response({"statusCode": 400, "message": f"The api-version '{q.get('api-version')}' is not "
                                  "supported: use 2019-08-01.", "correlationId": corr}, status=400)
    resource = q.get("resource")
    if not resource:
        return web.json_response({"statusCode": 400, "message": "The 'resource' query parameter is required.",
                                  "correlationId": corr}, status=400)
    mi = next(a for a in entra.reg["apps"] if a.get("managed_identity"))
    for param, field in (("client_id", "client_id"), ("principal_id", "object_id"), ("object_id", "object_id"),
                         ("mi_res_id", "resource_id")):
        if q.get(param) and q[param].lower() != mi[field].lower():
            return web.json_response({"statusCode": 400, "message": "No User Assigned or Delegated Managed "
                                      "Identity found for specified ClientId/ResourceId/PrincipalId.",
                                      "correlationId": corr}, status=400)
    found = find_resource(resource)
    if found is None:
        return web.json_response({"statusCode": 400, "message": f"AADSTS500011: The resource principal named "
                                  f"{resource} was not found in the tenant named {entra.domain}.",
                                  "correlationId": corr}, status=400)
    token, lifetime = app_token(entra, mi, found, "2", None)
    return web.json_response({"access_token": token, "expires_on": str(int(time.time()) + lifetime),
                              "resource": resource, "token_type": "Bearer", "client_id": mi["client_id"]})


async def set_mode(entra, mode: str) -> str:
    """``down``: the port is closed (connection refused); ``error``: 500 answers; ``up``: back to normal."""
    if mode not in ("up", "down", "error"):
        raise ValueError("managed_identity must be 'up', 'down' or 'error'")
    if mode == "down" and entra.msi_site is not None:
        await entra.msi_site.stop()
        entra.msi_site = None
    elif mode != "down" and entra.msi_site is None and entra.msi_runner is not None:
        site = web.TCPSite(entra.msi_runner, "127.0.0.1", entra.msi_port, reuse_address=True)
        await site.start()
        entra.msi_site = site
    entra.msi_mode = mode
    return mode
