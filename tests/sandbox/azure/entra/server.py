"""The Entra ID emulator's server side: :class:`Entra`, the emulated tenant the sandbox's server process serves (an
HTTPS site and the managed-identity site). It holds the tenant's state (apps, certificates, users, federation
issuers, device and authorization codes, the ``ctl`` modes), its signing key and JWKS, and routes each endpoint to
its module: :mod:`.discovery`, :mod:`.token` (with :mod:`.client_auth`, :mod:`.pop`, :mod:`.grants` and
:mod:`.tokens`), :mod:`.devicecode`, :mod:`.authorize`, :mod:`.pipelines`, :mod:`.msi`. Their handlers take the
:class:`Entra` as their first argument."""

from __future__ import annotations

import base64
import json
import logging
import os
import time
import uuid
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ...apiserver.jwtverify import JWKSVerifier, b64url, jwk_thumbprint
from . import authorize, devicecode, discovery, msi, pipelines, token
from .tenant import PUBLIC_CLIENTS, TOKEN_EXCHANGE_AUDIENCE, _oidc_path, _write_private

log = logging.getLogger("sandbox.entra")


class Entra:
    """The emulated tenant, served by the sandbox's server process (see the package docstring)."""

    def __init__(self, cfg: dict):
        import jwt  # noqa: F401  (fail early; PyJWT signs and checks every token here)

        self.cfg = cfg
        self.reg = reg = json.loads(Path(cfg["registry"]).read_text())
        self.tenant = reg["tenant"]
        self.domain = reg["domain"]
        self.enforce_pop = bool(cfg.get("enforce_pop", True))
        self.cluster_id = reg["cluster_id"]
        self.signing_key = serialization.load_pem_private_key(Path(reg["signing"]["key"]).read_bytes(), None)
        self.signing_cert = x509.load_pem_x509_certificate(Path(reg["signing"]["cert"]).read_bytes())
        self.kid = b64url(self.signing_cert.fingerprint(hashes.SHA1()))
        self.apps = {a["client_id"].lower(): a for a in reg["apps"]}
        for name, client_id in PUBLIC_CLIENTS:
            self.apps[client_id] = {"name": name, "client_id": client_id, "public": True, "secrets": [],
                                    "certificates": [], "federated": [],
                                    "object_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sp:{self.tenant}:{client_id}"))}
        self.certs = {}  # client id -> [(certificate, sha1, sha256)]
        for a in reg["apps"]:
            for path in a["certificates"]:
                c = x509.load_pem_x509_certificate(Path(path).read_bytes())
                self.certs.setdefault(a["client_id"].lower(), []).append(
                    (c, c.fingerprint(hashes.SHA1()), c.fingerprint(hashes.SHA256())))
        self.users = {u["upn"].lower(): u for u in reg["users"]}
        self.issuers = {}  # trusted federation issuers: issuer -> (private key, kid)
        for spec in reg["issuers"].values():
            key = serialization.load_pem_private_key(Path(spec["key"]).read_bytes(), None)
            self.issuers[spec["issuer"]] = (key, jwk_thumbprint(self._jwk(key.public_key())))
        self.pipelines = reg["pipelines"]
        self.msi_header = reg["managed_identity_header"]
        self.refresh_key = bytes.fromhex(reg["refresh_key"])
        self.device_codes: dict[str, dict] = {}
        self.auth_codes: dict[str, dict] = {}
        self.url = ""  # https://127.0.0.1:<port>, set by the server
        self.msi_mode = "up"  # up | error | down
        self.expired_at: float | None = None  # ctl sign_ins "expired": when the tenant's sign-ins expired
        self.msi_port = 0
        self.msi_runner = None
        self.msi_site = None

    # -- keys and verifiers ----------------------------------------------------------------------------------

    @staticmethod
    def _jwk(public_key) -> dict:
        nums = public_key.public_numbers()
        as_b64 = lambda i: b64url(i.to_bytes((i.bit_length() + 7) // 8, "big"))  # noqa: E731
        return {"kty": "RSA", "n": as_b64(nums.n), "e": as_b64(nums.e)}

    def jwks(self, issuer: str | None = None) -> dict:
        der = self.signing_cert.public_bytes(serialization.Encoding.DER)
        key = {"kty": "RSA", "use": "sig", "kid": self.kid, "x5t": self.kid, **self._jwk(self.signing_key.public_key()),
               "x5c": [base64.b64encode(der).decode()]}
        if issuer:
            key["issuer"] = issuer
        return {"keys": [key]}

    def issuers_accepted(self) -> list[str]:
        return [f"https://sts.windows.net/{self.tenant}/", f"{self.url}/{self.tenant}/v2.0"]

    def verifier(self, leeway: int = 0) -> JWKSVerifier:
        """Access tokens of this tenant, checked against the JWKS this emulator serves."""
        return JWKSVerifier(self.jwks(), self.issuers_accepted(), leeway=leeway)

    def sign(self, claims: dict) -> str:
        import jwt
        return jwt.encode(claims, self.signing_key, algorithm="RS256",
                          headers={"typ": "JWT", "x5t": self.kid, "kid": self.kid})

    def write_workload_token(self) -> Path:
        """The projected service-account token of the sandbox's workload identity (valid 24 hours)."""
        import jwt
        spec = self.reg["issuers"]["workload"]
        key, kid = self.issuers[spec["issuer"]]
        now = int(time.time())
        claims = {"aud": [TOKEN_EXCHANGE_AUDIENCE], "exp": now + 86400, "iat": now, "nbf": now,
                  "iss": spec["issuer"], "sub": spec["subject"],
                  "kubernetes.io": {"namespace": "default",
                                    "pod": {"name": "kmsverify-job", "uid": str(uuid.uuid4())},
                                    "serviceaccount": {"name": "kmsverify", "uid": str(uuid.uuid4())}}}
        path = Path(self.reg["workload_token_file"])
        tmp = path.with_name(path.name + ".tmp")
        _write_private(tmp, jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid}).encode())
        os.replace(tmp, path)
        return path

    # -- the HTTPS site -------------------------------------------------------------------------------------

    def _bound(self, handler):
        """``handler(entra, request)`` as an aiohttp handler of this tenant."""
        async def handle(request: web.Request) -> web.StreamResponse:
            return await handler(self, request)
        return handle

    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        h = self._bound
        r.add_get("/{tenant}/v2.0/.well-known/openid-configuration", h(discovery.h_discovery_v2))
        r.add_get("/{tenant}/.well-known/openid-configuration", h(discovery.h_discovery_v1))
        r.add_get("/{tenant}/discovery/v2.0/keys", h(discovery.h_keys))
        r.add_get("/{tenant}/discovery/keys", h(discovery.h_keys))
        r.add_get("/discovery/keys", h(discovery.h_keys))
        r.add_post("/{tenant}/oauth2/v2.0/token", h(token.h_token))
        r.add_post("/{tenant}/oauth2/token", h(token.h_token))
        r.add_post("/{tenant}/oauth2/v2.0/devicecode", h(devicecode.h_devicecode))
        r.add_post("/{tenant}/oauth2/devicecode", h(devicecode.h_devicecode))
        r.add_get("/{tenant}/oauth2/v2.0/authorize", h(authorize.h_authorize))
        r.add_get("/{tenant}/oauth2/authorize", h(authorize.h_authorize))
        r.add_route("*", "/devicelogin", h(devicecode.h_devicelogin))
        r.add_get("/common/userrealm/{username}", h(discovery.h_userrealm))
        r.add_post(_oidc_path(self.pipelines), h(pipelines.h_pipelines_oidc))
        return app

    def tenant_of(self, segment: str) -> str | None:
        """The tenant id a path segment names (the id or the domain); ``common``/``organizations`` stay as
        they are; None when no such tenant exists."""
        s = segment.lower()
        if s in (self.tenant, self.domain):
            return self.tenant
        if s in ("common", "organizations"):
            return s
        return None

    # -- the managed-identity site (plain HTTP, its own port) -----------------------------------------------

    def msi_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/msi/token", self._bound(msi.h_msi))
        return app

    # -- ctl ------------------------------------------------------------------------------------------------

    async def set_msi_mode(self, mode: str) -> str:
        """``down``: the port is closed (connection refused); ``error``: 500 answers; ``up``: back to normal."""
        return await msi.set_mode(self, mode)

    def set_sign_ins(self, mode: str) -> str:
        """``expired``: every sign-in made so far has expired, as after 90 days: refresh tokens issued until now
        answer AADSTS700082 and client secrets AADSTS7000222 (until ``valid``); new user sign-ins work.
        ``valid``: back to normal. Access tokens already issued stay valid until their ``exp``, as Entra's."""
        if mode not in ("expired", "valid"):
            raise ValueError("sign_ins must be 'expired' or 'valid'")
        self.expired_at = time.time() if mode == "expired" else None
        return mode
