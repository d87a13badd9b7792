"""The documented procedure with kubectl 1.20, whose ``kubectl exec`` speaks SPDY/3.1 instead of WebSocket.

CI machines without kubectl get Debian bookworm's ``kubernetes-client`` (kubectl 1.20) from ``make system-deps``;
kubectl before 1.29 runs exec over SPDY/3.1 (remotecommand v4 streams), so the sandbox serves that too
(tests/sandbox/execspdy.py). This file runs that very client, extracted into ``.tools/`` by
``scripts/debian-kubectl.sh`` whatever kubectl the machine has, against the sandbox: the same steps as
test_fidelity.py, byte-exact values, exit codes, the distroless image, stdin, large output, faults and RBAC.
"""

import re
import subprocess

import pytest

from azext_kmsverify import readyz
from azext_kmsverify.etcd import parse_fields, parse_protobuf

from .conftest import PROJECT, core_api, fresh_sandbox, make_secret
from .test_fidelity import CANARY, DOC_ETCDCTL, DOC_PREFIX, Kubectl, _exec

SCRIPT = PROJECT / 'scripts' / 'debian-kubectl.sh'
KEY = '/registry/secrets/default/spdy-canary'


@pytest.fixture(scope='session')
def kubectl120(tmp_path_factory):
    """Debian's kubectl 1.20, never skipped: without it the SPDY side of the emulator is untested."""
    proc = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not proc.stdout.strip():
        pytest.fail('Debian kubectl 1.20 (kubernetes-client) could not be obtained by {}: it is needed to test '
                    'kubectl exec over SPDY/3.1 against the sandbox. Run `make system-deps` on a Debian machine '
                    'with network access to the Debian archive.\n{}'.format(SCRIPT, proc.stderr), pytrace=False)
    kubectl = Kubectl(proc.stdout.strip(), tmp_path_factory.mktemp('kubectl120-cache'))
    version = subprocess.run([kubectl.path, 'version', '--client'], capture_output=True, text=True, timeout=30)
    assert 'GitVersion:"v1.20.' in version.stdout, version.stdout
    return kubectl


@pytest.fixture(scope='module')
def box(sandbox_factory):
    box = sandbox_factory(provider='kms-v2')
    make_secret(box, 'default', 'spdy-canary', {'password': CANARY})
    return box


def _pod(box):
    return box.info['etcd_pods'][0]


def test_exec_is_spdy_and_negotiates_v4(kubectl120, box):
    r = kubectl120(box, '-v=9', 'exec', _pod(box), '-n', 'kube-system', '--', 'etcdctl', 'version')
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b'etcdctl version: 3.5.')
    log = r.stderr.decode()
    # Request and 101 answer as kubectl logs them: it offered v4..v1 and got SPDY/3.1 with v4.
    assert '-H "X-Stream-Protocol-Version: v4.channel.k8s.io" -H "X-Stream-Protocol-Version: v3.channel.k8s.io"' in log
    assert re.search(r'\] POST https://\S+/exec\?\S+ 101 Switching Protocols in \d+ milliseconds', log), log
    for header in ('Connection: Upgrade', 'Upgrade: SPDY/3.1', 'X-Stream-Protocol-Version: v4.channel.k8s.io'):
        assert header in log, log


def test_documented_procedure_with_kubectl_120(kubectl120, box):
    health = kubectl120(box, 'get', '--raw=/readyz?verbose')
    assert health.returncode == 0, health.stderr
    parsed = readyz.parse_readyz(health.stdout)
    assert readyz.overall_status(parsed) == 'ok'
    assert [(c['name'], c['status']) for c in readyz.kms_checks(parsed)] == [('kms-providers', 'ok')]

    table = kubectl120(box, 'get', 'pods', '-n', 'kube-system')
    assert table.returncode == 0, table.stderr
    lines = table.stdout.decode().splitlines()
    assert lines[0].split() == ['NAME', 'READY', 'STATUS', 'RESTARTS', 'AGE']
    assert any(line.split()[:3] == [_pod(box), '1/1', 'Running'] for line in lines[1:]), lines
    names = kubectl120(box, 'get', 'pods', '-n', 'kube-system', '-l', 'component=etcd', '-o', 'name')
    assert names.stdout.decode().split() == ['pod/' + p for p in box.info['etcd_pods']]

    read = kubectl120(box, 'exec', _pod(box), '-n', 'kube-system', '--', *DOC_ETCDCTL, 'get', KEY, '-w', 'fields')
    assert read.returncode == 0 and read.stderr == b'', read.stderr
    fields = parse_fields(read.stdout)
    [kv] = fields.kvs
    assert kv.key == KEY.encode()
    assert kv.value == box.etcdctl_get(KEY)  # byte for byte what etcd holds
    assert kv.value.startswith(DOC_PREFIX['kms-v2'].encode()) and CANARY.encode() not in kv.value
    shown = next(line for line in read.stdout.decode('utf-8', 'replace').splitlines() if line.startswith('"Value" : "'))
    assert shown[len('"Value" : "'):].startswith(DOC_PREFIX['kms-v2'])
    binary = kubectl120(box, 'exec', _pod(box), '-n', 'kube-system', '--', *DOC_ETCDCTL, 'get', KEY, '-w', 'protobuf')
    assert binary.returncode == 0, binary.stderr
    assert [(k.key, k.value) for k in parse_protobuf(binary.stdout).kvs] == [(kv.key, kv.value)]


