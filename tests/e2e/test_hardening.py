"""Hardening, end to end through the installed wheel: credentials never in any output, --junit-xml never replaces
what is at the path, names from etcd cannot drive a terminal, --timeout holds at every phase, one interrupt
never leaves the probe, and bad input is one line."""

import base64
import os
import random
import signal
import socket
import stat
import subprocess
import time

import pytest
import yaml

from tests.conftest import AZ, EXTENSION_DIR, assert_no_leak, core_api, fresh_sandbox, pop_token, probe_secrets_left
from tests.e2e.test_failures import assert_error, verify

GRACE = 10  # defaults.PROBE_DELETE_GRACE: the probe's delete may take this long beyond --timeout
START = 6  # az's own start and exit, generously


def _kubeconfig_with_user(box, tmp_path, user, name='k.yaml'):
    config = yaml.safe_load(open(box.kubeconfig))
    context = next(c for c in config['contexts'] if c['name'] == config['current-context'])['context']
    for entry in config['users']:
        if entry['name'] == context['user']:
            entry['user'] = user
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope='module')
def box(tmp_path_factory):
    sandbox = fresh_sandbox(tmp_path_factory.mktemp('hardening'), provider='kms-v2')
    yield sandbox
    sandbox.down()


# --- credentials -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('where', ['token', 'tokenFile'])
def test_a_token_ending_in_a_newline_works_and_never_shows(az, box, tmp_path, where):
    token = pop_token(box) + '\n'  # what `echo "$TOKEN" > file` makes (a PoP token: the box enforces PoP)
    if where == 'token':
        user = {'token': token}
    else:
        (tmp_path / 'token').write_text(token)
        user = {'tokenFile': str(tmp_path / 'token')}
    result = verify(az, _kubeconfig_with_user(box, tmp_path, user), '--secret', 'default/db-user-pass', '--debug')
    assert result.code == 0, result
    assert_no_leak(result, [token.strip()[-40:]])


@pytest.mark.parametrize('content', [
    'root:CANARY-SHADOW-3b1f:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n',
    'CANARY-CTRL\x01TOKEN-9a2c',
    'Bearer CANARY-TWO WORDS-77e1',
])
def test_a_token_no_header_can_carry_is_one_line_and_never_shown(az, box, tmp_path, content):
    (tmp_path / 'shadow').write_text(content)
    for user in ({'tokenFile': str(tmp_path / 'shadow')}, {'token': content}):
        for extra in ([], ['--debug']):  # --debug shows where an error was raised (az's trace), never values
            result = verify(az, _kubeconfig_with_user(box, tmp_path, user), '--secret', 'default/db-user-pass',
                            *extra)
            assert result.code == 2, result
            assert extra or 'Traceback' not in result.output, result
            for piece in ('CANARY', 'root:', 'daemon:'):
                assert piece not in result.output, result


def test_canaries_in_every_credential_field_never_show(az, box, tmp_path):
    canary = 'CANARY-CRED-5e0d'
    encoded = base64.b64encode(canary.encode()).decode()
    users = [
        {'client-certificate-data': encoded, 'client-key-data': encoded},
        {'username': canary, 'password': canary},
        {'exec': {'apiVersion': 'client.authentication.k8s.io/v1beta1', 'command': 'sh',
                  'args': ['-c', f'echo {canary} >&2; echo {canary}; exit 3'],
                  'env': [{'name': 'X', 'value': canary}]}},
        {'exec': {'apiVersion': 'client.authentication.k8s.io/v1beta1', 'command': 'kubelogin',
                  'args': ['get-token', '--login', 'spn', '--client-id', 'app', '--tenant-id', 'tenant',
                           '--client-secret', canary, '--environment', 'AzurePublicCloud',
                           '--authority-host', 'https://127.0.0.1:9']}},
    ]
    for index, user in enumerate(users):
        path = _kubeconfig_with_user(box, tmp_path, user, name=f'k{index}.yaml')
        for extra in ([], ['--debug']):
            result = verify(az, path, '--secret', 'default/db-user-pass', *extra)
            assert result.code in (1, 2), result
            assert extra or 'Traceback' not in result.output, result
            assert_no_leak(result, [canary, encoded])


# --- --junit-xml ---------------------------------------------------------------------------------------------------


def test_junit_xml_writes_through_dev_null_and_never_replaces_it(az, box):
    before = os.stat('/dev/null')
    result = verify(az, box.kubeconfig, '--secret', 'default/db-user-pass', '--junit-xml', '/dev/null')
    assert result.code == 0, result
    after = os.stat('/dev/null')
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_ino == before.st_ino


