"""scan.ScanSummary: counts, findings and checks of an --all-secrets scan, and its memory bound."""

import json
import logging
import tracemalloc
from datetime import datetime, timedelta, timezone

import pytest

from azext_kmsverify.verdict.scan import (ALL_SECRETS_ENCRYPTED, KMS_V1_ROTATION, KMS_V2_CURRENT_KEY, REWRITE_ALL,
                                  ScanSummary)
from azext_kmsverify.verdict.classify import classify

from tests.support.paths import FIXTURES
VALUES = FIXTURES / 'etcd-values'
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=timezone.utc)


def _fixture(name):
    path = VALUES / (name + '.bin')
    if not path.is_file():
        pytest.fail(f'fixture missing: {path} (tests/fixtures)')
    return path.read_bytes()


@pytest.fixture(scope='module')
def real():
    """Classifications of the real fixture values, and the canaries that must never be reported."""
    expected = json.loads((VALUES / 'expected.json').read_text()) if (VALUES / 'expected.json').is_file() else None
    if expected is None:
        pytest.fail(f"fixtures missing: {VALUES / 'expected.json'}")
    return ({name: classify(_fixture(name)) for name in expected},
            [e['canary'] for e in expected.values() if e.get('canary')])


def _v2(key_id, provider='kms-plugin'):
    return {'storage': 'kms', 'kmsVersion': 'v2', 'provider': provider, 'keyId': key_id, 'encrypted': True}


V1 = {'storage': 'kms', 'kmsVersion': 'v1', 'provider': 'kms-plugin', 'keyId': None, 'encrypted': True}
IDENTITY = {'storage': 'identity', 'kmsVersion': None, 'provider': None, 'keyId': None, 'encrypted': False}


def _by_name(checks):
    return {c['name']: c for c in checks}


def test_real_fixtures_mixed_history(real):
    """Plaintext and local-key values from before KMS, a v1 value and two v2 key ids: all reported right."""
    cls, canaries = real
    summary = ScanSummary()
    summary.add('kube-system', 'old-plain', cls['identity-protobuf'], 10)
    summary.add('default', 'old-json', cls['identity-json'], 11)
    summary.add('default', 'cbc', cls['aescbc'], 20)
    summary.add('default', 'gcm', cls['aesgcm'], 21)
    summary.add('default', 'box', cls['secretbox'], 22)
    summary.add('legacy', 'v1', cls['kms-v1-aksarc'], 30)
    summary.add('apps', 'older-key', cls['kms-v2-legacy-aesgcm-key'], 40)
    summary.add('apps', 'newest', cls['kms-v2-mock'], 50)
    summary.add('apps', 'also-current', cls['kms-v2-mock'], 45)
    scan, checks = summary.finish(revision=99, write_times={('legacy', 'v1'): NOW - timedelta(days=45)}, now=NOW)

    assert scan['total'] == 9 and scan['revision'] == 99
    assert scan['byStorage'] == {'aescbc': 1, 'aesgcm': 1, 'identity': 2, 'kms': 4, 'secretbox': 1}
    assert list(scan['byStorage']) == sorted(scan['byStorage'])
    assert scan['byKmsVersion'] == {'v1': 1, 'v2': 3}
    assert scan['byProvider'] == {'akv': 1, 'kms-plugin': 1, 'kmsv2provider': 2}
    assert scan['byKeyId'] == {'https://vault.example/keys/k/0123': 1, 'kms-test': 2}
    # The newest write (revision 50) is under kms-test: that is the current key.
    assert (scan['currentKeyId'], scan['currentKeyIdSource']) == ('kms-test', 'latestWrite')

    assert [(f['namespace'], f['name'], f['storage']) for f in scan['failing']] == [
        ('default', 'box', 'secretbox'), ('default', 'cbc', 'aescbc'), ('default', 'gcm', 'aesgcm'),
        ('default', 'old-json', 'identity'), ('kube-system', 'old-plain', 'identity')]
    by_name = {f['name']: f for f in scan['failing']}
    assert by_name['old-plain']['reason'] == 'stored in plaintext (identity)'
    assert by_name['cbc']['provider'] == 'key1' and 'local key' in by_name['cbc']['reason']

    assert [(s['namespace'], s['name'], s['kmsVersion']) for s in scan['stale']] == [
        ('apps', 'older-key', 'v2'), ('legacy', 'v1', 'v1')]
    v2 = scan['stale'][0]
    assert v2['keyId'] == 'https://vault.example/keys/k/0123' and v2['lastWrite'] is None
    assert scan['stale'][1]['lastWrite'] == '2025-04-17T12:00:00Z'
    assert REWRITE_ALL in scan['remediation'] and 'first provider' in scan['remediation']

    checks = _by_name(checks)
    assert list(checks) == [ALL_SECRETS_ENCRYPTED, KMS_V2_CURRENT_KEY, KMS_V1_ROTATION]
    assert checks[ALL_SECRETS_ENCRYPTED]['status'] == 'Failed'
    assert checks[ALL_SECRETS_ENCRYPTED]['detail'] == (
        '5 of 9 secrets are not encrypted with KMS: 2 identity, 1 aescbc, 1 aesgcm, 1 secretbox')
    assert checks[KMS_V2_CURRENT_KEY]['status'] == 'Warning'
    assert '1 of 3 KMS v2 secrets was written under an older key' in checks[KMS_V2_CURRENT_KEY]['detail']
    assert checks[KMS_V1_ROTATION]['status'] == 'Warning'

    text = json.dumps([scan, list(checks.values())])
    for canary in canaries:
        assert canary not in text


