"""The hostile-server harness (tests/sandbox/apiserver/hostile) against the installed wheel: at each phase the server
trickles, stalls, redirects, sends endless or oversized answers or hostile characters; every run ends within --timeout
plus the documented grace, with one line naming the phase, no credential at a redirect target, and nothing raw in any
output."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import AZ, EXTENSION_DIR, assert_no_leak, verify
from tests.sandbox.apiserver.hostile import HostileServer
from tests.sandbox.apiserver.hostile.server import RAW_CHARS, TOKEN, wait_for

TIMEOUT = 4
GRACE = 10  # deadline.GRACE_SECONDS: the probe's delete beyond --timeout
START = 8  # az's own start and exit on a machine shared by several test runs, generously


@pytest.fixture
def hostile(tmp_path):
    server = HostileServer(tmp_path / 'hostile')
    yield server
    server.close()


def run(az, server, *args, output=None):
    started = time.monotonic()
    extra = ['-o', output] if output else []
    result = verify(az, server.kubeconfig(), '--timeout', str(TIMEOUT), *extra, *args, timeout=120)
    return result, time.monotonic() - started


def error_line(result):
    lines = [line for line in result.stderr.splitlines() if line.startswith('ERROR: ')
             and not line.startswith(('ERROR: cli.', 'ERROR: az_command_data_logger'))]  # --debug's copies
    assert len(lines) == 1, result
    return lines[0]


def assert_nothing_raw(result):
    for char in RAW_CHARS:
        assert char not in result.output, (repr(char), result)
    assert 'Traceback' not in result.output.replace('DEBUG: cli.azure.cli.core.azclierror: Traceback', ''), result
    assert_no_leak(result, [TOKEN])


def assert_no_credential_at_the_target(server):
    assert server.recorder.credentials_seen() == [], server.recorder.requests


# --- --timeout holds against slowness, at every phase ---------------------------------------------------------------


SLOW = [
    # (phase, behaviour, what the error line names)
    ('readyz', 'trickle', 'reading /readyz'),
    ('readyz', 'trickle-body', 'reading /readyz'),
    ('pods', 'trickle-body', 'listing pods in kube-system'),
    ('pods', 'stall', 'listing pods in kube-system'),
    ('secret-create', 'trickle', 'creating a probe secret'),
    ('exec', 'trickle', 'exec into etcd-hostile'),
    ('exec-frames', 'trickle-frame', 'exec into etcd-hostile produced no end of output'),
    ('exec-frames', 'stall', 'exec into etcd-hostile produced no end of output'),
]


@pytest.mark.parametrize('phase, behaviour, names', SLOW, ids=[f'{p}-{b}' for p, b, _ in SLOW])
def test_a_slow_peer_cannot_stretch_the_timeout(az, hostile, phase, behaviour, names):
    hostile.set(phase, behaviour)
    result, elapsed = run(az, hostile)
    assert result.code == 1, result
    assert elapsed <= TIMEOUT + GRACE + START, f'{elapsed:.1f} s\n{result!r}'
    line = error_line(result)
    assert f'within the --timeout of {TIMEOUT} s' in line and names in line, result
    assert_nothing_raw(result)


def test_a_trickling_probe_delete_is_bounded_by_the_grace(az, hostile):
    """The probe's delete answers a byte every half second: the run ends within --timeout plus the grace, and says
    how to delete the probe that may be left."""
    hostile.set('exec-frames', 'stall').set('secret-delete', 'trickle')
    result, elapsed = run(az, hostile)
    assert result.code == 1, result
    assert elapsed <= TIMEOUT + GRACE + START, f'{elapsed:.1f} s'
    assert 'Could not delete probe secret default/kmsverify-probe-' in result.stderr, result
    assert 'delete it with: kubectl delete secret -n default kmsverify-probe-' in result.stderr, result


def _start(hostile, tmp_path, *args):
    env = dict(os.environ, AZURE_CONFIG_DIR=str(tmp_path / 'azure'), AZURE_EXTENSION_DIR=str(EXTENSION_DIR),
               AZURE_CORE_COLLECT_TELEMETRY='false', PYTHONSAFEPATH='1')
    return subprocess.Popen([str(AZ), 'aksarc', 'kms', 'verify', '--kubeconfig', hostile.kubeconfig(), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True)


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'SIGINT'])
def test_a_signal_during_a_trickling_probe_delete_is_honoured_within_the_grace(hostile, tmp_path, sig):
    hostile.set('exec-frames', 'inject').set('secret-delete', 'trickle')
    proc = _start(hostile, tmp_path, '--timeout', '60')
    try:
        assert wait_for(lambda: any(p == 'secret-delete' for p, *_ in hostile.requests), 60), hostile.requests
        proc.send_signal(sig)
        started = time.monotonic()
        _, err = proc.communicate(timeout=60)
        ended = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert ended <= GRACE + 3, f'{ended:.1f} s'
    assert proc.returncode != 0, err
    assert 'Interrupted: deleting the probe secret default/kmsverify-probe-' in err, err
    assert 'Traceback' not in err, err


def test_a_second_signal_during_the_probe_delete_ends_the_run_at_once(hostile, tmp_path):
    hostile.set('exec-frames', 'inject').set('secret-delete', 'stall')
    env = dict(os.environ, AZURE_CONFIG_DIR=str(tmp_path / 'azure'), AZURE_EXTENSION_DIR=str(EXTENSION_DIR),
               AZURE_CORE_COLLECT_TELEMETRY='false', PYTHONSAFEPATH='1')
    proc = subprocess.Popen([str(AZ), 'aksarc', 'kms', 'verify', '--kubeconfig', hostile.kubeconfig(), '--timeout',
                             '60'], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True)
    try:
        assert wait_for(lambda: any(p == 'secret-delete' for p, *_ in hostile.requests), 60), hostile.requests
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert proc.poll() is None  # the first signal waits for the delete (at most the grace)
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        _, err = proc.communicate(timeout=30)
        ended = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert ended < 3, f'{ended:.1f} s'
    assert proc.returncode == 128 + signal.SIGINT, err
    assert 'it may be left' in err and 'kubectl get secrets -A -l app.kubernetes.io/managed-by=kmsverify' in err
    assert 'kubectl delete secret -n default kmsverify-probe-' in err, err


def spn_kubeconfig(server):
    """The harness's kubeconfig whose user signs in with kubelogin's spn mode (azure-identity, no kubelogin), and the
    environment that points its authority host at the harness."""
    config = json.loads(Path(server.kubeconfig()).read_text())
    config['users'][0]['user'] = {'exec': {
        'apiVersion': 'client.authentication.k8s.io/v1beta1', 'command': 'kubelogin',
        'args': ['get-token', '--server-id', '6dae42f8-4368-4678-94ff-3960e28e3630', '--login', 'spn', '--client-id',
                 '11111111-1111-4111-8111-111111111111', '--tenant-id', '22222222-2222-4222-8222-222222222222']}}
    path = server.directory / 'spn-kubeconfig'
    path.write_text(json.dumps(config))
    return str(path), {'AZURE_AUTHORITY_HOST': server.url(), 'AAD_SERVICE_PRINCIPAL_CLIENT_SECRET': 'not-a-secret',
                       'REQUESTS_CA_BUNDLE': str(server.tls_files[0])}


@pytest.mark.parametrize('behaviour', ['stall', 'trickle'])
def test_a_slow_entra_token_endpoint_cannot_stretch_the_timeout(az, hostile, behaviour):
    """kubelogin spn (azure-identity and msal, whose sockets the watchdog cannot reach): the token request at
    sign-in runs under the deadline, and its error line is printed (the abandoned request stays quiet alone)."""
    hostile.set('entra-token', behaviour)
    kubeconfig, env = spn_kubeconfig(hostile)
    started = time.monotonic()
    result = verify(az, kubeconfig, '--timeout', str(TIMEOUT), env=env, timeout=120)
    elapsed = time.monotonic() - started
    assert any(p == 'entra-token' for p, *_ in hostile.requests), hostile.requests
    assert result.code == 1, result
    assert elapsed <= TIMEOUT + GRACE + START, f'{elapsed:.1f} s\n{result!r}'
    assert 'requesting an Entra ID token for the cluster' in error_line(result), result
    assert_nothing_raw(result)
    assert_no_leak(result, ['not-a-secret'])


def test_entras_trace_id_is_kept_whole_and_its_message_escaped(az, hostile):
    hostile.set('entra-token', 'inject')
    kubeconfig, env = spn_kubeconfig(hostile)
    result = verify(az, kubeconfig, '--timeout', str(TIMEOUT), env=env, timeout=120)
    assert result.code == 1, result
    line = error_line(result)
    assert 'Could not get an Entra ID token for the cluster' in line and 'AADSTS7000215' in line, line
    assert 'Trace ID: 25c9a1b2-0000-4000-8000-00000000abcd' in line, line  # whole: support needs it
    assert_nothing_raw(result)


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'SIGINT'])
def test_a_signal_outside_the_probe_ends_every_wait_within_the_grace(hostile, tmp_path, sig):
    """No probe (--secret): the run frame's one hook cancels the run's deadline, so a stalled exec ends at once."""
    hostile.set('exec-frames', 'stall')
    proc = _start(hostile, tmp_path, '--secret', 'default/s1', '--timeout', '60')
    try:
        assert wait_for(lambda: any(p == 'exec' for p, *_ in hostile.requests), 60), hostile.requests
        time.sleep(1.0)
        proc.send_signal(sig)
        started = time.monotonic()
        _, err = proc.communicate(timeout=60)
        ended = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert ended <= GRACE, f'{ended:.1f} s'
    assert proc.returncode > 0, (proc.returncode, err)
    assert 'Interrupted: ending the run (at most 10 s)' in err, err
    assert 'Traceback' not in err, err


# --- a credential never leaves its host -----------------------------------------------------------------------------


REDIRECTS = [('pods', 'http', 'listing pods in kube-system'), ('pods', 'https', 'listing pods in kube-system'),
             ('secret-create', 'http', 'creating a probe secret'),
             ('exec', 'ws', 'opening the exec stream to pod etcd-hostile'),
             ('exec', 'wss', 'opening the exec stream to pod etcd-hostile')]


@pytest.mark.parametrize('phase, scheme, names', REDIRECTS, ids=[f'{p}-{s}' for p, s, _ in REDIRECTS])
def test_a_redirect_is_refused_and_no_credential_reaches_the_target(az, hostile, phase, scheme, names):
    hostile.set(phase, 'redirect', scheme=scheme)
    result, elapsed = run(az, hostile)
    assert result.code == 1, result
    line = error_line(result)
    assert 'answered 302 (a redirect to ' in line and names in line and 'not followed' in line, result
    assert 'not found' not in line
    assert_no_credential_at_the_target(hostile)
    assert hostile.recorder.requests == []
    assert_nothing_raw(result)


def test_a_redirected_readyz_is_an_unreachable_health_check_and_sends_nothing_away(az, hostile):
    hostile.set('readyz', 'redirect', scheme='https').set('exec-frames', 'stall')
    result, _ = run(az, hostile)
    assert result.code == 1, result
    assert_no_credential_at_the_target(hostile)
    assert hostile.recorder.requests == []


# --- memory bounded whatever the peer sends --------------------------------------------------------------------------


@pytest.mark.parametrize('phase, behaviour, names', [
    ('exec-frames', 'endless', 'more than 256 MiB of output'),
    ('exec-frames', 'oversized', 'a frame of more than 256 MiB'),
    ('pods', 'oversized', 'answered with more than 64 MiB while listing pods in kube-system'),
    ('pods', 'nested', 'with something that is not a pod list'),
    ('pods', 'endless', 'answered with more than 64 MiB while listing pods in kube-system'),
], ids=['exec-continuation-without-end', 'exec-frame-of-1-TiB', 'pods-oversized', 'pods-nested', 'pods-endless'])
def test_an_endless_or_oversized_answer_is_cut_with_one_line(az, hostile, phase, behaviour, names):
    hostile.set(phase, behaviour)
    result, elapsed = run(az, hostile, '--timeout', '60')
    assert result.code == 1, result
    assert elapsed <= 60, f'{elapsed:.1f} s'
    assert names in error_line(result), result
    assert_nothing_raw(result)


def _peak_rss_mib(proc) -> float:
    """The az process's peak resident memory (VmHWM), polled until it exits."""
    peak = 0
    while proc.poll() is None:
        try:
            with open(f'/proc/{proc.pid}/status') as status:
                for line in status:
                    if line.startswith('VmHWM:'):
                        peak = max(peak, int(line.split()[1]))
        except OSError:
            break
        time.sleep(0.02)
    return peak / 1024


