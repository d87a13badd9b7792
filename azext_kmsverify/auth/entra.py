# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Entra ID tokens from the az login, and the kubelogin exec plugin they replace (kubelogin is not needed).

Tokens never reach a message, a log line or an exception chain: failures keep the error's first line or type.
"""

from __future__ import annotations

from knack.log import get_logger

from azext_kmsverify.auth.kubeconfig import Kubeconfig
from azext_kmsverify.errors import make
from azext_kmsverify.text import printable, truncate, with_support_ids

logger = get_logger(__name__)


def get_arm_token(cli_ctx, subscription, deadline=None):
    """The az login's ARM token, requested under the run's ``deadline`` (az's token refresh has no socket to give
    the watchdog: it runs through ``deadline.call``)."""
    from azure.cli.core._profile import Profile
    resource = cli_ctx.cloud.endpoints.active_directory_resource_id
    return _token(lambda: under_deadline(
        deadline, lambda: Profile(cli_ctx=cli_ctx).get_raw_token(resource=resource, subscription=subscription),
        'requesting an Entra ID token for Azure Resource Manager'), 'Azure Resource Manager')


def under_deadline(deadline, fn, doing: str):
    """``fn()`` bounded by ``deadline`` (``Deadline.call``: a token request of azure-identity, msal or az, whose
    sockets the watchdog cannot reach); its expiry is the run's timeout error naming ``doing``."""
    if deadline is None or not hasattr(deadline, 'call'):
        return fn()
    from azext_kmsverify.deadline import DeadlineExpired
    try:
        return deadline.call(fn, doing=doing)
    except DeadlineExpired:
        raise timeout_error(deadline, doing) from None


def timeout_error(deadline, doing: str):
    """The run's timeout error, naming the phase (as the API server's, kube/errors.py)."""
    from azure.cli.core.azclierror import AzureConnectionError
    return make(AzureConnectionError, f'Verification did not finish within the --timeout of {deadline.seconds} s '
                                      f'({printable(doing)}).', 'Retry with a larger --timeout.')


def _token(get, audience):
    from azure.cli.core.azclierror import AuthenticationError, AzCLIError, AzureConnectionError
    from knack.util import CLIError
    try:
        (_, token, _), _, _ = get()
    except AzureConnectionError:
        raise  # the deadline's (under_deadline): already one line naming the phase
    except (AzCLIError, CLIError) as ex:
        message = with_support_ids(str(ex).splitlines()[0], ex) if str(ex) else type(ex).__name__
        if 'subscription' in message.lower() and 'not found' in message.lower():  # az: Subscription 'X' not found
            raise make(AuthenticationError, f'Could not get an Entra ID token for {audience}: {message}',
                       "The az login has no such subscription: list them with 'az account list -o table', then "
                       "select the cluster's with 'az account set --subscription ID' or pass --subscription.") \
                from None
        raise make(AuthenticationError, f'Could not get an Entra ID token for {audience}: {message}',
                   "Sign in with 'az login' (in pipelines, use an AzureCLI task with a service connection), "
                   "then retry.") from None
    except Exception as ex:
        # MSAL and the network raise many types; none of them may carry a token, but keep only the type.
        raise make(AuthenticationError, f'Could not get an Entra ID token for {audience}: {type(ex).__name__}',
                   "Check 'az account show' and sign in again with 'az login'.") from None
    return token


def sign_in(cli_ctx, kubeconfig: Kubeconfig, deadline=None) -> tuple[Kubeconfig, dict]:
    """The kubeconfig with its kubelogin exec plugin replaced by a token source (kubelogin is not needed), and
    ``{'login', 'pop'}`` saying how it signs in (``login`` None when the kubeconfig's own credentials are used).

    From Azure (``-g/-n``): the az login, whatever kubelogin login mode the entry names (AKS Arc user
    kubeconfigs ask for an interactive one), with PoP when it says ``--pop-enabled``; any other exec plugin is
    refused, since the user never chose to run it. From ``--kubeconfig``: the az login for azurecli and the
    interactive modes, azure-identity for spn, msi, workloadidentity and azurepipelines; other plugins (and
    kubelogin's ropc and azd) run as with kubectl.
    """
    from azext_kmsverify.auth import kubelogin
    from azext_kmsverify.auth.tokens import AzLoginSource, IdentitySource
    plugin = kubeconfig.user.get('exec')
    if not plugin:
        return kubeconfig, {'login': None, 'pop': False}
    if not kubelogin.is_kubelogin(plugin):
        if kubeconfig.from_azure:
            from azure.cli.core.azclierror import UnclassifiedUserFault
            raise make(UnclassifiedUserFault,
                       f"The kubeconfig from Azure asks to run '{printable(truncate(plugin['command'], 80))}' to "
                       'sign in; kmsverify runs no program named by a downloaded kubeconfig.',
                       "Check the cluster's credentials with 'az aksarc get-credentials' and run the command with "
                       '--kubeconfig on a kubeconfig you have checked.')
        return kubeconfig, {'login': None, 'pop': False}
    args = kubelogin.parse(plugin.get('args') or [])
    if args.pop_enabled and not args.pop_u():
        from azure.cli.core.azclierror import InvalidArgumentValueError
        raise make(InvalidArgumentValueError, f'{kubeconfig.source}: kubelogin --pop-enabled needs --pop-claims with '
                                              'the u claim (u=<ARM id of the cluster>).',
                   "Fetch fresh credentials with 'az aksarc get-credentials', or add --pop-claims to the entry.")
    pop_u = args.pop_u() if args.pop_enabled else None
    if kubeconfig.from_azure or args.login in kubelogin.AZ_LOGIN_MODES:
        source = AzLoginSource(cli_ctx, 'azurecli' if kubeconfig.from_azure else args.login, args.server_id, pop_u,
                               tenant=args.tenant_id)
    elif args.login in kubelogin.IDENTITY_MODES:
        source = IdentitySource(args)
    else:
        return kubeconfig, {'login': None, 'pop': False}
    logger.debug('Signing in to Entra server id %s with %s%s instead of kubelogin', printable(args.server_id),
                 source.login, ' (PoP)' if source.pop else '')
    # sign in now (a failure is the sign-in's, not the first request's), under the run's deadline
    under_deadline(deadline, source.authorization, 'requesting an Entra ID token for the cluster')
    return kubeconfig.with_token_source(source), source.describe()
