# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""The kubeconfig of an AKS Arc cluster from Azure: the ARM long-running operation behind
``az aksarc get-credentials`` (``listUserKubeconfig``/``listAdminKubeconfig``), parsed in memory.

We do not use ``send_raw_request``: with ``--debug`` it logs response bodies, and this one is a kubeconfig
(with a client key for ``--admin``). Requests are made with ``requests`` and logged without bodies.
"""

import base64
import time
import uuid

from knack.log import get_logger

from azext_kmsverify import defaults
from azext_kmsverify.auth.entra import get_arm_token
from azext_kmsverify.auth.kubeconfig import parse_kubeconfig
from azext_kmsverify.errors import make
from azext_kmsverify.text import truncate

logger = get_logger(__name__)

USER_ROLE = 'Azure Kubernetes Service Arc Cluster User Role'
ADMIN_ROLE = 'Azure Kubernetes Service Arc Cluster Admin Role'
_TERMINAL = ('succeeded', 'failed', 'canceled', 'cancelled')
_DEFAULT_POLL_SECONDS = 2.0


def cluster_resource_id(subscription, resource_group, cluster_name):
    return (f'/subscriptions/{subscription}/resourceGroups/{resource_group}'
            f'/providers/Microsoft.Kubernetes/connectedClusters/{cluster_name}')


def fetch_kubeconfig(cli_ctx, resource_group, cluster_name, admin, deadline):
    """Return the kubeconfig (a dict) of an AKS Arc cluster from ARM, polling the long-running operation."""
    subscription = _subscription_id(cli_ctx)
    action = 'listAdminKubeconfig' if admin else 'listUserKubeconfig'
    path = (f'{cluster_resource_id(subscription, resource_group, cluster_name)}'
            f'/providers/Microsoft.HybridContainerService/provisionedClusterInstances/default/{action}')
    endpoints = cli_ctx.cloud.endpoints
    url = '{}{}?api-version={}'.format(endpoints.resource_manager.rstrip('/'), path, defaults.HYBRIDAKS_API_VERSION)
    context = _ArmContext(cli_ctx, subscription, resource_group, cluster_name, admin, action, deadline)

    session = _session(cli_ctx)
    headers = {'Authorization': 'Bearer ' + get_arm_token(cli_ctx, subscription)}
    response = context.send(session, 'POST', url, headers)
    if response.status_code in (201, 202):
        body = _poll(session, context, response, headers)
    elif response.status_code == 200:
        body = context.json(response)
    else:
        raise context.http_error(response)
    return _kubeconfig_from_result(body, context)


def _subscription_id(cli_ctx):
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


def _session(cli_ctx):
    import requests
    from azure.cli.core.util import should_disable_connection_verify
    session = requests.Session()
    # requests honours REQUESTS_CA_BUNDLE and proxies from the environment, as az itself does.
    session.verify = not should_disable_connection_verify()
    from azure.cli.core.util import get_az_user_agent
    session.headers['User-Agent'] = f'{get_az_user_agent()} az-aksarc-kms-verify'
    session.headers['CommandName'] = cli_ctx.data.get('command', '')
    return session


class _ArmContext:
    """What an ARM call is about, to turn failures into one-line errors with a recommendation."""

    def __init__(self, cli_ctx, subscription, resource_group, cluster_name, admin, action, deadline):
        self.cli_ctx = cli_ctx
        self.subscription = subscription
        self.resource_group = resource_group
        self.cluster_name = cluster_name
        self.admin = admin
        self.action = action
        self.deadline = deadline

    def send(self, session, method, url, headers):
        import requests
        from azure.cli.core.azclierror import AzureConnectionError
        if self.deadline.expired():
            raise self.timeout_error()
        host = _host(url)
        logger.debug('ARM %s %s', method, _without_query(url))
        try:
            response = session.request(method, url, headers=dict(headers, **{
                'x-ms-client-request-id': str(uuid.uuid4())}), timeout=self.deadline.bound(60))
        except requests.exceptions.SSLError:
            raise make(AzureConnectionError,
                       f'The TLS certificate of Azure Resource Manager at {host} is not trusted.',
                       'Behind a TLS-inspecting proxy, point REQUESTS_CA_BUNDLE at its CA bundle.') from None
        except requests.exceptions.Timeout:
            raise self.timeout_error() from None
        except requests.exceptions.RequestException as ex:
            raise make(AzureConnectionError, f'Could not reach Azure Resource Manager at {host}: {type(ex).__name__}.',
                       'Check the network connection and proxy settings, then retry.') from None
        logger.debug('ARM answered %s (x-ms-request-id %s)', response.status_code,
                     response.headers.get('x-ms-request-id', '-'))
        return response

    def json(self, response):
        from azure.cli.core.azclierror import AzureResponseError
        try:
            return response.json()
        except ValueError:
            raise make(AzureResponseError, f'Azure Resource Manager answered {self.action} with a body that is not '
                                           'JSON.', 'Retry; if it persists, open a support request.') from None

    def http_error(self, response):
        from azure.cli.core.azclierror import (
            AzureResponseError,
            ForbiddenError,
            ResourceNotFoundError,
            UnauthorizedError,
        )
        code, message = _arm_error(response)
        status = response.status_code
        if status == 404:
            return make(ResourceNotFoundError, f"AKS Arc cluster '{self.cluster_name}' was not found in resource group "
                                               f"'{self.resource_group}' (subscription {self.subscription}).",
                        "Check --resource-group and --name ('az aksarc list -o table'), and the subscription "
                        "('az account show', or --subscription).")
        if status == 403:
            role = ADMIN_ROLE if self.admin else USER_ROLE
            return make(ForbiddenError, "Not allowed to run {} on AKS Arc cluster '{}': {}".format(
                self.action, self.cluster_name, code or 'Forbidden'),
                f"Ask for the '{role}' role on the cluster (action Microsoft.HybridContainerService/"
                f"provisionedClusterInstances/{self.action}/action).")
        if status == 401:
            return make(UnauthorizedError, 'Azure Resource Manager rejected the az sign-in ({}).'.format(
                code or 'Unauthorized'), "Sign in again with 'az login'.")
        return make(AzureResponseError, '{} failed with HTTP {}: {}{}'.format(
            self.action, status, code or response.reason, ': ' + message if message else ''),
            'Retry; if it persists, check the cluster in the Azure portal.')

    def timeout_error(self):
        from azure.cli.core.azclierror import AzureResponseError
        return make(AzureResponseError, f"The {self.action} operation on AKS Arc cluster '{self.cluster_name}' did not "
                                        f'finish within the --timeout of {self.deadline.seconds} s.',
                    'Retry with a larger --timeout; check the cluster state with '
                    f"'az aksarc show -g {self.resource_group} -n {self.cluster_name}'.")


def _poll(session, context, response, headers):
    """Follow a 201/202 until the operation is terminal (Azure-AsyncOperation first, then Location)."""
    from azure.cli.core.azclierror import AzureResponseError
    status_url = response.headers.get('Azure-AsyncOperation')
    location_url = response.headers.get('Location')
    if not status_url and not location_url:
        raise make(AzureResponseError, f'{context.action} answered {response.status_code} without an operation URL.',
                   'Retry; if it persists, open a support request.')
    delay = _retry_after(response)
    while True:
        time.sleep(context.deadline.bound(delay))
        if context.deadline.expired():
            raise context.timeout_error()
        poll = context.send(session, 'GET', status_url or location_url, headers)
        delay = _retry_after(poll)
        if poll.status_code == 202:
            continue
        if poll.status_code >= 400:
            raise context.http_error(poll)
        body = context.json(poll)
        status = str(body.get('status', '')).lower() if isinstance(body, dict) else ''
        if status_url:
            if status not in _TERMINAL:
                continue
            if status != 'succeeded':
                error = body.get('error') or {}
                raise make(AzureResponseError, 'The {} operation ended {}: {}: {}'.format(
                    context.action, body.get('status'), error.get('code', 'Unknown'),
                    truncate(error.get('message', 'no error message'))),
                    'Check the cluster state in the Azure portal and retry.')
            if not (body.get('properties') or {}).get('kubeconfigs') and location_url:
                # Some operation status resources carry no result; the Location URL does.
                status_url = None
                continue
        return body


def _retry_after(response):
    for header, scale in (('retry-after-ms', 0.001), ('x-ms-retry-after-ms', 0.001), ('Retry-After', 1.0)):
        value = response.headers.get(header)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                pass
    return _DEFAULT_POLL_SECONDS


def _kubeconfig_from_result(body, context):
    from azure.cli.core.azclierror import AzureResponseError
    malformed = make(AzureResponseError, f'The kubeconfig returned by {context.action} for cluster '
                                         f"'{context.cluster_name}' is not a valid kubeconfig.",
                     "Retry; if it persists, check 'az aksarc get-credentials' for the same cluster and open a "
                     'support request.')
    try:
        value = body['properties']['kubeconfigs'][0]['value']
        text = base64.b64decode(value, validate=True).decode('utf-8')
    except (KeyError, IndexError, TypeError, ValueError):
        raise malformed from None
    config = parse_kubeconfig(text)
    if config is None:
        raise malformed
    return config


def _arm_error(response):
    try:
        error = response.json().get('error') or {}
        return str(error.get('code') or ''), truncate(str(error.get('message') or ''))
    except (ValueError, AttributeError):
        return '', ''


def _host(url):
    from urllib.parse import urlparse
    return urlparse(url).netloc


def _without_query(url):
    return url.split('?', 1)[0]
