"""End to end: ``--all-secrets`` through the installed az against sandboxes with a planted history.

What the scan must find is known independently of the product: the test plants it (plaintext, local-key,
old-key and backdated secrets) and reads etcd host-side (etcdctl and the sandbox's own codec) as the oracle.
"""

import base64
import hashlib
import json
import os
import pty
import re
import select
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.sandbox import codec
from tests.sandbox.control import Sandbox

from tests.conftest import verify, AZ, EXTENSION_DIR, assert_no_leak, probe_secrets_left

PREFIX = '/registry/secrets/'
SCHEMA_PATH = Path(__file__).resolve().parents[1] / 'schemas' / 'junit-10.xsd'
CANARY = 'canary-scan-5d1e8b2f'
CANARIES = [CANARY, base64.b64encode(CANARY.encode()).decode()]
PLAINTEXT_REASON = 'stored in plaintext (identity)'


def _verify(az, box, *args, **kwargs):
    return verify(az, box, '--all-secrets', *args, **kwargs)


def _up(tmp_path_factory, **options):
    box = Sandbox(str(tmp_path_factory.mktemp('scan-sandbox')))
    box.up(**options)
    return box


def _write(box, namespace, name, **spec):
    spec = dict(spec, namespace=namespace, name=name)
    spec.setdefault('data', {'token': CANARY})
    answer = box.ctl({'write_secret': spec})
    assert answer['ok'], answer


def _iso(seconds_ago):
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(time.time() - seconds_ago))


def etcd_view(box):
    """{(namespace, name): (storage, kmsVersion, provider, keyId)} of every stored secret, read host-side."""
    result = box.etcdctl('get', PREFIX, '--prefix', '-w', 'json', version='3.5', timeout=120)
    assert result.returncode == 0, result.stderr
    view = {}
    for kv in json.loads(result.stdout).get('kvs') or []:
        key = base64.b64decode(kv['key']).decode()
        value = base64.b64decode(kv.get('value', ''))
        namespace, name = key[len(PREFIX):].split('/', 1)
        if value.startswith(b'k8s:enc:kms:v2:'):
            provider, payload = value[len(b'k8s:enc:kms:v2:'):].split(b':', 1)
            entry = ('kms', 'v2', provider.decode(), codec.decode_encrypted_object(payload)['keyID'])
        elif value.startswith(b'k8s:enc:kms:v1:'):
            entry = ('kms', 'v1', value.split(b':')[4].decode(), None)
        elif value.startswith(b'k8s:enc:'):
            entry = (value.split(b':')[2].decode(), None, value.split(b':')[4].decode(), None)
        else:
            assert value.startswith(b'k8s\x00'), key
            entry = ('identity', None, None, None)
        view[(namespace, name)] = entry
    return view


def etcd_keys(box):
    """The secret keys etcdctl lists (``--keys-only``), the count the scan's total must match."""
    result = box.etcdctl('get', PREFIX, '--prefix', '--keys-only', timeout=120)
    assert result.returncode == 0, result.stderr
    return sorted(k for k in result.stdout.decode().splitlines() if k)


def counts_of(view):
    by_storage, by_version, by_provider, by_key = {}, {'v1': 0, 'v2': 0}, {}, {}
    for storage, version, provider, key_id in view.values():
        by_storage[storage] = by_storage.get(storage, 0) + 1
        if storage == 'kms':
            by_version[version] += 1
            by_provider[provider] = by_provider.get(provider, 0) + 1
            if key_id:
                by_key[key_id] = by_key.get(key_id, 0) + 1
    return by_storage, by_version, by_provider, by_key


def assert_counts_match_etcd(scan, box):
    view = etcd_view(box)
    keys = etcd_keys(box)
    assert scan['total'] == len(keys) == len(view)
    by_storage, by_version, by_provider, by_key = counts_of(view)
    assert scan['byStorage'] == by_storage
    assert scan['byKmsVersion'] == by_version
    assert scan['byProvider'] == by_provider
    assert scan['byKeyId'] == by_key
    for item in scan['failing'] + scan['stale']:
        assert '{}{}/{}'.format(PREFIX, item['namespace'], item['name']) in keys


