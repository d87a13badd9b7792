"""Entra ID emulator: the sign-in side of the sandbox, over HTTPS, as az (MSAL), azure-identity and kubelogin
call it.

``up --entra`` creates the tenant (:func:`create`: signing key, app registrations, secrets, certificates, the
trusted federation issuers, written under ``DIR/entra/``); the server process serves it (:class:`Entra`):

- OIDC discovery, v2 (``/<tenant>/v2.0/.well-known/openid-configuration``) and v1 (``/<tenant>/.well-known/
  openid-configuration``), for the tenant id, its domain, ``common`` and ``organizations``; JWKS
  (``/<tenant>/discovery/v2.0/keys``, ``/<tenant>/discovery/keys``): one RSA signing key, ``kid`` = ``x5t`` =
  base64url SHA-1 of its certificate, as Entra's.
- The token endpoint (``/<tenant>/oauth2/v2.0/token``, v1 ``/<tenant>/oauth2/token``): ``client_credentials``
  with a client secret, a certificate assertion (a JWT signed by the app's registered certificate, found by
  ``x5t``/``x5t#S256``/``x5c``, RS256 or PS256, ``aud`` = the token endpoint) or a federated assertion (a JWT from
  a trusted issuer matching one of the app's federated credentials: issuer, subject, audience
  ``api://AzureADTokenExchange``); ``password``, ``device_code``, ``authorization_code`` (PKCE) for the sandbox's
  users, and ``refresh_token``. ``token_type=pop`` with ``req_cnf`` binds the access token to the caller's key
  (``cnf.kid``). Errors are Entra's bodies (``error``, ``error_description`` starting ``AADSTS<code>:``,
  ``error_codes``, ``trace_id``, ``correlation_id``, ``timestamp``).
- Access tokens are v1 tokens (``ver`` 1.0), as Entra issues them for ARM and the AKS (Arc) server
  applications: RS256, ``iss`` ``https://sts.windows.net/<tenant>/`` (the issuer of the v1 discovery document),
  ``aud`` the resource as requested (``https://management.core.windows.net/``, ``6256c85f-...``), ``appid``,
  ``appidacr``, ``idtyp``, ``oid``, ``sub``, ``tid``, ``iat``/``nbf`` (5 minutes back, as Entra) and ``exp``.
  ID tokens are v2 (``iss`` ``https://<host:port>/<tenant>/v2.0``, the v2 discovery issuer).
  ``ctl {"sign_ins": "expired"|"valid"}``: the sign-ins made so far expire (refresh tokens issued until then
  answer AADSTS700082, client secrets AADSTS7000222 until ``valid``), or are valid again.
- A managed-identity endpoint on its own plain-HTTP port, App Service style (``IDENTITY_ENDPOINT`` +
  ``IDENTITY_HEADER``): ``GET /msi/token?resource=...&api-version=2019-08-01`` with ``X-IDENTITY-HEADER``;
  ``ctl {"managed_identity": "down"|"error"|"up"}`` closes its port (connection refused), answers 500, or
  restores it.
- The Azure Pipelines OIDC endpoint (``SYSTEM_OIDCREQUESTURI``): ``POST ...?api-version=7.1&serviceConnectionId=
  <id>`` with ``Authorization: Bearer <SYSTEM_ACCESSTOKEN>`` answers ``{"oidcToken": <jwt>}`` from the pipelines
  issuer; and a workload-identity token file (a projected service-account token of the sandbox's AKS OIDC issuer,
  rewritten at every server start, valid 24 hours): ``AZURE_FEDERATED_TOKEN_FILE``.

What tests need (ids, secrets, certificate paths, endpoints, environment variables) is in sandbox.json
``entra`` (:func:`info`).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import logging
import os
import secrets
import string
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlencode

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from ...jwtverify import JWKSVerifier, TokenError, b64url, b64url_decode, jwk_thumbprint, unverified_claims
from ...pki import _write_key

log = logging.getLogger("sandbox.entra")

AKS_ARC_SERVER_ID = "6256c85f-0aad-4d50-b960-e6e9b21efe35"
AKS_ARC_CLIENT_ID = "3f4439ff-e698-4d6d-84fe-09c9d574f06b"
AZ_CLI_CLIENT_ID = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
KUBELOGIN_CLIENT_ID = "80faf920-1908-4b52-b5ef-a8e7bedfc67a"
ARM_RESOURCE = "https://management.core.windows.net/"
TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DOMAIN = "contoso.onmicrosoft.com"
OIDC_SCOPES = {"openid", "profile", "email", "offline_access"}
ASSERTION_LEEWAY = 300
REFRESH_LIFETIME = 90 * 86400
WORKLOAD_SUBJECT = "system:serviceaccount:default:kmsverify"
PIPELINES_SUBJECT = "sc://contoso/sandbox/sandbox-connection"

# First-party resource applications present in every tenant: (display name, app id, identifier URIs).
RESOURCES = (
    ("Windows Azure Service Management API", "797f4846-ba00-4fd7-ba43-dac1f8f63013",
     ("https://management.core.windows.net/", "https://management.azure.com/")),
    ("Microsoft Graph", "00000003-0000-0000-c000-000000000000", ("https://graph.microsoft.com/",)),
    ("Windows Azure Active Directory", "00000002-0000-0000-c000-000000000000", ("https://graph.windows.net/",)),
    ("Azure Key Vault", "cfa8b339-82a2-471a-a3c9-0fc0be7a4093", ("https://vault.azure.net",)),
    ("AKS Arc Entra server", AKS_ARC_SERVER_ID, ()),
    ("Azure Kubernetes Service AAD Server", "6dae42f8-4368-4678-94ff-3960e28e3630", ()),
)
# First-party public clients (no secret): az, the Arc kubelogin client, AKS's kubelogin client.
PUBLIC_CLIENTS = (("Microsoft Azure CLI", AZ_CLI_CLIENT_ID), ("Azure Arc kubelogin", AKS_ARC_CLIENT_ID),
                  ("Azure Kubernetes Service AAD Client", KUBELOGIN_CLIENT_ID))


# --- the tenant's material, made once by `up` ----------------------------------------------------------------


def _secret() -> str:
    """A client secret shaped like Entra's (40 characters, ``Q~`` at 3-4)."""
    alphabet = string.ascii_letters + string.digits
    tail = string.ascii_letters + string.digits + "_.~-"
    return ("".join(secrets.choice(alphabet) for _ in range(3)) + "8Q~" +
            "".join(secrets.choice(tail) for _ in range(33)) + secrets.choice(alphabet))


