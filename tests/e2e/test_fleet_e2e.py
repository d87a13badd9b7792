"""Fleets end to end: the installed wheel through a real `az login` against a fleet sandbox (one ARM, Resource
Graph and Entra emulator; sandbox-1 kms-v2, sandbox-2 kms-v1, sandbox-3 identity, sandbox-4 Offline, and other-1
(kms-v2) in a second subscription)."""

import xml.etree.ElementTree as ET

import pytest

from tests.sandbox.control import SUBSCRIPTION
from tests.sandbox.fleet import OTHER_SUBSCRIPTION, Fleet

from tests.conftest import PROJECT, assert_no_leak

MISSING = f'/subscriptions/{SUBSCRIPTION}/resourceGroups/sandbox-rg/providers/Microsoft.Kubernetes/connectedClusters/' \
          'no-such-cluster'


@pytest.fixture(scope='module')
def fleet(tmp_path_factory):
    box = Fleet(str(tmp_path_factory.mktemp('fleet')))
    box.up(clusters=4, providers='kms-v2,kms-v1,identity', disconnected='sandbox-4')
    yield box
    box.down()


@pytest.fixture(scope='module')
def fleet_az(sign_in, fleet):
    return sign_in(fleet)


def _ids(fleet, *names):
    by_name = {c['name']: c['id'] for c in fleet.info['clusters']}
    return [by_name[n] for n in names]


def _outcomes(body):
    return {c['cluster']['name']: c['outcome'] for c in body['clusters']}


def test_a_mixed_fleet_gives_each_cluster_its_outcome_and_the_worst_exit_code(fleet_az, fleet, tmp_path):
    report = tmp_path / 'fleet.xml'
    result = fleet_az('aksarc', 'kms', 'verify', '--all-clusters', '--max-parallel', '3', '--junit-xml', str(report),
                      '-o', 'json')
    assert result.code == 1, result  # a cluster not Connected cannot be verified: 1 wins over 4
    body = result.json()
    assert _outcomes(body) == {'sandbox-1': 'passed', 'sandbox-2': 'passed', 'sandbox-3': 'failed',
                               'sandbox-4': 'notVerifiable', 'other-1': 'passed'}
    assert body['passed'] is False and body['summary'] == {'failed': 1, 'notVerifiable': 1, 'passed': 3}
    by_name = {c['cluster']['name']: c for c in body['clusters']}
    assert 'Offline' in by_name['sandbox-4']['error'] and by_name['sandbox-4'].get('checks') is None
    assert by_name['sandbox-1']['cluster']['credential'] == {'type': 'user', 'login': 'azurecli', 'pop': True}
    assert {c['id'] for c in body['clusters']} == {c['id'] for c in fleet.info['clusters']}
    failing = [c for c in by_name['sandbox-3']['checks'] if c['status'] == 'Failed']
    assert [c['name'] for c in failing] == ['SecretEncryptedWithKms'] and 'plaintext' in failing[0]['detail']
    # kube-apiserver with automatic reload registers kms-providers whatever the providers: it passes on an identity
    # cluster (the emulator had no such check there, and a second failure)
    health = next(c for c in by_name['sandbox-3']['checks'] if c['name'] == 'KmsProviderHealth')
    assert health['status'] == 'Passed', health
    # JUnit: one suite per cluster, valid against the schema
    import xmlschema
    schema = xmlschema.XMLSchema(str(PROJECT / 'tests' / 'schemas' / 'junit-10.xsd'))
    schema.validate(str(report))
    suites = ET.parse(report).getroot().findall('testsuite')
    assert len(suites) == 5 and sum(int(s.get('failures')) for s in suites) == 1
    assert sum(int(s.get('errors')) for s in suites) == 1  # sandbox-4, not verifiable: an error, not a failure


def test_only_connected_problems_exit_4(fleet_az, fleet):
    result = fleet_az('aksarc', 'kms', 'verify', '--all-clusters', '--subscriptions', SUBSCRIPTION, '--tag', 'env=prod',
                      '-o', 'json')
    assert result.code == 4, result  # sandbox-1 (passed) and sandbox-3 (failed): env=prod, odd numbers
    assert _outcomes(result.json()) == {'sandbox-1': 'passed', 'sandbox-3': 'failed'}
    narrowed = fleet_az('aksarc', 'kms', 'verify', '--all-clusters', '-g', 'sandbox-rg', '--tag', 'env=prod',
                        '--query', 'clusters[].cluster.name', '-o', 'tsv')
    assert narrowed.code == 4 and sorted(narrowed.stdout.split()) == ['sandbox-1', 'sandbox-3'], narrowed


