"""The documented procedure with kubectl 1.20, whose ``kubectl exec`` speaks SPDY/3.1 instead of WebSocket.

CI machines without kubectl get Debian bookworm's ``kubernetes-client`` (kubectl 1.20) from ``make system-deps``;
kubectl before 1.29 runs exec over SPDY/3.1 (remotecommand v4 streams), so the sandbox serves that too
(tests/sandbox/apiserver/execspdy.py). This file runs that very client, extracted into ``.tools/`` by
``scripts/debian-kubectl.sh`` whatever kubectl the machine has, against the sandbox: the same steps as
test_fidelity.py, byte-exact values, exit codes, the distroless image, stdin, large output, faults and RBAC.
"""

import re
import subprocess

import pytest

from azext_kmsverify.etcd.protobuf import parse_protobuf
from azext_kmsverify.verdict import readyz

from tests.support.etcdctl_text import parse_fields

from tests.conftest import PROJECT, core_api, fresh_sandbox, make_secret
from tests.e2e.test_fidelity import CANARY, DOC_ETCDCTL, DOC_PREFIX, Kubectl, _exec

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


# --- what kubectl 1.20 never does: older stream protocols, PING, a failed negotiation (a raw SPDY client) ------------


class _RawSpdy:
    """A minimal SPDY/3.1 exec client over the admin's TLS connection, from the sandbox's own framing helpers."""

    def __init__(self, box, query, protocols):
        import socket
        import ssl
        import zlib
        from urllib.parse import urlparse

        from tests.sandbox.apiserver import execspdy
        self.spdy = execspdy
        url = urlparse(box.info['apiserver']['url'])
        ctx = ssl.create_default_context(cafile=box.info['pki']['ca_cert'])
        ctx.load_cert_chain(box.info['pki']['admin_cert'], box.info['pki']['admin_key'])
        self.sock = ctx.wrap_socket(socket.create_connection((url.hostname, url.port), timeout=15),
                                    server_hostname=url.hostname)
        head = ''.join('X-Stream-Protocol-Version: {}\r\n'.format(p) for p in protocols)
        self.sock.sendall('POST /api/v1/namespaces/kube-system/pods/{}/exec?{} HTTP/1.1\r\nHost: {}\r\n'
                          'Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n{}Content-Length: 0\r\n\r\n'
                          .format(box.info['etcd_pods'][0], query, url.netloc, head).encode())
        self.buf = b''
        while b'\r\n\r\n' not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, self.buf
            self.buf += chunk
        self.response, self.buf = self.buf.split(b'\r\n\r\n', 1)
        self.deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, execspdy.DICTIONARY)
        self.inflate = zlib.decompressobj(zdict=execspdy.DICTIONARY)

    def syn_stream(self, sid, streamtype):
        import struct
        import zlib
        block = self.deflate.compress(self.spdy.encode_headers({'streamtype': streamtype})) + \
            self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(self.spdy.control_frame(self.spdy.SYN_STREAM, 0, struct.pack('>IIBB', sid, 0, 0, 0) + block))

    def frames(self):
        """Every frame until the server's GOAWAY, as (kind, stream id or ping id, flags, payload)."""
        out = []
        while True:
            while len(self.buf) < 8 or len(self.buf) < 8 + int.from_bytes(self.buf[5:8], 'big'):
                chunk = self.sock.recv(65536)
                assert chunk, out
                self.buf += chunk
            n = 8 + int.from_bytes(self.buf[5:8], 'big')
            head, payload, self.buf = self.buf[:8], self.buf[8:n], self.buf[n:]
            ident = int.from_bytes((payload if head[0] & 0x80 else head)[:4], 'big') & 0x7FFFFFFF
            kind = int.from_bytes(head[2:4], 'big') if head[0] & 0x80 else 'data'
            if kind == self.spdy.SYN_REPLY:
                assert self.spdy.decode_headers(self.inflate.decompress(payload[4:])) == {}
            out.append((kind, ident, head[4], payload if kind == 'data' else b''))
            if kind == self.spdy.GOAWAY:
                return out


def test_raw_spdy_v2_protocol_ping_and_plain_error_message(box):
    import struct
    spdy = _RawSpdy(box, 'command=etcdctl&command=--no-such-flag&container=etcd&stdout=true&stderr=true',
                    ['v2.channel.k8s.io', 'channel.k8s.io'])
    try:
        assert spdy.response.startswith(b'HTTP/1.1 101 Switching Protocols\r\n')
        assert b'\r\nX-Stream-Protocol-Version: v2.channel.k8s.io' in spdy.response
        spdy.sock.sendall(spdy.spdy.control_frame(spdy.spdy.PING, 0, struct.pack('>I', 1)))
        for sid, kind in ((1, 'error'), (3, 'stdout'), (5, 'stderr')):
            spdy.syn_stream(sid, kind)
        frames = spdy.frames()
    finally:
        spdy.sock.close()
    assert (spdy.spdy.PING, 1, 0, b'') in frames
    assert [f[1] for f in frames if f[0] == spdy.spdy.SYN_REPLY] == [1, 3, 5]
    data = {sid: b''.join(f[3] for f in frames if f[0] == 'data' and f[1] == sid) for sid in (1, 3, 5)}
    fins = [f[1] for f in frames if f[0] == 'data' and f[2] & spdy.spdy.FLAG_FIN]
    assert sorted(fins) == [1, 3, 5] and fins[-1] == 1  # stdout and stderr end first, then the error stream
    assert b'unknown flag: --no-such-flag' in data[5] and data[3].startswith(b'NAME:')  # etcdctl's usage
    # v2: the failure as text, not a JSON Status.
    assert data[1].decode().startswith('command terminated with non-zero exit code: error executing command '
                                       '[etcdctl --no-such-flag], exit code ')


def test_raw_spdy_without_a_common_stream_protocol_is_refused(box):
    spdy = _RawSpdy(box, 'command=etcdctl&command=version&container=etcd&stdout=true', ['v9.channel.k8s.io'])
    try:
        assert spdy.response.startswith(b'HTTP/1.1 403 Forbidden\r\n')
        while b'\n' not in spdy.buf:  # the real API server relays the kubelet's body after its headers
            chunk = spdy.sock.recv(65536)
            if not chunk:
                break
            spdy.buf += chunk
        assert b'unable to upgrade: unable to negotiate protocol: client supports [v9.channel.k8s.io]' in spdy.buf
    finally:
        spdy.sock.close()
