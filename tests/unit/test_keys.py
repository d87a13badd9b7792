"""verdict.keys: the current KMS v2 key id hash from real /metrics pages (tests/fixtures/metrics, captured from
the sandbox, which formats them as kube-apiserver 1.30's metrics.go and client_golang do)."""

import time

from azext_kmsverify.verdict.keys import current_key_hash, key_id_hash
from azext_kmsverify.verdict.scan import ScanSummary

from tests.support.paths import FIXTURES

METRICS = FIXTURES / 'metrics'
STATUS_HASH = 'sha256:bebf6d3d0e56014e05e9abf1857385f0ea3fc74ad3649b8485ac7d688bf72224'


def test_the_status_key_is_current():
    found, how = current_key_hash((METRICS / 'kms-v2.txt').read_text())
    assert found == STATUS_HASH and 'Status' in how


def test_without_a_status_sample_the_latest_encryption_wins():
    text = '\n'.join(line for line in (METRICS / 'kms-v2.txt').read_text().splitlines()
                     if 'status_last_timestamp' not in line)
    found, how = current_key_hash(text)
    assert found == STATUS_HASH and 'encryption' in how  # its to_storage stamp is the newest one


def test_decryptions_do_not_name_the_current_key():
    text = ('apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds{key_id_hash="sha256:old",'
            'provider_name="p",transformation_type="from_storage"} 2e9\n'
            'apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds{key_id_hash="sha256:new",'
            'provider_name="p",transformation_type="to_storage"} 1e9\n')
    assert current_key_hash(text)[0] == 'sha256:new'


def test_kms_v1_has_no_key_id():
    found, how = current_key_hash((METRICS / 'kms-v1.txt').read_text())
    assert found is None and 'KMS v1' in how


def test_odd_lines_are_ignored_and_parsing_is_linear():
    junk = 'apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds{' + 'a="\\"' * 200000 + '\n'
    text = junk + 'apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds{key_id_hash="sha256:x",' \
                  'label="with \\"quotes\\""} 5\nnot a metric line\n'
    start = time.monotonic()
    assert current_key_hash(text)[0] == 'sha256:x'
    assert time.monotonic() - start < 1


def test_the_scan_names_the_current_key_from_its_hash():
    summary = ScanSummary(current_key_id='probe-key', current_key_hash=key_id_hash('key-2'))
    for i, key in enumerate(['key-1', 'key-2', 'key-2', 'key-1']):
        summary.add('ns', f's{i}', {'storage': 'kms', 'kmsVersion': 'v2', 'provider': 'p', 'keyId': key}, i + 1)
    scan, _ = summary.finish()
    assert (scan['currentKeyId'], scan['currentKeyIdSource']) == ('key-2', 'metrics')
    assert sorted(s['name'] for s in scan['stale']) == ['s0', 's3']
    unmatched = ScanSummary(current_key_id='key-1', current_key_hash=key_id_hash('key-9'))
    unmatched.add('ns', 'a', {'storage': 'kms', 'kmsVersion': 'v2', 'provider': 'p', 'keyId': 'key-1'}, 1)
    scan, _ = unmatched.finish()
    assert (scan['currentKeyId'], scan['currentKeyIdSource']) == ('key-1', 'probe')


def test_the_current_key_comes_from_the_strongest_evidence():
    from azext_kmsverify.verdict.keys import decide_current_key
    assert decide_current_key() == (None, None)
    assert decide_current_key(latest_write='k1') == ('k1', 'latestWrite')
    assert decide_current_key(probe='k2', latest_write='k1') == ('k2', 'probe')
    assert decide_current_key(found='k3', found_source='metrics', probe='k2', latest_write='k1') == ('k3', 'metrics')
    assert decide_current_key(given='sha256:ab', given_source='metrics', found=None, latest_write='k1') == \
        ('sha256:ab', 'metrics')
    assert decide_current_key(found='k3') == ('k3', 'probe')


def test_the_hash_stands_for_the_key_only_when_nothing_else_names_it():
    from azext_kmsverify.verdict.keys import hash_only_current_key
    assert hash_only_current_key('sha256:ab', None) == 'sha256:ab'
    assert hash_only_current_key('sha256:ab', 'k1') is None
    assert hash_only_current_key('sha256:ab', None, 'probe-key') is None
    assert hash_only_current_key(None, None) is None