def test_all_current_passes_and_no_remediation():
    summary = ScanSummary()
    for i in range(20000):
        summary.add(f'ns{i % 7}', f's{i}', _v2('key-2'), i)
    assert not summary.needs_write_times()
    scan, checks = summary.finish(current_key_id='key-2', revision=5)
    assert [c['status'] for c in checks] == ['Passed', 'Passed']
    assert checks[0]['detail'] == 'all 20000 secrets are encrypted with KMS'
    assert checks[1]['detail'] == 'all 20000 KMS v2 secrets are under the current key id key-2 (from the probe secret)'
    assert scan['failing'] == [] and scan['stale'] == [] and scan['remediation'] is None
    assert (scan['currentKeyId'], scan['currentKeyIdSource']) == ('key-2', 'probe')


def test_counts_in_detail():
    summary = ScanSummary()
    for i in range(19997):
        summary.add('a', f's{i}', _v2('k'), i)
    summary.add('b', 'p1', IDENTITY, 1)
    summary.add('b', 'p2', IDENTITY, 2)
    summary.add('b', 'c', {'storage': 'aescbc', 'provider': 'key1'}, 3)
    _, checks = summary.finish()
    assert checks[0]['detail'] == '3 of 20000 secrets are not encrypted with KMS: 2 identity, 1 aescbc'


def test_probe_key_names_stale_v2_and_fail_on_stale():
    """The probe's key id is current: every other key id is older, even one written later."""
    def run(**kwargs):
        summary = ScanSummary()
        summary.add('z', 'old', _v2('key-1'), 100)
        summary.add('a', 'old', _v2('key-1'), 300)  # newest write, still under the old key
        summary.add('m', 'new', _v2('key-2'), 200)
        return summary.finish(current_key_id='key-2', now=NOW, **kwargs)

    scan, checks = run()
    assert [(s['namespace'], s['keyId']) for s in scan['stale']] == [('a', 'key-1'), ('z', 'key-1')]
    assert scan['stale'][0]['reason'] == 'written under KMS v2 key id key-1, not the current key id key-2'
    key = _by_name(checks)[KMS_V2_CURRENT_KEY]
    assert key['status'] == 'Warning'
    assert key['detail'] == ('2 of 3 KMS v2 secrets were written under an older key than the current key id key-2 '
                             '(from the probe secret): key-1 (2)')
    assert _by_name(checks)[ALL_SECRETS_ENCRYPTED]['status'] == 'Passed'
    assert KMS_V1_ROTATION not in _by_name(checks)

    scan, checks = run(fail_on_stale=True, write_times={('a', 'old'): datetime(2025, 1, 2, 3, 4, 5)})
    assert _by_name(checks)[KMS_V2_CURRENT_KEY]['status'] == 'Failed'
    assert scan['stale'][0]['lastWrite'] == '2025-01-02T03:04:05Z'  # naive times are UTC


