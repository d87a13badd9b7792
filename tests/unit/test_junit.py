"""junit.to_junit_xml / write_junit_xml: schema-valid JUnit XML that Azure DevOps PublishTestResults@2 reads."""

import os
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import xmlschema

from azext_kmsverify.verdict.checks import build_result, check
from azext_kmsverify.report.junit import to_junit_xml, write_junit_xml
from azext_kmsverify.verdict.scan import ScanSummary

SCHEMA_PATH = Path(__file__).resolve().parents[1] / 'schemas' / 'junit-10.xsd'
WHEN = datetime(2025, 6, 1, 12, 30, 45, tzinfo=timezone.utc)
CLUSTER = {'source': 'azure', 'name': 'myCluster', 'resourceGroup': 'myRG', 'context': 'myCluster-user',
           'credential': 'user', 'server': 'https://10.0.0.10:6443'}


@pytest.fixture(scope='module')
def schema():
    if not SCHEMA_PATH.is_file():
        pytest.fail(f'JUnit schema missing: {SCHEMA_PATH}')
    return xmlschema.XMLSchema(str(SCHEMA_PATH))


def _xml(result, **kwargs):
    kwargs.setdefault('timestamp', WHEN)
    kwargs.setdefault('hostname', 'agent-01')
    return to_junit_xml(result, **kwargs)


def _valid(schema, data):
    """Validate, then parse: returns the <testsuite> element."""
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    data.decode('utf-8')
    schema.validate(data.decode('utf-8'))
    root = ET.fromstring(data)
    assert root.tag == 'testsuites'
    suites = root.findall('testsuite')
    assert len(suites) == 1
    return suites[0]


def _counts(suite):
    cases = suite.findall('testcase')
    return {
        'tests': len(cases),
        'failures': sum(1 for c in cases if c.find('failure') is not None),
        'errors': sum(1 for c in cases if c.find('error') is not None),
        'skipped': sum(1 for c in cases if c.find('skipped') is not None),
    }


def _assert_counts(root_bytes, suite, expected):
    assert _counts(suite) == expected
    for key, value in expected.items():
        assert suite.get(key) == str(value), key
    root = ET.fromstring(root_bytes)
    for key in ('tests', 'failures', 'errors'):
        assert root.get(key) == str(expected[key])


def _passing_result():
    checks = [check('KmsProviderHealth', 'Passed', 'kms-providers ok'),
              check('SecretEncryptedWithKms', 'Passed',
                    'probe secret stored with KMS v2 provider kms-plugin, key id k1',
                    target='default/kmsverify-probe-1a2b3c')]
    return build_result(CLUSTER, checks, [], etcd_pod='etcd-moc-l1hj0nllpvs')


def test_passing(schema):
    data = _xml(_passing_result(), duration=2.5)
    suite = _valid(schema, data)
    _assert_counts(data, suite, {'tests': 2, 'failures': 0, 'errors': 0, 'skipped': 0})
    assert suite.get('name') == 'az aksarc kms verify -g myRG -n myCluster'
    assert suite.get('timestamp') == '2025-06-01T12:30:45'  # UTC, no offset: ADO reads it as UTC
    assert suite.get('hostname') == 'agent-01'
    assert suite.get('time') == '2.500'
    cases = suite.findall('testcase')
    assert [(c.get('classname'), c.get('name')) for c in cases] == [
        ('kmsverify.KmsProviderHealth', 'KmsProviderHealth'),
        ('kmsverify.SecretEncryptedWithKms', 'default/kmsverify-probe-1a2b3c')]
    assert all(float(c.get('time')) == 0 for c in cases)
    props = {p.get('name'): p.get('value') for p in suite.find('properties')}
    assert props['cluster.name'] == 'myCluster' and props['passed'] == 'true'
    assert 'cluster.server' not in props


def _scan_result(fail_on_stale):
    summary = ScanSummary(current_key_id='key-2')
    summary.add('default', 'plain', {'storage': 'identity'}, 1)
    summary.add('default', 'cbc', {'storage': 'aescbc', 'provider': 'key1'}, 2)
    summary.add('apps', 'old-key', {'storage': 'kms', 'kmsVersion': 'v2', 'provider': 'p', 'keyId': 'key-1'}, 3)
    summary.add('apps', 'ok', {'storage': 'kms', 'kmsVersion': 'v2', 'provider': 'p', 'keyId': 'key-2'}, 4)
    summary.add('legacy', 'v1', {'storage': 'kms', 'kmsVersion': 'v1', 'provider': 'kms-plugin'}, 5)
    scan, scan_checks = summary.finish(fail_on_stale=fail_on_stale, age_skip_reason='metadata not readable',
                                       now=WHEN, revision=42)
    checks = [check('KmsProviderHealth', 'Passed', 'kms-providers ok')] + scan_checks
    return build_result(CLUSTER, checks, [], scan=scan)