def _self_signed(key, cn: str, days: int) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
    return path


def create(directory, *, tenant: str, subscription: str, resource_group: str, cluster: str,
           enforce_pop: bool = True) -> dict:
    """Make the tenant under ``DIR/entra/`` (keys, certificates, ``registry.json``); returns the server's
    configuration (serve.json ``entra``). Four RSA keys, made in parallel (about 0.2 s)."""
    d = Path(directory) / "entra"
    d.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(4) as pool:
        signing, sp_key, wi_key, pl_key = pool.map(lambda _: rsa.generate_private_key(65537, 2048), range(4))
    signing_cert = _self_signed(signing, "accounts.sandbox.contoso", 365)
    (d / "signing.crt").write_bytes(_pem(signing_cert))
    _write_key(d / "signing.key", signing)
    # What `az ad sp create-for-rbac --create-cert` leaves: one PEM with the key and the certificate.
    sp_cert = _self_signed(sp_key, "sandbox-sp-cert", 365)
    (d / "sp-cert.crt").write_bytes(_pem(sp_cert))
    _write_key(d / "sp-cert.key", sp_key)
    _write_private(d / "sp-cert.pem", _key_pem(sp_key) + _pem(sp_cert))
    _write_key(d / "workload-issuer.key", wi_key)
    _write_key(d / "pipelines-issuer.key", pl_key)

    org_id = str(uuid.uuid4())
    cluster_id = (f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/"
                  f"Microsoft.Kubernetes/connectedClusters/{cluster}")
    issuers = {
        "workload": {"issuer": f"https://eastus.oic.prod-aks.azure.com/{tenant}/{uuid.uuid4()}/",
                     "key": str(d / "workload-issuer.key"), "subject": WORKLOAD_SUBJECT},
        "pipelines": {"issuer": f"https://vstoken.dev.azure.com/{org_id}", "key": str(d / "pipelines-issuer.key"),
                      "subject": PIPELINES_SUBJECT},
    }

    def app(name, **extra):
        return {"name": name, "client_id": str(uuid.uuid4()), "object_id": str(uuid.uuid4()), "secrets": [],
                "certificates": [], "federated": [], **extra}

    fic = lambda which: [{"issuer": issuers[which]["issuer"], "subject": issuers[which]["subject"],  # noqa: E731
                          "audiences": [TOKEN_EXCHANGE_AUDIENCE]}]
    apps = [
        app("sandbox-sp", secrets=[_secret()]),
        app("sandbox-sp-cert", certificates=[str(d / "sp-cert.crt")]),
        app("sandbox-workload", federated=fic("workload")),
        app("sandbox-pipelines", federated=fic("pipelines")),
        app("sandbox-mi", managed_identity=True,
            resource_id=f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/"
                        "Microsoft.ManagedIdentity/userAssignedIdentities/sandbox-mi"),
    ]
    users = [{"upn": f"{n}@contoso.com", "name": n.replace("-", " ").title(), "object_id": str(uuid.uuid4()),
              "password": "Sbx-" + secrets.token_urlsafe(15)} for n in ("operator", "restricted-operator")]
    registry = {
        "tenant": tenant, "domain": DOMAIN, "subscription": subscription, "cluster_id": cluster_id,
        "signing": {"key": str(d / "signing.key"), "cert": str(d / "signing.crt")},
        "apps": apps, "users": users, "issuers": issuers,
        "pipelines": {"organization": "contoso", "organization_id": org_id, "project_id": str(uuid.uuid4()),
                      "plan_id": str(uuid.uuid4()), "job_id": str(uuid.uuid4()),
                      "service_connection_id": str(uuid.uuid4()), "service_connection_app": "sandbox-pipelines",
                      "system_access_token": secrets.token_urlsafe(40)},
        "managed_identity_header": secrets.token_hex(16),
        "refresh_key": secrets.token_hex(32),
        "workload_token_file": str(d / "workload-identity-token"),
        "sp_cert_pem": str(d / "sp-cert.pem"),
    }
    _write_private(d / "registry.json", (json.dumps(registry, indent=2) + "\n").encode())
    return {"registry": str(d / "registry.json"), "enforce_pop": bool(enforce_pop)}


def _app(registry: dict, name: str) -> dict:
    return next(a for a in registry["apps"] if a["name"] == name)


def _oidc_path(p: dict) -> str:
    return (f"/{p['organization']}/{p['project_id']}/_apis/distributedtask/hubs/build/plans/{p['plan_id']}/jobs/"
            f"{p['job_id']}/oidctoken")


