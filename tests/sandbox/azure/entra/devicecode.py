"""The device code flow's endpoints: ``/<tenant>/oauth2/v2.0/devicecode`` (v1 ``/<tenant>/oauth2/devicecode``) hands
out a device code and a user code; ``/devicelogin`` is the page a person opens to enter it (here: signs in without a
form). The token endpoint's ``device_code`` grant (:func:`.grants.device_code`) then answers."""

from __future__ import annotations

import os
import secrets
import string
import time

from aiohttp import web

from ...apiserver.jwtverify import b64url
from .errors import error_response, no_tenant


async def h_devicecode(entra, request):
    seg = request.match_info["tenant"]
    if entra.tenant_of(seg) is None:
        return no_tenant(request, seg)
    form = await request.post()
    app = entra.apps.get((form.get("client_id") or "").lower())
    if app is None:
        return error_response(request, 400, "unauthorized_client", 700016, f"Application with identifier "
                              f"'{form.get('client_id')}' was not found in the directory '{entra.domain}'.")
    user_code = "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(9))
    device_code = f"DAQABIQEAAAB{b64url(os.urandom(48))}"
    entra.device_codes[device_code] = {"client_id": app["client_id"], "user_code": user_code, "user": None,
                                      "scope": form.get("scope") or form.get("resource") or "",
                                      "expires": time.time() + 900}
    uri = f"https://{request.host}/devicelogin"
    return web.json_response({"user_code": user_code, "device_code": device_code, "verification_uri": uri,
                              "expires_in": 900, "interval": 5,
                              "message": f"To sign in, use a web browser to open the page {uri} and enter the "
                                         f"code {user_code} to authenticate."})


async def h_devicelogin(entra, request):
    """The page a person opens to enter the device code: ``?user_code=...[&username=...]`` signs in as that
    user (default the sandbox's operator) without a form, as if they had typed the code and their password."""
    params = dict(request.query)
    if request.method == "POST":
        params.update(await request.post())
    code = (params.get("user_code") or "").upper()
    user = (params.get("username") or entra.reg["users"][0]["upn"]).lower()
    if user not in entra.users:
        return web.Response(status=400, text=f"unknown user {user}\n")
    for entry in entra.device_codes.values():
        if entry["user_code"] == code and entry["expires"] >= time.time():
            entry["user"] = user
            return web.Response(text=f"{user} signed in on the device; you can close this window.\n")
    return web.Response(status=400, text="That code didn't work. Check the code and try again.\n")
