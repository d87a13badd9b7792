# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Where the cluster's Entra token comes from, in place of kubelogin: the az login, or azure-identity for the
pipeline and workload modes; bearer or proof-of-possession (PoP).

A source gives the ``Authorization`` value for each request or connection; with PoP it signs a fresh PoP token
each time (the access token itself is reused until shortly before it expires). Failures are one line: the
error's first line or type, never a token.
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import NoReturn

from knack.log import get_logger

from azext_kmsverify.auth.certificates import certificate_credential
from azext_kmsverify.auth.kubelogin import AUTHORITY_HOSTS, KubeloginArgs
from azext_kmsverify.auth.pop import PopKey
from azext_kmsverify.auth.quiet import quiet
from azext_kmsverify.errors import make
from azext_kmsverify.text import printable, truncate, with_support_ids

logger = get_logger(__name__)
_REFRESH_BEFORE = 120  # seconds before expiry an access token is fetched again


class TokenSource:
    """``authorization()`` -> the header value for the next request. ``login`` and ``pop`` describe it."""

    def __init__(self, login: str, server_id: str, pop_u: str | None):
        self.login = login
        self.server_id = server_id
        self.pop_key = PopKey() if pop_u else None
        self.pop_u = pop_u
        self._token: str | None = None
        self._expires = 0.0

    @property
    def pop(self) -> bool:
        return self.pop_key is not None

    def describe(self) -> dict:
        return {'login': self.login, 'pop': self.pop}

    def authorization(self) -> str:
        if self._token is None or time.time() > self._expires - _REFRESH_BEFORE:
            with quiet():
                self._token, self._expires = self._fetch(f'{self.server_id.rstrip("/")}/.default')
        if self.pop_key is not None:
            return 'Bearer ' + self.pop_key.sign(self._token, self.pop_u)
        return 'Bearer ' + self._token

    def _fetch(self, scope: str) -> tuple[str, float]:
        raise NotImplementedError

    def _failed(self, ex: BaseException, hint: str) -> NoReturn:
        from azure.cli.core.azclierror import AuthenticationError
        first = str(ex).splitlines()[0] if str(ex) else type(ex).__name__
        raise make(AuthenticationError, f'Could not get an Entra ID token for the cluster (Entra server id '
                                        f'{printable(self.server_id)}, {self.login} sign-in): '
                                        f'{with_support_ids(first, ex, 240)}',
                   hint) from None


class AzLoginSource(TokenSource):
    """The az login (what kubelogin -l azurecli does, and what the interactive modes need on a terminal).

    ``tenant`` (the entry's ``--tenant-id``): kubelogin asks az for a token of that tenant (``az account
    get-access-token --tenant``), and AKS Arc user kubeconfigs name the cluster's tenant; so the token comes from an
    az account in that tenant: the cluster's subscription (the PoP ``u`` claim) when it is one, else the default
    subscription when it is in the tenant, else the first account in it. An az login with no account in a tenant
    named by id is a one-line error."""

    def __init__(self, cli_ctx, login: str, server_id: str, pop_u: str | None, tenant: str | None = None):
        super().__init__(login, server_id, pop_u)
        self.cli_ctx = cli_ctx
        self.tenant = tenant

    def _subscription(self, profile) -> str | None:
        """The az account (subscription id) to ask for the token; None for az's default subscription."""
        tenant = (self.tenant or '').strip().lower()
        if not tenant:
            return None
        try:
            accounts = profile.load_cached_subscriptions()
        except Exception:  # pylint: disable=broad-except  # az's profile: let the token request report it
            return None
        in_tenant = [a for a in accounts if tenant in (str(a.get('tenantId') or '').lower(),
                                                       str(a.get('tenantDefaultDomain') or '').lower())]
        if not in_tenant:
            if not accounts or not _GUID.match(tenant):  # not signed in (az says so), or a domain az may not know
                return None
            from azure.cli.core.azclierror import AuthenticationError
            shown = printable(truncate(self.tenant, 80))
            signed_in = ', '.join(sorted({str(a.get('tenantId')) for a in accounts}))
            raise make(AuthenticationError, f'Could not get an Entra ID token for the cluster (Entra server id '
                                            f'{printable(self.server_id)}, {self.login} sign-in): the az login has no '
                                            f'account in tenant {shown}, which the kubeconfig names (--tenant-id); it '
                                            f'is signed in to {truncate(signed_in, 160)}.',
                       f"Sign in to that tenant with 'az login --tenant {shown}' (add --allow-no-subscriptions when "
                       'you have no subscription there), then retry.')
        cluster_sub = _subscription_of(self.pop_u)
        chosen = (next((a for a in in_tenant if cluster_sub and str(a.get('id')).lower() == cluster_sub), None)
                  or next((a for a in in_tenant if a.get('isDefault')), None) or in_tenant[0])
        return None if chosen.get('isDefault') else str(chosen.get('id'))

    def _fetch(self, scope: str) -> tuple[str, float]:
        from azure.cli.core._profile import Profile
        hint = ("Sign in with 'az login' (in pipelines, use an AzureCLI task with a service connection), "
                'then retry.')
        profile = Profile(cli_ctx=self.cli_ctx)
        subscription = self._subscription(profile)
        try:
            if self.pop_key is None:
                (_, token, entry), _, _ = profile.get_raw_token(resource=self.server_id, subscription=subscription)
                return token, float((entry or {}).get('expires_on') or time.time() + 300)
            # az's credential passes ``data`` to MSAL: this is how `az connectedk8s proxy` gets PoP tokens.
            credential, _, _ = profile.get_login_credentials(subscription_id=subscription)
            _no_browser(credential)
            access = credential.get_token(scope, data=self.pop_key.token_request_data())
            return access.token, float(access.expires_on)
        except Exception as ex:  # pylint: disable=broad-except  # MSAL and the network raise many types
            self._failed(ex, hint)


