"""Pass/fail rules (pure) on the real readyz bodies and real etcd values in tests/fixtures."""

import json

import pytest

from azext_kmsverify.verdict import checks
from azext_kmsverify.report.table import verify_table_format
from azext_kmsverify.verdict.readyz import parse_check_error
from azext_kmsverify.verdict.classify import classify

from tests.support.paths import FIXTURES


def _readyz(name):
    return (FIXTURES / 'readyz' / name).read_text()


def test_healthy_aggregate_kms_check_passes():
    result = checks.kms_health(200, _readyz('aggregate-ok.txt'), {})
    assert result['status'] == checks.PASSED
    assert 'kms-providers ok' in result['detail']


def test_per_provider_checks_all_count():
    result = checks.kms_health(200, _readyz('per-provider-ok.txt'), {})
    assert result['status'] == checks.PASSED
    assert 'kms-provider-0' in result['detail'] and 'kms-provider-1' in result['detail']


def test_failing_kms_check_reports_the_real_reason():
    body = _readyz('aggregate-failed.http500.txt')
    assert checks.failing_kms_check_names(body) == ['kms-providers']
    reason = parse_check_error(_readyz('aggregate-failed.kms-providers.http500.txt'))
    result = checks.kms_health(500, body, {'kms-providers': reason})
    assert result['status'] == checks.FAILED
    assert reason and reason in result['detail']
    assert 'reason withheld' not in result['detail']


def test_failing_kms_check_without_reason_still_fails():
    result = checks.kms_health(500, _readyz('aggregate-failed.http500.txt'), {})
    assert result['status'] == checks.FAILED
    assert 'kms-providers' in result['detail']


def test_no_kms_provider_configured_fails_although_the_server_is_healthy():
    result = checks.kms_health(200, _readyz('no-kms-ok.txt'), {})
    assert result['status'] == checks.FAILED
    assert 'no KMS provider configured' in result['detail']


def test_non_verbose_body_has_no_kms_line_and_fails():
    assert checks.kms_health(200, _readyz('nonverbose-ok.txt'), {})['status'] == checks.FAILED


def test_unreachable_readyz_fails_with_the_reason():
    result = checks.kms_health(None, None, {}, unreachable='connection refused')
    assert result['status'] == checks.FAILED and 'connection refused' in result['detail']


def _expected():
    return json.loads((FIXTURES / 'etcd-values' / 'expected.json').read_text())


@pytest.mark.parametrize('name', sorted(json.loads((FIXTURES / 'etcd-values' / 'expected.json').read_text())))
def test_a_secret_passes_only_when_stored_with_kms(name):
    value = (FIXTURES / 'etcd-values' / (name + '.bin')).read_bytes()
    entry = checks.secret_entry('fixtures', name, '/registry/secrets/fixtures/' + name, classify(value))
    result = checks.secret_check(entry)
    expected = _expected()[name]
    if expected['storage'] == 'kms':
        assert result['status'] == checks.PASSED
        assert 'KMS {}'.format(expected['kmsVersion']) in result['detail']
        if expected['keyId']:
            assert expected['keyId'] in result['detail']
    elif expected['storage'] == 'identity':
        assert result['status'] == checks.FAILED and 'stored in plaintext' in result['detail']
    else:
        assert result['status'] == checks.FAILED and 'encrypted with a local key, not KMS' in result['detail']
    assert result['target'] == 'fixtures/' + name
    if expected['canary']:
        assert expected['canary'] not in json.dumps(entry.to_dict()) + repr(entry) + json.dumps(result)


def test_kms_v1_warns_but_does_not_fail():
    v1 = classify((FIXTURES / 'etcd-values' / 'kms-v1-aksarc.bin').read_bytes())
    entry = checks.secret_entry('default', 's', '/registry/secrets/default/s', v1)
    warning = checks.kms_v1_warning([entry])
    assert warning['status'] == checks.WARNING and 'deprecated' in warning['detail']
    result = checks.build_result({}, [checks.secret_check(entry), warning], [entry])
    assert result['passed'] is True
    v2 = classify((FIXTURES / 'etcd-values' / 'kms-v2-mock.bin').read_bytes())
    assert checks.kms_v1_warning([checks.secret_entry('default', 's', 'k', v2)]) is None


def test_result_shape_and_table_rows():
    identity = classify((FIXTURES / 'etcd-values' / 'identity-protobuf.bin').read_bytes())
    entry = checks.secret_entry('default', 'plain', '/registry/secrets/default/plain', identity)
    health = checks.kms_health(200, _readyz('aggregate-ok.txt'), {})
    result = checks.build_result({'source': 'kubeconfig'}, [health, checks.secret_check(entry)], [entry],
                                 etcd_pod='etcd-moc-x')
    assert result['passed'] is False
    assert result['secrets'] == [{'namespace': 'default', 'name': 'plain', 'etcdKey': '/registry/secrets/default/plain',
                                  'storage': 'identity', 'kmsVersion': None, 'provider': None, 'keyId': None,
                                  'encrypted': False}]
    rows = verify_table_format(result)
    assert [r['Check'] for r in rows] == ['KmsProviderHealth', 'SecretEncryptedWithKms']
    assert [r['Status'] for r in rows] == ['Passed', 'Failed']
    assert rows[1]['Target'] == 'default/plain'


def test_a_kms_prefix_with_a_malformed_payload_fails():
    from azext_kmsverify.verdict.scan import ScanSummary
    classification = classify(b'k8s:enc:kms:v2:kms-plugin:' + b'\xff\xfe not an EncryptedObject')
    assert classification['storage'] == 'kms' and classification['malformed']
    entry = checks.secret_entry('default', 'broken', '/registry/secrets/default/broken', classification)
    result = checks.secret_check(entry)
    assert result['status'] == checks.FAILED and 'malformed payload' in result['detail']
    summary = ScanSummary()
    summary.add('default', 'broken', classification, 7)
    scan, scan_checks = summary.finish()
    assert [f['name'] for f in scan['failing']] == ['broken']
    assert 'malformed' in scan['failing'][0]['reason']
    assert any(c['name'] == 'AllSecretsEncrypted' and c['status'] == checks.FAILED for c in scan_checks)


def test_a_probe_written_under_kms_v2_while_health_fails_says_it_proves_the_cached_key():
    v2 = classify((FIXTURES / 'etcd-values' / 'kms-v2-mock.bin').read_bytes())
    v1 = classify((FIXTURES / 'etcd-values' / 'kms-v1-aksarc.bin').read_bytes())
    probe = checks.secret_entry('default', 'p', 'k', v2, probe=True)
    coasting = checks.secret_check(probe, kms_unhealthy=True)
    assert coasting['status'] == checks.PASSED and coasting['detail'].endswith(checks.V2_COASTING)
    assert checks.V2_COASTING not in checks.secret_check(probe)['detail']  # healthy: no qualification
    named = checks.secret_entry('default', 's', 'k', v2)  # a --secret was written before; only the probe is new
    assert checks.V2_COASTING not in checks.secret_check(named, kms_unhealthy=True)['detail']
    v1_probe = checks.secret_entry('default', 'p', 'k', v1, probe=True)  # v1 calls the plugin on every write
    assert checks.V2_COASTING not in checks.secret_check(v1_probe, kms_unhealthy=True)['detail']
