"""The sandbox's Entra ID emulator (``up --entra``) and the servers that trust it: ARM and the API server.

Tokens are checked here the way a relying party checks Entra's: signature against the JWKS, issuer, audience,
expiry. The clients are the real ones (PyJWT, azure-identity's credentials, MSAL, az itself); PoP tokens are built
by hand with cryptography, in kubelogin's format.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.sandbox.control import Sandbox, SandboxError

PROJECT = Path(__file__).resolve().parents[3]
AKS_ARC_SERVER_ID = "6256c85f-0aad-4d50-b960-e6e9b21efe35"
ARM = "https://management.core.windows.net/"


def _az() -> Path | None:
    for candidate in (PROJECT / ".venv-az" / "bin" / "az", PROJECT / ".venv" / "bin" / "az"):
        if candidate.exists():
            return candidate
    return None


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    sandbox = Sandbox(tmp_path_factory.mktemp("entra"))
    sandbox.up(provider="identity", entra=True, apiserver="emulator")
    yield sandbox
    sandbox.down()


@pytest.fixture(scope="module")
def lax(tmp_path_factory):
    """A sandbox whose API server does not enforce PoP (bearer tokens, still checked against the JWKS)."""
    sandbox = Sandbox(tmp_path_factory.mktemp("entra-nopop"))
    sandbox.up(provider="identity", entra=True, enforce_pop=False, apiserver="emulator")
    yield sandbox
    sandbox.down()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def entra(box) -> dict:
    return box.info["entra"]


def session(box) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.verify = box.info["ca_bundle"]
    return s


def token(box, scope, principal="service_principal", secret=None, **extra) -> requests.Response:
    e = entra(box)
    who = e[principal]
    form = {"grant_type": "client_credentials", "client_id": who["client_id"], "scope": scope,
            "client_secret": secret if secret is not None else who["secret"], **extra}
    return session(box).post(e["token_endpoint"], data=form, timeout=30)


def jwks_verify(box, access_token: str, audience: str) -> dict:
    e = entra(box)
    keys = jwt.PyJWKSet.from_dict(session(box).get(e["jwks_uri"], timeout=30).json())
    kid = jwt.get_unverified_header(access_token)["kid"]
    key = next(k for k in keys.keys if k.key_id == kid)
    return jwt.decode(access_token, key.key, algorithms=["RS256"], audience=audience, issuer=e["issuer"])


class PoPKey:
    """A client's PoP key as kubelogin makes it: RSA 2048, kid = RFC 7638 thumbprint of the public JWK."""

    def __init__(self):
        self.key = rsa.generate_private_key(65537, 2048)
        nums = self.key.public_key().public_numbers()
        self.jwk = {"e": b64(nums.e.to_bytes(3, "big")), "kty": "RSA", "n": b64(nums.n.to_bytes(256, "big"))}
        canonical = '{"e":"%s","kty":"RSA","n":"%s"}' % (self.jwk["e"], self.jwk["n"])
        self.kid = b64(hashlib.sha256(canonical.encode()).digest())

    @property
    def req_cnf(self) -> str:
        return b64(json.dumps({"kid": self.kid, "xms_ksl": "sw"}).encode())

    def pop_token(self, access_token: str, u: str, ts: int | None = None) -> str:
        header = {"typ": "pop", "alg": "RS256", "kid": self.kid}
        payload = {"at": access_token, "ts": int(time.time()) if ts is None else ts, "u": u,
                   "cnf": {"jwk": dict(self.jwk, alg="RS256", kid=self.kid)}, "nonce": uuid.uuid4().hex}
        signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64(signature)


def pop_access_token(box, key: PoPKey) -> str:
    r = token(box, AKS_ARC_SERVER_ID + "/.default", token_type="pop", req_cnf=key.req_cnf)
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "pop"
    return r.json()["access_token"]


def list_kube_system_pods(box, bearer: str) -> requests.Response:
    return session(box).get(box.info["apiserver"]["url"] + "/api/v1/namespaces/kube-system/pods",
                            headers={"Authorization": "Bearer " + bearer}, timeout=30)