def statuses(body):
    return {c['name']: c['status'] for c in body['checks']}


def failing_set(scan):
    return {(f['namespace'], f['name'], f['storage'], f['reason']) for f in scan['failing']}


def stale_set(scan):
    return {(s['namespace'], s['name'], s['keyId']) for s in scan['stale']}


# --- sandboxes ----------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def v2box(tmp_path_factory):
    """KMS v2 with history (a 2023 plaintext secret, one under key-0001 before the rotation to key-0002), plus
    planted plaintext and local-key secrets and a KMS secret carrying the canary."""
    box = _up(tmp_path_factory, provider='kms-v2', history=True)
    try:
        box.api('POST', '/api/v1/namespaces', {'metadata': {'name': 'team-a'}})
        _write(box, 'team-a', 'plain-planted', **{'with': 'identity'})
        _write(box, 'team-a', 'aescbc-planted', **{'with': 'aescbc'})
        _write(box, 'team-a', 'secretbox-planted', **{'with': 'secretbox'})
        _write(box, 'team-a', 'kms-canary')
        yield box
    finally:
        box.down()


def v2_expected_failing(box):
    return {('legacy', 'app-credentials-2023', 'identity', PLAINTEXT_REASON),
            ('team-a', 'plain-planted', 'identity', PLAINTEXT_REASON),
            ('team-a', 'aescbc-planted', 'aescbc', 'encrypted with a local key, not KMS (aescbc key key1)'),
            ('team-a', 'secretbox-planted', 'secretbox', 'encrypted with a local key, not KMS (secretbox key key1)')}


@pytest.fixture(scope='module')
def rotated(tmp_path_factory):
    """KMS v2, nothing unencrypted: the three seeded secrets under key-0001, default/after-rotation under key-0002,
    then one more rotation (key-0003 is current in the plugin, but nothing has been written with it yet)."""
    box = _up(tmp_path_factory, provider='kms-v2')
    try:
        first = set(box.info['seeded'])
        assert box.kms('rotate') == 'key-0002'
        box.create_secret('default', 'after-rotation', {'token': CANARY})
        assert box.kms('rotate') == 'key-0003'
        box.first_key_secrets = {tuple(s.split('/', 1)) for s in first}
        yield box
    finally:
        box.down()


@pytest.fixture(scope='module')
def v1box(tmp_path_factory):
    """KMS v1 with history, plus one secret last written in 2024 and one 10 days ago."""
    box = _up(tmp_path_factory, provider='kms-v1', history=True)
    try:
        _write(box, 'legacy', 'written-2024', written_at='2024-01-15T08:00:00Z')
        _write(box, 'default', 'written-10-days-ago', written_at=_iso(10 * 86400))
        yield box
    finally:
        box.down()


# --- KMS v2 -------------------------------------------------------------------------------------------------


def test_v2_history_lists_exactly_the_planted_failing_and_old_key_secrets(az, v2box):
    result = _verify(az, v2box, '-o', 'json')
    assert result.code == 4, result
    body = result.json()
    scan = body['scan']
    assert body['passed'] is False
    assert failing_set(scan) == v2_expected_failing(v2box)
    history = v2box.info['history']
    assert history['old_key'] == ['legacy/api-token-before-rotation']
    assert stale_set(scan) == {('legacy', 'api-token-before-rotation', 'key-0001')}
    assert [s['kmsVersion'] for s in scan['stale']] == ['v2']
    assert 'key-0001' in scan['stale'][0]['reason'] and history['rotated_to'] in scan['stale'][0]['reason']
    assert scan['currentKeyId'] == history['rotated_to'] == 'key-0002'
    assert scan['currentKeyIdSource'] == 'metrics'  # the key id hash kube-apiserver publishes, matched in etcd
    # key-0002 became current after the history's key-0001 write (45 days ago): at most 45 days old, which does not
    # tell whether it is older than 30 + 7 days
    assert statuses(body) == {'KmsProviderHealth': 'Passed', 'AllSecretsEncrypted': 'Failed',
                              'KmsV2CurrentKey': 'Warning', 'KmsKeyRotation': 'Skipped'}
    encrypted = next(c for c in body['checks'] if c['name'] == 'AllSecretsEncrypted')
    assert encrypted['detail'] == ('4 of {} secrets are not encrypted with KMS: 2 identity, 1 aescbc, 1 secretbox'
                                   .format(scan['total']))
    assert 'az aksarc kms reencrypt' in scan['remediation'] and 'kubectl replace' in scan['remediation']
    assert body['secrets'] == []  # read-only: no probe unless asked
    assert_counts_match_etcd(scan, v2box)
    assert_no_leak(result, CANARIES + ['Summer2023!'])


