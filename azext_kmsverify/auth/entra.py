# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Entra ID tokens from the az login, and the kubelogin exec plugin they replace (kubelogin is not needed).

Tokens never reach a message, a log line or an exception chain: failures keep the error's first line or type.
"""

from __future__ import annotations

import os

from knack.log import get_logger

from azext_kmsverify import defaults
from azext_kmsverify.auth.kubeconfig import Kubeconfig
from azext_kmsverify.errors import make
from azext_kmsverify.text import printable, truncate

logger = get_logger(__name__)
_KUBELOGIN = ('kubelogin', 'kubelogin.exe')


def get_arm_token(cli_ctx, subscription):
    from azure.cli.core._profile import Profile
    resource = cli_ctx.cloud.endpoints.active_directory_resource_id
    return _token(lambda: Profile(cli_ctx=cli_ctx).get_raw_token(resource=resource, subscription=subscription),
                  'Azure Resource Manager')


def get_entra_token(cli_ctx, server_id):
    """A token for the cluster's Entra server application from the az login (what kubelogin -l azurecli does)."""
    from azure.cli.core._profile import Profile
    return _token(lambda: Profile(cli_ctx=cli_ctx).get_raw_token(resource=server_id),
                  f'the cluster (Entra server id {server_id})')


def _token(get, audience):
    from azure.cli.core.azclierror import AuthenticationError, AzCLIError
    from knack.util import CLIError
    try:
        (_, token, _), _, _ = get()
    except (AzCLIError, CLIError) as ex:
        message = truncate(str(ex).splitlines()[0]) if str(ex) else type(ex).__name__
        raise make(AuthenticationError, f'Could not get an Entra ID token for {audience}: {message}',
                   "Sign in with 'az login' (in pipelines, use an AzureCLI task with a service connection), "
                   "then retry.") from None
    except Exception as ex:  # pylint: disable=broad-except
        # MSAL and the network raise many types; none of them may carry a token, but keep only the type.
        raise make(AuthenticationError, f'Could not get an Entra ID token for {audience}: {type(ex).__name__}',
                   "Check 'az account show' and sign in again with 'az login'.") from None
    return token


def replace_kubelogin(cli_ctx, kubeconfig: Kubeconfig) -> Kubeconfig:
    """The kubeconfig with its kubelogin exec plugin replaced by a token from the az login.

    From Azure (``-g/-n``): whatever kubelogin login mode it names, as AKS Arc user kubeconfigs ask for an
    interactive one; any other exec plugin is refused, since the user never chose to run it. From
    ``--kubeconfig``: only ``--login azurecli``, which is exactly this; other plugins run as with kubectl.
    """
    plugin = kubeconfig.user.get('exec')
    if not plugin:
        return kubeconfig
    command = os.path.basename(plugin['command']).lower()
    if command not in _KUBELOGIN:
        if kubeconfig.from_azure:
            from azure.cli.core.azclierror import UnclassifiedUserFault
            raise make(UnclassifiedUserFault,
                       f"The kubeconfig from Azure asks to run '{printable(truncate(plugin['command'], 80))}' to "
                       'sign in; kmsverify runs no program named by a downloaded kubeconfig.',
                       "Check the cluster's credentials with 'az aksarc get-credentials' and run the command with "
                       '--kubeconfig on a kubeconfig you have checked.')
        return kubeconfig
    args = plugin.get('args') or []
    login = os.environ.get('AAD_LOGIN_METHOD') or _flag_value(args, ('--login', '-l')) or 'devicecode'
    if not kubeconfig.from_azure and login != 'azurecli':
        return kubeconfig
    server_id = _flag_value(args, ('--server-id',)) or defaults.AKS_ENTRA_SERVER_ID
    logger.debug('Using a token from the az login for Entra server id %s instead of kubelogin', printable(server_id))
    return kubeconfig.with_user({'token': get_entra_token(cli_ctx, server_id)})


def _flag_value(args: list[str], names: tuple[str, ...]) -> str | None:
    for index, arg in enumerate(args):
        for name in names:
            if arg == name and index + 1 < len(args):
                return args[index + 1]
            if arg.startswith(name + '='):
                return arg.split('=', 1)[1]
    return None