def unsigned_token(aud: str, tid: str) -> str:
    now = int(time.time())
    claims = {"aud": aud, "iss": f"https://sts.windows.net/{tid}/", "iat": now, "nbf": now, "exp": now + 3600,
              "oid": str(uuid.uuid4()), "tid": tid, "upn": "operator@contoso.com", "ver": "1.0"}
    return ".".join([b64(b'{"alg":"none","typ":"JWT"}'), b64(json.dumps(claims).encode()), ""])


# --- discovery, JWKS, the token endpoint ---------------------------------------------------------------------------


def test_discovery_documents_and_jwks(box):
    e = entra(box)
    s = session(box)
    tid, url = e["tenant"], e["url"]
    v2 = s.get(e["openid_configuration"], timeout=30).json()
    assert v2["issuer"] == f"{url}/{tid}/v2.0"
    assert v2["token_endpoint"] == f"{url}/{tid}/oauth2/v2.0/token" == e["token_endpoint"]
    assert v2["authorization_endpoint"] == f"{url}/{tid}/oauth2/v2.0/authorize"
    assert v2["device_authorization_endpoint"] == f"{url}/{tid}/oauth2/v2.0/devicecode"
    assert v2["jwks_uri"] == f"{url}/{tid}/discovery/v2.0/keys" == e["jwks_uri"]
    v1 = s.get(f"{url}/{tid}/.well-known/openid-configuration", timeout=30).json()
    assert v1["issuer"] == f"https://sts.windows.net/{tid}/" == e["issuer"]
    assert v1["token_endpoint"] == f"{url}/{tid}/oauth2/token"
    for tenant in ("common", "organizations", e["domain"]):
        doc = s.get(f"{url}/{tenant}/v2.0/.well-known/openid-configuration", timeout=30).json()
        assert doc["token_endpoint"].startswith(url + "/")
        assert s.get(f"{url}/{tenant}/.well-known/openid-configuration", timeout=30).status_code == 200
    assert s.get(f"{url}/{e['domain']}/v2.0/.well-known/openid-configuration", timeout=30).json()[
        "token_endpoint"] == e["token_endpoint"]  # a domain resolves to the tenant id, as Entra's
    missing = s.get(f"{url}/{uuid.uuid4()}/v2.0/.well-known/openid-configuration", timeout=30)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_tenant"
    assert missing.json()["error_description"].startswith("AADSTS90002: Tenant ")

    [key] = s.get(e["jwks_uri"], timeout=30).json()["keys"]
    assert key["kty"] == "RSA" and key["use"] == "sig" and key["kid"] == key["x5t"] and key["n"] and key["e"]
    cert = x509.load_der_x509_certificate(base64.b64decode(key["x5c"][0]))
    assert key["kid"] == b64(cert.fingerprint(hashes.SHA1()))
    assert cert.public_key().public_numbers().n == jwt.PyJWK(key).key.public_numbers().n
    assert s.get(f"{url}/{tid}/discovery/keys", timeout=30).json()["keys"][0]["kid"] == key["kid"]


def test_client_credentials_token_verifies_against_the_jwks(box):
    e = entra(box)
    sp = e["service_principal"]
    for scope, aud in ((AKS_ARC_SERVER_ID + "/.default", AKS_ARC_SERVER_ID), (ARM + "/.default", ARM),
                       ("https://management.azure.com/.default", "https://management.azure.com")):
        r = token(box, scope)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"token_type", "access_token", "expires_in", "ext_expires_in"}
        assert body["token_type"] == "Bearer" and 3000 < body["expires_in"] <= 5400
        claims = jwks_verify(box, body["access_token"], aud)
        assert claims["aud"] == aud and claims["tid"] == e["tenant"] and claims["ver"] == "1.0"
        assert claims["appid"] == sp["client_id"] and claims["appidacr"] == "1" and claims["idtyp"] == "app"
        assert claims["oid"] == claims["sub"] == sp["object_id"]
        assert claims["iat"] == claims["nbf"] <= time.time() - 290 and claims["exp"] > time.time() + 3000
        assert "cnf" not in claims
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "RS256" and header["typ"] == "JWT" and header["kid"] == header["x5t"]


