# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""The kubeconfig of an AKS Arc cluster from Azure: the ARM long-running operation behind
``az aksarc get-credentials`` (``listUserKubeconfig``/``listAdminKubeconfig``), parsed in memory.

Not ``send_raw_request``: it does not poll, and with ``--debug`` it logs response bodies, and this one is a
kubeconfig (with a client key for ``--admin``). The request goes through an azure-core pipeline with az's own
policies and azure-mgmt-core's ``ARMPolling``, with ``logging_enable=False`` on every request of the operation.
"""

from __future__ import annotations

import base64

from knack.log import get_logger

from azext_kmsverify import defaults
from azext_kmsverify.auth.armclient import arm_client
from azext_kmsverify.auth.kubeconfig import parse_kubeconfig
from azext_kmsverify.errors import make
from azext_kmsverify.text import truncate

logger = get_logger(__name__)

USER_ROLE = 'Azure Kubernetes Service Arc Cluster User Role'
ADMIN_ROLE = 'Azure Kubernetes Service Arc Cluster Admin Role'


def cluster_resource_id(subscription, resource_group, cluster_name):
    return (f'/subscriptions/{subscription}/resourceGroups/{resource_group}'
            f'/providers/Microsoft.Kubernetes/connectedClusters/{cluster_name}')


def fetch_kubeconfig(cli_ctx, resource_group, cluster_name, admin, deadline, *, subscription=None):
    """Return the kubeconfig (a dict) of an AKS Arc cluster from ARM, polling the long-running operation."""
    from azure.cli.core.azclierror import AzureResponseError
    from azure.core.exceptions import AzureError, HttpResponseError
    from azure.core.polling import LROPoller
    from azure.core.rest import HttpRequest
    from azure.mgmt.core.polling.arm_polling import ARMPolling
    client, subscription = arm_client(cli_ctx, deadline, subscription)
    action = 'listAdminKubeconfig' if admin else 'listUserKubeconfig'
    path = (f'{cluster_resource_id(subscription, resource_group, cluster_name)}'
            f'/providers/Microsoft.HybridContainerService/provisionedClusterInstances/default/{action}')
    url = f"{cli_ctx.cloud.endpoints.resource_manager.rstrip('/')}{path}?api-version={defaults.HYBRIDAKS_API_VERSION}"
    context = _ArmContext(cli_ctx, subscription=subscription, resource_group=resource_group,
                          cluster_name=cluster_name, admin=admin, action=action, deadline=deadline)
    # logging_enable=False on every request of the operation: the answer is a kubeconfig (with a client key for
    # --admin), which az's network trace would print with --debug.
    options = {'logging_enable': False, 'connection_timeout': deadline.bound(30), 'read_timeout': deadline.bound(60)}
    logger.debug('ARM POST %s', path)
    from azext_kmsverify.deadline import DeadlineExpired
    try:  # through the deadline: a trickling answer cannot stretch it (the poller's wait below is bounded too)
        initial = deadline.call(client.send_request, HttpRequest('POST', url), stream=False,
                                _return_pipeline_response=True, doing=f'running {action}', **options)
    except DeadlineExpired:
        raise context.timeout_error() from None
    except AzureError as ex:
        raise context.transport_error(ex) from None
    response = initial.http_response
    logger.debug('ARM answered %s (x-ms-request-id %s)', response.status_code,
                 response.headers.get('x-ms-request-id', '-'))
    if response.status_code == 200:
        return _kubeconfig_from_result(context.json(response), context)
    if response.status_code not in (201, 202):
        raise context.http_error(response)
    if not response.headers.get('Azure-AsyncOperation') and not response.headers.get('Location'):
        raise make(AzureResponseError, f'{context.action} answered {response.status_code} without an operation URL.',
                   'Retry; if it persists, open a support request.')
    # azure-mgmt-core's poller: Azure-AsyncOperation first, else Location; Retry-After honoured (2 s otherwise).
    polling = ARMPolling(defaults.ARM_POLL_SECONDS, lro_options={'final-state-via': 'azure-async-operation'},
                         **options)
    poller = LROPoller(client, initial, lambda pipeline_response: pipeline_response, polling)
    try:
        final = poller.result(timeout=max(deadline.remaining(), 0.05))
    except HttpResponseError as ex:
        raise context.operation_error(ex) from None
    except AzureError as ex:
        raise context.transport_error(ex) from None
    if not poller.done():
        raise context.timeout_error()
    return _kubeconfig_from_result(context.json(final.http_response), context)


class _ArmContext:
    """What an ARM call is about, to turn failures into one-line errors with a recommendation."""

    def __init__(self, cli_ctx, *, subscription, resource_group, cluster_name, admin, action, deadline):
        self.cli_ctx = cli_ctx
        self.subscription = subscription
        self.resource_group = resource_group
        self.cluster_name = cluster_name
        self.admin = admin
        self.action = action
        self.deadline = deadline

    def transport_error(self, ex):
        """No answer from ARM: TLS, timeout, refused (the exception's text may quote URLs; only its kind is kept)."""
        from azure.cli.core.azclierror import AzureConnectionError
        from azure.core.exceptions import ServiceRequestTimeoutError, ServiceResponseTimeoutError
        host = _host(self.cli_ctx.cloud.endpoints.resource_manager)
        text = str(ex)
        if 'CERTIFICATE_VERIFY_FAILED' in text or 'certificate verify failed' in text:
            return make(AzureConnectionError, f'The TLS certificate of Azure Resource Manager at {host} is not '
                                              'trusted.',
                        'Behind a TLS-inspecting proxy, point REQUESTS_CA_BUNDLE at its CA bundle.')
        if self.deadline.expired() or isinstance(ex, (ServiceRequestTimeoutError, ServiceResponseTimeoutError)) \
                or 'timed out' in text.lower():
            return self.timeout_error()
        return make(AzureConnectionError, f'Could not reach Azure Resource Manager at {host}: {type(ex).__name__}.',
                    'Check the network connection and proxy settings, then retry.')

    def operation_error(self, ex):
        """The poller's failure: an operation that ended Failed/Canceled, or an HTTP error while polling."""
        from azure.cli.core.azclierror import AzureResponseError
        response = getattr(ex, 'response', None)
        status = getattr(response, 'status_code', None)
        error = getattr(ex, 'error', None)
        code = getattr(error, 'code', None) or 'Unknown'
        message = truncate(getattr(error, 'message', None) or 'no error message')
        if status in (401, 403, 404) or (error is None and status is not None and status >= 400):
            return self.http_error(response)
        return make(AzureResponseError, f'The {self.action} operation ended Failed: {code}: {message}',
                    'Check the cluster state in the Azure portal and retry.')

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
            return make(ForbiddenError, f"Not allowed to run {self.action} on AKS Arc cluster '{self.cluster_name}': "
                                        f"{code or 'Forbidden'}",
                        f"Ask for the '{role}' role on the cluster (action Microsoft.HybridContainerService/"
                        f"provisionedClusterInstances/{self.action}/action).")
        if status == 401:
            reason = code or 'Unauthorized'
            return make(UnauthorizedError, f'Azure Resource Manager rejected the az sign-in ({reason}).',
                        "Sign in again with 'az login'.")
        detail = ': ' + message if message else ''
        return make(AzureResponseError, f'{self.action} failed with HTTP {status}: {code or response.reason}{detail}',
                    'Retry; if it persists, check the cluster in the Azure portal.')

    def timeout_error(self):
        from azure.cli.core.azclierror import AzureResponseError
        return make(AzureResponseError, f"The {self.action} operation on AKS Arc cluster '{self.cluster_name}' did not "
                                        f'finish within the --timeout of {self.deadline.seconds} s.',
                    'Retry with a larger --timeout; check the cluster state with '
                    f"'az aksarc show -g {self.resource_group} -n {self.cluster_name}'.")


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