class IdentitySource(TokenSource):
    """azure-identity credentials for kubelogin's non-interactive modes, configured as kubelogin reads them."""

    def __init__(self, args: KubeloginArgs, environ=None):
        super().__init__(args.login, args.server_id, args.pop_u() if args.pop_enabled else None)
        self.args = args
        self.environ = os.environ if environ is None else environ
        self._credential = None
        self._msal = None

    def _fetch(self, scope: str) -> tuple[str, float]:
        hint = self._hint()
        try:
            if self.pop_key is not None:
                return self._fetch_pop(scope)
            if self._credential is None:
                self._credential = self._make_credential()
            access = self._credential.get_token(scope)
            return access.token, float(access.expires_on)
        except Exception as ex:  # pylint: disable=broad-except  # azure-identity wraps MSAL and HTTP errors
            from azure.cli.core.azclierror import AzCLIError
            if isinstance(ex, AzCLIError):
                raise
            self._failed(ex, hint)

    def _options(self) -> dict:
        authority = self.args.authority()
        public = authority in AUTHORITY_HOSTS.values()
        # An authority that is not a public cloud's (Azure Stack, a sovereign or private one) has no instance
        # discovery endpoint to ask.
        return {'authority': authority, 'disable_instance_discovery': not public}

    def _make_credential(self):
        args, env = self.args, self.environ
        login = args.login
        if login == 'spn':
            self._require_spn()
            if args.client_secret:
                from azure.identity import ClientSecretCredential
                return ClientSecretCredential(args.tenant_id, args.client_id, args.client_secret, **self._options())
            from azure.identity import CertificateCredential
            return CertificateCredential(args.tenant_id, args.client_id, args.client_certificate,
                                         password=args.client_certificate_password, **self._options())
        if login == 'msi':
            from azure.identity import ManagedIdentityCredential
            if args.identity_resource_id:
                return ManagedIdentityCredential(identity_config={'resource_id': args.identity_resource_id})
            return ManagedIdentityCredential(client_id=args.client_id)
        if login == 'workloadidentity':
            self._require(('client id', args.client_id, 'AZURE_CLIENT_ID'),
                          ('tenant id', args.tenant_id, 'AZURE_TENANT_ID'),
                          ('federated token file', args.federated_token_file, 'AZURE_FEDERATED_TOKEN_FILE'))
            from azure.identity import WorkloadIdentityCredential
            return WorkloadIdentityCredential(tenant_id=args.tenant_id, client_id=args.client_id,
                                              token_file_path=args.federated_token_file, **self._options())
        if login == 'azurepipelines':
            self._require(('SYSTEM_ACCESSTOKEN', env.get('SYSTEM_ACCESSTOKEN'), "the job's System.AccessToken"),
                          ('SYSTEM_OIDCREQUESTURI', env.get('SYSTEM_OIDCREQUESTURI'), 'an Azure Pipelines job'),
                          ('AZURESUBSCRIPTION_SERVICE_CONNECTION_ID',
                           env.get('AZURESUBSCRIPTION_SERVICE_CONNECTION_ID'), 'an AzureCLI task'),
                          ('AZURESUBSCRIPTION_CLIENT_ID', env.get('AZURESUBSCRIPTION_CLIENT_ID'), 'an AzureCLI task'),
                          ('AZURESUBSCRIPTION_TENANT_ID', env.get('AZURESUBSCRIPTION_TENANT_ID'), 'an AzureCLI task'))
            from azure.identity import AzurePipelinesCredential
            return AzurePipelinesCredential(tenant_id=env['AZURESUBSCRIPTION_TENANT_ID'],
                                            client_id=env['AZURESUBSCRIPTION_CLIENT_ID'],
                                            service_connection_id=env['AZURESUBSCRIPTION_SERVICE_CONNECTION_ID'],
                                            system_access_token=env['SYSTEM_ACCESSTOKEN'], **self._options())
        raise AssertionError(login)

    def _fetch_pop(self, scope: str) -> tuple[str, float]:
        """PoP for spn (kubelogin supports PoP with interactive and spn only). azure-identity does not pass
        ``data`` to the token request; msal, which it wraps and az ships, does."""
        from azure.cli.core.azclierror import ValidationError
        args = self.args
        if args.login != 'spn':
            raise make(ValidationError, f'kubelogin supports PoP tokens (--pop-enabled) with the interactive and spn '
                                        f'sign-ins only, not {args.login}.',
                       'Drop --pop-enabled from the kubeconfig, or sign in with spn or az login.')
        if self._msal is None:
            self._require_spn()
            import msal
            options = self._options()
            self._msal = msal.ConfidentialClientApplication(
                args.client_id, client_credential=args.client_secret or certificate_credential(
                    args.client_certificate, args.client_certificate_password),
                authority=f"{options['authority']}/{args.tenant_id}",
                instance_discovery=not options['disable_instance_discovery'])
        result = self._msal.acquire_token_for_client([scope], data=self.pop_key.token_request_data())
        if 'access_token' not in result:
            raise RuntimeError(with_support_ids(result.get('error_description') or result.get('error') or 'no token',
                                                result.get('error_description'), 240))
        return result['access_token'], time.time() + float(result.get('expires_in') or 300)

    def _require_spn(self):
        args = self.args
        self._require(('client id', args.client_id, '--client-id, AAD_SERVICE_PRINCIPAL_CLIENT_ID or AZURE_CLIENT_ID'),
                      ('tenant id', args.tenant_id, '--tenant-id or AZURE_TENANT_ID'),
                      ('client secret or certificate', args.client_secret or args.client_certificate,
                       'AAD_SERVICE_PRINCIPAL_CLIENT_SECRET/AZURE_CLIENT_SECRET or a certificate'))

    def _require(self, *needs):
        from azure.cli.core.azclierror import ValidationError
        missing = [(what, where) for what, value, where in needs if not value]
        if missing:
            what, where = missing[0]
            raise make(ValidationError, f'kubelogin {self.args.login} sign-in needs a {what}, which is not set.',
                       f'Set it ({where}).' if self.args.login != 'azurepipelines' else
                       f'Run in {where} with a service connection (workload identity federation).')

    def _hint(self) -> str:
        return {'spn': 'Check the service principal, its secret or certificate, and the tenant.',
                'msi': 'Check that a managed identity is available here (IDENTITY_ENDPOINT, or IMDS on a VM).',
                'workloadidentity': 'Check AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID and AZURE_TENANT_ID and the '
                                    "app's federated credential.",
                'azurepipelines': "Check the service connection's workload identity federation."}.get(
                    self.args.login, 'Check the sign-in, then retry.')