def test_failing_scan_with_warning_and_skipped(schema):
    data = _xml(_scan_result(fail_on_stale=False))
    suite = _valid(schema, data)
    # 4 checks (health, all-encrypted, v2 key, v1 age) + 2 failing secrets; the stale one only warns.
    _assert_counts(data, suite, {'tests': 6, 'failures': 3, 'errors': 0, 'skipped': 1})
    assert suite.get('name') == 'az aksarc kms verify -g myRG -n myCluster --all-secrets'
    cases = {(c.get('classname'), c.get('name')): c for c in suite.findall('testcase')}

    encrypted = cases[('kmsverify.AllSecretsEncrypted', 'AllSecretsEncrypted')].find('failure')
    assert encrypted.get('message') == '2 of 5 secrets are not encrypted with KMS: 1 aescbc, 1 identity'
    assert encrypted.get('type') == 'AllSecretsEncrypted'

    plain = cases[('kmsverify.AllSecretsEncrypted', 'default/plain')].find('failure')
    assert plain.get('message') == 'stored in plaintext (identity)'
    assert 'az aksarc kms reencrypt ... --secret default/plain --yes' in plain.text

    warning = cases[('kmsverify.KmsV2CurrentKey', 'KmsV2CurrentKey')]
    assert warning.find('failure') is None and warning.find('skipped') is None
    assert warning.find('system-out').text.startswith('Warning: 1 of 2 KMS v2 secrets was written under an older')
    assert ('kmsverify.KmsV2CurrentKey', 'apps/old-key') not in cases
    assert 'KmsV2CurrentKey' in suite.find('system-out').text

    skipped = cases[('kmsverify.KmsV1WrittenBeforeRotation', 'KmsV1WrittenBeforeRotation')].find('skipped')
    assert skipped.get('message') == 'metadata not readable'


def test_the_scan_properties_say_where_the_current_key_came_from_and_why(schema):
    result = _scan_result(fail_on_stale=False)
    result['scan']['currentKeyIdNote'] = '/metrics not used: it publishes no KMS v2 key id series'
    suite = _valid(schema, _xml(result))
    props = {p.get('name'): p.get('value') for p in suite.find('properties')}
    assert (props['scan.currentKeyId'], props['scan.currentKeyIdSource']) == ('key-2', 'probe')
    assert props['scan.currentKeyIdNote'] == '/metrics not used: it publishes no KMS v2 key id series'
    assert 'scan.currentKeyIdNote' not in {p.get('name') for p in _valid(schema, _xml(_scan_result(False)))
                                           .find('properties')}


def test_fail_on_stale_adds_stale_secrets(schema):
    data = _xml(_scan_result(fail_on_stale=True))
    suite = _valid(schema, data)
    _assert_counts(data, suite, {'tests': 7, 'failures': 5, 'errors': 0, 'skipped': 1})
    stale = [c for c in suite.findall('testcase') if c.get('name') == 'apps/old-key']
    assert len(stale) == 1 and stale[0].get('classname') == 'kmsverify.KmsV2CurrentKey'
    assert stale[0].find('failure').get('message') == 'written under KMS v2 key id key-1, not the current key id key-2'


def test_special_characters_escaped(schema):
    nasty = 'ns/<a href="x">&amp;</a>\'\n\t\x00\x07\x1b\ud800\ufffe é 🔑 ]]> --'
    checks = [check('SecretEncryptedWithKms', 'Failed', 'stored in plaintext ' + nasty, target=nasty),
              check('KmsProviderHealth', 'Warning', nasty),
              check('Odd', 'Skipped', nasty)]
    result = build_result({'source': 'kubeconfig', 'context': nasty}, checks, [])
    result['scan'] = {'total': 1, 'failing': [{'namespace': 'x<y', 'name': 'a&b"c', 'storage': 'identity',
                                               'provider': None, 'reason': 'r<&>'}], 'stale': [],
                      'remediation': 'run `a | b` <now>'}
    data = _xml(result)
    suite = _valid(schema, data)
    _assert_counts(data, suite, {'tests': 4, 'failures': 2, 'errors': 0, 'skipped': 1})
    cases = suite.findall('testcase')
    # What XML can carry round-trips exactly; what it cannot is spelled out, never dropped silently.
    expected = nasty.replace('\x00', '\\x00').replace('\x07', '\\x07').replace('\x1b', '\\x1b') \
        .replace('\ud800', '\\ud800').replace('\ufffe', '\\ufffe')
    assert cases[0].get('name') == expected
    assert cases[0].find('failure').get('message') == 'stored in plaintext ' + expected
    assert cases[1].find('system-out').text == 'Warning: ' + expected
    assert suite.get('name') == 'az aksarc kms verify --context ' + expected + ' --all-secrets'
    assert cases[3].get('name') == 'x<y/a&b"c'
    assert "--secret 'x<y/a&b\"c'" in cases[3].find('failure').text


