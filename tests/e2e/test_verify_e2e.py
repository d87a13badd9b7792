"""End to end: the installed wheel run through az against sandbox clusters (real etcd, etcdctl, KMS plugin)."""

import base64

import pytest

from tests.conftest import verify, Az, assert_no_leak, copy_of, make_secret, probe_secrets_left, wait_kms_health

CANARY = 'canary-value-7f3a9c1e'


@pytest.mark.parametrize('provider, version, key_id_expected', [('kms-v1', 'v1', False), ('kms-v2', 'v2', True)])
def test_kms_cluster_passes_with_exact_fields(az, sandbox_factory, provider, version, key_id_expected):
    box = sandbox_factory(provider=provider)
    make_secret(box, 'default', 'app-secret', {'password': CANARY})
    result = verify(az, box, '--secret', 'default/app-secret', '-o', 'json')
    assert result.code == 0, result
    body = result.json()
    assert body['passed'] is True
    [secret] = body['secrets']
    assert secret == {'namespace': 'default', 'name': 'app-secret', 'etcdKey': '/registry/secrets/default/app-secret',
                      'storage': 'kms', 'kmsVersion': version, 'provider': 'kms-plugin',
                      'keyId': secret['keyId'], 'encrypted': True}
    assert (secret['keyId'] is not None) == key_id_expected
    statuses = {c['name']: c['status'] for c in body['checks']}
    assert statuses['KmsProviderHealth'] == 'Passed'
    assert statuses['SecretEncryptedWithKms'] == 'Passed'
    if version == 'v1':
        assert statuses['KmsV1Deprecated'] == 'Warning'
    else:
        assert 'KmsV1Deprecated' not in statuses
    assert body['etcdPod'].startswith('etcd-moc-')
    assert_no_leak(result, [CANARY, base64.b64encode(CANARY.encode()).decode()])


@pytest.mark.parametrize('provider, storage, detail', [('aescbc', 'aescbc', 'encrypted with a local key, not KMS'),
                                                       ('identity', 'identity', 'stored in plaintext')])
def test_non_kms_cluster_fails_with_exit_4_and_the_full_result(az, sandbox_factory, provider, storage, detail):
    # automatic reload off: with it on, kube-apiserver 1.29 shows [+]kms-providers ok with no KMS provider at all
    box = sandbox_factory(provider=provider, readyz_style='per-provider')
    make_secret(box, 'default', 'app-secret', {'password': CANARY})
    result = verify(az, box, '--secret', 'default/app-secret', '-o', 'json')
    assert result.code == 4, result
    body = result.json()
    assert body['passed'] is False
    assert body['secrets'][0]['storage'] == storage
    assert body['secrets'][0]['encrypted'] is (storage != 'identity')
    assert body['secrets'][0]['provider'] == ('key1' if storage == 'aescbc' else None)
    failed = [c for c in body['checks'] if c['status'] == 'Failed']
    assert any(detail in c['detail'] for c in failed), body['checks']
    # a local-key or plaintext cluster has no KMS provider at all
    assert any(c['name'] == 'KmsProviderHealth' and 'no KMS provider configured' in c['detail'] for c in failed)
    assert_no_leak(result, [CANARY, base64.b64encode(CANARY.encode()).decode()])


def test_probe_mode_creates_verifies_and_deletes_the_probe(az, sandbox_factory):
    box = sandbox_factory(provider='kms-v2')
    result = verify(az, box, '-o', 'json')
    assert result.code == 0, result
    body = result.json()
    [probe] = body['secrets']
    assert probe['name'].startswith('kmsverify-probe-') and probe['namespace'] == 'default'
    assert probe['storage'] == 'kms' and probe['kmsVersion'] == 'v2'
    assert probe_secrets_left(box) == []


def test_table_output_and_query(az, sandbox_factory):
    box = sandbox_factory(provider='kms-v2')
    table = verify(az, box, '--secret', 'default/db-user-pass', '-o', 'table')
    assert table.code == 0, table
    lines = table.stdout.splitlines()
    assert lines[0].split() == ['Check', 'Target', 'Status', 'Detail']
    assert any('KmsProviderHealth' in line and 'Passed' in line for line in lines)
    assert any('default/db-user-pass' in line and 'Passed' in line for line in lines)
    query = verify(az, box, '--secret', 'default/db-user-pass', '--query', 'secrets[0].storage', '-o', 'tsv')
    assert query.code == 0 and query.stdout.strip() == 'kms', query


