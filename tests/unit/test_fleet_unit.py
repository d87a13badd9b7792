"""Fleet selection and verdicts (pure): ARM ids, the Resource Graph query, shards, the exit code precedence, the
table and the JUnit suites."""

import xml.etree.ElementTree as ET

import pytest

from azext_kmsverify.discovery.select import cluster_from_row, graph_query, in_shard, parse_cluster_id
from azext_kmsverify.errors import exit_code
from azext_kmsverify.operations.run import outcome_of
from azext_kmsverify.report.junit import to_junit_xml
from azext_kmsverify.report.table import verify_table_format

ID = '/subscriptions/00000000-0000-0000-0000-00000000c0de/resourceGroups/rg/providers/Microsoft.Kubernetes/' \
     'connectedClusters/c1'


def test_arm_ids():
    assert parse_cluster_id(ID) == {'id': ID, 'subscriptionId': '00000000-0000-0000-0000-00000000c0de',
                                    'resourceGroup': 'rg', 'name': 'c1'}
    assert parse_cluster_id(ID.lower().replace('microsoft.kubernetes', 'Microsoft.Kubernetes'))['name'] == 'c1'
    for bad in ('', 'c1', ID + '/extra', ID.replace('connectedClusters', 'managedClusters'), '/subscriptions/x'):
        assert parse_cluster_id(bad) is None


def test_the_resource_graph_query():
    assert graph_query() == (
        "resources | where type =~ 'microsoft.kubernetes/connectedclusters' and kind =~ 'ProvisionedCluster' | "
        'project id, name, resourceGroup, subscriptionId, tags, properties.connectivityStatus | order by id asc')
    narrowed = graph_query('edge-rg', [('env', 'prod'), ('site', None), ("it's", "a'b")])
    assert "resourceGroup =~ 'edge-rg'" in narrowed and "tags['env'] =~ 'prod'" in narrowed
    assert "isnotnull(tags['site'])" in narrowed and "tags['it\\'s'] =~ 'a\\'b'" in narrowed
    row = {'id': ID, 'name': 'c1', 'properties_connectivityStatus': 'Offline', 'tags': {'env': 'prod'}}
    assert cluster_from_row(row)['connectivityStatus'] == 'Offline'
    assert cluster_from_row({'id': 'nope'}) is None


@pytest.mark.parametrize('count', [1, 2, 3, 7])
def test_shards_cover_every_cluster_exactly_once(count):
    ids = [ID.replace('c1', f'cluster-{i}') for i in range(200)]
    owners = [[s for s in range(1, count + 1) if in_shard(i, (s, count))] for i in ids]
    assert all(len(o) == 1 for o in owners)
    assert in_shard(ids[0], None)
    assert in_shard(ids[5].upper(), (owners[5][0], count))  # case does not move a cluster


def _entry(outcome, **extra):
    return dict({'id': ID, 'outcome': outcome, 'passed': outcome == 'passed', 'durationSeconds': 1.5,
                 'cluster': {'name': 'c1', 'resourceGroup': 'rg'}}, **extra)


@pytest.mark.parametrize('outcomes, code', [
    (['passed', 'passed'], 0), (['passed', 'failed'], 4), (['failed', 'couldNotVerify'], 1),
    (['passed', 'notVerifiable'], 1), ([], 3)])  # no cluster: nothing verified, not found
def test_the_worst_outcome_is_the_exit_code(outcomes, code):
    assert exit_code(outcome_of({'clusters': [_entry(o) for o in outcomes]})) == code


def test_one_table_row_and_one_junit_suite_per_cluster():
    result = {'passed': False, 'clusters': [
        _entry('passed', checks=[{'name': 'KmsProviderHealth', 'status': 'Passed', 'detail': 'ok', 'target': None}],
               secrets=[]),
        _entry('failed', checks=[{'name': 'AllSecretsEncrypted', 'status': 'Failed', 'detail': 'x', 'target': None}],
               scan={'failing': [{'namespace': 'n', 'name': 's', 'reason': 'plaintext'}], 'stale': []}),
        _entry('couldNotVerify', error='Could not reach the API server \x1b[2J'),
    ], 'summary': {}}
    rows = verify_table_format(result)
    *clusters, total = rows
    assert [r['Outcome'] for r in clusters] == ['passed', 'failed', 'couldNotVerify']
    assert total['Name'] == 'Total' and total['ResourceGroup'] == '3 clusters' and total['SecretsFailing'] == 1
    assert rows[1]['FailingChecks'] == 'AllSecretsEncrypted' and rows[1]['SecretsFailing'] == 1
    assert '\x1b' not in rows[2]['FailingChecks']
    root = ET.fromstring(to_junit_xml(result))
    suites = root.findall('testsuite')
    assert len(suites) == 3
    assert int(root.get('failures')) == sum(int(s.get('failures')) for s in suites) >= 2


@pytest.mark.parametrize('shard, found, says', [
    (None, [], 'No cluster verified: Azure Resource Graph found no AKS Arc cluster in subscriptions sub-1, tags '
               'env=prdo. Check --tag and -g for typos'),
    ((1, 7), [ID], 'No cluster verified: shard 1/7 holds none of the 1 clusters found.'),
], ids=['graph-empty', 'shard-empty'])
def test_a_fleet_with_no_cluster_says_why_in_one_line_and_exits_3(monkeypatch, shard, found, says):
    import logging

    from azext_kmsverify.operations import fleet
    from azext_kmsverify.operations.run import Run
    from azext_kmsverify.options import VerifyOptions
    monkeypatch.setattr(fleet, 'find_clusters', lambda *a: [parse_cluster_id(i) for i in found])
    lines = []

    class _Catch(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())
    handler = _Catch(level=logging.ERROR)
    logging.getLogger('cli.azext_kmsverify.operations.fleet').addHandler(handler)
    try:
        run = Run(None, VerifyOptions(all_clusters=True, subscriptions=('sub-1',), tags=(('env', 'prdo'),),
                                      shard=shard, timeout=30))
        result = fleet.run_fleet(run, lambda *_: None)
    finally:
        logging.getLogger('cli.azext_kmsverify.operations.fleet').removeHandler(handler)
    assert result['clusters'] == [] and result['passed'] is False
    assert exit_code(outcome_of(result)) == 3
    assert len(lines) == 1 and lines[0].startswith(says) and '\n' not in lines[0], lines
