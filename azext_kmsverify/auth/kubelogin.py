# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""A kubelogin exec entry read as kubelogin reads it: its flags, then the environment variables that override
them (kubelogin's ``UpdateFromEnv``), with kubelogin's defaults. Pure: the environment is passed in."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from azext_kmsverify import defaults

KUBELOGIN_COMMANDS = ('kubelogin', 'kubelogin.exe')
AZ_LOGIN_MODES = ('azurecli', 'interactive', 'devicecode')  # served by the az login
IDENTITY_MODES = ('spn', 'msi', 'workloadidentity', 'azurepipelines')  # served by azure-identity
MODES = AZ_LOGIN_MODES + IDENTITY_MODES + ('ropc', 'azd')

# Entra authority hosts of kubelogin's --environment names (AZURE_AUTHORITY_HOST overrides them).
AUTHORITY_HOSTS = {
    'azurepubliccloud': 'https://login.microsoftonline.com',
    'azurechinacloud': 'https://login.chinacloudapi.cn',
    'azureusgovernmentcloud': 'https://login.microsoftonline.us',
}


@dataclass(frozen=True)
class KubeloginArgs:  # pylint: disable=too-many-instance-attributes  # one field per kubelogin option
    login: str = 'devicecode'
    server_id: str = defaults.AKS_ENTRA_SERVER_ID
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    client_certificate: str | None = None
    client_certificate_password: str | None = field(default=None, repr=False)
    tenant_id: str | None = None
    environment: str = 'AzurePublicCloud'
    identity_resource_id: str | None = None
    federated_token_file: str | None = None
    authority_host: str | None = None
    pop_enabled: bool = False
    pop_claims: str | None = None

    def pop_u(self) -> str | None:
        """The ``u`` claim of ``--pop-claims`` (``u=<ARM id>,k=v``), as kubelogin parses it."""
        for pair in (self.pop_claims or '').split(','):
            key, _, value = pair.partition('=')
            if key.strip() == 'u' and value.strip():
                return value.strip()
        return None

    def authority(self) -> str:
        host = self.authority_host or AUTHORITY_HOSTS.get(self.environment.lower(), AUTHORITY_HOSTS['azurepubliccloud'])
        return host.rstrip('/')


def is_kubelogin(plugin: dict) -> bool:
    return os.path.basename(str(plugin.get('command') or '')).lower() in KUBELOGIN_COMMANDS


def parse(args: list[str], environ: dict | None = None) -> KubeloginArgs:
    """``kubelogin get-token ARGS`` with ``environ`` (default: os.environ) applied as kubelogin applies it."""
    env = os.environ if environ is None else environ
    flags = _flags(args)
    values = {
        'login': flags.get('login') or 'devicecode',
        'server_id': flags.get('server-id') or defaults.AKS_ENTRA_SERVER_ID,
        'client_id': flags.get('client-id'),
        'client_secret': flags.get('client-secret'),
        'client_certificate': flags.get('client-certificate'),
        'client_certificate_password': flags.get('client-certificate-password'),
        'tenant_id': flags.get('tenant-id'),
        'environment': flags.get('environment') or 'AzurePublicCloud',
        'identity_resource_id': flags.get('identity-resource-id'),
        'federated_token_file': flags.get('federated-token-file'),
        'authority_host': flags.get('authority-host'),
        'pop_enabled': flags.get('pop-enabled') not in (None, 'false', 'False', '0'),
        'pop_claims': flags.get('pop-claims'),
    }
    # Later variables win, in kubelogin's order (AAD_SERVICE_PRINCIPAL_* then AZURE_*).
    for key, names in (('client_id', ('AAD_SERVICE_PRINCIPAL_CLIENT_ID', 'AZURE_CLIENT_ID')),
                       ('client_secret', ('AAD_SERVICE_PRINCIPAL_CLIENT_SECRET', 'AZURE_CLIENT_SECRET')),
                       ('client_certificate', ('AAD_SERVICE_PRINCIPAL_CLIENT_CERTIFICATE',
                                               'AZURE_CLIENT_CERTIFICATE_PATH')),
                       ('client_certificate_password', ('AAD_SERVICE_PRINCIPAL_CLIENT_CERTIFICATE_PASSWORD',
                                                        'AZURE_CLIENT_CERTIFICATE_PASSWORD')),
                       ('tenant_id', ('AZURE_TENANT_ID',)),
                       ('login', ('AAD_LOGIN_METHOD',))):
        for name in names:
            if env.get(name):
                values[key] = env[name]
    if values['login'] == 'workloadidentity':
        for key, name in (('client_id', 'AZURE_CLIENT_ID'), ('federated_token_file', 'AZURE_FEDERATED_TOKEN_FILE'),
                          ('authority_host', 'AZURE_AUTHORITY_HOST')):
            if env.get(name):
                values[key] = env[name]
    if not values['authority_host'] and env.get('AZURE_AUTHORITY_HOST'):
        values['authority_host'] = env['AZURE_AUTHORITY_HOST']  # azure-identity's own override, for every mode
    return KubeloginArgs(**values)


_BOOLEAN = ('pop-enabled', 'legacy', 'use-azurerm-env-vars')
_SHORT = {'-l': 'login', '-t': 'tenant-id', '-e': 'environment'}


def _flags(args: list[str]) -> dict:
    """``--name value``, ``--name=value`` and kubelogin's short forms; boolean flags take no value."""
    flags, index = {}, 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg in _SHORT:
            name, value = _SHORT[arg], None
        elif arg.startswith('--'):
            name, sep, value = arg[2:].partition('=')
            value = value if sep else None
        else:
            continue
        if value is None and name not in _BOOLEAN:
            value = args[index] if index < len(args) else ''
            index += 1
        flags[name] = 'true' if value is None else value
    return flags