def test_v2_fail_on_stale_fails_the_old_key_check(az, v2box):
    result = _verify(az, v2box, '--fail-on-stale', '-o', 'json')
    assert result.code == 4, result
    body = result.json()
    assert statuses(body)['KmsV2CurrentKey'] == 'Failed'
    assert stale_set(body['scan']) == {('legacy', 'api-token-before-rotation', 'key-0001')}


def test_v2_page_size_two_gives_the_same_result_as_the_default(az, v2box):
    default = _verify(az, v2box, '-o', 'json')
    paged = _verify(az, v2box, '--page-size', '2', '-o', 'json', '--debug')
    assert default.code == paged.code == 4, paged
    a, b = default.json(), paged.json()
    # etcd's revision moves between two runs: kube-apiserver itself writes (its leases, every few seconds)
    assert a['scan'].pop('revision') <= b['scan'].pop('revision')
    assert a['scan'] == b['scan'] and a['checks'] == b['checks']
    # it really paged: one etcdctl exec per 2 keys (each later page asks for one more: the previous last key)
    execs = [line for line in paged.stderr.splitlines() if 'etcdctl' in line and ' get ' in line and 'exec in' in line]
    total = b['scan']['total']
    assert len(execs) == (total + 1) // 2, execs
    assert all('--limit=2' in line or '--limit=3' in line for line in execs)
    assert_no_leak(paged, CANARIES + ['Summer2023!'])


def test_v2_table_shows_the_scan_summary_row(az, v2box):
    result = _verify(az, v2box, '-o', 'table')
    assert result.code == 4, result
    lines = result.stdout.splitlines()
    assert lines[0].split() == ['Check', 'Target', 'Status', 'Detail']
    [row] = [line for line in lines if line.startswith('Scan ')]
    total = len(etcd_keys(v2box))
    assert '/registry/secrets/' in row and 'Info' in row
    assert '{} secrets'.format(total) in row and '4 not KMS-encrypted' in row
    assert '2 identity' in row and '1 aescbc' in row and '1 secretbox' in row
    assert any(line.startswith('AllSecretsEncrypted') and 'Failed' in line for line in lines)
    assert any(line.startswith('KmsV2CurrentKey') and 'Warning' in line for line in lines)


def test_v2_with_named_secret_and_probe(az, v2box):
    result = _verify(az, v2box, '--secret', 'team-a/plain-planted', '--probe', '-o', 'json')
    assert result.code == 4, result
    body = result.json()
    probe, named = body['secrets']
    assert probe['name'].startswith('kmsverify-probe-') and probe['keyId'] == 'key-0002'
    assert (named['name'], named['storage']) == ('plain-planted', 'identity')
    # /metrics names the key before the probe can (the probe, written under the same key, agrees)
    assert body['scan']['currentKeyIdSource'] == 'metrics' and body['scan']['currentKeyId'] == 'key-0002'
    assert failing_set(body['scan']) == v2_expected_failing(v2box)
    assert probe_secrets_left(v2box) == []
    assert_counts_match_etcd(body['scan'], v2box)  # the probe is gone before the scan