def test_junit_xml_through_a_symlink_writes_the_target(az, box, tmp_path):
    target = tmp_path / 'report.xml'
    target.write_text('old')
    link = tmp_path / 'link.xml'
    link.symlink_to(target)
    result = verify(az, box.kubeconfig, '--secret', 'default/db-user-pass', '--junit-xml', str(link))
    assert result.code == 0, result
    assert link.is_symlink() and '<testsuites' in target.read_text()


@pytest.mark.parametrize('kind', ['folder', 'fifo', 'socket'])
def test_junit_xml_at_a_non_file_is_exit_2_before_anything_runs(az, box, tmp_path, kind):
    path = tmp_path / 'report'
    if kind == 'folder':
        path.mkdir()
    elif kind == 'fifo':
        os.mkfifo(path)
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
    result = verify(az, box.kubeconfig, '--junit-xml', str(path))  # probe mode: nothing may be created
    assert_error(result, 2, '--junit-xml', 'Give the path of a file')
    assert probe_secrets_left(box) == []
    assert (stat.S_ISDIR if kind == 'folder' else stat.S_ISFIFO if kind == 'fifo' else stat.S_ISSOCK)(
        os.lstat(path).st_mode)


def test_a_report_that_cannot_be_written_at_the_end_still_prints_the_result(az, box):
    result = verify(az, box.kubeconfig, '--secret', 'default/db-user-pass', '--junit-xml', '/dev/full', '-o', 'json')
    assert result.code == 1, result
    assert result.json()['passed'] is True
    assert 'Could not write the JUnit report' in result.stderr


# --- names from etcd and echoed arguments ---------------------------------------------------------------------------


def _etcd(box, method, *args):
    """Host-side etcd gRPC (keys no etcdctl argv can carry)."""
    import asyncio

    from tests.sandbox.etcdgrpc import EtcdClient
    pki = box.info['pki']

    async def run():
        client = EtcdClient.from_files(box.info['etcd']['endpoint'], pki['etcd_ca_cert'], pki['etcd_client_cert'],
                                       pki['etcd_client_key'])
        try:
            return await getattr(client, method)(*args)
        finally:
            await client.close()
    return asyncio.run(run())


def test_control_characters_in_etcd_names_never_reach_the_terminal(az, box):
    evil = b'/registry/secrets/evil\x1b]0;owned\x07/name\nforged\trow\x1b[2J\xc2\x9b31m'
    _etcd(box, 'put', evil, b'k8s\x00plaintext')
    try:
        for output in ('table', 'tsv', 'json', 'yaml'):
            result = az('aksarc', 'kms', 'verify', '--kubeconfig', box.kubeconfig, '--all-secrets', '-o', output,
                        '--debug')
            assert result.code == 4, result
            for char in ('\x1b', '\x07', '\x9b'):
                assert char not in result.output, (output, result)
            if output == 'tsv':
                assert not any(line.startswith('forged') for line in result.stdout.splitlines())
        query = az('aksarc', 'kms', 'verify', '--kubeconfig', box.kubeconfig, '--all-secrets', '--query',
                   'scan.failing[].name', '-o', 'tsv')
        assert any('\\x1b' in line or '\\n' in line for line in query.stdout.splitlines()), query
    finally:
        _etcd(box, 'delete', evil)


@pytest.mark.parametrize('kind', ['high-bytes', 'nul'])
def test_a_key_no_argv_can_carry_at_every_page_boundary_is_read(az, box, kind):
    if kind == 'nul':  # etcdctl prints it; argv cannot carry it: the page after it starts at its head
        tails = (b'a', b'a\x00', b'a\x00b', b'a\x00\x00c', b'b\x00\xff')
        keys = [b'/registry/secrets/zz-bytes/' + tail for tail in tails]
    else:
        keys = [b'/registry/secrets/zz-bytes/\xff\xfe' + bytes([i]) for i in range(0x80, 0x86)]
    for key in keys:
        _etcd(box, 'put', key, b'k8s\x00plaintext')
    try:
        result = az('aksarc', 'kms', 'verify', '--kubeconfig', box.kubeconfig, '--all-secrets', '--page-size', '1',
                    '-o', 'json')
        assert result.code == 4, result
        scan = result.json()['scan']
        found = [f for f in scan['failing'] if f['namespace'] == 'zz-bytes']
        assert len(found) == len(keys) and all(f['storage'] == 'identity' for f in found)
    finally:
        for key in keys:
            _etcd(box, 'delete', key)


