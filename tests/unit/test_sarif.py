"""SARIF 2.1.0 of results: valid against the OASIS schema (tests/schemas), stable rules and fingerprints, a
location on every result, GitHub's result limit respected by folding, and nothing raw from outside."""

import json
from pathlib import Path

import jsonschema
import pytest

from azext_kmsverify.report.sarif import FINGERPRINT, MAX_RESULTS, to_sarif

SCHEMA = json.loads((Path(__file__).parents[1] / 'schemas' / 'sarif-schema-2.1.0.json').read_text())


def _scan_result(failing=(), stale=(), stale_status='Warning', cluster=None):
    return {
        'checks': [
            {'name': 'KmsProviderHealth', 'status': 'Passed', 'detail': 'kms-providers ok', 'target': None},
            {'name': 'AllSecretsEncrypted', 'status': 'Failed' if failing else 'Passed', 'detail': 'x', 'target': None},
            {'name': 'KmsV2CurrentKey', 'status': stale_status if stale else 'Passed', 'detail': 'y', 'target': None},
        ],
        'cluster': cluster or {'source': 'kubeconfig', 'server': 'https://10.0.0.1:6443', 'context': 'admin@c1',
                               'name': None, 'resourceGroup': None},
        'passed': not failing,
        'scan': {
            'failing': [{'namespace': 'legacy', 'name': n, 'storage': 'identity', 'provider': None,
                         'reason': 'stored in plaintext (identity)'} for n in failing],
            'stale': [{'namespace': 'apps', 'name': n, 'kmsVersion': 'v2', 'keyId': 'key-1',
                       'reason': 'written under KMS v2 key id key-1'} for n in stale],
            'total': 10,
        },
        'secrets': [],
    }


def _validate(log):
    jsonschema.validate(log, SCHEMA)


def test_a_failing_scan_is_valid_sarif_with_one_result_per_secret_and_check():
    log = to_sarif(_scan_result(failing=['a', 'b'], stale=['c']), version='1.0.0b1', exit_code=4,
                   started='2026-12-07T10:00:00Z', finished='2026-12-07T10:00:05Z')
    _validate(log)
    run = log['runs'][0]
    assert run['tool']['driver']['name'] == 'kmsverify' and run['tool']['driver']['version'] == '1.0.0b1'
    results = run['results']
    by_rule = {}
    for item in results:
        by_rule.setdefault(item['ruleId'], []).append(item)
    assert len(by_rule['AllSecretsEncrypted']) == 3  # the cluster check and one per secret
    assert {r['level'] for r in by_rule['AllSecretsEncrypted']} == {'error'}
    assert [r['level'] for r in by_rule['KmsV2CurrentKey']] == ['warning', 'warning']
    assert 'KmsProviderHealth' not in by_rule  # passed checks are not results
    rule_ids = {r['id'] for r in run['tool']['driver']['rules']}
    assert set(by_rule) <= rule_ids
    for item in results:
        assert item['locations'][0]['physicalLocation']['artifactLocation']['uri'].startswith('cluster/')
        assert len(item['partialFingerprints'][FINGERPRINT]) == 64
    assert run['invocations'][0] == {'executionSuccessful': True, 'exitCode': 4,
                                     'startTimeUtc': '2026-12-07T10:00:00Z', 'endTimeUtc': '2026-12-07T10:00:05Z'}


def test_fingerprints_are_stable_across_runs_and_differ_by_cluster_secret_and_rule():
    first = to_sarif(_scan_result(failing=['a', 'b']), version='1')['runs'][0]['results']
    again = to_sarif(_scan_result(failing=['b', 'a']), version='2')['runs'][0]['results']
    prints = {r['partialFingerprints'][FINGERPRINT] for r in first}
    assert prints == {r['partialFingerprints'][FINGERPRINT] for r in again}
    assert len(prints) == len(first)
    other = _scan_result(failing=['a', 'b'], cluster={'source': 'kubeconfig', 'server': 'https://10.0.0.2:6443',
                                                      'context': 'admin@c2'})
    assert prints.isdisjoint({r['partialFingerprints'][FINGERPRINT]
                              for r in to_sarif(other, version='1')['runs'][0]['results']})


def test_stale_secrets_are_errors_when_fail_on_stale_failed_the_check():
    results = to_sarif(_scan_result(stale=['c'], stale_status='Failed'), version='1')['runs'][0]['results']
    assert {r['level'] for r in results if r['ruleId'] == 'KmsV2CurrentKey'} == {'error'}