def _no_browser(adaptor) -> None:
    """A failed token request is the run's failure, never a browser sign-in. az's user credential answers a failed
    request that carries ``data`` (as PoP requests do) with an interactive auth code flow, meant for `az ssh`
    (azure-cli ``auth/msal_credentials.py`` ``UserCredential.acquire_token``): it waits for a browser that a
    pipeline or a terminal over SSH never has, so an expired sign-in would hang the run. kubelogin's azurecli login
    never prompts either. On this credential only (each fetch makes its own), the fallback re-raises the request's
    own failure (an AuthenticationError with Entra's AADSTS message); a credential without it is left alone.
    The fallback has three shapes across the az releases claimed: ``_acquire_token_interactive`` (2.66 on),
    ``self._msal_app.acquire_token_interactive`` (2.65) and, where UserCredential is itself the msal app,
    ``self.acquire_token_interactive`` (2.64 and before). Only a UserCredential is touched: Cloud Shell's credential
    gets every token through msal's ``acquire_token_interactive(prompt="none")``."""
    inner = getattr(adaptor, '_credential', None)
    if type(inner).__name__ != 'UserCredential':
        return

    def refuse(*_args, **_kwargs):
        failure = sys.exc_info()[1]  # acquire_token calls the fallback while it handles the request's failure
        raise failure if failure is not None else RuntimeError('an interactive sign-in is needed')

    for owner in (inner, getattr(inner, '_msal_app', None)):
        for name in ('_acquire_token_interactive', 'acquire_token_interactive'):
            if owner is not None and callable(getattr(owner, name, None)):
                setattr(owner, name, refuse)


_GUID = re.compile(r'^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$')


def _subscription_of(arm_id: str | None) -> str | None:
    """The subscription id of an ARM id (``/subscriptions/<id>/...``), lower case; None for anything else."""
    parts = (arm_id or '').strip('/').split('/')
    return parts[1].lower() if len(parts) > 1 and parts[0].lower() == 'subscriptions' and parts[1] else None