@pytest.mark.parametrize('args, message', [
    (['--etcd-key', '/a\x01b'], '--etcd-key must be an absolute path'),
    (['--secret', 'default/x\n'], 'is not a valid secret name'),
    (['--probe-namespace', 'default\n'], 'is not a valid namespace name'),
    (['--etcd-endpoint', ''], "--etcd-endpoint '' is not valid"),
    (['--etcd-container', 'etcd\x1b[2J'], '--etcd-container'),
])
def test_bad_arguments_are_one_line_and_echoed_safely(az, box, args, message):
    result = az('aksarc', 'kms', 'verify', '--kubeconfig', box.kubeconfig, *args)
    assert result.code == 2, result
    assert message in result.stderr, result
    assert 'Traceback' not in result.output and '\x01' not in result.output and '\x1b' not in result.output


@pytest.mark.parametrize('path, message', [('/dev/null', 'is not a regular file'), ('/tmp', 'is a folder')])
def test_kubeconfig_that_is_not_a_file(az, path, message):
    result = az('aksarc', 'kms', 'verify', '--kubeconfig', path)
    assert_error(result, 2, message, 'Give the path of a kubeconfig file')


# --- --timeout at every phase ----------------------------------------------------------------------------------------


PHASES = [
    # (what to wait for in the --debug trace before stopping the server, what the message names)
    (None, 'reading /readyz'),
    ('GET /api/v1/namespaces/kube-system/pods', 'listing pods'),
    ('exec in kube-system/', 'exec'),
    ('POST /api/v1/namespaces/default/secrets', 'creating a probe secret'),
]


@pytest.mark.parametrize('marker, phase', PHASES, ids=[p for _, p in PHASES])
def test_a_stalled_api_server_ends_the_run_within_the_timeout(box, tmp_path, marker, phase):
    """SIGSTOP the API server process when the run reaches a phase: the run ends within --timeout plus the
    probe's delete grace, with a message naming what it was waiting for."""
    timeout = 6
    server = box.info['pids'].get('kube_apiserver') or box.info['pids']['server']  # the real one, if it runs
    env = dict(os.environ, AZURE_CONFIG_DIR=str(tmp_path / 'azure'), AZURE_EXTENSION_DIR=str(EXTENSION_DIR),
               AZURE_CORE_COLLECT_TELEMETRY='false', PYTHONSAFEPATH='1')
    started = time.monotonic()
    stopped = False
    try:
        if marker is None:
            os.kill(server, signal.SIGSTOP)
            stopped = True
        proc = subprocess.Popen([str(AZ), 'aksarc', 'kms', 'verify', '--kubeconfig', box.kubeconfig, '--timeout',
                                 str(timeout), '--debug'], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True)
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if not stopped and marker in line:
                os.kill(server, signal.SIGSTOP)
                stopped = True
        proc.wait(timeout=120)
        elapsed = time.monotonic() - started
    finally:
        if stopped:
            os.kill(server, signal.SIGCONT)
    text = ''.join(lines)
    assert stopped, f'the run never reached {marker!r}:\n{text[-3000:]}'
    assert proc.returncode == 1, text[-3000:]
    assert elapsed <= timeout + GRACE + START, f'{elapsed:.1f} s'
    errors = [line for line in lines if line.startswith('ERROR: ') and 'az_command_data_logger' not in line]
    assert errors and phase in errors[-1] and str(timeout) in errors[-1], text[-3000:]
    # A server frozen through the delete's grace period keeps a probe whose POST it committed after it woke up:
    # the run said so, naming the command that deletes it.
    # (A delete sent while it was frozen may still land once it runs again.)
    deadline = time.monotonic() + 10
    while probe_secrets_left(box) and time.monotonic() < deadline:
        time.sleep(0.5)
    from kubernetes.client.exceptions import ApiException
    for left in probe_secrets_left(box):
        namespace, name = left.split('/')
        try:
            core_api(box).delete_namespaced_secret(name, namespace)
        except ApiException as ex:  # the list lagged a delete that did land
            assert ex.status == 404
            continue
        assert f'delete it with: kubectl delete secret -n {namespace} {name}' in text, text[-3000:]


# --- interrupts ---------------------------------------------------------------------------------------------------


