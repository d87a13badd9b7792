# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Find AKS Arc clusters with Azure Resource Graph, through az's own HTTP pipeline (not ``az graph``)."""

from __future__ import annotations

from knack.log import get_logger

from azext_kmsverify import defaults
from azext_kmsverify.discovery.select import cluster_from_row, graph_query
from azext_kmsverify.errors import make
from azext_kmsverify.text import truncate

logger = get_logger(__name__)


def login_subscriptions(cli_ctx) -> list[str]:
    """Every enabled subscription of the az login in the tenant of the current one."""
    from azure.cli.core._profile import Profile
    from azure.cli.core.azclierror import AuthenticationError
    from knack.util import CLIError
    profile = Profile(cli_ctx=cli_ctx)
    try:
        current = profile.get_subscription()
    except CLIError as ex:  # az's own "Please run 'az login' to setup account."
        message = truncate(str(ex).splitlines()[0]) if str(ex) else type(ex).__name__
        raise make(AuthenticationError, f'--all-clusters needs the az login to list its subscriptions: {message}',
                   "Sign in with 'az login' (in pipelines, use an AzureCLI task with a service connection), or "
                   'name the clusters with --ids.') from None
    return [s['id'] for s in profile.load_cached_subscriptions()
            if s.get('tenantId') == current.get('tenantId') and str(s.get('state', 'Enabled')).lower() == 'enabled']


def find_clusters(cli_ctx, subscriptions, resource_group, tags, deadline) -> list[dict]:
    """Every AKS Arc cluster the login can see in ``subscriptions``, paged with ``$skipToken``."""
    from azure.cli.core.azclierror import AzureResponseError

    from azext_kmsverify.auth.armclient import arm_client
    client, _ = arm_client(cli_ctx, deadline)
    url = (f"{cli_ctx.cloud.endpoints.resource_manager.rstrip('/')}/providers/Microsoft.ResourceGraph/resources"
           f'?api-version={defaults.RESOURCE_GRAPH_API_VERSION}')
    query = graph_query(resource_group, tags)
    logger.debug('Resource Graph: %s (subscriptions: %s)', query, len(subscriptions))
    clusters, skip, pages, rows = [], None, 0, 0
    while True:
        options = {'$top': defaults.RESOURCE_GRAPH_PAGE, 'resultFormat': 'objectArray'}
        if skip:
            options['$skipToken'] = skip
        body = {'subscriptions': list(subscriptions), 'query': query, 'options': options}
        page = _query_page(client, url, body, deadline)
        pages += 1
        data = page.get('data') or []
        rows += len(data) if isinstance(data, list) else 0
        if rows > defaults.RESOURCE_GRAPH_MAX_ROWS or (page.get('$skipToken') and
                                                       pages >= defaults.RESOURCE_GRAPH_MAX_PAGES):
            raise make(AzureResponseError, f'Azure Resource Graph answered more than '
                                           f'{min(rows, defaults.RESOURCE_GRAPH_MAX_ROWS)} rows in {pages} pages '
                                           f'(the limits are {defaults.RESOURCE_GRAPH_MAX_ROWS} rows and '
                                           f'{defaults.RESOURCE_GRAPH_MAX_PAGES} pages).',
                       'Narrow the query (--subscriptions, -g, --tag) or name the clusters with --ids.')
        for row in data if isinstance(data, list) else []:
            cluster = cluster_from_row(row) if isinstance(row, dict) else None
            if cluster:
                clusters.append(cluster)
        skip = page.get('$skipToken')
        if not skip:
            break
        if deadline.expired():
            raise make(AzureResponseError, 'Azure Resource Graph paging did not finish within the --timeout.',
                       'Narrow the query (--subscriptions, -g, --tag) or retry with a larger --timeout.')
    logger.info('Resource Graph found %s AKS Arc clusters', len(clusters))
    return clusters


def _query_page(client, url, body, deadline) -> dict:
    """One page of a Resource Graph query; a failure is a one-line error."""
    from azure.cli.core.azclierror import AzureResponseError, ForbiddenError
    from azure.core.exceptions import AzureError
    from azure.core.rest import HttpRequest

    from azext_kmsverify.deadline import DeadlineExpired
    try:  # through the deadline: a trickling page cannot stretch it
        response = deadline.call(client.send_request, HttpRequest('POST', url, json=body), logging_enable=False,
                                 connection_timeout=deadline.bound(30), read_timeout=deadline.bound(60),
                                 doing='querying Azure Resource Graph')
    except DeadlineExpired:
        raise make(AzureResponseError, 'Azure Resource Graph paging did not finish within the --timeout.',
                   'Narrow the query (--subscriptions, -g, --tag) or retry with a larger --timeout.') from None
    except AzureError as ex:
        raise make(AzureResponseError, f'Could not query Azure Resource Graph: {type(ex).__name__}.',
                   'Check the network connection and proxy settings, then retry.') from None
    if response.status_code == 403:
        raise make(ForbiddenError, 'Azure Resource Graph refused the query (403).',
                   'Ask for Reader on the subscriptions, or name the clusters with --ids.')
    try:
        page = response.json()
    except ValueError:
        page = None
    if response.status_code != 200 or not isinstance(page, dict):
        error = (page or {}).get('error') if isinstance(page, dict) else None
        message = truncate((error or {}).get('message') or f'HTTP {response.status_code}', 240)
        raise make(AzureResponseError, f'Azure Resource Graph refused the query: {message}',
                   'Retry; if it persists, name the clusters with --ids.')
    return page
