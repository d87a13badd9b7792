"""discovery.graph: however Resource Graph pages, rows and pages are capped with one clear error."""

import pytest
from azure.cli.core.azclierror import AzureResponseError

from azext_kmsverify import defaults
from azext_kmsverify.auth import armclient
from azext_kmsverify.deadline import Deadline
from azext_kmsverify.discovery import graph


class Cloud:
    class endpoints:  # az's shape
        resource_manager = 'https://management.example/'


class CliCtx:
    cloud = Cloud


def _row(page, index):
    return {'id': f'/subscriptions/00000000-0000-0000-0000-00000000c0de/resourceGroups/rg/providers/'
                  f'Microsoft.Kubernetes/connectedClusters/c-{page}-{index}', 'name': f'c-{page}-{index}',
            'resourceGroup': 'rg', 'subscriptionId': '00000000-0000-0000-0000-00000000c0de', 'tags': {}}


@pytest.fixture
def pages(monkeypatch):
    calls = []
    monkeypatch.setattr(armclient, 'arm_client', lambda cli_ctx, deadline, subscription=None: (None, 'sub'))

    def serve(rows, endless=True):
        def query(client, url, body, deadline):
            page = len(calls)
            calls.append(body['options'].get('$skipToken'))
            answer = {'data': [_row(page, i) for i in range(rows)]}
            if endless:
                answer['$skipToken'] = f'token-{page + 1}'
            return answer
        monkeypatch.setattr(graph, '_query_page', query)
        return calls
    return serve


def test_endless_pages_stop_at_the_page_cap(pages):
    calls = pages(rows=1)
    with pytest.raises(AzureResponseError) as info:
        graph.find_clusters(CliCtx, ['sub'], None, {}, Deadline(60))
    assert len(calls) == defaults.RESOURCE_GRAPH_MAX_PAGES
    assert 'Azure Resource Graph answered more than' in info.value.error_msg
    assert f'{defaults.RESOURCE_GRAPH_MAX_PAGES} pages' in info.value.error_msg


def test_a_thousand_new_rows_on_every_page_stop_at_the_row_cap(pages, monkeypatch):
    monkeypatch.setattr(defaults, 'RESOURCE_GRAPH_MAX_ROWS', 5000)
    calls = pages(rows=1000)
    with pytest.raises(AzureResponseError) as info:
        graph.find_clusters(CliCtx, ['sub'], None, {}, Deadline(60))
    assert len(calls) == 6 and 'more than 5000 rows' in info.value.error_msg


def test_a_last_page_within_the_caps_is_kept(pages):
    pages(rows=3, endless=False)
    assert len(graph.find_clusters(CliCtx, ['sub'], None, {}, Deadline(60))) == 3