def test_a_fleet_aggregates_past_githubs_limit_and_stays_valid():
    many = [f's{i}' for i in range(MAX_RESULTS // 2 + 10)]
    fleet = {'passed': False, 'clusters': [
        dict(_scan_result(failing=many), id='/subscriptions/s/resourceGroups/rg/providers/'
                                            'Microsoft.Kubernetes/connectedClusters/c1'),
        dict(_scan_result(failing=many), id='/subscriptions/s/resourceGroups/rg/providers/'
                                            'Microsoft.Kubernetes/connectedClusters/c2'),
        {'id': '/subscriptions/s/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/c3',
         'outcome': 'couldNotVerify', 'error': 'the API server did not answer', 'checks': None},
    ]}
    log = to_sarif(fleet, version='1', exit_code=1)
    _validate(log)
    run = log['runs'][0]
    assert len(run['results']) <= MAX_RESULTS
    assert run['properties']['secretResultsFolded'] is True
    folded = [r for r in run['results'] if r.get('properties', {}).get('secrets')]
    assert sorted(r['properties']['secrets'] for r in folded) == [len(many), len(many)]
    assert any(r['ruleId'] == 'Verification' and 'did not answer' in r['message']['text'] for r in run['results'])
    assert run['invocations'][0]['executionSuccessful'] is False


def test_reencrypt_targets_are_results_once():
    result = {
        'checks': [{'name': 'Reencrypt', 'status': 'Failed', 'detail': '1 failed', 'target': None},
                   {'name': 'SecretReencrypted', 'status': 'Failed', 'detail': 'conflict', 'target': 'a/b'}],
        'cluster': {'source': 'arm', 'resourceGroup': 'rg', 'name': 'c1'},
        'targets': [{'namespace': 'a', 'name': 'b', 'outcome': 'failed', 'reason': 'conflict'},
                    {'namespace': 'a', 'name': 'c', 'outcome': 'reencrypted', 'reason': None}],
    }
    log = to_sarif(result, version='1')
    _validate(log)
    rules = [r['ruleId'] for r in log['runs'][0]['results']]
    assert rules.count('SecretReencrypted') == 1 and rules.count('Reencrypt') == 1


@pytest.mark.parametrize('raw', ['\x1b[31m', '\u009b', '\u202e', '\u2028', '\U000e0041', '\x00'])
def test_nothing_raw_from_outside_reaches_the_file(raw):
    result = _scan_result(failing=[f'name{raw}x'])
    result['scan']['failing'][0]['reason'] = f'reason{raw}'
    text = json.dumps(to_sarif(result, version='1'), ensure_ascii=False)
    assert raw not in text


def test_other_resources_and_their_targets_are_results_at_their_own_etcd_keys():
    result = _scan_result()
    result['resources'] = [{'resource': 'widgets.example.com', 'etcdPrefix': '/registry/example.com/widgets/',
                            'namespaced': True, 'total': 2,
                            'failing': [{'namespace': 'default', 'name': 'w', 'storage': 'identity',
                                         'reason': 'stored in plaintext (identity)'}], 'stale': []}]
    result['targets'] = [
        {'namespace': 'default', 'name': 'w', 'kind': 'plaintext', 'outcome': 'failed', 'reason': 'x',
         'resource': 'widgets.example.com', 'etcdKey': '/registry/example.com/widgets/default/w'},
        {'namespace': 'default', 'name': 'v', 'kind': 'plaintext', 'outcome': 'refusedByAdmission',
         'reason': 'refused by admission webhook "deny.example.com"', 'resource': 'widgets.example.com',
         'etcdKey': '/registry/example.com/widgets/default/v'}]
    log = to_sarif(result, version='1.0.0b1', exit_code=4, started='2026-12-07T10:00:00Z',
                   finished='2026-12-07T10:00:05Z')
    _validate(log)
    results = log['runs'][0]['results']
    objects = [r for r in results if r['ruleId'] == 'AllObjectsEncrypted']
    assert len(objects) == 1 and objects[0]['level'] == 'error'
    assert objects[0]['message']['text'].startswith('widgets.example.com default/w: ')
    uris = [r['locations'][0]['physicalLocation']['artifactLocation']['uri'] for r in results
            if r['ruleId'] in ('AllObjectsEncrypted', 'SecretReencrypted')]
    assert all('example.com/widgets/default/' in uri for uri in uris), uris
    rewrites = [r for r in results if r['ruleId'] == 'SecretReencrypted']
    assert [r['level'] for r in rewrites] == ['error', 'error']  # a webhook's refusal is an error, not dropped
    assert len({r['partialFingerprints'][FINGERPRINT] for r in rewrites}) == 2
    assert 'AllObjectsEncrypted' in {r['id'] for r in log['runs'][0]['tool']['driver']['rules']}
