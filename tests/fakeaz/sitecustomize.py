"""Swap the Entra token source of an ``az`` subprocess for unsigned sandbox tokens.

Tests put ``tests/fakeaz`` on ``PYTHONPATH`` and set ``FAKEAZ_TOKENS=1``; Python imports this module at start-up.
Only ``Profile.get_raw_token`` changes (it is what ``send_raw_request`` and ``az account get-access-token``
use); subscriptions still come from the real ``azureProfile.json`` in ``AZURE_CONFIG_DIR``, so every other
part of az runs unmodified. The patch is applied lazily by an import hook so az start-up is not slowed.

- ``FAKEAZ_UPN``: the signed-in user (default operator@contoso.com).
- ``FAKEAZ_FAIL=1``: fail the token request the way MSAL failures surface (``AuthenticationError``).
"""

import importlib.abc
import importlib.util
import os
import sys

_TARGET = "azure.cli.core._profile"


def _fake_get_raw_token(self, resource=None, scopes=None, subscription=None, tenant=None, credential_out=None):
    """Same contract as the real one: ((type, token, entry), subscription or None, tenant)."""
    import datetime
    import time

    from azure.cli.core.auth.util import resource_to_scopes, scopes_to_resource
    from knack.util import CLIError

    if resource and not scopes:
        scopes = resource_to_scopes(resource)
    if not scopes:
        scopes = self._arm_scope
    if subscription and tenant:
        raise CLIError("Please specify only one of subscription and tenant, not both")
    account = self.get_subscription(subscription)
    tenant_id = str(tenant if tenant else account["tenantId"])

    if os.environ.get("FAKEAZ_FAIL") == "1":
        from azure.cli.core.auth.util import check_result
        check_result({
            "error": "invalid_grant",
            "error_description": ("AADSTS700082: The refresh token has expired due to inactivity. "
                                  "Trace ID: 00000000-0000-0000-0000-000000000000"),
            "error_codes": [700082],
        }, tenant=tenant_id, scopes=scopes)

    tokens_dir = os.path.dirname(os.path.abspath(__file__))
    if tokens_dir not in sys.path:
        sys.path.append(tokens_dir)
    from tokens import make_token

    upn = os.environ.get("FAKEAZ_UPN") or account.get("user", {}).get("name") or "operator@contoso.com"
    aud = scopes_to_resource(scopes)
    lifetime = 3600
    token = make_token(aud, upn=upn, tid=tenant_id, lifetime=lifetime)
    expires_on = int(time.time()) + lifetime
    entry = {
        "accessToken": token,
        "expires_on": expires_on,
        "expiresOn": datetime.datetime.fromtimestamp(expires_on).strftime("%Y-%m-%d %H:%M:%S.%f"),
    }
    return ("Bearer", token, entry), None if tenant else str(account["id"]), tenant_id


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        module.Profile.get_raw_token = _fake_get_raw_token


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PatchingLoader(spec.loader)
        return spec


if os.environ.get("FAKEAZ_TOKENS") == "1" and not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
