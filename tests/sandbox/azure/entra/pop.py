"""Proof-of-possession requests at the token endpoint: ``token_type=pop`` with ``req_cnf`` (base64url JSON with
``kid``, or ``jwk`` whose RFC 7638 thumbprint becomes the ``kid``) binds the access token to the caller's key: its
``cnf`` claim."""

from __future__ import annotations

import json

from ...apiserver.jwtverify import b64url_decode, jwk_thumbprint
from .errors import error_response


def req_cnf(request, form):
    """The ``cnf`` claim for a PoP request (``token_type=pop`` + ``req_cnf``), None for a bearer request."""
    if (form.get("token_type") or "bearer").lower() != "pop":
        return None
    raw = form.get("req_cnf")
    try:
        req = json.loads(b64url_decode(raw or ""))
        if not isinstance(req, dict):
            raise ValueError("not an object")
        if isinstance(req.get("jwk"), dict):
            kid = jwk_thumbprint(req["jwk"])
        else:
            kid = req["kid"]
        if not isinstance(kid, str) or not kid:
            raise ValueError("no kid")
    except (ValueError, KeyError, TypeError):
        return error_response(request, 400, "invalid_request", 5002728, "The provided value for the input "
                              "parameter 'req_cnf' is not valid: expected base64url JSON with 'kid' (or 'jwk').")
    cnf = {"kid": kid}
    if isinstance(req.get("xms_ksl"), str):
        cnf["xms_ksl"] = req["xms_ksl"]
    return cnf
