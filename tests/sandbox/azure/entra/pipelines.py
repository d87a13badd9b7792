"""The Azure Pipelines OIDC endpoint (``SYSTEM_OIDCREQUESTURI``): ``POST ...?api-version=7.1&serviceConnectionId=<id>``
with ``Authorization: Bearer <SYSTEM_ACCESSTOKEN>`` answers ``{"oidcToken": <jwt>}`` from the pipelines issuer (a
federated credential of the ``sandbox-pipelines`` app)."""

from __future__ import annotations

import hmac
import time
import uuid

from aiohttp import web

from .tenant import TOKEN_EXCHANGE_AUDIENCE


async def h_pipelines_oidc(entra, request):
    import jwt
    p = entra.pipelines
    auth = request.headers.get("Authorization", "")
    if not (auth.lower().startswith("bearer ") and hmac.compare_digest(auth[7:].strip(),
                                                                      p["system_access_token"])):
        return web.json_response({"$id": "1", "innerException": None, "message": "TF400813: The user '' is not "
                                  "authorized to access this resource.", "typeName": "Microsoft.TeamFoundation."
                                  "Framework.Server.UnauthorizedRequestException, Microsoft.TeamFoundation."
                                  "Framework.Server", "typeKey": "UnauthorizedRequestException", "errorCode": 0,
                                  "eventId": 3000}, status=401)
    if not request.query.get("api-version", "").startswith("7.1"):
        return web.json_response({"$id": "1", "message": "The requested REST API version of "
                                  f"{request.query.get('api-version')!r} is not supported: use 7.1.",
                                  "typeKey": "VssVersionNotSupportedException"}, status=400)
    if request.query.get("serviceConnectionId", "").lower() != p["service_connection_id"]:
        return web.json_response({"$id": "1", "message": f"Service connection "
                                  f"'{request.query.get('serviceConnectionId')}' not found or not authorized for "
                                  "this pipeline.", "typeKey": "ServiceEndpointNotFoundException"}, status=404)
    spec = entra.reg["issuers"]["pipelines"]
    key, kid = entra.issuers[spec["issuer"]]
    now = int(time.time())
    token = jwt.encode({"jti": str(uuid.uuid4()), "sub": spec["subject"], "aud": TOKEN_EXCHANGE_AUDIENCE,
                        "iss": spec["issuer"], "nbf": now, "exp": now + 900, "iat": now},
                       key, algorithm="RS256", headers={"kid": kid})
    return web.json_response({"oidcToken": token})
