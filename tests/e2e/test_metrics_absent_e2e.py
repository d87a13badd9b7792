"""The current KMS v2 key with and without the API server's key-id metrics, on the real kube-apiserver v1.29.6, through
the installed wheel (issue 18 item 4, issue 15 item 8).

kubernetes PR #136354 removes ``apiserver_envelope_encryption_key_id_hash_total``; the product reads the other two
key-id families (``..._key_id_hash_status_last_timestamp_seconds``, ``..._key_id_hash_last_timestamp_seconds``) and
must work, and say where its key came from, without any of them, and when ``/metrics`` is forbidden.

How the metrics are taken out: kube-apiserver's own ``--disabled-metrics`` does NOT remove them (the first test
shows it: 1.29 applies that flag after loading the encryption configuration, which has already registered the
envelope metrics). So the sandbox runs the same release built without them (``up``/``restart_apiserver``
``without_metrics``: scripts/kube-build.sh --without-metrics drops their registration from k8s.io/apiserver), on the
same etcd and KMS plugin. One sandbox for the module; each test restarts the server in the state it needs (about
5 s). The rotation test runs last: it leaves key-0002 current with nothing stored under it.
"""

import json
from pathlib import Path

import pytest

from tests.sandbox.control import KEY_ID_HASH_TOTAL, KEY_ID_METRICS, Sandbox

from tests.conftest import assert_no_leak, probe_secrets_left, verify

CANARY = 'canary-metrics-absent-5d1f'
EXEC_BINDING = 'metrics-test-exec'


@pytest.fixture(scope='module')
def box(tmp_path_factory):
    box = Sandbox(str(tmp_path_factory.mktemp('metrics-absent')))
    box.up(provider='kms-v2', disabled_metrics=list(KEY_ID_METRICS))  # the real flag: no effect on them (below)
    box.create_secret('default', 'app-token', {'token': CANARY})
    yield box
    box.down()


def _serve(box, without):
    """The real server with exactly ``without`` left out of its build (restarted only when that changes)."""
    if box.info['without_metrics'] != sorted(without):
        box.restart_apiserver(without_metrics=list(without))


def _families(box):
    status, page = box.api('GET', '/metrics')
    assert status == 200, page
    return {line.split('{')[0].split(' ')[0] for line in page.splitlines()
            if line.startswith('apiserver_envelope_encryption_key_id_hash')}


def _statuses(body):
    return {c['name']: c['status'] for c in body['checks']}


def _check(body, name):
    [found] = [c for c in body['checks'] if c['name'] == name]
    return found


def _current_key(box):
    return json.loads(Path(box.info['kms_state']).read_text())['current']


def _all_secrets(az, target, *args):
    result = verify(az, target, '--all-secrets', *args, '-o', 'json')
    assert_no_leak(result, [CANARY])
    return result


def test_disabled_metrics_leaves_them_and_without_key_id_hash_total_the_key_still_comes_from_metrics(az, box):
    _serve(box, [])
    # kube-apiserver --disabled-metrics=<the three> (sandbox.json, the process's flags): the families are all there
    assert box.info['disabled_metrics'] == sorted(KEY_ID_METRICS)
    argv = Path(f"/proc/{box.info['pids']['kube_apiserver']}/cmdline").read_bytes().split(b'\0')
    assert ('--disabled-metrics=' + ','.join(sorted(KEY_ID_METRICS))).encode() in argv
    assert _families(box) == set(KEY_ID_METRICS), _families(box)
    with_metric = _all_secrets(az, box)
    assert with_metric.code == 0, with_metric
    baseline = with_metric.json()
    assert (baseline['scan']['currentKeyId'], baseline['scan']['currentKeyIdSource']) == (_current_key(box), 'metrics')
    assert 'currentKeyIdNote' not in baseline['scan']

    # PR #136354: the server without apiserver_envelope_encryption_key_id_hash_total
    _serve(box, [KEY_ID_HASH_TOTAL])
    assert _families(box) == set(KEY_ID_METRICS) - {KEY_ID_HASH_TOTAL}
    result = _all_secrets(az, box)
    assert result.code == 0, result
    body = result.json()
    assert (body['scan']['currentKeyId'], body['scan']['currentKeyIdSource']) == (_current_key(box), 'metrics')
    assert 'currentKeyIdNote' not in body['scan']
    assert _statuses(body) == _statuses(baseline) and body['scan']['stale'] == baseline['scan']['stale'] == []

    status = az('aksarc', 'kms', 'status', '--kubeconfig', box.kubeconfig, '-o', 'json')
    assert status.code == 0, status
    facts = status.json()
    assert facts['currentKeyIdHash']['value'] and facts['currentKeyIdHash']['source'].startswith('/metrics')
    assert facts['metricsEvidence']['keyIdHashTotalPresent'] is False
    assert facts['metricsEvidence']['keyIdHashTotalUsed'] is False


