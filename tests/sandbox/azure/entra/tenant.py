"""The emulated tenant's material, made once by ``up`` (:func:`create`: signing key, app registrations, secrets,
certificates, the trusted federation issuers and the sandbox's users, written under ``DIR/entra/``), what tests need
from it (:func:`info`, sandbox.json ``entra``), and the tenant's constants: first-party applications and resources
(:func:`find_resource`)."""

from __future__ import annotations

import datetime
import json
import os
import secrets
import string
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from ...pki import _write_key

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



def find_resource(res: str):
    """(app id, aud) for a resource identifier (an app id or identifier URI), or None."""
    norm = res.rstrip("/").lower()
    for _, app_id, ids in RESOURCES:
        if norm == app_id or norm in (i.rstrip("/").lower() for i in ids):
            return app_id, res
    return None
