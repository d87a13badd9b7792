"""The product's parsers on what a real kube-apiserver produced: tests/fixtures/kube-apiserver-v1.29.6, captured by
``python -m tests.sandbox.apiserver.capture`` from sandboxes on the built binary (etcd values per provider, /readyz
bodies, the KMS families of /metrics after a KMS v2 key rotation the server had taken)."""

import json

import pytest

from azext_kmsverify.verdict import readyz
from azext_kmsverify.verdict.classify import classify
from azext_kmsverify.verdict.keys import (
    SOURCE_LATEST_WRITE,
    SOURCE_METRICS,
    SOURCE_PROBE,
    current_key_hash,
    current_key_note,
    key_id_hash,
)
from azext_kmsverify.verdict.status import build_status

from tests.support.paths import FIXTURES

REAL = FIXTURES / 'kube-apiserver-v1.29.6'
EXPECTED = json.loads((REAL / 'etcd-values' / 'expected.json').read_text())
FIELDS = ('storage', 'kmsVersion', 'provider', 'keyId', 'encrypted')


def test_the_fixtures_name_the_server_that_made_them():
    assert (REAL / 'VERSION').read_text().strip() == 'v1.29.6'
    assert sorted(EXPECTED) == ['aescbc', 'aesgcm', 'identity', 'kms-v1', 'kms-v2', 'secretbox']


@pytest.mark.parametrize('provider', sorted(EXPECTED))
def test_each_providers_stored_value_classifies_as_that_provider(provider):
    got = classify((REAL / 'etcd-values' / f'{provider}.bin').read_bytes())
    assert {k: got[k] for k in FIELDS} == {k: EXPECTED[provider][k] for k in FIELDS}
    if EXPECTED[provider]['canary']:
        assert EXPECTED[provider]['canary'] not in json.dumps(got)


@pytest.mark.parametrize('name, checks', [
    ('aggregate-ok.txt', [('kms-providers', 'ok')]),  # KMS v2, automatic reload on
    ('per-provider-ok.txt', [('kms-provider-0', 'ok')]),  # KMS v1, automatic reload off
    ('no-kms-ok.txt', []),  # identity, automatic reload off
    # aescbc with automatic reload on: the reload controller registers kms-providers with no KMS provider at all
    ('no-kms-reload-ok.txt', [('kms-providers', 'ok')]),
    ('aggregate-failed.http500.txt', [('kms-providers', 'failed')]),
])
def test_readyz_bodies(name, checks):
    parsed = readyz.parse_readyz((REAL / 'readyz' / name).read_text())
    assert [(c['name'], c['status']) for c in readyz.kms_checks(parsed)] == checks
    assert readyz.overall_status(parsed) == ('failed' if 'failed' in name else 'ok')


def test_the_failed_check_body_gives_the_real_reason():
    body = (REAL / 'readyz' / 'aggregate-failed.kms-providers.http500.txt').read_text()
    assert body.startswith('internal server error: kms-provider-0: rpc error: ')
    assert 'connect: connection refused' in readyz.parse_check_error(body)


def test_the_status_key_after_the_rotation_is_current():
    found, how = current_key_hash((REAL / 'metrics' / 'kms-v2.txt').read_text())
    assert found == key_id_hash('key-0002') and 'Status' in how


def test_kms_v1_pages_have_no_key_id():
    found, how = current_key_hash((REAL / 'metrics' / 'kms-v1.txt').read_text())
    assert found is None and 'KMS v1' in how


# --- the same server built without the KMS v2 key-id metrics (up --without-metrics; kubernetes PR #136354 removes
# one of them): kube-apiserver's own --disabled-metrics cannot take them out (README of tests/sandbox)

WITHOUT_KEY_IDS = (REAL / 'metrics' / 'kms-v2-without-key-id-metrics.txt').read_text()


def test_a_page_without_key_id_series_says_so_and_names_no_key():
    assert 'key_id_hash' not in WITHOUT_KEY_IDS and 'k8s:enc:kms:v2:kms-plugin:' in WITHOUT_KEY_IDS
    found, how = current_key_hash(WITHOUT_KEY_IDS)
    assert found is None
    # KMS v2 is in use (the transformation counters say so): not "KMS v1, or nothing encrypted yet"
    assert 'KMS v1' not in how and 'removed or renamed' in how and 'transformation_operations_total' in how


def test_a_kms_v1_page_still_says_kms_v1():
    found, how = current_key_hash((REAL / 'metrics' / 'kms-v1.txt').read_text())
    assert found is None and 'KMS v1' in how and 'although' not in how


def test_the_note_says_where_the_current_key_came_from_and_what_the_latest_write_misses():
    _, why = current_key_hash(WITHOUT_KEY_IDS)
    latest = current_key_note(SOURCE_LATEST_WRITE, why)
    assert latest.startswith('/metrics not used: ') and why in latest and '--probe' in latest
    assert 'misses a key rotation' in latest
    probe = current_key_note(SOURCE_PROBE, why)
    assert why in probe and 'probe secret' in probe and '--probe' not in probe
    assert current_key_note(SOURCE_METRICS, '') is None and current_key_note(None, why) is None
    assert 'no secret in etcd is stored under it yet' in current_key_note(SOURCE_METRICS, '', hash_only=True)


def test_status_from_a_page_without_key_id_series_keeps_the_kms_version_and_says_why_the_key_is_unknown():
    status = build_status(readyz_status=200, readyz_body=(REAL / 'readyz' / 'aggregate-ok.txt').read_text(),
                          metrics_text=WITHOUT_KEY_IDS)
    data = status.to_dict()
    assert data['passed'] is True
    assert data['kmsVersions']['value'] == ['v2'] and data['kmsVersions']['source'] == '/metrics'
    for fact in ('currentKeyIdHash', 'currentKeyLastUsed', 'currentKeyLastReported'):
        assert data[fact]['value'] is None and 'removed or renamed' in data[fact]['unknownReason'], data[fact]
    assert data['keyAge'] is None
    assert data['metricsEvidence']['keyIdHashTotalPresent'] is False
    assert data['metricsEvidence']['keyIdHashTotalUsed'] is False
    [rotation] = [c for c in data['checks'] if c['name'] == 'KmsKeyRotation']
    assert rotation['status'] == 'Skipped' and 'removed or renamed' in rotation['detail'], rotation