def test_without_any_key_id_metric_verify_takes_the_key_from_etcd_or_the_probe_and_says_so(az, box):
    _serve(box, [])
    baseline = _all_secrets(az, box).json()
    assert baseline['scan']['currentKeyIdSource'] == 'metrics'

    _serve(box, KEY_ID_METRICS)
    assert _families(box) == set()
    result = _all_secrets(az, box)
    assert result.code == 0, result  # as with the metrics
    body = result.json()
    scan = body['scan']
    assert (scan['currentKeyId'], scan['currentKeyIdSource']) == (_current_key(box), 'latestWrite')
    note = scan['currentKeyIdNote']
    assert note.startswith('/metrics not used: ') and 'removed or renamed' in note, note
    assert 'KMS v1' not in note and '--probe' in note
    assert _statuses(body) == _statuses(baseline), body['checks']
    assert scan['byKeyId'] == baseline['scan']['byKeyId'] and scan['stale'] == []
    assert 'without /metrics or --probe' in _check(body, 'KmsV2CurrentKey')['detail']

    probed = _all_secrets(az, box, '--probe')
    assert probed.code == 0, probed
    scan = probed.json()['scan']
    assert (scan['currentKeyId'], scan['currentKeyIdSource']) == (_current_key(box), 'probe')
    assert 'removed or renamed' in scan['currentKeyIdNote'] and 'probe secret' in scan['currentKeyIdNote']
    assert probe_secrets_left(box) == []


def test_status_without_any_key_id_metric_says_why_the_key_is_unknown(az, box):
    _serve(box, KEY_ID_METRICS)
    result = az('aksarc', 'kms', 'status', '--kubeconfig', box.kubeconfig, '-o', 'json')
    assert result.code == 0, result  # what is known is fine; nothing failed
    body = result.json()
    assert body['passed'] is True and _statuses(body)['KmsProviderHealth'] == 'Passed'
    for fact in ('currentKeyIdHash', 'currentKeyLastUsed', 'currentKeyLastReported'):
        assert body[fact]['value'] is None and body[fact]['source'] is None, body[fact]
        assert 'removed or renamed' in body[fact]['unknownReason'], body[fact]
    # the KMS version still comes from /metrics (the transformation counters stay)
    assert body['kmsVersions'] == {'value': ['v2'], 'source': '/metrics', 'unknownReason': None}
    assert body['keyAge'] is None
    rotation = _check(body, 'KmsKeyRotation')
    assert rotation['status'] == 'Skipped' and 'removed or renamed' in rotation['detail'], rotation
    assert body['metricsEvidence']['metricsRead'] is True
    assert not any('key_id_hash' in m for m in body['metricsEvidence']['metricsUsed'])
    assert_no_leak(result, [CANARY])