def test_token_endpoint_errors_are_entra_errors(box):
    e = entra(box)
    r = token(box, ARM + "/.default", secret="not-the-secret")
    assert r.status_code == 401
    body = r.json()
    assert body["error"] == "invalid_client" and body["error_codes"] == [7000215]
    assert body["error_description"].startswith("AADSTS7000215: Invalid client secret provided.")
    assert {"trace_id", "correlation_id", "timestamp"} <= set(body)

    s = session(box)
    form = {"grant_type": "client_credentials", "client_id": e["service_principal"]["client_id"],
            "client_secret": e["service_principal"]["secret"], "scope": ARM + "/.default"}
    other = s.post(f"{e['url']}/{uuid.uuid4()}/oauth2/v2.0/token", data=form, timeout=30)
    assert other.status_code == 400 and other.json()["error"] == "invalid_request"
    assert other.json()["error_codes"] == [90002] and "AADSTS90002: Tenant " in other.json()["error_description"]
    unknown = s.post(e["token_endpoint"], data=dict(form, client_id=str(uuid.uuid4())), timeout=30)
    assert unknown.status_code == 400 and unknown.json()["error"] == "unauthorized_client"
    assert unknown.json()["error_codes"] == [700016]
    resource = token(box, "https://nowhere.example/.default")
    assert resource.status_code == 400 and resource.json()["error_codes"] == [500011]
    scope = token(box, ARM + "user_impersonation")
    assert scope.status_code == 400 and scope.json()["error"] == "invalid_scope"


def test_pop_token_request_binds_the_key(box):
    key = PoPKey()
    claims = jwks_verify(box, pop_access_token(box, key), AKS_ARC_SERVER_ID)
    assert claims["cnf"]["kid"] == key.kid
    bad = token(box, AKS_ARC_SERVER_ID + "/.default", token_type="pop", req_cnf="not-json")
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_request"


def _assertion(box, key, cert, aud=None, lifetime=600) -> str:
    e = entra(box)
    cid = e["certificate_principal"]["client_id"]
    now = int(time.time())
    return jwt.encode({"aud": aud or e["token_endpoint"], "iss": cid, "sub": cid, "jti": str(uuid.uuid4()),
                       "nbf": now, "iat": now, "exp": now + lifetime}, key, algorithm="RS256",
                      headers={"x5t": b64(cert.fingerprint(hashes.SHA1()))})


def test_certificate_assertion(box):
    e = entra(box)
    cp = e["certificate_principal"]
    key = serialization.load_pem_private_key(Path(cp["key_file"]).read_bytes(), None)
    cert = x509.load_pem_x509_certificate(Path(cp["cert_file"]).read_bytes())
    form = {"grant_type": "client_credentials", "client_id": cp["client_id"], "scope": ARM + "/.default",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}
    s = session(box)
    ok = s.post(e["token_endpoint"], data=dict(form, client_assertion=_assertion(box, key, cert)), timeout=30)
    assert ok.status_code == 200, ok.text
    claims = jwks_verify(box, ok.json()["access_token"], ARM)
    assert claims["appid"] == cp["client_id"] and claims["appidacr"] == "2"

    other = rsa.generate_private_key(65537, 2048)
    forged = s.post(e["token_endpoint"], data=dict(form, client_assertion=_assertion(box, other, cert)), timeout=30)
    assert forged.status_code == 401 and forged.json()["error_codes"] == [7000274]
    wrong_aud = _assertion(box, key, cert, aud="https://login.microsoftonline.com/other/oauth2/v2.0/token")
    assert s.post(e["token_endpoint"], data=dict(form, client_assertion=wrong_aud), timeout=30).status_code == 401
    expired = _assertion(box, key, cert, lifetime=-900)
    r = s.post(e["token_endpoint"], data=dict(form, client_assertion=expired), timeout=30)
    assert r.json()["error_codes"] == [700024]