def test_non_zero_exit_code_and_stderr_come_through(kubectl120, box):
    argv = ['etcdctl', '--cacert', '/etc/kubernetes/pki/etcd/no-such-ca.crt', '--key',
            '/etc/kubernetes/pki/etcd/server.key', '--cert', '/etc/kubernetes/pki/etcd/server.crt', 'get', KEY]
    # What the kubelet reports for it over WebSocket (the Python client): the exit code in the v4 Status.
    out, err, status = _exec(core_api(box), _pod(box), argv)
    assert status['reason'] == 'NonZeroExitCode'
    code = int(status['details']['causes'][0]['message'])
    assert code != 0 and out == b'' and b'no-such-ca.crt' in err

    r = kubectl120(box, 'exec', _pod(box), '-n', 'kube-system', '--', *argv)
    assert r.returncode == code, (r.returncode, r.stderr)
    assert r.stdout == b''
    assert r.stderr.decode() == err.decode() + 'command terminated with exit code {}\n'.format(code)


@pytest.mark.parametrize('shell', ['sh', '/bin/sh'])
def test_distroless_shell_fails_as_containerd_says(kubectl120, box, shell):
    r = kubectl120(box, 'exec', _pod(box), '-n', 'kube-system', '--', shell, '-c', 'etcdctl version')
    assert r.returncode == 1 and r.stdout == b''
    text = r.stderr.decode()
    assert text.startswith('error: Internal error occurred: error executing command in container: '), text
    why = ('exec: "{0}": stat {0}: no such file or directory: unknown' if '/' in shell
           else 'exec: "{0}": executable file not found in $PATH: unknown').format(shell)
    assert why in text


def test_stdin_reaches_the_process(kubectl120, box):
    r = kubectl120(box, 'exec', '-i', _pod(box), '-n', 'kube-system', '--', *DOC_ETCDCTL, 'put', '/spdy/stdin',
                   input=b'from stdin over SPDY')
    assert r.returncode == 0, r.stderr
    assert r.stdout == b'OK\n'
    assert box.etcdctl_get('/spdy/stdin') == b'from stdin over SPDY'


def test_restricted_user_gets_the_403_before_any_upgrade(kubectl120, box):
    r = kubectl120(box, 'exec', _pod(box), '-n', 'kube-system', '--', 'etcdctl', 'version',
                   kubeconfig=box.kubeconfig_restricted)
    assert r.returncode == 1 and r.stdout == b''
    assert r.stderr.decode() == ('Error from server (Forbidden): pods "{}" is forbidden: User "restricted-user" cannot '
                                 'create resource "pods/exec" in API group "" in the namespace "kube-system"\n'
                                 .format(_pod(box)))


def test_large_output_streams_byte_exact_and_faults(kubectl120, tmp_path):
    box = fresh_sandbox(tmp_path)
    try:
        box.ctl({'seed': {'namespace': 'bulk', 'count': 600, 'size': 8192}})
        pod = _pod(box)
        listing = [*DOC_ETCDCTL, 'get', '/registry/secrets/bulk/', '--prefix', '-w', 'protobuf']
        r = kubectl120(box, 'exec', pod, '-n', 'kube-system', '--', *listing)
        assert r.returncode == 0, r.stderr
        assert len(r.stdout) > 4 * 1024 * 1024
        kvs = parse_protobuf(r.stdout).kvs
        assert len(kvs) == 600
        for kv in kvs[::97]:
            assert kv.value == box.etcdctl_get(kv.key.decode())

        # A dead node: the apiserver's 500 before any upgrade.
        box.ctl({'exec_fault': {'pod': pod, 'mode': 'broken'}})
        dead = kubectl120(box, 'exec', pod, '-n', 'kube-system', '--', 'etcdctl', 'version')
        assert dead.returncode == 1
        assert dead.stderr.decode().startswith('Error from server: error dialing backend: dial tcp ')
        # A stream cut mid-way: kubectl 1.20 ends with what it got (spdystream reads the cut as the end).
        box.ctl({'exec_fault': {'pod': pod, 'mode': 'drop'}})
        cut = kubectl120(box, 'exec', pod, '-n', 'kube-system', '--', *listing, timeout=30)
        assert 0 < len(cut.stdout) < len(r.stdout)
        # A stuck one: kubectl waits.
        box.ctl({'exec_fault': {'pod': pod, 'mode': 'hang'}})
        with pytest.raises(subprocess.TimeoutExpired):
            kubectl120(box, 'exec', pod, '-n', 'kube-system', '--', 'etcdctl', 'version', timeout=3)
        box.ctl({'exec_fault': {'pod': pod, 'mode': None}})
        healed = kubectl120(box, 'exec', pod, '-n', 'kube-system', '--', 'etcdctl', 'version')
        assert healed.returncode == 0, healed.stderr
    finally:
        box.down()