def test_a_key_first_written_after_the_current_ones_oldest_is_newer():
    from azext_kmsverify.verdict.keys import newer_key_ids
    known = {key_id_hash(k) for k in ('key-0', 'key-1', 'key-2', 'key-3')}
    # one API server: the values of the key it rotated away from are all older than those of the next key
    assert newer_key_ids('key-2', {'key-1': 10, 'key-2': 50, 'key-0': 3}, known) == []
    # HA, an API server still on key-1 answered: key-2 began after key-1's oldest value
    assert newer_key_ids('key-1', {'key-1': 10, 'key-2': 50, 'key-3': 60, 'key-0': 3}, known) == ['key-2', 'key-3']
    # a value planted under a key the plugin never had (not on the answering server's /metrics) is not newer
    assert newer_key_ids('key-1', {'key-1': 10, 'key-9999': 70}, known) == []
    assert newer_key_ids('key-1', {'key-1': 10, 'key-2': 50}, None) == []  # /metrics not read
    assert newer_key_ids('sha256:ab', {'key-1': 10}, known) == []  # the current key has nothing stored yet
    assert newer_key_ids(None, {'key-1': 10}, known) == []


def test_the_keys_a_server_knows_are_every_key_id_hash_on_its_metrics():
    from azext_kmsverify.verdict.keys import known_key_hashes
    text = ('# HELP x\n'
            'apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds{apiserver_id_hash="sha256:s",'
            'key_id_hash="sha256:a",provider_name="kms-plugin"} 1.7e+09\n'
            'apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds{apiserver_id_hash="sha256:s",'
            'key_id_hash="sha256:b",provider_name="kms-plugin",transformation_type="from_storage"} 1.7e+09\n'
            'apiserver_envelope_encryption_key_id_hash_total{apiserver_id_hash="sha256:s",key_id_hash="sha256:c",'
            'provider_name="kms-plugin",transformation_type="to_storage"} 3\n'
            'apiserver_storage_objects{resource="secrets"} 4\n')
    assert known_key_hashes(text) == {'sha256:a', 'sha256:b', 'sha256:c'}
    assert known_key_hashes((METRICS / 'kms-v1.txt').read_text()) == set()


def test_the_scan_does_not_call_a_newer_key_older_when_an_api_server_lags():
    """Three API servers after a rotation to key-2: the one that answered /metrics still says key-1 (and decrypted
    the values under key-2 that the others wrote). The secrets written under key-2 are not stale, and the check says
    that the servers disagree."""
    known = {key_id_hash('key-1'), key_id_hash('key-2')}
    summary = ScanSummary(current_key_hash=key_id_hash('key-1'), known_key_hashes=known)
    v2 = lambda key: {'storage': 'kms', 'kmsVersion': 'v2', 'provider': 'p', 'keyId': key}  # noqa: E731
    summary.add('a', 'before', v2('key-1'), 10)
    summary.add('a', 'after-on-a-new-server', v2('key-2'), 50)
    summary.add('a', 'after-on-the-lagging-server', v2('key-1'), 60)
    scan, checks = summary.finish()
    assert (scan['currentKeyId'], scan['currentKeyIdSource']) == ('key-1', 'metrics')
    assert scan['newerKeyIds'] == ['key-2'] and scan['stale'] == []
    [key] = [c for c in checks if c['name'] == 'KmsV2CurrentKey']
    assert key['status'] == 'Warning'
    assert "current KMS v2 key id is key-1 (from the API server's /metrics)" in key['detail']
    assert '1 KMS v2 secret in etcd is under key-2, first written after the oldest under key-1' in key['detail']
    assert 'older key' not in key['detail']
    # the same etcd, answered by a server on key-2: key-1's values are older (stale), nothing is newer
    summary = ScanSummary(current_key_hash=key_id_hash('key-2'), known_key_hashes=known)
    for name, key_id, rev in (('before', 'key-1', 10), ('new', 'key-2', 50), ('lagging', 'key-1', 60)):
        summary.add('a', name, v2(key_id), rev)
    scan, _ = summary.finish()
    assert 'newerKeyIds' not in scan and sorted(s['name'] for s in scan['stale']) == ['before', 'lagging']