def test_latest_write_decides_current_key():
    summary = ScanSummary()
    summary.add('a', 'x', _v2('key-2'), 50)
    summary.add('b', 'y', _v2('key-1'), 10)
    summary.add('c', 'z', _v2('key-3'), 70)
    summary.add('d', 'w', {'storage': 'kms', 'kmsVersion': 'v2', 'provider': 'p', 'keyId': None}, 90)
    scan, checks = summary.finish()
    assert (scan['currentKeyId'], scan['currentKeyIdSource']) == ('key-3', 'latestWrite')
    assert [(s['name'], s['keyId']) for s in scan['stale']] == [('x', 'key-2'), ('y', 'key-1'), ('w', None)]
    assert scan['stale'][2]['reason'] == 'KMS v2 value without a key id'
    assert '(from the most recently written secret)' in _by_name(checks)[KMS_V2_CURRENT_KEY]['detail']


def test_all_under_the_latest_write_passes_but_says_what_it_cannot_see():
    summary = ScanSummary()
    summary.add('a', 'x', _v2('key-1'), 5)
    summary.add('b', 'y', _v2('key-1'), 9)
    scan, checks = summary.finish()
    found = _by_name(checks)[KMS_V2_CURRENT_KEY]
    assert (scan['currentKeyId'], scan['currentKeyIdSource'], scan['stale']) == ('key-1', 'latestWrite', [])
    assert found['status'] == 'Passed' and 'cannot be seen without /metrics or --probe' in found['detail'], found
    probed = ScanSummary(current_key_id='key-1')
    probed.add('a', 'x', _v2('key-1'), 5)
    assert '--probe' not in _by_name(probed.finish()[1])[KMS_V2_CURRENT_KEY]['detail']


def test_current_key_given_up_front_must_match():
    summary = ScanSummary(current_key_id='key-2')
    summary.add('a', 'x', _v2('key-1'), 1)
    summary.add('a', 'y', _v2('key-2'), 2)
    scan, _ = summary.finish()
    assert scan['currentKeyId'] == 'key-2' and [s['name'] for s in scan['stale']] == ['x']
    assert summary.finish(current_key_id='key-2')[0]['stale'] == scan['stale']
    with pytest.raises(ValueError):
        summary.finish(current_key_id='key-9')


