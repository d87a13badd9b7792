"""The product's parsers on what a real kube-apiserver produced: tests/fixtures/kube-apiserver-v1.29.6, captured by
``python -m tests.sandbox.capture`` from sandboxes on the built binary (etcd values per provider, /readyz bodies,
the KMS families of /metrics after a KMS v2 key rotation the server had taken)."""

import json

import pytest

from azext_kmsverify.verdict import readyz
from azext_kmsverify.verdict.classify import classify
from azext_kmsverify.verdict.keys import current_key_hash, key_id_hash

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