def test_an_endless_exec_message_keeps_the_process_memory_bounded(hostile, tmp_path):
    """Continuation frames without a final one: the message is capped as it grows (256 MiB of exec output), so the
    az process's peak memory stays under the cap plus az's own (an unbounded buffer passes 1 GiB within the
    --timeout of 60 s: the harness sends far faster)."""
    hostile.set('exec-frames', 'endless')
    proc = _start(hostile, tmp_path, '--secret', 'default/s1', '--timeout', '60')
    try:
        peak = _peak_rss_mib(proc)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert 'more than 256 MiB of output' in err, err
    cap = 256 + 224  # defaults.EXEC_OUTPUT_MAX_BYTES in MiB, plus az and a copy of its last frame
    assert 0 < peak <= cap, f'peak {peak:.0f} MiB, cap {cap:.0f} MiB'


# --- nothing raw reaches a terminal ----------------------------------------------------------------------------------


@pytest.mark.parametrize('output', ['json', 'tsv', 'table', 'yaml'])
@pytest.mark.parametrize('phase', ['pods', 'exec-frames', 'secret-create'])
def test_hostile_characters_from_the_api_server_never_reach_the_terminal(az, hostile, phase, output):
    """A pod name, an exec failure message and a Status message full of controls, separators, bidi and tag
    characters: escaped in the error line, in --debug and in every output format."""
    hostile.set(phase, 'inject')
    for extra in ([], ['--debug']):
        result, _ = run(az, hostile, *extra, output=output)
        assert result.code == 1, result
        if not extra:
            error_line(result)
        assert_nothing_raw(result)
        assert '\\x1b' in result.stderr, result  # escaped visibly, not dropped