def test_fifty_interrupts_at_random_moments_leave_no_probe(box, tmp_path):
    """SIGINT or SIGTERM at a random moment of a probe run (from its first step to its end): the probe never
    stays behind. The moment is drawn after the command starts (a signal during az's own start-up is az's)."""
    rng = random.Random(20261201)
    env = dict(os.environ, AZURE_CONFIG_DIR=str(tmp_path / 'azure'), AZURE_EXTENSION_DIR=str(EXTENSION_DIR),
               AZURE_CORE_COLLECT_TELEMETRY='false', PYTHONSAFEPATH='1')
    argv = [str(AZ), 'aksarc', 'kms', 'verify', '--kubeconfig', box.kubeconfig, '--timeout', '60', '--debug']
    marker = 'kubernetes client'  # the command's first step (kube.compat)

    def start():
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True)
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if marker in line:
                return proc, lines
        raise AssertionError(''.join(lines)[-3000:])

    proc, _ = start()
    began = time.monotonic()
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    duration = time.monotonic() - began
    outcomes = []
    for index in range(50):
        proc, lines = start()
        time.sleep(rng.uniform(0, duration))
        sig = signal.SIGINT if index % 2 == 0 else signal.SIGTERM
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert 'Traceback' not in err.replace('DEBUG: cli.azure.cli.core.azclierror: Traceback', ''), err[-3000:]
        outcomes.append(proc.returncode)
        left = probe_secrets_left(box)
        assert left == [], f'interrupt {index} ({sig.name}) left {left}:\n{("".join(lines) + err)[-3000:]}'
    assert sum(code != 0 for code in outcomes) >= 25, outcomes  # most landed inside a run


# --- wrong words and kubeconfig problems that are not network problems ------------------------------------------


def _with_cluster(box, tmp_path, name, **cluster):
    config = yaml.safe_load(open(box.kubeconfig))
    context = next(c for c in config['contexts'] if c['name'] == config['current-context'])['context']
    for entry in config['clusters']:
        if entry['name'] == context['cluster']:
            entry['cluster'].update(cluster)
            for key in [k for k, v in entry['cluster'].items() if v is None]:
                del entry['cluster'][key]
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_an_unreachable_proxy_url_is_the_proxy_not_the_api_server(az, box, tmp_path):
    path = _with_cluster(box, tmp_path, 'proxy.yaml', **{'proxy-url': 'http://127.0.0.1:1'})
    result = verify(az, path, '--secret', 'default/db-user-pass')
    assert_error(result, 1, 'Could not reach the proxy http://127.0.0.1:1 of the kubeconfig',
                 "Check the kubeconfig's proxy-url")


def test_insecure_skip_tls_verify_is_one_warning_of_our_own(az, box, tmp_path):
    path = _with_cluster(box, tmp_path, 'insecure.yaml', **{'insecure-skip-tls-verify': True,
                                                            'certificate-authority-data': None})
    result = verify(az, path, '--secret', 'default/db-user-pass')
    assert result.code == 0, result
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and 'skips TLS verification' in warnings[0] and 'not authenticated' in warnings[0]
    assert 'InsecureRequestWarning' not in result.stderr and 'urllib3' not in result.stderr


@pytest.mark.parametrize('cluster, message', [
    ({'certificate-authority-data': base64.b64encode(b'not a certificate').decode()}, 'is not a PEM certificate'),
    ({'server': None}, 'has no server'),
])
def test_kubeconfig_problems_are_not_reported_as_network_problems(az, box, tmp_path, cluster, message):
    result = verify(az, _with_cluster(box, tmp_path, 'bad.yaml', **cluster), '--secret', 'default/db-user-pass')
    assert_error(result, 2, message, 'fresh credentials')
    assert 'Could not reach' not in result.stderr


def test_a_stalled_arm_ends_the_run_within_the_timeout(sign_in, box, tmp_path):
    """The ARM credential operation is bounded like every other wait (ARM is served by the stopped process)."""
    from tests.conftest import verify as run_verify
    az = sign_in(box)
    run_verify(az, ('arm', box), '--admin', '-o', 'none')  # warm: the ARM token is in az's cache now
    server = box.info['pids']['server']
    os.kill(server, signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = run_verify(az, ('arm', box), '--admin', '--timeout', '5')
        elapsed = time.monotonic() - started
    finally:
        os.kill(server, signal.SIGCONT)
    assert result.code == 1, result
    assert elapsed <= 5 + START, f'{elapsed:.1f} s'
    assert 'did not finish within the --timeout of 5 s' in result.stderr, result


def test_a_fleet_that_finds_no_cluster_exits_3_saying_why(sign_in, box):
    """A --tag typo: Resource Graph finds nothing, so nothing was verified; a pipeline gating on the exit code must
    not go green. The JSON is still printed (no cluster), with one error line saying why."""
    az = sign_in(box)
    result = az('aksarc', 'kms', 'verify', '--all-clusters', '--tag', 'env=no-such-env', '-o', 'json')
    assert result.code == 3, result
    assert result.json()['clusters'] == [] and result.json()['passed'] is False
    errors = [line for line in result.stderr.splitlines() if line.startswith('ERROR: ')]
    assert errors == [errors[0]] and 'No cluster verified: Azure Resource Graph found no AKS Arc cluster' in \
        errors[0] and 'tags env=no-such-env' in errors[0], result
