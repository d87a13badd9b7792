"""Entra's error answers, shared by every endpoint of the emulator: ``error``, ``error_description`` starting
``AADSTS<code>:`` (with Trace ID, Correlation ID and Timestamp), ``error_codes``, ``trace_id``, ``correlation_id``,
``timestamp``, ``error_uri``."""

from __future__ import annotations

import time
import uuid

from aiohttp import web


def utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


def error_response(request, status: int, error: str, code: int, message: str, **extra) -> web.Response:
    now = time.time()
    trace = str(uuid.uuid4())
    corr = request.headers.get("client-request-id") or str(uuid.uuid4())
    body = {"error": error,
            "error_description": f"AADSTS{code}: {message} Trace ID: {trace} Correlation ID: {corr} "
                                 f"Timestamp: {utc(now)}",
            "error_codes": [code], "timestamp": utc(now), "trace_id": trace, "correlation_id": corr,
            "error_uri": f"https://{request.host}/error?code={code}", **extra}
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store, no-cache"})


def no_tenant(request, segment: str) -> web.Response:
    return error_response(request, 400, "invalid_request", 90002, f"Tenant '{segment}' not found. Check to make "
                          "sure you have the correct tenant ID and are signing in to the correct cloud. Check with "
                          "your subscription administrator, this may happen if there are no active subscriptions "
                          "for the tenant.")


def public_with_credential(request):
    return error_response(request, 401, "invalid_client", 700025, "Client is public so neither 'client_assertion' "
                          "nor 'client_secret' should be presented.")


def unknown_resource(entra, request, res):
    return error_response(request, 400, "invalid_resource", 500011, f"The resource principal named {res} was not "
                          f"found in the tenant named {entra.domain}. This can happen if the application has not been "
                          "installed by the administrator of the tenant or consented to by any user in the tenant. "
                          "You might have sent your authentication request to the wrong tenant.")