def test_unknown_status_is_an_error(schema):
    result = build_result(CLUSTER, [check('Mystery', 'Exploded', '?')], [])
    data = _xml(result)
    suite = _valid(schema, data)
    _assert_counts(data, suite, {'tests': 1, 'failures': 0, 'errors': 1, 'skipped': 0})


def test_defaults_and_times(schema):
    data = to_junit_xml(_passing_result(), duration=-3)
    suite = _valid(schema, data)
    stamp = datetime.strptime(suite.get('timestamp'), '%Y-%m-%dT%H:%M:%S').replace(tzinfo=timezone.utc)
    assert abs(datetime.now(timezone.utc) - stamp) < timedelta(minutes=1)
    assert suite.get('hostname')
    assert suite.get('time') == '0.000'  # never negative: ADO rejects a completion before the start
    local = datetime(2025, 6, 1, 14, 30, 45, tzinfo=timezone(timedelta(hours=2)))
    assert _valid(schema, _xml(_passing_result(), timestamp=local)).get('timestamp') == '2025-06-01T12:30:45'


def test_write_junit_xml_atomic(tmp_path, schema):
    target = tmp_path / 'TEST-kmsverify.xml'
    target.write_bytes(b'old')
    written = write_junit_xml(target, _passing_result(), timestamp=WHEN, hostname='h')
    assert Path(written) == target
    assert target.read_bytes() == _xml(_passing_result(), hostname='h')
    assert os.listdir(tmp_path) == ['TEST-kmsverify.xml']
    _valid(schema, target.read_bytes())


def test_write_junit_xml_failure_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / 'out.xml'

    def boom(src, dst):
        raise OSError('disk full')

    monkeypatch.setattr(os, 'replace', boom)
    with pytest.raises(OSError):
        write_junit_xml(target, _passing_result())
    assert os.listdir(tmp_path) == []


def test_remediation_once_in_check_not_per_secret(schema):
    suite = _valid(schema, _xml(_scan_result(fail_on_stale=True)))
    cases = {(c.get('classname'), c.get('name')): c for c in suite.findall('testcase')}
    assert 'kubectl get secrets --all-namespaces' in cases[
        ('kmsverify.AllSecretsEncrypted', 'AllSecretsEncrypted')].find('failure').text
    assert 'kubectl get secrets --all-namespaces' in cases[
        ('kmsverify.KmsV2CurrentKey', 'KmsV2CurrentKey')].find('failure').text
    assert '--all-namespaces' not in cases[('kmsverify.AllSecretsEncrypted', 'default/plain')].find('failure').text


def test_schema_is_strict_enough_to_matter(schema):
    """The schema rejects what some consumers reject: a missing failures count, a skipped count on the root."""
    assert not schema.is_valid('<testsuites><testsuite name="x" tests="1"><testcase name="a"/></testsuite>'
                               '</testsuites>')
    assert not schema.is_valid('<testsuites skipped="0"><testsuite name="x" tests="1" failures="0" errors="0">'
                               '<testcase name="a"/></testsuite></testsuites>')
    assert not schema.is_valid('<testsuites><testsuite name="x" tests="1" failures="0" errors="0">'
                               '<testcase/></testsuite></testsuites>')


def test_could_not_verify_report(schema):
    """What the command writes when it fails before any check: no cluster, one case that is an <error> (nothing
    was verified), not a <failure> (a check that found a problem)."""
    result = build_result(None, [check('Verification', 'Failed', 'could not verify: etcdctl failed in etcd-x')], [])
    data = _xml(result)
    suite = _valid(schema, data)
    _assert_counts(data, suite, {'tests': 1, 'failures': 0, 'errors': 1, 'skipped': 0})
    assert suite.get('name') == 'az aksarc kms verify'
    assert suite.find('testcase').find('failure') is None
    assert suite.find('testcase').find('error').get('message') == 'could not verify: etcdctl failed in etcd-x'


def test_a_warning_names_its_check_once(schema):
    result = build_result(None, [check('KmsV2CurrentKey', 'Warning', '1 secret under an older key')], [])
    data = _xml(result)
    suite = _valid(schema, data)
    assert suite.find('system-out').text == 'Warning: KmsV2CurrentKey: 1 secret under an older key'