def test_v1_written_before_rotation(real):
    cls, _ = real
    summary = ScanSummary()
    summary.add('ns', 'fresh', cls['kms-v1-aksarc'], 1)
    summary.add('ns', 'old', cls['kms-v1-aksarc'], 2)
    summary.add('ns', 'unknown', cls['kms-v1-aksarc'], 3)
    summary.add('ns', 'plain', IDENTITY, 4)
    assert summary.needs_write_times()
    assert sorted(summary.kms_v1_secrets()) == [('ns', 'fresh'), ('ns', 'old'), ('ns', 'unknown')]
    # write times for any set of secrets (all, the v1 ones, or only the old ones): only v1 ones matter,
    # and a v1 secret without one counts as recent
    times = {('ns', 'fresh'): NOW - timedelta(days=29), ('ns', 'old'): NOW - timedelta(days=31, seconds=1),
             ('ns', 'plain'): NOW - timedelta(days=400)}
    scan, checks = summary.finish(write_times=times, now=NOW)
    age = _by_name(checks)[KMS_V1_ROTATION]
    assert age['status'] == 'Warning'
    assert age['detail'] == ('1 of 3 KMS v1 secrets was last written more than 30 days ago, before the last key '
                             'rotation')
    assert scan['stale'] == [{'namespace': 'ns', 'name': 'old', 'kmsVersion': 'v1', 'keyId': None,
                              'lastWrite': '2025-05-01T11:59:59Z',
                              'reason': 'KMS v1, last written more than 30 days ago: before the last key rotation'}]
    assert KMS_V2_CURRENT_KEY not in _by_name(checks)
    assert scan['currentKeyId'] is None and scan['currentKeyIdSource'] is None

    _, checks = summary.finish(write_times=times, now=NOW, fail_on_stale=True)
    assert _by_name(checks)[KMS_V1_ROTATION]['status'] == 'Failed'
    _, checks = summary.finish(write_times=times, now=NOW, rotation_days=60)
    assert _by_name(checks)[KMS_V1_ROTATION] == {
        'name': KMS_V1_ROTATION, 'target': None, 'status': 'Passed',
        'detail': 'none of 3 KMS v1 secrets was last written more than 60 days ago (the key rotation period)'}
    # only the old secrets passed (what a caller filtering by the rotation period gives), none of them v1
    _, checks = summary.finish(write_times={('ns', 'plain'): NOW - timedelta(days=400)}, now=NOW)
    assert _by_name(checks)[KMS_V1_ROTATION]['status'] == 'Passed'
    _, checks = summary.finish(write_times={}, now=NOW)
    assert _by_name(checks)[KMS_V1_ROTATION]['status'] == 'Passed'


def test_v1_age_skipped():
    summary = ScanSummary()
    summary.add('ns', 'a', V1, 1)
    summary.add('ns', 'b', IDENTITY, 2)
    scan, checks = summary.finish(age_skip_reason='the API server did not return secret metadata: 403 Forbidden',
                                  now=NOW)
    age = _by_name(checks)[KMS_V1_ROTATION]
    assert age == {'name': KMS_V1_ROTATION, 'target': None, 'status': 'Skipped',
                   'detail': 'the API server did not return secret metadata: 403 Forbidden'}
    assert scan['total'] == 2 and scan['byKmsVersion'] == {'v1': 1, 'v2': 0}
    assert _by_name(checks)[ALL_SECRETS_ENCRYPTED]['status'] == 'Failed'
    assert scan['stale'] == [] and len(scan['failing']) == 1
    assert 'first provider' in scan['remediation']
    # write times not read at all: skipped too, never passed
    assert _by_name(summary.finish()[1])[KMS_V1_ROTATION]['status'] == 'Skipped'


def test_empty_scan():
    scan, checks = ScanSummary().finish()
    assert scan['total'] == 0 and scan['failing'] == [] and scan['remediation'] is None
    assert [c['status'] for c in checks] == ['Warning']


def test_scan_is_json_and_holds_no_values(real):
    cls, canaries = real
    summary = ScanSummary()
    for i, value_name in enumerate(sorted(cls)):
        summary.add('ns', value_name, cls[value_name], i)
    scan, checks = summary.finish(now=NOW)
    text = json.dumps({'scan': scan, 'checks': checks})
    for canary in canaries:
        assert canary not in text
    assert set(scan) == {'total', 'revision', 'byStorage', 'byKmsVersion', 'byProvider', 'byKeyId', 'currentKeyId',
                         'currentKeyIdSource', 'failing', 'stale', 'remediation'}


def _feed(summary, count, key_id):
    cls = _v2(key_id)
    namespaces = [f'namespace-{n:02d}' for n in range(50)]
    for i in range(count):
        summary.add(namespaces[i % 50], f'app-secret-{i:07d}', cls, i + 1)


def _peak(fn):
    """Peak memory of ``fn()``. tracemalloc counts every thread: logging is off while it runs, so the records another
    test's leftover thread logs meanwhile (kept by pytest's log capture) are not counted as the scan's."""
    logging.disable(logging.CRITICAL)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        return result, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
        logging.disable(logging.NOTSET)