def test_federated_credentials_with_azure_identity(box, monkeypatch):
    identity = pytest.importorskip("azure.identity")
    e = entra(box)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", box.info["ca_bundle"])
    host = e["url"].removeprefix("https://")
    wi = e["workload_identity"]
    cred = identity.WorkloadIdentityCredential(tenant_id=e["tenant"], client_id=wi["client_id"],
                                               token_file_path=wi["token_file"], authority=host,
                                               disable_instance_discovery=True)
    claims = jwks_verify(box, cred.get_token(AKS_ARC_SERVER_ID + "/.default").token, AKS_ARC_SERVER_ID)
    assert claims["appid"] == wi["client_id"] and claims["appidacr"] == "2"
    sa = jwt.decode(Path(wi["token_file"]).read_text(), options={"verify_signature": False})
    assert sa["iss"] == wi["issuer"] and sa["sub"] == wi["subject"] and sa["aud"] == ["api://AzureADTokenExchange"]

    pl = e["pipelines"]
    monkeypatch.setenv("SYSTEM_OIDCREQUESTURI", pl["oidc_request_uri"])
    cred = identity.AzurePipelinesCredential(tenant_id=e["tenant"], client_id=pl["client_id"],
                                             service_connection_id=pl["service_connection_id"],
                                             system_access_token=pl["system_access_token"], authority=host,
                                             disable_instance_discovery=True)
    claims = jwks_verify(box, cred.get_token(ARM + "/.default").token, ARM)
    assert claims["appid"] == pl["client_id"]
    s = session(box)
    denied = s.post(pl["oidc_request_uri"], params={"api-version": "7.1",
                                                    "serviceConnectionId": pl["service_connection_id"]},
                    headers={"Authorization": "Bearer wrong"}, timeout=30)
    assert denied.status_code == 401

    # The pipelines' token is no credential of the workload identity's app (issuer not in its federation).
    oidc = s.post(pl["oidc_request_uri"], params={"api-version": "7.1",
                                                  "serviceConnectionId": pl["service_connection_id"]},
                  headers={"Authorization": "Bearer " + pl["system_access_token"]}, timeout=30).json()["oidcToken"]
    r = s.post(e["token_endpoint"], data={
        "grant_type": "client_credentials", "client_id": wi["client_id"], "scope": ARM + "/.default",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": oidc}, timeout=30)
    assert r.status_code == 400 and r.json()["error_codes"] == [700211]


def test_managed_identity_endpoint_with_azure_identity(box, monkeypatch):
    identity = pytest.importorskip("azure.identity")
    from azure.core.exceptions import AzureError
    mi = entra(box)["managed_identity"]
    for k, v in mi["env"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("IDENTITY_SERVER_THUMBPRINT", raising=False)
    t = identity.ManagedIdentityCredential().get_token("https://management.azure.com/.default")
    claims = jwks_verify(box, t.token, "https://management.azure.com")
    assert claims["appid"] == mi["client_id"] and claims["oid"] == mi["object_id"]
    assert claims["xms_mirid"] == mi["resource_id"] and t.expires_on > time.time() + 3000
    raw = requests.get(mi["endpoint"], params={"resource": ARM, "api-version": "2019-08-01"},
                       headers={"X-IDENTITY-HEADER": mi["header"]}, timeout=30).json()
    assert set(raw) == {"access_token", "expires_on", "resource", "token_type", "client_id"}
    assert raw["resource"] == ARM and raw["client_id"] == mi["client_id"] and raw["token_type"] == "Bearer"
    assert requests.get(mi["endpoint"], params={"resource": ARM, "api-version": "2019-08-01"},
                        timeout=30).status_code == 401  # no X-IDENTITY-HEADER
    try:
        box.ctl({"managed_identity": "error"})
        assert requests.get(mi["endpoint"], params={"resource": ARM, "api-version": "2019-08-01"},
                            headers={"X-IDENTITY-HEADER": mi["header"]}, timeout=30).status_code == 500
        box.ctl({"managed_identity": "down"})
        with pytest.raises(requests.ConnectionError):
            requests.get(mi["endpoint"], timeout=5)
        with pytest.raises(AzureError, match="Connection refused"):
            identity.ManagedIdentityCredential(retry_total=0).get_token(ARM + "/.default")
    finally:
        box.ctl({"managed_identity": "up"})
    assert identity.ManagedIdentityCredential().get_token(ARM + "/.default").token


def test_device_code_and_refresh_with_msal(box):
    msal = pytest.importorskip("msal")
    e = entra(box)
    s = session(box)
    app = msal.PublicClientApplication("04b07795-8ddb-461a-bbee-02f9e1bf7b46", authority=e["authority"],
                                       instance_discovery=False, http_client=s)
    flow = app.initiate_device_flow(scopes=[ARM + "/.default"])
    assert flow["verification_uri"] == e["url"] + "/devicelogin"
    assert s.get(flow["verification_uri"], params={"user_code": flow["user_code"]}, timeout=30).status_code == 200
    result = app.acquire_token_by_device_flow(flow)
    assert "access_token" in result and "refresh_token" in result, result
    claims = jwks_verify(box, result["access_token"], ARM)
    assert claims["upn"] == e["user"]["upn"] and claims["oid"] == e["user"]["object_id"] and claims["idtyp"] == "user"
    [account] = app.get_accounts()
    refreshed = app.acquire_token_silent([AKS_ARC_SERVER_ID + "/.default"], account=account)
    assert refreshed and refreshed["token_source"] == "identity_provider"  # a refresh_token grant
    assert jwks_verify(box, refreshed["access_token"], AKS_ARC_SERVER_ID)["upn"] == e["user"]["upn"]
    bad = s.post(e["token_endpoint"], data={"grant_type": "refresh_token", "client_id": app.client_id,
                                            "refresh_token": "1.Anot-a-token.x", "scope": ARM + "/.default"},
                 timeout=30)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"


def test_password_and_authorization_code_grants(box):
    e = entra(box)
    s = session(box)
    az_client = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
    form = {"grant_type": "password", "client_id": az_client, "username": e["restricted_user"]["upn"],
            "password": e["restricted_user"]["password"], "scope": f"{ARM}/.default openid offline_access",
            "client_info": "1"}
    r = s.post(e["token_endpoint"], data=form, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert {"access_token", "refresh_token", "id_token", "client_info", "scope"} <= set(body)
    assert jwks_verify(box, body["access_token"], ARM)["upn"] == e["restricted_user"]["upn"]
    idt = jwt.decode(body["id_token"], options={"verify_signature": False})
    assert idt["aud"] == az_client and idt["iss"] == e["issuer_v2"] and idt["ver"] == "2.0"
    wrong = s.post(e["token_endpoint"], data=dict(form, password="nope"), timeout=30)
    assert wrong.status_code == 400 and wrong.json()["error_codes"] == [50126]

    verifier = b64(os.urandom(32))
    challenge = b64(hashlib.sha256(verifier.encode()).digest())
    redirect = "http://localhost:8400"
    auth = s.get(f"{e['authority']}/oauth2/v2.0/authorize", allow_redirects=False, timeout=30, params={
        "client_id": az_client, "response_type": "code", "redirect_uri": redirect, "scope": f"{ARM}/.default openid",
        "state": "st4te", "code_challenge": challenge, "code_challenge_method": "S256"})
    assert auth.status_code == 302 and auth.headers["Location"].startswith(redirect)
    from urllib.parse import parse_qs, urlsplit
    query = parse_qs(urlsplit(auth.headers["Location"]).query)
    assert query["state"] == ["st4te"]
    code_form = {"grant_type": "authorization_code", "client_id": az_client, "code": query["code"][0],
                 "redirect_uri": redirect, "scope": f"{AKS_ARC_SERVER_ID}/.default", "code_verifier": "x" * 43}
    assert s.post(e["token_endpoint"], data=code_form, timeout=30).status_code == 400  # wrong verifier: code spent
    auth = s.get(f"{e['authority']}/oauth2/v2.0/authorize", allow_redirects=False, timeout=30, params={
        "client_id": az_client, "response_type": "code", "redirect_uri": redirect, "scope": "openid",
        "code_challenge": challenge, "code_challenge_method": "S256"})
    code_form["code"] = parse_qs(urlsplit(auth.headers["Location"]).query)["code"][0]
    code_form["code_verifier"] = verifier
    r = s.post(e["token_endpoint"], data=code_form, timeout=30)
    assert r.status_code == 200, r.text
    assert jwks_verify(box, r.json()["access_token"], AKS_ARC_SERVER_ID)["upn"] == e["user"]["upn"]


# --- the API server: PoP ------------------------------------------------------------------------------------------


def test_apiserver_accepts_a_pop_token_and_refuses_a_bearer(box):
    e = entra(box)
    key = PoPKey()
    at = pop_access_token(box, key)
    ok = list_kube_system_pods(box, key.pop_token(at, e["cluster_id"]))
    assert ok.status_code == 200, ok.text
    assert {p["metadata"]["namespace"] for p in ok.json()["items"]} == {"kube-system"}
    assert list_kube_system_pods(box, key.pop_token(at, e["cluster_id"].upper())).status_code == 200

    bearer = token(box, AKS_ARC_SERVER_ID + "/.default").json()["access_token"]
    refused = list_kube_system_pods(box, bearer)
    assert refused.status_code == 401
    status = refused.json()
    assert status["kind"] == "Status" and status["code"] == 401 and status["reason"] == "Unauthorized"
    assert "requires a PoP token" in status["message"]
    assert list_kube_system_pods(box, at).status_code == 401  # the PoP-bound access token on its own
    # Client certificates (the admin kubeconfig) still authenticate.
    assert box.api("GET", "/api/v1/namespaces/kube-system/pods")[0] == 200


def test_apiserver_user_pop_tokens_get_rbac(box):
    e = entra(box)
    key = PoPKey()
    r = session(box).post(e["token_endpoint"], timeout=30, data={
        "grant_type": "password", "client_id": e["client_id"], "username": e["restricted_user"]["upn"],
        "password": e["restricted_user"]["password"], "scope": f"{AKS_ARC_SERVER_ID}/.default",
        "token_type": "pop", "req_cnf": key.req_cnf})
    assert r.status_code == 200 and r.json()["token_type"] == "pop", r.text
    pop = key.pop_token(r.json()["access_token"], e["cluster_id"])
    assert list_kube_system_pods(box, pop).status_code == 200
    denied = session(box).post(box.info["apiserver"]["url"] + "/api/v1/namespaces/default/secrets", timeout=30,
                               headers={"Authorization": "Bearer " + pop},
                               json={"metadata": {"name": "nope"}, "data": {}})
    assert denied.status_code == 403 and denied.json()["reason"] == "Forbidden"
    assert e["restricted_user"]["upn"] in denied.json()["message"]


@pytest.mark.parametrize("flaw", ["u", "ts", "thumbprint", "signature", "audience", "unbound"])
def test_apiserver_refuses_a_bad_pop_token(box, flaw):
    e = entra(box)
    key = PoPKey()
    at = pop_access_token(box, key)
    u, ts = e["cluster_id"], None
    if flaw == "u":
        u = e["cluster_id"].replace("sandbox-cluster", "other-cluster")
    elif flaw == "ts":
        ts = int(time.time()) - 16 * 60
    elif flaw == "thumbprint":  # the access token is bound to another key than the one that signs the PoP token
        at = pop_access_token(box, PoPKey())
    elif flaw == "audience":
        r = token(box, ARM + "/.default", token_type="pop", req_cnf=key.req_cnf)
        at = r.json()["access_token"]
    elif flaw == "unbound":
        at = token(box, AKS_ARC_SERVER_ID + "/.default").json()["access_token"]
    pop = key.pop_token(at, u, ts)
    if flaw == "signature":
        head, payload, _ = pop.split(".")
        pop = f"{head}.{payload}.{b64(PoPKey().key.sign(b'x', padding.PKCS1v15(), hashes.SHA256()))}"
    r = list_kube_system_pods(box, pop)
    assert r.status_code == 401, r.text
    assert r.json()["kind"] == "Status" and r.json()["message"].startswith("Unauthorized: invalid ")


def test_apiserver_without_pop_enforcement_accepts_a_verified_bearer(lax):
    bearer = token(lax, AKS_ARC_SERVER_ID + "/.default").json()["access_token"]
    r = list_kube_system_pods(lax, bearer)
    assert r.status_code == 200, r.text
    key = PoPKey()
    assert list_kube_system_pods(lax, key.pop_token(pop_access_token(lax, key),
                                                    entra(lax)["cluster_id"])).status_code == 200
    arm_token = token(lax, ARM + "/.default").json()["access_token"]
    assert list_kube_system_pods(lax, arm_token).status_code == 401  # wrong audience
    assert list_kube_system_pods(lax, unsigned_token(AKS_ARC_SERVER_ID, entra(lax)["tenant"])).status_code == 401
    tampered = bearer.split(".")
    tampered[1] = b64(json.dumps(dict(jwt.decode(bearer, options={"verify_signature": False}),
                                      upn="admin@contoso.com")).encode())
    assert list_kube_system_pods(lax, ".".join(tampered)).status_code == 401


# --- ARM ------------------------------------------------------------------------------------------------------------


def test_arm_checks_tokens_against_the_jwks(box):
    e = entra(box)
    s = session(box)
    arm = box.info["arm"]["url"]
    good = token(box, ARM + "/.default").json()["access_token"]
    subs = s.get(arm + "/subscriptions?api-version=2022-12-01", headers={"Authorization": "Bearer " + good},
                 timeout=30)
    assert subs.status_code == 200
    [sub] = subs.json()["value"]
    assert sub["subscriptionId"] == e["subscription"] and sub["tenantId"] == e["tenant"]
    one = s.get(f"{arm}/subscriptions/{e['subscription']}?api-version=2022-12-01",
                headers={"Authorization": "Bearer " + good}, timeout=30)
    assert one.status_code == 200 and one.json()["state"] == "Enabled"
    tenants = s.get(arm + "/tenants?api-version=2022-12-01", headers={"Authorization": "Bearer " + good},
                    timeout=30).json()["value"]
    assert [t["tenantId"] for t in tenants] == [e["tenant"]]

    for bad, code in ((unsigned_token(ARM, e["tenant"]), "InvalidAuthenticationToken"),
                      (token(box, AKS_ARC_SERVER_ID + "/.default").json()["access_token"],
                       "InvalidAuthenticationTokenAudience")):
        r = s.get(arm + "/subscriptions?api-version=2022-12-01", headers={"Authorization": "Bearer " + bad},
                  timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == code
    key = serialization.load_pem_private_key(Path(e["signing_key"]).read_bytes(), None)
    kid = session(box).get(e["jwks_uri"], timeout=30).json()["keys"][0]["kid"]
    now = int(time.time())
    expired = jwt.encode({"aud": ARM, "iss": e["issuer"], "tid": e["tenant"], "iat": now - 7200, "nbf": now - 7200,
                          "exp": now - 3600, "oid": str(uuid.uuid4())}, key, algorithm="RS256", headers={"kid": kid})
    r = s.get(arm + "/subscriptions?api-version=2022-12-01", headers={"Authorization": "Bearer " + expired},
              timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "ExpiredAuthenticationToken"


def test_arm_returns_the_aks_arc_user_kubeconfig(box):
    import yaml
    e = entra(box)
    arm = box.info["arm"]
    s = session(box)
    headers = {"Authorization": "Bearer " + token(box, ARM + "/.default").json()["access_token"]}
    url = (f"{arm['url']}/subscriptions/{arm['subscription']}/resourceGroups/{arm['resource_group']}/providers/"
           f"Microsoft.Kubernetes/connectedClusters/sync-cluster/providers/Microsoft.HybridContainerService/"
           "provisionedClusterInstances/default/listUserKubeconfig?api-version=2024-01-01")
    r = s.post(url, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    cfg = yaml.safe_load(base64.b64decode(r.json()["properties"]["kubeconfigs"][0]["value"]))
    ex = cfg["users"][0]["user"]["exec"]
    assert ex["command"] == "kubelogin" and ex["apiVersion"] == "client.authentication.k8s.io/v1beta1"
    cluster_id = (f"/subscriptions/{arm['subscription']}/resourceGroups/{arm['resource_group']}/providers/"
                  "Microsoft.Kubernetes/connectedClusters/sync-cluster")
    assert ex["args"] == ["get-token", "--login", "interactive", "--server-id", AKS_ARC_SERVER_ID, "--client-id",
                          "3f4439ff-e698-4d6d-84fe-09c9d574f06b", "--tenant-id", e["tenant"], "--environment",
                          "AzurePublicCloud", "--pop-enabled", "--pop-claims", f"u={cluster_id}"]


# --- az login, for real -------------------------------------------------------------------------------------------


def _run_az(az, config_dir, *args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "PYTHONPATH"))}
    env.update(AZURE_CONFIG_DIR=str(config_dir), AZURE_CORE_COLLECT_TELEMETRY="false", PYTHONSAFEPATH="1")
    env.update(env_extra or {})
    return subprocess.run([str(az), *args], capture_output=True, text=True, env=env, timeout=180,
                          stdin=subprocess.DEVNULL, cwd=str(config_dir))


@pytest.mark.parametrize("identity", ["sp", "cert"])
def test_az_login_signs_in_for_real(box, tmp_path, identity):
    az = _az()
    if az is None:
        pytest.skip("no az in .venv-az or .venv")
    e = entra(box)
    config = tmp_path / "azure-config"
    config.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "PYTHONPATH"))}
    env.update(AZURE_CONFIG_DIR=str(config), AZURE_CORE_COLLECT_TELEMETRY="false")
    login = subprocess.run([sys.executable, "-m", "tests.sandbox", "az-login", "--dir", str(box.dir), "--az", str(az),
                            "--identity", identity], capture_output=True, text=True, env=env, cwd=str(PROJECT),
                           timeout=300)
    assert login.returncode == 0, login.stderr
    [line] = login.stdout.splitlines()
    who = e["service_principal" if identity == "sp" else "certificate_principal"]
    assert line.startswith("signed in to SandboxCloud as service principal ") and who["client_id"] in line
    ca = {"REQUESTS_CA_BUNDLE": box.info["ca_bundle"]}
    show = _run_az(az, config, "account", "show", "-o", "json", env_extra=ca)
    assert show.returncode == 0, show.stderr
    account = json.loads(show.stdout)
    assert account["id"] == e["subscription"] and account["tenantId"] == e["tenant"]
    assert account["environmentName"] == "SandboxCloud" and account["user"] == {"name": who["client_id"],
                                                                               "type": "servicePrincipal"}
    got = _run_az(az, config, "account", "get-access-token", "--resource", AKS_ARC_SERVER_ID, "-o", "json",
                  env_extra=ca)
    assert got.returncode == 0, got.stderr
    claims = jwks_verify(box, json.loads(got.stdout)["accessToken"], AKS_ARC_SERVER_ID)
    assert claims["appid"] == who["client_id"] and claims["appidacr"] == ("1" if identity == "sp" else "2")
    # The signed-in az reaches ARM with its own ARM token.
    arm = _run_az(az, config, "rest", "--method", "get", "--url",
                  f"{box.info['arm']['url']}/tenants?api-version=2022-12-01", "-o", "json", env_extra=ca)
    assert arm.returncode == 0, arm.stderr
    assert json.loads(arm.stdout)["value"][0]["tenantId"] == e["tenant"]


def test_az_login_errors_are_one_line(box, tmp_path):
    az = _az()
    if az is None:
        pytest.skip("no az in .venv-az or .venv")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "sandbox.json").write_text(json.dumps({"dir": str(plain), "arm": {"url": "https://127.0.0.1:1"}}))
    env = dict(os.environ, AZURE_CONFIG_DIR=str(tmp_path / "cfg"))
    r = subprocess.run([sys.executable, "-m", "tests.sandbox", "az-login", "--dir", str(plain), "--az", str(az)],
                       capture_output=True, text=True, env=env, cwd=str(PROJECT), timeout=120)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines() == [f"error: the sandbox in {plain} has no Entra emulator: bring it up without "
                                     "--no-entra"]
    r = subprocess.run([sys.executable, "-m", "tests.sandbox", "az-login", "--dir", str(box.dir), "--az",
                        str(tmp_path / "no-az")], capture_output=True, text=True, env=env, cwd=str(PROJECT),
                       timeout=120)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "does not exist" in r.stderr


# --- options, resume -----------------------------------------------------------------------------------------------


def test_entra_options_and_resume(tmp_path):
    with pytest.raises(SandboxError, match="needs the Entra emulator"):
        Sandbox(tmp_path / "no").up(provider="identity", entra=False, enforce_pop=False)
    sandbox = Sandbox(tmp_path / "resume")
    sandbox.up(provider="identity")  # the default: the Entra emulator, PoP enforced
    try:
        before = sandbox.info["entra"]
        assert before and before["enforce_pop"] is True
        sandbox.down()
        with pytest.raises(SandboxError, match="--entra"):
            sandbox.up(entra=False)
        with pytest.raises(SandboxError, match="--enforce-pop"):
            sandbox.up(enforce_pop=False)
        sandbox.up()
        after = sandbox.info["entra"]
        assert after["service_principal"] == before["service_principal"] and after["enforce_pop"] is True
        key = PoPKey()
        ok = list_kube_system_pods(sandbox, key.pop_token(pop_access_token(sandbox, key), after["cluster_id"]))
        assert ok.status_code == 200, ok.text
    finally:
        sandbox.down()