def test_ids_with_a_cluster_that_does_not_exist(fleet_az, fleet):
    result = fleet_az('aksarc', 'kms', 'verify', '--ids', *_ids(fleet, 'sandbox-1', 'sandbox-2'), MISSING, '-o', 'json')
    assert result.code == 1, result
    outcomes = {c['id']: c['outcome'] for c in result.json()['clusters']}
    assert outcomes[MISSING] == 'couldNotVerify' and list(outcomes.values()).count('passed') == 2
    missing = next(c for c in result.json()['clusters'] if c['id'] == MISSING)
    assert "was not found in resource group 'sandbox-rg'" in missing['error']


def test_a_cluster_in_a_subscription_without_access(sign_in, fleet):
    restricted = sign_in(fleet, 'restricted')
    other = _ids(fleet, 'other-1')[0]
    assert f'/subscriptions/{OTHER_SUBSCRIPTION}/' in other
    result = restricted('aksarc', 'kms', 'verify', '--ids', other, *_ids(fleet, 'sandbox-1'), '--admin', '-o', 'json')
    assert result.code == 1, result
    outcomes = {c['id']: (c['outcome'], c.get('error') or '') for c in result.json()['clusters']}
    assert outcomes[other][0] == 'couldNotVerify' and outcomes[_ids(fleet, 'sandbox-1')[0]][0] == 'passed'
    # Resource Graph shows the restricted identity its own subscription only
    found = restricted('aksarc', 'kms', 'verify', '--all-clusters', '--admin', '--query', 'clusters[].cluster.name',
                       '-o', 'tsv')
    assert 'other-1' not in found.stdout.split() and 'sandbox-1' in found.stdout.split(), found


@pytest.mark.parametrize('count', [2, 3])
def test_shards_cover_every_cluster_exactly_once(fleet_az, fleet, count):
    seen = []
    for index in range(1, count + 1):
        result = fleet_az('aksarc', 'kms', 'verify', '--all-clusters', '--shard', f'{index}/{count}', '--query',
                          'clusters[].id', '-o', 'tsv')
        # an empty slice verified nothing: exit 3 with one line saying so (a pipeline must not go green)
        empty = f'No cluster verified: shard {index}/{count} holds none'
        assert result.code in (0, 1, 4) or (result.code == 3 and not result.stdout.split() and
                                            empty in result.stderr), result
        seen += result.stdout.split()
    assert sorted(seen) == sorted(c['id'] for c in fleet.info['clusters'])


def test_table_and_no_leak_with_debug(fleet_az, fleet):
    table = fleet_az('aksarc', 'kms', 'verify', '--all-clusters', '--subscriptions', SUBSCRIPTION, '-o', 'table')
    lines = table.stdout.splitlines()
    assert lines[0].split() == ['Name', 'ResourceGroup', 'Outcome', 'FailingChecks', 'Warnings', 'SecretsFailing',
                                'KmsVersion', 'KeyMinAgeDays', 'MissingPermissions', 'Duration']
    total = lines[-1]
    assert total.startswith('Total') and '4 clusters' in total, table.stdout
    assert '1 failed, 1 notVerifiable, 2 passed' in total and '1 v1, 1 v2' in total, table.stdout
    assert any(line.startswith('sandbox-2') and 'KmsV1Deprecated' in line and ' v1 ' in line for line in lines)
    assert any(line.startswith('sandbox-3') and 'failed' in line for line in lines), table
    assert any(line.startswith('sandbox-4') and 'notVerifiable' in line for line in lines), table
    debug = fleet_az('aksarc', 'kms', 'verify', '--all-clusters', '--all-secrets', '--debug', '-o', 'json')
    assert debug.code == 1, debug
    secret = fleet.info['entra']['service_principal']['secret']
    assert_no_leak(debug, [secret])