def test_failing_result_keeps_exit_4_with_query_and_table(az, sandbox_factory):
    box = sandbox_factory(provider='identity')
    result = verify(az, box, '--secret', 'default/db-user-pass', '--query', 'passed', '-o', 'tsv')
    assert result.code == 4 and result.stdout.strip() == 'false', result
    table = verify(az, box, '--secret', 'default/db-user-pass', '-o', 'table')
    assert table.code == 4 and 'stored in plaintext' in table.stdout, table


@pytest.mark.parametrize('provider', ['kms-v2', 'kms-v1'])
def test_stopped_kms_plugin_fails_health_with_the_real_reason(az, tmp_path, provider):
    """What the real kube-apiserver does with a stopped plugin. KMS v1 calls the plugin on every write, so the probe
    cannot be written. KMS v2 keeps encrypting with its cached DEK for up to 3 minutes after the plugin last answered
    (``kmsv2PluginWriteDEKSourceMaxTTL``; it disproved the emulator's "writes fail at once"), so the probe is written
    under the old key and the check says what that proves; the run fails on the health check either way."""
    from tests.conftest import fresh_sandbox
    box = fresh_sandbox(tmp_path, provider=provider)
    try:
        box.kms('stop')
        assert wait_kms_health(box, healthy=False)[0] == 500
        result = verify(az, box, '--secret', 'default/db-user-pass', '-o', 'json')
        assert result.code == 4, result
        health = next(c for c in result.json()['checks'] if c['name'] == 'KmsProviderHealth')
        assert health['status'] == 'Failed'
        assert 'reason withheld' not in health['detail']
        assert 'kms-provider' in health['detail'] and ('connect' in health['detail'] or 'Unavailable' in
                                                       health['detail']), health
        # the default probe mode: a result, exit 4, and no probe left behind
        probed = verify(az, box, '-o', 'json')
        assert probed.code == 4, probed
        checks = {c['name']: c for c in probed.json()['checks']}
        assert checks['KmsProviderHealth']['status'] == 'Failed', checks
        written = checks['SecretEncryptedWithKms']
        assert written['target'].startswith('default/kmsverify-probe-'), written
        if provider == 'kms-v1':
            assert written['status'] == 'Failed', written
            assert written['detail'].startswith('the probe secret could not be written while the KMS provider is '
                                                'unhealthy: '), written
        else:  # within the 3 minutes (the stop was moments ago): written under the key the server last had
            assert written['status'] == 'Passed', written
            assert written['detail'].startswith('probe secret stored with KMS v2 provider kms-plugin, key id key-0001; '
                                                'written while the KMS provider is unhealthy: '), written
        assert 'ERROR' not in probed.stderr and 'delete it with' not in probed.stderr, probed
        assert probe_secrets_left(box) == []
        box.kms('start')
        assert wait_kms_health(box, healthy=True)[0] == 200
        healed = verify(az, box, '--secret', 'default/db-user-pass', '-o', 'json')
        assert healed.code == 0, healed
    finally:
        box.down()


def test_secret_values_and_ciphertext_never_appear_even_with_debug(az, sandbox_factory):
    box = sandbox_factory(provider='identity')
    make_secret(box, 'default', 'debug-canary', {'token': CANARY})
    result = verify(az, box, '--secret', 'default/debug-canary', '--debug')
    assert result.code == 4, result
    assert 'DEBUG' in result.stderr  # --debug really was on
    assert_no_leak(result, [CANARY, base64.b64encode(CANARY.encode()).decode()])

    encrypted = sandbox_factory(provider='kms-v2')
    make_secret(encrypted, 'default', 'debug-canary', {'token': CANARY})
    stored = encrypted.etcdctl_get('/registry/secrets/default/debug-canary')
    ciphertext = stored[len(b'k8s:enc:kms:v2:kms-plugin:'):][-48:-16]
    result = verify(az, encrypted, '--secret', 'default/debug-canary', '--debug', '-o', 'json')
    assert result.code == 0, result
    assert_no_leak(result, [CANARY, base64.b64encode(ciphertext).decode()[:24], ciphertext.hex()[:24],
                            repr(ciphertext)[2:26]])