def test_no_values_leak_even_with_debug(az, v2box):
    result = _verify(az, v2box, '--debug', '-o', 'json')
    assert result.code == 4, result
    assert 'DEBUG' in result.stderr
    stored = v2box.etcdctl_get('/registry/secrets/team-a/aescbc-planted')
    ciphertext = stored[len(b'k8s:enc:aescbc:v1:key1:'):][-32:]
    assert_no_leak(result, CANARIES + ['Summer2023!', base64.b64encode(ciphertext).decode()[:24],
                                       ciphertext.hex()[:24]])


def test_rotated_clean_cluster_only_warns_about_stale_secrets(az, rotated):
    result = _verify(az, rotated, '-o', 'json')
    assert result.code == 0, result
    body = result.json()
    scan = body['scan']
    assert body['passed'] is True
    assert statuses(body) == {'KmsProviderHealth': 'Passed', 'AllSecretsEncrypted': 'Passed',
                              'KmsV2CurrentKey': 'Warning', 'KmsKeyRotation': 'Passed'}
    assert scan['failing'] == []
    # nothing has been written with key-0003 yet: /metrics names it by its hash (its plugin's Status), so every
    # KMS v2 secret is under an older key (the latest write, key-0002, is not the current key)
    assert scan['currentKeyIdSource'] == 'metrics'
    assert scan['currentKeyId'] == 'sha256:' + hashlib.sha256(b'key-0003').hexdigest()
    assert stale_set(scan) == {(ns, name, 'key-0001') for ns, name in rotated.first_key_secrets} | {
        ('default', 'after-rotation', 'key-0002')}
    assert 'no secret in etcd is stored under it yet' in scan['currentKeyIdNote']
    assert_counts_match_etcd(scan, rotated)
    assert_no_leak(result, CANARIES)


def test_rotated_clean_cluster_fails_on_stale_when_asked(az, rotated):
    result = _verify(az, rotated, '--fail-on-stale', '-o', 'json')
    assert result.code == 4, result
    body = result.json()
    assert body['passed'] is False
    assert statuses(body)['KmsV2CurrentKey'] == 'Failed'
    assert statuses(body)['AllSecretsEncrypted'] == 'Passed'


def test_probe_gives_the_current_key(az, rotated):
    result = _verify(az, rotated, '--probe', '-o', 'json')
    assert result.code == 0, result
    scan = result.json()['scan']
    # the probe was written under key-0003, and /metrics (its latest encryption) names the same key first
    assert scan['currentKeyId'] == 'key-0003' and scan['currentKeyIdSource'] in ('metrics', 'probe')
    # under the probe's key, the secret written after the first rotation is stale too
    expected = {(ns, name, 'key-0001') for ns, name in rotated.first_key_secrets}
    expected.add(('default', 'after-rotation', 'key-0002'))
    assert stale_set(scan) == expected
    assert probe_secrets_left(rotated) == []


# --- KMS v1 -------------------------------------------------------------------------------------------------


def test_v1_history_lists_secrets_older_than_the_rotation_period(az, v1box):
    result = _verify(az, v1box, '-o', 'json')
    assert result.code == 4, result  # the plaintext secret of the history
    body = result.json()
    scan = body['scan']
    assert failing_set(scan) == {('legacy', 'app-credentials-2023', 'identity', PLAINTEXT_REASON)}
    # the history's pre-rotation secret (45 days) and the 2024 one; not the one written 10 days ago
    assert {(s['namespace'], s['name'], s['lastWrite'][:10]) for s in scan['stale']} == {
        ('legacy', 'api-token-before-rotation', _iso(45 * 86400)[:10]),
        ('legacy', 'written-2024', '2024-01-15')}
    assert v1box.info['history']['old_key'] == ['legacy/api-token-before-rotation']
    assert all(s['kmsVersion'] == 'v1' and s['keyId'] is None and 'more than 30 days' in s['reason']
               for s in scan['stale'])
    assert statuses(body) == {'KmsProviderHealth': 'Passed', 'AllSecretsEncrypted': 'Failed',
                              'KmsV1WrittenBeforeRotation': 'Warning', 'KmsV1Deprecated': 'Warning',
                              'KmsKeyRotation': 'Skipped'}
    rotation = next(c for c in body['checks'] if c['name'] == 'KmsKeyRotation')
    assert rotation['detail'].startswith('KMS v1 stores no key id'), rotation
    assert scan['currentKeyId'] is None
    assert_counts_match_etcd(scan, v1box)
    assert_no_leak(result, CANARIES + ['Summer2023!'])