COUNT = 200_000


def test_memory_bounded_when_current_key_known():
    """200,000 current-key secrets, nothing failing: the summary keeps counters only."""
    def run():
        summary = ScanSummary(current_key_id='key-current')
        _feed(summary, COUNT, 'key-current')
        return summary.finish(current_key_id='key-current')

    (scan, checks), peak = _peak(run)
    assert scan['total'] == COUNT and [c['status'] for c in checks] == ['Passed', 'Passed']
    assert peak < 2 * 1024 * 1024, f'peak {peak} bytes'


def test_memory_measured_when_current_key_learnt_at_end(record_property):
    """Without the key up front every v2 name is kept until the end: measured, bound loosely."""
    def run():
        summary = ScanSummary()
        _feed(summary, COUNT, 'key-current')
        summary.add('late', 'stale-one', _v2('key-old'), 1)
        return summary.finish()

    (scan, checks), peak = _peak(run)
    assert scan['currentKeyIdSource'] == 'latestWrite' and [s['name'] for s in scan['stale']] == ['stale-one']
    per_secret = peak / COUNT
    record_property('latest_write_peak_bytes', peak)
    record_property('latest_write_bytes_per_secret', round(per_secret, 1))
    print(f'latestWrite: peak {peak / 1e6:.1f} MB for {COUNT} secrets, {per_secret:.0f} bytes per secret')
    assert per_secret < 200


def test_a_malformed_kms_value_names_its_version():
    summary = ScanSummary()
    summary.add('ns', 'bad', {'storage': 'kms', 'kmsVersion': 'v2', 'provider': 'p', 'keyId': None,
                              'malformed': 'truncated EncryptedObject'}, 1)
    scan, _ = summary.finish()
    [failing] = scan['failing']
    assert 'KMS v2 prefix but a malformed payload' in failing['reason'] and 'None' not in failing['reason']


def test_another_resource_is_counted_and_checked_under_its_own_name():
    from azext_kmsverify.verdict.scan import ALL_OBJECTS_ENCRYPTED
    summary = ScanSummary(current_key_id='key-2', resource='configmaps', prefix='/registry/configmaps/')
    summary.add('default', 'a', _v2('key-2'), 2)
    summary.add('default', 'b', _v2('key-1'), 1)  # older: written before the first value under key-2
    summary.add('kube-system', 'c', IDENTITY, 3)
    scan, checks = summary.finish(revision=9)
    assert [(c['name'], c['target'], c['status']) for c in checks] == [
        (ALL_OBJECTS_ENCRYPTED, 'configmaps', 'Failed'), (KMS_V2_CURRENT_KEY, 'configmaps', 'Warning')]
    assert checks[0]['detail'] == '1 of 3 objects is not encrypted with KMS: 1 identity'
    assert checks[1]['detail'].startswith('1 of 2 KMS v2 objects was written under an older key')
    assert [(f['namespace'], f['name']) for f in scan['failing']] == [('kube-system', 'c')]
    assert [(s['namespace'], s['name']) for s in scan['stale']] == [('default', 'b')]
    assert 'reencrypt --resource configmaps' in scan['remediation'] and 'secret' not in scan['remediation']
    empty, empty_checks = ScanSummary(resource='widgets.example.com', prefix='/registry/example.com/widgets/').finish()
    assert empty['total'] == 0
    assert empty_checks[0]['detail'] == 'no objects found under /registry/example.com/widgets/: nothing to verify'
    assert empty_checks[0]['status'] == 'Warning' and empty_checks[0]['target'] == 'widgets.example.com'
    # secrets keep their names and targets (the contract of 1.0)
    _, secret_checks = ScanSummary().finish()
    assert secret_checks[0]['name'] == ALL_SECRETS_ENCRYPTED and secret_checks[0]['target'] is None