def info(cfg: dict, entra_port: int, msi_port: int, ca_bundle: str) -> dict:
    """sandbox.json ``entra``: what tests need to sign in (ids, secrets, files, endpoints, env vars)."""
    reg = json.loads(Path(cfg["registry"]).read_text())
    tid = reg["tenant"]
    url = f"https://127.0.0.1:{entra_port}"
    sp, cert, wi, pl, mi = (_app(reg, n) for n in ("sandbox-sp", "sandbox-sp-cert", "sandbox-workload",
                                                    "sandbox-pipelines", "sandbox-mi"))
    p = reg["pipelines"]
    msi_endpoint = f"http://127.0.0.1:{msi_port}/msi/token"
    oidc_uri = url + _oidc_path(p)
    thumb = x509.load_pem_x509_certificate(Path(cert["certificates"][0]).read_bytes()).fingerprint(hashes.SHA1())
    user, restricted = reg["users"]
    return {
        "url": url, "port": entra_port, "msi_port": msi_port, "tenant": tid, "domain": reg["domain"],
        "subscription": reg["subscription"],
        "authority": f"{url}/{tid}",
        "openid_configuration": f"{url}/{tid}/v2.0/.well-known/openid-configuration",
        "token_endpoint": f"{url}/{tid}/oauth2/v2.0/token",
        "jwks_uri": f"{url}/{tid}/discovery/v2.0/keys",
        "issuer": f"https://sts.windows.net/{tid}/", "issuer_v2": f"{url}/{tid}/v2.0",
        "signing_cert": reg["signing"]["cert"], "signing_key": reg["signing"]["key"],
        "server_id": AKS_ARC_SERVER_ID, "client_id": AKS_ARC_CLIENT_ID, "arm_resource": ARM_RESOURCE,
        "cluster_id": reg["cluster_id"], "enforce_pop": cfg["enforce_pop"],
        "service_principal": {"name": sp["name"], "client_id": sp["client_id"], "object_id": sp["object_id"],
                              "secret": sp["secrets"][0]},
        "certificate_principal": {"name": cert["name"], "client_id": cert["client_id"],
                                  "object_id": cert["object_id"], "certificate": reg["sp_cert_pem"],
                                  "cert_file": cert["certificates"][0],
                                  "key_file": str(Path(cert["certificates"][0]).with_suffix(".key")),
                                  "thumbprint": thumb.hex().upper()},
        "managed_identity": {"client_id": mi["client_id"], "object_id": mi["object_id"],
                             "resource_id": mi["resource_id"], "endpoint": msi_endpoint,
                             "header": reg["managed_identity_header"],
                             "env": {"IDENTITY_ENDPOINT": msi_endpoint,
                                     "IDENTITY_HEADER": reg["managed_identity_header"]}},
        "workload_identity": {"client_id": wi["client_id"], "object_id": wi["object_id"],
                              "issuer": reg["issuers"]["workload"]["issuer"], "subject": WORKLOAD_SUBJECT,
                              "token_file": reg["workload_token_file"],
                              "env": {"AZURE_CLIENT_ID": wi["client_id"], "AZURE_TENANT_ID": tid,
                                      "AZURE_FEDERATED_TOKEN_FILE": reg["workload_token_file"],
                                      "AZURE_AUTHORITY_HOST": url}},
        "pipelines": {"client_id": pl["client_id"], "object_id": pl["object_id"],
                      "service_connection_id": p["service_connection_id"],
                      "system_access_token": p["system_access_token"], "oidc_request_uri": oidc_uri,
                      "issuer": reg["issuers"]["pipelines"]["issuer"], "subject": PIPELINES_SUBJECT,
                      "env": {"SYSTEM_OIDCREQUESTURI": oidc_uri, "SYSTEM_ACCESSTOKEN": p["system_access_token"],
                              "AZURESUBSCRIPTION_CLIENT_ID": pl["client_id"], "AZURESUBSCRIPTION_TENANT_ID": tid,
                              "AZURESUBSCRIPTION_SERVICE_CONNECTION_ID": p["service_connection_id"]}},
        "user": {k: user[k] for k in ("upn", "password", "object_id")},
        "restricted_user": {k: restricted[k] for k in ("upn", "password", "object_id")},
        "env": {"REQUESTS_CA_BUNDLE": ca_bundle, "AZURE_AUTHORITY_HOST": url},
    }


# --- the server side ------------------------------------------------------------------------------------------


def _thumb(value) -> bytes | None:
    """A certificate thumbprint from a JWS header (base64url, padded or not, as MSAL sends it)."""
    if not isinstance(value, str):
        return None
    try:
        return b64url_decode(value.rstrip("="))
    except ValueError:
        return None


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