def test_metrics_forbidden_by_rbac_verify_and_status_say_so(az, box):
    # The restricted identity may read secrets and list pods but not /metrics (real RBAC); granted exec into the etcd
    # pods here, it can run verify --all-secrets: the metrics are there, only forbidden.
    _serve(box, [])
    binding = {'metadata': {'name': EXEC_BINDING, 'namespace': 'kube-system'},
               'roleRef': {'apiGroup': 'rbac.authorization.k8s.io', 'kind': 'ClusterRole', 'name': 'sandbox-exec'},
               'subjects': [{'kind': 'User', 'apiGroup': 'rbac.authorization.k8s.io', 'name': 'restricted-user'}]}
    path = '/apis/rbac.authorization.k8s.io/v1/namespaces/kube-system/rolebindings'
    code, answer = box.api('POST', path, binding)
    assert code == 201, answer
    try:
        result = _all_secrets(az, box.kubeconfig_restricted)
        assert result.code == 0, result
        scan = result.json()['scan']
        assert (scan['currentKeyId'], scan['currentKeyIdSource']) == (_current_key(box), 'latestWrite')
        assert "/metrics is not allowed (it needs 'get' on the non-resource URL /metrics)" in scan['currentKeyIdNote']
    finally:
        box.api('DELETE', f'{path}/{EXEC_BINDING}')
    status = az('aksarc', 'kms', 'status', '--kubeconfig', box.kubeconfig_restricted, '-o', 'json')
    assert status.code == 0, status
    body = status.json()
    assert body['currentKeyIdHash']['value'] is None and 'not allowed' in body['currentKeyIdHash']['unknownReason']
    assert body['metricsEvidence']['metricsRead'] is False
    rotation = _check(body, 'KmsKeyRotation')
    assert rotation['status'] == 'Skipped' and 'not allowed' in rotation['detail'], rotation


def test_after_a_rotation_without_the_metrics_the_probe_finds_the_old_key_secrets(az, box):
    _serve(box, KEY_ID_METRICS)
    before = _current_key(box)
    rotated = box.kms('rotate', wait=False)  # no key-id metric to wait on
    assert rotated != before
    box.restart_apiserver()  # it takes the plugin's new key id at start (else at its next Status poll, ~1 min)
    stored = _all_secrets(az, box).json()['scan']['byKeyId']
    assert set(stored) == {before}, stored  # nothing written since the rotation

    probed = _all_secrets(az, box, '--probe')
    assert probed.code == 0, probed
    body = probed.json()
    scan = body['scan']
    assert (scan['currentKeyId'], scan['currentKeyIdSource']) == (rotated, 'probe')
    assert {s['name'] for s in scan['stale'] if s['keyId'] == before} >= {'app-token'}
    assert len(scan['stale']) == stored[before]  # every secret is under the older key
    assert _check(body, 'KmsV2CurrentKey')['status'] == 'Warning'
    assert probe_secrets_left(box) == []
    strict = _all_secrets(az, box, '--probe', '--fail-on-stale')
    assert strict.code == 4, strict

    # Without the probe nothing in etcd names the new key: the latest write's key is taken, and the result says
    # what that cannot see.
    unprobed = _all_secrets(az, box)
    assert unprobed.code == 0, unprobed
    scan = unprobed.json()['scan']
    assert (scan['currentKeyId'], scan['currentKeyIdSource'], scan['stale']) == (before, 'latestWrite', [])
    assert 'misses a key rotation' in scan['currentKeyIdNote']
    # reencrypt plans from the same evidence, and says so
    plan = az('aksarc', 'kms', 'reencrypt', '--kubeconfig', box.kubeconfig, '--dry-run', '-o', 'json')
    assert plan.code == 0, plan  # nothing to rewrite, as far as the latest write tells
    body = plan.json()
    assert (body['currentKeyId'], body['currentKeyIdSource'], body['plan']['targets']) == (before, 'latestWrite', 0)
    assert 'misses a key rotation' in body['currentKeyIdNote'] and 'removed or renamed' in body['currentKeyIdNote']

    # The same etcd with the metrics back: /metrics names the new key by its hash alone, and every secret is stale.
    _serve(box, [])
    with_metrics = _all_secrets(az, box)
    assert with_metrics.code == 0, with_metrics
    scan = with_metrics.json()['scan']
    assert scan['currentKeyIdSource'] == 'metrics' and scan['currentKeyId'].startswith('sha256:')
    assert len(scan['stale']) == stored[before]
    plan = az('aksarc', 'kms', 'reencrypt', '--kubeconfig', box.kubeconfig, '--dry-run', '-o', 'json')
    assert plan.code == 4, plan  # --dry-run found targets
    body = plan.json()
    assert body['currentKeyIdSource'] == 'metrics' and body['plan']['targets'] == stored[before]
    assert 'no secret in etcd is stored under it yet' in body['currentKeyIdNote']