@pytest.mark.parametrize('admin', [False, True])
def test_resource_group_and_name_through_the_arm_emulator(sign_in, sandbox_factory, admin):
    box = sandbox_factory(provider='kms-v2')
    arm = box.info['arm']
    az = sign_in(box)  # a real az login to the box's Entra emulator; the cluster demands PoP tokens
    args = ['aksarc', 'kms', 'verify', '-g', arm['resource_group'], '-n', arm['cluster'], '-o', 'json']
    result = az(*(args + ['--admin'] if admin else args), '--debug')
    assert result.code == 0, result
    body = result.json()
    assert body['cluster']['credential'] == ({'type': 'admin', 'login': None, 'pop': False} if admin else
                                             {'type': 'user', 'login': 'azurecli', 'pop': True})
    assert body['cluster']['source'] == 'azure' and body['cluster']['name'] == arm['cluster']
    assert body['passed'] is True
    assert_no_leak(result)
    assert probe_secrets_left(box) == []


def test_credentials_from_azure_never_touch_the_disk(sign_in, sandbox_factory, tmp_path):
    """The admin kubeconfig (with its client key) lives in memory only: nothing lands in TMPDIR or ~/.kube."""
    box = sandbox_factory(provider='kms-v2')
    arm = box.info['arm']
    signed_in = copy_of(sign_in(box), tmp_path / 'azure')
    config_dir = signed_in.config_dir
    scratch, home = tmp_path / 'tmp', tmp_path / 'home'
    scratch.mkdir()
    home.mkdir()
    az = Az(config_dir, dict(signed_in.env, TMPDIR=str(scratch), HOME=str(home)))
    before = {p for p in config_dir.rglob('*')}
    result = az('aksarc', 'kms', 'verify', '-g', arm['resource_group'], '-n', arm['cluster'], '--admin',
                '--secret', 'default/db-user-pass', '--debug')
    assert result.code == 0, result
    assert list(scratch.iterdir()) == []
    assert not (home / '.kube').exists()
    key_marker = 'PRIVATE KEY'
    for path in {p for p in config_dir.rglob('*')} - before:
        if path.is_file():
            assert key_marker not in path.read_text(errors='replace'), path
    assert_no_leak(result)


@pytest.mark.parametrize('signame', ['SIGINT', 'SIGTERM'])
def test_interrupted_run_still_deletes_the_probe(installed, tmp_path, signame):
    """Ctrl-C (SIGINT) or a cancelled pipeline (SIGTERM) while the probe exists: the probe is still deleted."""
    import os
    import signal
    import subprocess
    import time

    from tests.conftest import AZ, EXTENSION_DIR, core_api, fresh_sandbox
    box = fresh_sandbox(tmp_path, provider='kms-v2')
    try:
        box.ctl({'exec_fault': {'pod': '*', 'mode': 'hang'}})
        env = dict(os.environ, AZURE_CONFIG_DIR=str(tmp_path / 'azure'), AZURE_EXTENSION_DIR=str(EXTENSION_DIR),
                   AZURE_CORE_COLLECT_TELEMETRY='false', PYTHONSAFEPATH='1')
        proc = subprocess.Popen([str(AZ), 'aksarc', 'kms', 'verify', '--kubeconfig', box.kubeconfig,
                                 '--timeout', '120'], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True)
        api = core_api(box)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not probe_secrets_left(box):
            time.sleep(0.1)
        assert probe_secrets_left(box), 'the probe secret was never created'
        time.sleep(0.5)  # now blocked in the hanging exec
        proc.send_signal(getattr(signal, signame))
        out, err = proc.communicate(timeout=60)
        assert proc.returncode != 0
        assert 'Traceback' not in err, err
        assert probe_secrets_left(box) == [], 'probe left behind after ' + signame
        assert api.list_namespaced_secret('default').items is not None
    finally:
        box.down()