class Entra:
    """The emulated tenant, served by the sandbox's server process (see the module docstring)."""

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

    def _sign(self, claims: dict) -> str:
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

    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self.h_discovery_v2)
        r.add_get("/{tenant}/.well-known/openid-configuration", self.h_discovery_v1)
        r.add_get("/{tenant}/discovery/v2.0/keys", self.h_keys)
        r.add_get("/{tenant}/discovery/keys", self.h_keys)
        r.add_get("/discovery/keys", self.h_keys)
        r.add_post("/{tenant}/oauth2/v2.0/token", self.h_token)
        r.add_post("/{tenant}/oauth2/token", self.h_token)
        r.add_post("/{tenant}/oauth2/v2.0/devicecode", self.h_devicecode)
        r.add_post("/{tenant}/oauth2/devicecode", self.h_devicecode)
        r.add_get("/{tenant}/oauth2/v2.0/authorize", self.h_authorize)
        r.add_get("/{tenant}/oauth2/authorize", self.h_authorize)
        r.add_route("*", "/devicelogin", self.h_devicelogin)
        r.add_get("/common/userrealm/{username}", self.h_userrealm)
        r.add_post(_oidc_path(self.pipelines), self.h_pipelines_oidc)
        return app

    def _tenant(self, segment: str) -> str | None:
        """The tenant id a path segment names (the id or the domain); ``common``/``organizations`` stay as
        they are; None when no such tenant exists."""
        s = segment.lower()
        if s in (self.tenant, self.domain):
            return self.tenant
        if s in ("common", "organizations"):
            return s
        return None

    def _error(self, request, status: int, error: str, code: int, message: str, **extra) -> web.Response:
        now = time.time()
        trace = str(uuid.uuid4())
        corr = request.headers.get("client-request-id") or str(uuid.uuid4())
        body = {"error": error,
                "error_description": f"AADSTS{code}: {message} Trace ID: {trace} Correlation ID: {corr} "
                                     f"Timestamp: {_utc(now)}",
                "error_codes": [code], "timestamp": _utc(now), "trace_id": trace, "correlation_id": corr,
                "error_uri": f"https://{request.host}/error?code={code}", **extra}
        return web.json_response(body, status=status, headers={"Cache-Control": "no-store, no-cache"})

    def _no_tenant(self, request, segment: str) -> web.Response:
        return self._error(request, 400, "invalid_request", 90002, f"Tenant '{segment}' not found. Check to make "
                           "sure you have the correct tenant ID and are signing in to the correct cloud. Check with "
                           "your subscription administrator, this may happen if there are no active subscriptions "
                           "for the tenant.")

    # -- discovery -------------------------------------------------------------------------------------------

    async def h_discovery_v2(self, request):
        seg = request.match_info["tenant"]
        tid = self._tenant(seg)
        if tid is None:
            return self._discovery_error(request, seg)
        base = f"https://{request.host}"
        t = self.tenant if tid == self.tenant else tid
        issuer = f"{base}/{t if t == self.tenant else '{tenantid}'}/v2.0"
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

    async def h_discovery_v1(self, request):
        seg = request.match_info["tenant"]
        tid = self._tenant(seg)
        if tid is None:
            return self._discovery_error(request, seg)
        base = f"https://{request.host}"
        t = self.tenant if tid == self.tenant else tid
        return web.json_response({
            "token_endpoint": f"{base}/{t}/oauth2/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{base}/{t}/discovery/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"], "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
            "scopes_supported": ["openid"],
            "issuer": f"https://sts.windows.net/{t if t == self.tenant else '{tenantid}'}/",
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

    def _discovery_error(self, request, seg):
        resp = self._no_tenant(request, seg)
        body = json.loads(resp.body)
        body["error"] = "invalid_tenant"
        return web.json_response(body, status=400)

    async def h_keys(self, request):
        seg = request.match_info.get("tenant", "common")
        tid = self._tenant(seg)
        if tid is None:
            return self._discovery_error(request, seg)
        issuer = None
        if "/v2.0/" in request.path:
            issuer = f"https://{request.host}/{tid if tid == self.tenant else '{tenantid}'}/v2.0"
        return web.json_response(self.jwks(issuer))

    async def h_userrealm(self, request):
        upn = request.match_info["username"]
        known = upn.lower() in self.users or upn.lower().endswith(("@contoso.com", "@" + self.domain))
        return web.json_response({"ver": "1.0", "account_type": "Managed" if known else "Unknown",
                                  "domain_name": self.domain if known else upn.rpartition("@")[2],
                                  "cloud_instance_name": "microsoftonline.com",
                                  "cloud_audience_urn": "urn:federation:MicrosoftOnline"})

    # -- the token endpoint ---------------------------------------------------------------------------------

    def _token_endpoints(self, request, seg: str) -> list[str]:
        hosts = {request.host, self.url.removeprefix("https://")} - {""}
        return [f"https://{h}/{t}/oauth2{v}/token" for h in hosts for t in {seg, self.tenant} for v in ("/v2.0", "")]

    def _resource(self, res: str):
        """(app id, aud) for a resource identifier (an app id or identifier URI), or None."""
        norm = res.rstrip("/").lower()
        for _, app_id, ids in RESOURCES:
            if norm == app_id or norm in (i.rstrip("/").lower() for i in ids):
                return app_id, res
        return None

    def _scopes(self, scope: str) -> tuple[list[str], set[str]]:
        parts = scope.split()
        return [s for s in parts if s.lower() not in OIDC_SCOPES], {s.lower() for s in parts} & OIDC_SCOPES

    async def h_token(self, request: web.Request) -> web.Response:
        seg = request.match_info["tenant"]
        v1 = request.path.endswith("/oauth2/token")
        tid = self._tenant(seg)
        if tid is None:
            return self._no_tenant(request, seg)
        form = await request.post()
        grant = form.get("grant_type")
        if not grant:
            return self._error(request, 400, "invalid_request", 900144, "The request body must contain the "
                               "following parameter: 'grant_type'.")
        client_id, secret = form.get("client_id"), form.get("client_secret")
        basic = request.headers.get("Authorization", "")
        if basic.lower().startswith("basic "):
            try:
                cid, _, pw = base64.b64decode(basic[6:].strip()).decode().partition(":")
                client_id, secret = unquote(cid), unquote(pw)
            except ValueError:
                return self._error(request, 401, "invalid_client", 7000215, "Invalid client secret provided.")
        if not client_id:
            return self._error(request, 400, "invalid_request", 900144, "The request body must contain the "
                               "following parameter: 'client_id'.")
        app = self.apps.get(client_id.lower())
        if app is None:
            return self._error(request, 400, "unauthorized_client", 700016, f"Application with identifier "
                               f"'{client_id}' was not found in the directory '{self.domain}'. This can happen if the "
                               "application has not been installed by the administrator of the tenant or consented "
                               "to by any user in the tenant. You may have sent your authentication request to the "
                               "wrong tenant.")
        assertion = form.get("client_assertion")
        acr = "0"
        if assertion is not None:
            if app.get("public"):
                return self._public_with_credential(request)
            if form.get("client_assertion_type") != JWT_BEARER:
                return self._error(request, 400, "invalid_request", 50027, "Invalid client_assertion_type: "
                                   f"'{form.get('client_assertion_type')}', expected '{JWT_BEARER}'.")
            problem = self._check_assertion(request, app, assertion, seg)
            if problem is not None:
                return problem
            acr = "2"
        elif secret is not None:
            if app.get("public"):
                return self._public_with_credential(request)
            if not any(hmac.compare_digest(secret, s) for s in app["secrets"]):
                return self._error(request, 401, "invalid_client", 7000215, "Invalid client secret provided. Ensure "
                                   "the secret being sent in the request is the client secret value, not the client "
                                   f"secret ID, for a secret added to app '{app['client_id']}'.")
            if self.expired_at is not None:
                return self._error(request, 401, "invalid_client", 7000222, f"The provided client secret keys for "
                                   f"app '{app['client_id']}' are expired. Visit the Azure portal to create new keys "
                                   "for your app: https://aka.ms/NewClientSecret, or consider using certificate "
                                   "credentials for added security: https://aka.ms/certCreds.")
            acr = "1"
        elif not app.get("public"):
            return self._error(request, 401, "invalid_client", 7000218, "The request body must contain the "
                               "following parameter: 'client_assertion' or 'client_secret'.")
        if v1:
            resource = form.get("resource")
            scope = (resource.rstrip("/") + "/.default" if resource else "") + " " + (form.get("scope") or "")
        else:
            scope = form.get("scope") or ""
        pop = self._req_cnf(request, form)
        if isinstance(pop, web.Response):
            return pop
        nonce = None

        if grant == "client_credentials":
            if tid in ("common", "organizations"):
                return self._error(request, 400, "invalid_request", 900023, f"Specified tenant identifier '{seg}' "
                                   "is neither a valid DNS name, nor a valid external domain.")
            res_scopes, _ = self._scopes(scope)
            if not res_scopes:
                return self._error(request, 400, "invalid_request", 90014, "The required field 'scope' is missing "
                                   "from the credential. Ensure that you have all the necessary parameters for the "
                                   "login request.")
            if len(res_scopes) > 1 or not res_scopes[0].endswith("/.default"):
                return self._error(request, 400, "invalid_scope", 1002012, f"The provided value for scope "
                                   f"{' '.join(res_scopes)} is not valid. Client credential flows must have a scope "
                                   "value with /.default suffixed to the resource identifier (application ID URI).")
            found = self._resource(res_scopes[0][:-len("/.default")])
            if found is None:
                return self._unknown_resource(request, res_scopes[0][:-len("/.default")])
            token, lifetime = self._app_token(app, found, acr, pop)
            return self._token_response(v1, token, lifetime, pop, found[1])

        # user flows: password, device code, authorization code, refresh token
        if grant == "password":
            user = self.users.get((form.get("username") or "").lower())
            if user is None:
                return self._error(request, 400, "invalid_grant", 50034, "The user account {EUII Hidden} does not "
                                   f"exist in the {self.domain} directory. To sign into this application, the account "
                                   "must be added to the directory.")
            if not hmac.compare_digest(form.get("password") or "", user["password"]):
                return self._error(request, 400, "invalid_grant", 50126, "Error validating credentials due to "
                                   "invalid username or password.")
            amr = ["pwd"]
        elif grant == DEVICE_CODE_GRANT:
            entry = self.device_codes.get(form.get("device_code") or "")
            if entry is None or entry["client_id"] != app["client_id"]:
                return self._error(request, 400, "invalid_grant", 70000, "Provided grant is invalid or malformed.")
            if entry["expires"] < time.time():
                self.device_codes.pop(form.get("device_code"), None)
                return self._error(request, 400, "expired_token", 70020, "The provided value for the input "
                                   "parameter 'device_code' is not valid. This device code has expired.")
            if entry.get("user") is None:
                return self._error(request, 400, "authorization_pending", 70016, "OAuth 2.0 device flow error. "
                                   "Authorization is pending. Continue polling.")
            self.device_codes.pop(form["device_code"], None)
            user, amr = self.users[entry["user"]], ["pwd", "mfa"]
            scope = scope or entry["scope"]
        elif grant == "authorization_code":
            entry = self.auth_codes.pop(form.get("code") or "", None)
            if entry is None or entry["client_id"] != app["client_id"] or entry["expires"] < time.time():
                return self._error(request, 400, "invalid_grant", 70008, "The provided authorization code or "
                                   "refresh token has expired due to inactivity. Send a new interactive authorization "
                                   "request for this user and resource.")
            if entry["redirect_uri"] != form.get("redirect_uri"):
                return self._error(request, 400, "invalid_grant", 50148, "The redirect_uri does not match the one "
                                   "of the authorization request.")
            if entry.get("challenge"):
                verifier = form.get("code_verifier") or ""
                if b64url(hashlib.sha256(verifier.encode()).digest()) != entry["challenge"]:
                    return self._error(request, 400, "invalid_grant", 501481, "The Code_Verifier does not match the "
                                       "code_challenge supplied in the authorization request.")
            user, amr = self.users[entry["user"]], ["pwd", "mfa"]
            scope = scope or entry["scope"]
            nonce = entry.get("nonce")
        elif grant == "refresh_token":
            grant_claims = self._read_refresh_token(form.get("refresh_token") or "")
            if grant_claims is None or grant_claims["cid"] != app["client_id"]:
                return self._error(request, 400, "invalid_grant", 9002313, "Invalid request. Request is malformed "
                                   "or invalid.")
            if grant_claims["exp"] < time.time() or (self.expired_at is not None
                                                     and grant_claims["iat"] <= self.expired_at):
                return self._error(request, 400, "invalid_grant", 700082, "The refresh token has expired due to "
                                   "inactivity. The token was issued on "
                                   f"{_utc(grant_claims['iat'])} and was inactive for 90.00:00:00.")
            user = next((u for u in self.users.values() if u["object_id"] == grant_claims["oid"]), None)
            if user is None:
                return self._error(request, 400, "invalid_grant", 50034, "The user account {EUII Hidden} does not "
                                   f"exist in the {self.domain} directory.")
            amr = grant_claims.get("amr") or ["pwd"]
        else:
            return self._error(request, 400, "unsupported_grant_type", 70003, f"The app requested an unsupported "
                               f"grant type '{grant}'.")
        res_scopes, oidc = self._scopes(scope)
        if len({s.rsplit("/", 1)[0] for s in res_scopes}) > 1:
            return self._error(request, 400, "invalid_scope", 28000, f"Provided value for the input parameter scope "
                               f"is not valid because it contains more than one resource. Scope {scope} is not valid.")
        if res_scopes:
            resource = res_scopes[0].rsplit("/", 1)[0] if "/" in res_scopes[0] else "https://graph.microsoft.com"
        else:
            resource = "https://graph.microsoft.com"
        found = self._resource(resource)
        if found is None:
            return self._unknown_resource(request, resource)
        token, lifetime = self._user_token(app, user, found, acr, amr, pop)
        body = self._token_body(v1, token, lifetime, pop, found[1])
        body["scope"] = " ".join(res_scopes) if res_scopes else "User.Read"
        if v1 or "offline_access" in oidc:
            body["refresh_token"] = self._refresh_token(app, user, amr)
        if "openid" in oidc or v1:
            body["id_token"] = self._id_token(request, app, user, nonce)
        if form.get("client_info") == "1":
            body["client_info"] = b64url(json.dumps({"uid": user["object_id"], "utid": self.tenant}).encode())
        return web.json_response(body, headers={"Cache-Control": "no-store, no-cache"})

    def _public_with_credential(self, request):
        return self._error(request, 401, "invalid_client", 700025, "Client is public so neither 'client_assertion' "
                           "nor 'client_secret' should be presented.")

    def _unknown_resource(self, request, res):
        return self._error(request, 400, "invalid_resource", 500011, f"The resource principal named {res} was not "
                           f"found in the tenant named {self.domain}. This can happen if the application has not been "
                           "installed by the administrator of the tenant or consented to by any user in the tenant. "
                           "You might have sent your authentication request to the wrong tenant.")

    def _req_cnf(self, request, form):
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
            return self._error(request, 400, "invalid_request", 5002728, "The provided value for the input "
                               "parameter 'req_cnf' is not valid: expected base64url JSON with 'kid' (or 'jwk').")
        cnf = {"kid": kid}
        if isinstance(req.get("xms_ksl"), str):
            cnf["xms_ksl"] = req["xms_ksl"]
        return cnf

    def _check_assertion(self, request, app: dict, assertion: str, seg: str) -> web.Response | None:
        """None when ``assertion`` authenticates ``app`` (its certificate, or a matching federated credential)."""
        import jwt
        try:
            header = jwt.get_unverified_header(assertion)
            claims = unverified_claims(assertion)
        except (jwt.PyJWTError, TokenError):
            return self._error(request, 401, "invalid_client", 50027, "JWT token is invalid or malformed.")
        now = time.time()
        if claims.get("iss") == app["client_id"]:  # a certificate credential
            found = None
            x5t, x5t256, x5c = header.get("x5t"), header.get("x5t#S256"), header.get("x5c")
            for cert, sha1, sha256 in self.certs.get(app["client_id"].lower(), []):
                der = cert.public_bytes(serialization.Encoding.DER)
                if _thumb(x5t) == sha1 or _thumb(x5t256) == sha256 or (
                        isinstance(x5c, list) and x5c and x5c[0] == base64.b64encode(der).decode()):
                    found = cert
            if found is None:
                shown = x5t256 or x5t or "none"
                return self._error(request, 401, "invalid_client", 700027, "The certificate with identifier used to "
                                   "sign the client assertion is not registered on application. [Reason - The key was "
                                   f"not found., Thumbprint of key used by client: '{shown}', Please visit the Azure "
                                   "Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id "
                                   f"'{app['client_id']}'.]")
            try:
                jwt.decode(assertion, found.public_key(), algorithms=["RS256", "PS256"],
                           audience=self._token_endpoints(request, seg), leeway=ASSERTION_LEEWAY,
                           options={"require": ["exp", "aud", "iss", "sub"]})
            except jwt.InvalidSignatureError:
                return self._error(request, 401, "invalid_client", 7000274, "Key was found, but use of the key to "
                                   "verify the signature failed.")
            except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
                return self._time_range(request, claims, now)
            except jwt.InvalidAudienceError:
                return self._error(request, 401, "invalid_client", 700212, f"The audience '{claims.get('aud')}' of "
                                   "the client assertion is not this tenant's token endpoint.")
            except jwt.PyJWTError as e:
                return self._error(request, 401, "invalid_client", 50027, f"JWT token is invalid or malformed: {e}.")
            if claims.get("sub") != app["client_id"]:
                return self._error(request, 401, "invalid_client", 700021, "Client assertion application identifier "
                                   "doesn't match 'client_id' parameter.")
            return None
        iss = claims.get("iss")  # a federated credential
        if iss not in self.issuers or not any(f["issuer"] == iss for f in app["federated"]):
            return self._error(request, 400, "invalid_request", 700211, f"No matching federated identity record "
                               f"found for presented assertion issuer '{iss}'. Please check your federated identity "
                               "credential Subject, Audience and Issuer against the presented assertion. "
                               "https://learn.microsoft.com/entra/workload-id/workload-identity-federation")
        key, kid = self.issuers[iss]
        try:
            jwt.decode(assertion, key.public_key(), algorithms=["RS256"], leeway=ASSERTION_LEEWAY,
                       options={"verify_aud": False, "require": ["exp", "iss", "sub", "aud"]})
        except jwt.InvalidSignatureError:
            return self._error(request, 401, "invalid_client", 50013, "Assertion failed signature validation. "
                               f"[Reason - The key was not found., Thumbprint of key used by client: "
                               f"'{header.get('kid')}']")
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
            return self._time_range(request, claims, now)
        except jwt.PyJWTError as e:
            return self._error(request, 401, "invalid_client", 50027, f"JWT token is invalid or malformed: {e}.")
        auds = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        matching = [f for f in app["federated"] if f["issuer"] == iss]
        if not any(f["subject"] == claims["sub"] for f in matching):
            return self._error(request, 400, "invalid_request", 700213, f"No matching federated identity record "
                               f"found for presented assertion subject '{claims['sub']}'. Please check your federated "
                               "identity credential Subject, Audience and Issuer against the presented assertion.")
        if not any(a in f["audiences"] for f in matching for a in auds):
            return self._error(request, 400, "invalid_request", 700212, f"No matching federated identity record "
                               f"found for presented assertion audience '{', '.join(map(str, auds))}'. Please check "
                               "your federated identity credential Subject, Audience and Issuer against the presented "
                               "assertion.")
        return None

    def _time_range(self, request, claims, now):
        return self._error(request, 400, "invalid_client", 700024, f"Client assertion is not within its valid time "
                           f"range. Current time: {_utc(now)}, assertion valid from {_utc(claims.get('nbf') or 0)}, "
                           f"expiry time of assertion {_utc(claims.get('exp') or 0)}.")

    # -- minting ----------------------------------------------------------------------------------------------

    def _base_claims(self, aud: str, lifetime: int) -> dict:
        now = int(time.time())
        return {"aud": aud, "iss": f"https://sts.windows.net/{self.tenant}/", "iat": now - 300, "nbf": now - 300,
                "exp": now + lifetime, "aio": b64url(os.urandom(48)),
                "rh": f"0.A{b64url(os.urandom(24))}.", "tid": self.tenant, "uti": b64url(os.urandom(16)),
                "ver": "1.0", "xms_tcdt": 1600000000}

    def _app_token(self, app: dict, found, acr: str, cnf) -> tuple[str, int]:
        lifetime = 3599 + secrets.randbelow(1200)
        claims = self._base_claims(found[1], lifetime)
        claims.update({"appid": app["client_id"], "appidacr": acr, "idp": claims["iss"], "idtyp": "app",
                       "oid": app["object_id"], "sub": app["object_id"]})
        if app.get("managed_identity"):
            claims["xms_mirid"] = app["resource_id"]
        if cnf:
            claims["cnf"] = cnf
        return self._sign(claims), lifetime

    def _user_token(self, app: dict, user: dict, found, acr: str, amr, cnf) -> tuple[str, int]:
        lifetime = 3599 + secrets.randbelow(1200)
        claims = self._base_claims(found[1], lifetime)
        given, _, family = user["name"].partition(" ")
        claims.update({"acr": "1", "amr": list(amr), "appid": app["client_id"], "appidacr": acr,
                       "family_name": family or given, "given_name": given, "idtyp": "user", "ipaddr": "127.0.0.1",
                       "name": user["name"], "oid": user["object_id"],
                       "puid": hashlib.sha256(user["object_id"].encode()).hexdigest()[:16].upper(),
                       "scp": "user_impersonation",
                       "sub": b64url(hashlib.sha256(f"{user['object_id']}:{found[0]}".encode()).digest()),
                       "unique_name": user["upn"], "upn": user["upn"]})
        if cnf:
            claims["cnf"] = cnf
        return self._sign(claims), lifetime

    def _id_token(self, request, app: dict, user: dict, nonce: str | None) -> str:
        now = int(time.time())
        claims = {"aud": app["client_id"], "iss": f"https://{request.host}/{self.tenant}/v2.0", "iat": now - 300,
                  "nbf": now - 300, "exp": now + 3600, "name": user["name"], "oid": user["object_id"],
                  "preferred_username": user["upn"], "rh": f"0.A{b64url(os.urandom(24))}.",
                  "sub": b64url(hashlib.sha256(f"{user['object_id']}:{app['client_id']}".encode()).digest()),
                  "tid": self.tenant, "uti": b64url(os.urandom(16)), "ver": "2.0"}
        if nonce:
            claims["nonce"] = nonce
        return self._sign(claims)

    def _refresh_token(self, app: dict, user: dict, amr) -> str:
        now = int(time.time())
        payload = b64url(json.dumps({"cid": app["client_id"], "oid": user["object_id"], "iat": now,
                                     "exp": now + REFRESH_LIFETIME, "amr": list(amr),
                                     "n": b64url(os.urandom(12))}).encode())
        mac = b64url(hmac.new(self.refresh_key, payload.encode(), hashlib.sha256).digest())
        return f"1.A{payload}.{mac}"

    def _read_refresh_token(self, token: str) -> dict | None:
        if not token.startswith("1.A") or token.count(".") != 2:
            return None
        payload, mac = token[3:].split(".", 1)[0], token.rsplit(".", 1)[1]
        good = b64url(hmac.new(self.refresh_key, payload.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(mac, good):
            return None
        try:
            return json.loads(b64url_decode(payload))
        except ValueError:
            return None

    def _token_body(self, v1: bool, token: str, lifetime: int, cnf, resource: str) -> dict:
        body = {"token_type": "pop" if cnf else "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime,
                "access_token": token}
        if v1:
            now = int(time.time())
            body = {"token_type": body["token_type"], "expires_in": str(lifetime), "ext_expires_in": str(lifetime),
                    "expires_on": str(now + lifetime), "not_before": str(now - 300), "resource": resource,
                    "access_token": token}
        return body

    def _token_response(self, v1, token, lifetime, cnf, resource) -> web.Response:
        return web.json_response(self._token_body(v1, token, lifetime, cnf, resource),
                                 headers={"Cache-Control": "no-store, no-cache"})

    # -- device code, authorization code --------------------------------------------------------------------

    async def h_devicecode(self, request):
        seg = request.match_info["tenant"]
        if self._tenant(seg) is None:
            return self._no_tenant(request, seg)
        form = await request.post()
        app = self.apps.get((form.get("client_id") or "").lower())
        if app is None:
            return self._error(request, 400, "unauthorized_client", 700016, f"Application with identifier "
                               f"'{form.get('client_id')}' was not found in the directory '{self.domain}'.")
        user_code = "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(9))
        device_code = f"DAQABIQEAAAB{b64url(os.urandom(48))}"
        self.device_codes[device_code] = {"client_id": app["client_id"], "user_code": user_code, "user": None,
                                          "scope": form.get("scope") or form.get("resource") or "",
                                          "expires": time.time() + 900}
        uri = f"https://{request.host}/devicelogin"
        return web.json_response({"user_code": user_code, "device_code": device_code, "verification_uri": uri,
                                  "expires_in": 900, "interval": 5,
                                  "message": f"To sign in, use a web browser to open the page {uri} and enter the "
                                             f"code {user_code} to authenticate."})

    async def h_devicelogin(self, request):
        """The page a person opens to enter the device code: ``?user_code=...[&username=...]`` signs in as that
        user (default the sandbox's operator) without a form, as if they had typed the code and their password."""
        params = dict(request.query)
        if request.method == "POST":
            params.update(await request.post())
        code = (params.get("user_code") or "").upper()
        user = (params.get("username") or self.reg["users"][0]["upn"]).lower()
        if user not in self.users:
            return web.Response(status=400, text=f"unknown user {user}\n")
        for entry in self.device_codes.values():
            if entry["user_code"] == code and entry["expires"] >= time.time():
                entry["user"] = user
                return web.Response(text=f"{user} signed in on the device; you can close this window.\n")
        return web.Response(status=400, text="That code didn't work. Check the code and try again.\n")

    async def h_authorize(self, request):
        """Interactive sign-in without a person: signs in as ``login_hint`` (or the operator) and redirects back
        with a code, as after the user entered their password (``az login`` and kubelogin ``--login interactive``
        work with a BROWSER that merely fetches the URL)."""
        seg = request.match_info["tenant"]
        if self._tenant(seg) is None:
            return self._no_tenant(request, seg)
        q = request.query
        app = self.apps.get((q.get("client_id") or "").lower())
        redirect = q.get("redirect_uri") or ""
        if app is None or not redirect.startswith(("http://localhost", "http://127.0.0.1", "https://")):
            return web.Response(status=400, text="AADSTS50011: The redirect URI specified in the request does not "
                                "match the redirect URIs configured for the application.\n")
        user = (q.get("login_hint") or self.reg["users"][0]["upn"]).lower()
        if user not in self.users:
            user = self.reg["users"][0]["upn"].lower()
        code = f"1.A{b64url(os.urandom(48))}"
        if q.get("code_challenge") and q.get("code_challenge_method", "plain") != "S256":
            return web.Response(status=400, text="AADSTS501491: code_challenge_method must be S256.\n")
        self.auth_codes[code] = {"client_id": app["client_id"], "user": user, "redirect_uri": redirect,
                                 "scope": q.get("scope") or "", "challenge": q.get("code_challenge"),
                                 "nonce": q.get("nonce"), "expires": time.time() + 600}
        params = {"code": code}
        if q.get("state"):
            params["state"] = q["state"]
        params["client_info"] = b64url(json.dumps({"uid": self.users[user]["object_id"],
                                                   "utid": self.tenant}).encode())
        params["session_state"] = str(uuid.uuid4())
        sep = "&" if "?" in redirect else "?"
        raise web.HTTPFound(redirect + sep + urlencode(params))

    # -- Azure Pipelines OIDC -------------------------------------------------------------------------------

    async def h_pipelines_oidc(self, request):
        import jwt
        p = self.pipelines
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
        spec = self.reg["issuers"]["pipelines"]
        key, kid = self.issuers[spec["issuer"]]
        now = int(time.time())
        token = jwt.encode({"jti": str(uuid.uuid4()), "sub": spec["subject"], "aud": TOKEN_EXCHANGE_AUDIENCE,
                            "iss": spec["issuer"], "nbf": now, "exp": now + 900, "iat": now},
                           key, algorithm="RS256", headers={"kid": kid})
        return web.json_response({"oidcToken": token})

    # -- the managed-identity endpoint (plain HTTP, its own port) -------------------------------------------

    def msi_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/msi/token", self.h_msi)
        return app

    async def h_msi(self, request):
        corr = str(uuid.uuid4())
        if self.msi_mode == "error":
            return web.json_response({"statusCode": 500, "message": "An unexpected error occured while fetching the "
                                      "AAD Token.", "correlationId": corr}, status=500)
        if not hmac.compare_digest(request.headers.get("X-IDENTITY-HEADER", ""), self.msi_header):
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
        mi = next(a for a in self.reg["apps"] if a.get("managed_identity"))
        for param, field in (("client_id", "client_id"), ("principal_id", "object_id"), ("object_id", "object_id"),
                             ("mi_res_id", "resource_id")):
            if q.get(param) and q[param].lower() != mi[field].lower():
                return web.json_response({"statusCode": 400, "message": "No User Assigned or Delegated Managed "
                                          "Identity found for specified ClientId/ResourceId/PrincipalId.",
                                          "correlationId": corr}, status=400)
        found = self._resource(resource)
        if found is None:
            return web.json_response({"statusCode": 400, "message": f"AADSTS500011: The resource principal named "
                                      f"{resource} was not found in the tenant named {self.domain}.",
                                      "correlationId": corr}, status=400)
        token, lifetime = self._app_token(mi, found, "2", None)
        return web.json_response({"access_token": token, "expires_on": str(int(time.time()) + lifetime),
                                  "resource": resource, "token_type": "Bearer", "client_id": mi["client_id"]})

    async def set_msi_mode(self, mode: str) -> str:
        """``down``: the port is closed (connection refused); ``error``: 500 answers; ``up``: back to normal."""
        if mode not in ("up", "down", "error"):
            raise ValueError("managed_identity must be 'up', 'down' or 'error'")
        if mode == "down" and self.msi_site is not None:
            await self.msi_site.stop()
            self.msi_site = None
        elif mode != "down" and self.msi_site is None and self.msi_runner is not None:
            site = web.TCPSite(self.msi_runner, "127.0.0.1", self.msi_port, reuse_address=True)
            await site.start()
            self.msi_site = site
        self.msi_mode = mode
        return mode

    def set_sign_ins(self, mode: str) -> str:
        """``expired``: every sign-in made so far has expired, as after 90 days: refresh tokens issued until now
        answer AADSTS700082 and client secrets AADSTS7000222 (until ``valid``); new user sign-ins work.
        ``valid``: back to normal. Access tokens already issued stay valid until their ``exp``, as Entra's."""
        if mode not in ("expired", "valid"):
            raise ValueError("sign_ins must be 'expired' or 'valid'")
        self.expired_at = time.time() if mode == "expired" else None
        return mode
