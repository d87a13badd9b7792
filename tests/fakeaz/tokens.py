"""Entra-like access tokens and an az profile for tests.

The sandbox servers accept unsigned JWTs (``alg: none``) whose claims look like Entra access tokens, so tests
can exercise the real bearer-token code paths of the product without a tenant. ``write_profile`` writes the
``azureProfile.json`` az itself would write after ``az login``, so subscription lookup stays real.
"""

import base64
import json
import os
import time
import uuid

DEFAULT_TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
DEFAULT_UPN = "operator@contoso.com"
AZ_CLI_CLIENT_ID = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
AKS_SERVER_ID = "6dae42f8-4368-4678-94ff-3960e28e3630"
ARM_AUDIENCES = ("https://management.core.windows.net/", "https://management.azure.com/")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def oid_for(upn: str) -> str:
    """Stable object id per user, so 403 messages and logs stay the same between runs."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "upn:" + upn))


def make_token(aud, upn=DEFAULT_UPN, tid=DEFAULT_TENANT, extra=None, lifetime=3600):
    """Return an unsigned JWT with the claims an Entra v1 access token carries (aud, iss, upn, oid, tid, exp)."""
    now = int(time.time())
    claims = {
        "aud": aud,
        "iss": f"https://sts.windows.net/{tid}/",
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + lifetime,
        "appid": AZ_CLI_CLIENT_ID,
        "idtyp": "user",
        "name": upn.split("@")[0],
        "oid": oid_for(upn),
        "scp": "user_impersonation",
        "tid": tid,
        "unique_name": upn,
        "upn": upn,
        "ver": "1.0",
    }
    if extra:
        claims.update(extra)
    header = {"alg": "none", "typ": "JWT"}
    return ".".join([_b64url(json.dumps(header).encode()), _b64url(json.dumps(claims).encode()), ""])


def decode_token(token: str) -> dict:
    """Claims of a JWT without verifying anything (the sandbox trusts any well-formed token)."""
    parts = token.split(".")
    if len(parts) < 2:
        raise ValueError("not a JWT")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    claims = json.loads(base64.urlsafe_b64decode(payload))
    if not isinstance(claims, dict):
        raise TypeError("JWT payload is not an object")
    return claims


def write_profile(config_dir, subscription_id, tenant_id=DEFAULT_TENANT, user=DEFAULT_UPN,
                  name="Sandbox Subscription"):
    """Write ``azureProfile.json`` as ``az login`` leaves it, with one default subscription."""
    os.makedirs(config_dir, exist_ok=True)
    profile = {
        "installationId": str(uuid.uuid5(uuid.NAMESPACE_URL, "install:" + str(config_dir))),
        "subscriptions": [{
            "id": subscription_id,
            "name": name,
            "state": "Enabled",
            "user": {"name": user, "type": "user"},
            "isDefault": True,
            "tenantId": tenant_id,
            "environmentName": "AzureCloud",
            "homeTenantId": tenant_id,
            "tenantDefaultDomain": user.split("@")[-1] if "@" in user else "contoso.com",
            "tenantDisplayName": "Contoso",
            "managedByTenants": [],
        }],
    }
    path = os.path.join(config_dir, "azureProfile.json")
    # az writes this file with a UTF-8 BOM; it reads both forms.
    with open(path, "w", encoding="utf-8-sig") as f:
        json.dump(profile, f, indent=2)
    return path
