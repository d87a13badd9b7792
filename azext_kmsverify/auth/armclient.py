# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""The one ARM client factory: the ``listUserKubeconfig`` operation (``auth/arm.py``) and Resource Graph
(``discovery/graph.py``) both send their requests through :func:`arm_client`.

az offers no public way to build a track-2 pipeline with its own policies (user agent, headers, telemetry hooks,
logging, proxy and TLS settings); the one private use, ``client_factory._prepare_client_kwargs_track2``, is
isolated in :func:`az_client_kwargs` and tested (``tests/unit/test_armclient.py``) against the az installed for
the tests.
"""

from __future__ import annotations

import time

from azext_kmsverify.auth.entra import get_arm_token
from azext_kmsverify.errors import make

# What the pipeline takes from az's client kwargs (the test checks az still gives each).
AZ_CLIENT_KWARGS = ('headers', 'user_agent_policy', 'logging_policy')  # and custom_hook_policy from az 2.61


def arm_client(cli_ctx, deadline, subscription=None):
    """(an ARM pipeline client with a token of the az login for ``subscription``, that subscription); the az
    login's current subscription when None. Retries are bounded by the run's ``deadline``."""
    subscription = subscription or current_subscription(cli_ctx)
    return _pipeline_client(cli_ctx, get_arm_token(cli_ctx, subscription, deadline), deadline), subscription


def current_subscription(cli_ctx):
    """The az login's current subscription; not signed in (no azureProfile) is an authentication error."""
    from azure.cli.core.azclierror import AuthenticationError
    from azure.cli.core.commands.client_factory import get_subscription_id
    from knack.util import CLIError
    try:
        return get_subscription_id(cli_ctx)
    except CLIError as ex:
        message = str(ex).splitlines()[0] if str(ex) else type(ex).__name__
        raise make(AuthenticationError, f'Could not find an Azure subscription in the az login: {message}',
                   "Sign in with 'az login' and select the cluster's subscription with 'az account set "
                   "--subscription ID' (in pipelines, use an AzureCLI task with a service connection), "
                   'then retry.') from None


def az_client_kwargs(cli_ctx) -> dict:
    """az's own track-2 client kwargs (the one private az name this extension uses)."""
    from azure.cli.core.commands.client_factory import _prepare_client_kwargs_track2
    return _prepare_client_kwargs_track2(cli_ctx)


def _pipeline_client(cli_ctx, token, deadline):
    """An azure-core pipeline with az's own policies, a bearer token from the az login, and retries bounded by
    the run's deadline."""
    from azure.core.credentials import AccessToken
    from azure.core.pipeline import policies
    from azure.core.pipeline.transport import RequestsTransport
    from azure.mgmt.core import ARMPipelineClient

    class _Token:  # pylint: disable=too-few-public-methods  # an azure-core credential needs get_token only
        """The token already taken from the az login (Profile.get_raw_token), as an azure-core credential."""

        def get_token(self, *_scopes, **_kwargs):
            return AccessToken(token, int(time.time()) + 300)

    kwargs = az_client_kwargs(cli_ctx)
    endpoint = cli_ctx.cloud.endpoints.resource_manager
    scope = cli_ctx.cloud.endpoints.active_directory_resource_id.rstrip('/') + '/.default'
    pipeline = [
        on_arm_host_policy(endpoint),  # first: a URL elsewhere never reaches the token policy
        policies.HeadersPolicy(kwargs['headers']),
        kwargs['user_agent_policy'],
        policies.RequestIdPolicy(),
        policies.BearerTokenCredentialPolicy(_Token(), scope),
        policies.RetryPolicy(retry_total=2, timeout=max(deadline.remaining(), 1)),
        # az adds custom_hook_policy from 2.61 on; built without it where absent (2.60, older than claimed).
        kwargs.get('custom_hook_policy'),
        kwargs['logging_policy'],
    ]
    pipeline = [policy for policy in pipeline if policy is not None]
    transport = RequestsTransport(connection_verify=kwargs.get('connection_verify', True))
    return ARMPipelineClient(base_url=endpoint, policies=pipeline, transport=transport)


def on_arm_host_policy(endpoint: str):
    """A pipeline policy that lets a request through only to ``endpoint``'s scheme and host: the ARM token goes
    nowhere else. ARM names the URLs its long-running operations are polled at (``Azure-AsyncOperation``,
    ``Location``); one elsewhere stops the run with one line, before any header is added."""
    from azure.core.pipeline.policies import SansIOHTTPPolicy

    class _OnArmHost(SansIOHTTPPolicy):
        def on_request(self, request):
            check_arm_url(request.http_request.url, endpoint)

    return _OnArmHost()


def check_arm_url(url: str, endpoint: str) -> None:
    """Raise the one-line error unless ``url`` is on the ARM ``endpoint``'s scheme and host (https for Azure)."""
    from urllib.parse import urlsplit

    from azure.cli.core.azclierror import AzureResponseError

    from azext_kmsverify.text import printable
    want, got = urlsplit(endpoint), urlsplit(str(url))
    if (got.scheme.lower(), (got.netloc or '').lower()) == (want.scheme.lower(), want.netloc.lower()):
        return
    raise make(AzureResponseError, f"Azure Resource Manager named a URL on another host or scheme "
                                   f"('{printable(got.scheme)}://{printable(got.netloc)}', not {want.scheme}://"
                                   f'{want.netloc}): not followed, and no token was sent there.',
               'Retry; if it persists, check for a proxy that rewrites ARM answers, and open a support request.')