def test_v1_rotation_days_and_fail_on_stale(az, v1box):
    result = _verify(az, v1box, '--rotation-days', '5', '--fail-on-stale', '-o', 'json')
    assert result.code == 4, result
    body = result.json()
    assert {(s['namespace'], s['name']) for s in body['scan']['stale']} == {
        ('legacy', 'api-token-before-rotation'), ('legacy', 'written-2024'), ('default', 'written-10-days-ago')}
    assert all('more than 5 days' in s['reason'] for s in body['scan']['stale'])
    assert statuses(body)['KmsV1WrittenBeforeRotation'] == 'Failed'


def test_v1_undecodable_object_skips_the_age_check_and_the_scan_completes(az, v1box):
    key = PREFIX + 'default/retired-provider'
    _write(v1box, 'default', 'retired-provider', prefix='k8s:enc:kms:v1:retired-plugin:')
    try:
        result = _verify(az, v1box, '-o', 'json')
        assert result.code == 4, result
        body = result.json()
        scan = body['scan']
        age = next(c for c in body['checks'] if c['name'] == 'KmsV1WrittenBeforeRotation')
        assert age['status'] == 'Skipped'
        assert 'could not list secret metadata' in age['detail'] and 'default/retired-provider' in age['detail']
        assert scan['stale'] == []
        assert scan['byProvider'].get('retired-plugin') == 1
        assert failing_set(scan) == {('legacy', 'app-credentials-2023', 'identity', PLAINTEXT_REASON)}
        assert_counts_match_etcd(scan, v1box)
        assert_no_leak(result, CANARIES)
    finally:
        v1box.etcdctl('del', key)


# --- JUnit --------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def schema():
    import xmlschema
    return xmlschema.XMLSchema(str(SCHEMA_PATH))


def _junit(schema, path):
    data = path.read_bytes()
    schema.validate(data.decode('utf-8'))
    root = ET.fromstring(data)
    [suite] = root.findall('testsuite')
    return suite


@pytest.mark.parametrize('fail_on_stale', [False, True])
def test_junit_has_one_case_per_check_and_per_failing_secret(az, v2box, schema, tmp_path, fail_on_stale):
    path = tmp_path / 'reports' / 'kms.xml'
    path.parent.mkdir()
    args = ['--junit-xml', str(path), '-o', 'json'] + (['--fail-on-stale'] if fail_on_stale else [])
    result = _verify(az, v2box, *args)
    assert result.code == 4, result
    body = result.json()
    suite = _junit(schema, path)
    cases = suite.findall('testcase')
    # a check's case is named by its target when it has one (KmsKeyRotation: the key id), else by the check
    check_cases = [c for c in cases if '/' not in c.get('name')]
    secret_cases = [c for c in cases if '/' in c.get('name')]
    assert sorted(c.get('classname')[len('kmsverify.'):] for c in check_cases) == sorted(
        c['name'] for c in body['checks'])
    expected = {'{}/{}'.format(ns, name) for ns, name, _, _ in v2_expected_failing(v2box)}
    if fail_on_stale:
        expected.add('legacy/api-token-before-rotation')
    assert {c.get('name') for c in secret_cases} == expected
    assert len(cases) == len(body['checks']) + len(expected)
    assert all(c.find('failure') is not None for c in secret_cases)
    failures = sum(1 for c in cases if c.find('failure') is not None)
    assert suite.get('failures') == str(failures) and suite.get('tests') == str(len(cases))
    assert suite.get('name').endswith('--all-secrets')
    text = path.read_text()
    for canary in CANARIES + ['Summer2023!']:
        assert canary not in text


def test_junit_is_written_with_the_error_when_verification_cannot_run(az, v2box, schema, tmp_path):
    path = tmp_path / 'kms.xml'
    v2box.ctl({'exec_fault': {'pod': '*', 'mode': 'broken'}})
    try:
        result = _verify(az, v2box, '--junit-xml', str(path), '-o', 'json')
    finally:
        v2box.ctl({'exec_fault': {'pod': '*', 'mode': None}})
    assert result.code == 1, result
    suite = _junit(schema, path)
    [case] = suite.findall('testcase')
    error = case.find('error')  # nothing was verified: an error, not a failed check
    assert case.find('failure') is None and suite.get('errors') == '1' and suite.get('failures') == '0'
    assert error is not None and 'could not verify' in error.get('message')
    assert result.stderr.strip().splitlines()[0].split(': ', 1)[-1][:40] in error.get('message')


# --- progress -----------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def manybox(tmp_path_factory):
    """Enough secrets (1,200) for progress updates."""
    box = _up(tmp_path_factory, provider='kms-v2')
    try:
        box.ctl({'seed': {'namespace': 'bulk', 'count': 1200, 'size': 100}})
        yield box
    finally:
        box.down()


def _az_env(tmp_path, only_show_errors=False):
    env = dict(os.environ)
    env.update({'AZURE_CONFIG_DIR': str(tmp_path / 'azure-config'), 'AZURE_EXTENSION_DIR': str(EXTENSION_DIR),
                'AZURE_CORE_COLLECT_TELEMETRY': 'false', 'AZURE_CORE_NO_COLOR': 'true',
                'AZURE_CORE_SURVEY_MESSAGE': 'false', 'AZURE_CORE_ONLY_SHOW_ERRORS': 'false',
                'KUBECONFIG': str(tmp_path / 'no-kubeconfig'),
                'PYTHONSAFEPATH': '1'})  # the installed wheel, not ./azext_kmsverify (see conftest.Az)
    return env


def _run_with_tty_stderr(args, env, timeout=180):
    """Run az with stderr on a pseudo-terminal (stdout a pipe): (exit code, stdout, stderr)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(AZ)] + args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
                            env=env)
    os.close(slave)
    err = b''
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                err += chunk
            elif proc.poll() is not None:
                break
        out = proc.stdout.read()
        proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out.decode(), err.decode(errors='replace')


def test_progress_on_a_terminal_only(az, manybox, tmp_path):
    args = ['aksarc', 'kms', 'verify', '--kubeconfig', manybox.kubeconfig, '--all-secrets', '-o', 'json']
    code, out, err = _run_with_tty_stderr(args, _az_env(tmp_path))
    assert code == 0, err
    total = json.loads(out)['scan']['total']
    assert 'Reading secrets 500 of {}'.format(total) in err and 'Reading secrets 1000 of' in err, err
    assert re.search(r'Read {} secrets\[#+\] *100\.0+%'.format(total), err), err  # the bar ends full
    assert '\r' in err

    quiet_code, quiet_out, quiet_err = _run_with_tty_stderr(args + ['--only-show-errors'], _az_env(tmp_path))
    assert quiet_code == 0 and 'Reading secrets' not in quiet_err and '%' not in quiet_err, quiet_err
    scan, quiet_scan = json.loads(out)['scan'], json.loads(quiet_out)['scan']
    assert scan.pop('revision') <= quiet_scan.pop('revision')  # kube-apiserver's own writes move etcd's revision
    assert quiet_scan == scan

    piped = az(*args)
    assert piped.code == 0, piped
    assert 'Reading secrets' not in piped.stderr and '\r' not in piped.stderr and '%' not in piped.stderr
