"""Fidelity: the sandbox behaves like an AKS Arc control plane, and the command agrees with a real client.

Every test here runs something a person would run by hand (the documented procedure with the machine's
``kubectl``, or the Python kubernetes client) next to the installed ``az aksarc kms verify``, and asserts that
both see the same cluster: the same health, the same etcd pod, the same stored bytes, the same classification.
kubectl's output is parsed with the product's parsers (``etcd``, ``verdict.readyz``) and the tests' text parsers and,
separately, checked the way the docs tell a person to check it (the ``Value`` prefix as etcdctl prints it).

The documented procedure (AKS Arc documentation), with its known typo fixed (``-- etcdctl``) and without
``--stdin --tty``:

    kubectl get --raw='/readyz?verbose'
    kubectl get pods -n kube-system -l component=etcd -o name
    kubectl exec <etcd pod> -n kube-system -- etcdctl --cacert /etc/kubernetes/pki/etcd/ca.crt \
        --key /etc/kubernetes/pki/etcd/server.key --cert /etc/kubernetes/pki/etcd/server.crt \
        get /registry/secrets/<ns>/<name> -w fields
"""

import base64
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from azext_kmsverify.etcd.protobuf import parse_protobuf
from azext_kmsverify.verdict import readyz
from azext_kmsverify.verdict.classify import classify

from tests.support.etcdctl_text import parse_fields
from tests.support.kubectl_text import unwrap_kubectl_error

from tests.conftest import verify, assert_no_leak, core_api, fresh_sandbox, make_secret

CANARY = 'fidelity-canary-3b8e51d2'
CANARY_B64 = base64.b64encode(CANARY.encode()).decode()
PROVIDERS = ('kms-v1', 'kms-v2', 'aescbc', 'aesgcm', 'secretbox', 'identity')
DOC_ETCDCTL = ['etcdctl', '--cacert', '/etc/kubernetes/pki/etcd/ca.crt', '--key', '/etc/kubernetes/pki/etcd/server.key',
               '--cert', '/etc/kubernetes/pki/etcd/server.crt']
# What the docs tell a person to look for at the start of etcdctl's printed "Value" (a Go %q string, so the
# protobuf magic of a plaintext value shows as the four characters \x00).
DOC_PREFIX = {
    'kms-v1': 'k8s:enc:kms:v1:kms-plugin:',
    'kms-v2': 'k8s:enc:kms:v2:kms-plugin:',
    'aescbc': 'k8s:enc:aescbc:v1:key1:',
    'aesgcm': 'k8s:enc:aesgcm:v1:key1:',
    'secretbox': 'k8s:enc:secretbox:v1:key1:',
    'identity': 'k8s\\x00',
}
# (storage, kmsVersion, provider, encrypted, passes) the command must report for a secret of each sandbox.
EXPECTED = {
    'kms-v1': ('kms', 'v1', 'kms-plugin', True, True),
    'kms-v2': ('kms', 'v2', 'kms-plugin', True, True),
    'aescbc': ('aescbc', None, 'key1', True, False),
    'aesgcm': ('aesgcm', None, 'key1', True, False),
    'secretbox': ('secretbox', None, 'key1', True, False),
    'identity': ('identity', None, None, False, False),
}
ETCD_POD_NAME = re.compile(r'etcd-moc-[a-z][a-z0-9]{10}')
KUBECTL_SERVER_ERROR = re.compile(r'Error from server \(InternalError\): an error on the server \(".*"\) has prevented '
                                  r'the request from succeeding', re.S)


# --- helpers ----------------------------------------------------------------------------------------------------------


class Kubectl:
    """The machine's kubectl, with a private discovery cache, against one of a sandbox's kubeconfigs."""

    def __init__(self, path, cache_dir):
        self.path = path
        self.cache_dir = cache_dir

    def __call__(self, box, *args, kubeconfig=None, input=None, timeout=60):
        env = dict(os.environ, KUBECONFIG=kubeconfig or box.kubeconfig)
        return subprocess.run([self.path, '--cache-dir', str(self.cache_dir), *args], input=input, capture_output=True,
                              env=env, timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)


@pytest.fixture(scope='session')
def kubectl(tmp_path_factory):
    path = shutil.which('kubectl')
    if not path:
        pytest.fail('kubectl is not on PATH: the fidelity cross-check runs the documented manual procedure with a real '
                    'kubectl. Install it with `make system-deps` (Debian package kubernetes-client).')
    return Kubectl(path, tmp_path_factory.mktemp('kubectl-cache'))


def _box(sandbox_factory, provider, etcdctl='3.5', **options):
    """A session sandbox; default options are left out so every test file shares the same sandboxes."""
    if etcdctl != '3.5':
        options['etcdctl'] = etcdctl
    return sandbox_factory(provider=provider, **options)


def _verify(az, box, *args, kubeconfig=None):
    return verify(az, kubeconfig or box, *args)


def _check(body, name, target=None):
    return next(c for c in body['checks'] if c['name'] == name and c['target'] == target)


def _entry(body, namespace, name):
    return next(s for s in body['secrets'] if (s['namespace'], s['name']) == (namespace, name))


def _kubectl_server_error(proc):
    """The body kubectl shows inside ``Error from server (InternalError): an error on the server ("...")``."""
    text = proc.stderr.decode()
    assert proc.returncode == 1 and KUBECTL_SERVER_ERROR.search(text), (proc.returncode, text)
    return readyz.parse_check_error(unwrap_kubectl_error(text))


def _wait_readyz(box, ok=True, timeout=90):
    """/readyz?verbose once it passes (or fails): kube-apiserver caches a KMS plugin's health (a healthy answer for
    20 s, the KMS v2 Status until its next poll), so a change shows some seconds later."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = box.api('GET', '/readyz?verbose')
        if (status == 200) == ok or time.monotonic() > deadline:
            return status, body
        time.sleep(0.1)


def _exec(core, pod, argv):
    """Exec without a TTY through the Python kubernetes client, as a user script would: (stdout, stderr, Status)."""
    from kubernetes.stream import stream
    client = stream(core.connect_get_namespaced_pod_exec, pod, 'kube-system', command=argv, container='etcd',
                    stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False, binary=True)
    out, err = [], []
    try:
        while client.is_open():
            client.update(timeout=1)
            out.append(client.read_stdout(timeout=0) or b'')
            err.append(client.read_stderr(timeout=0) or b'')
        status = client.read_channel(3, timeout=0)
    finally:
        client.close()
    return b''.join(out), b''.join(err), json.loads(status)


def _kms_v2_key_id(value):
    """The keyID of a stored KMS v2 value, decoded with the sandbox's own codec (not the product's reader)."""
    from tests.sandbox.codec import decode_encrypted_object
    prefix = DOC_PREFIX['kms-v2'].encode()
    assert value.startswith(prefix)
    return decode_encrypted_object(value[len(prefix):])['keyID']


def _current_key(box):
    from tests.sandbox.processes.kms_plugin import current_key_id
    return current_key_id(Path(box.info['kms_state']))


# --- 1. the documented procedure with kubectl, for every provider -----------------------------------------------------


@pytest.mark.parametrize('provider', PROVIDERS)
def test_documented_kubectl_procedure_agrees_with_the_command(az, kubectl, sandbox_factory, provider):
    # Without KMS, the encryption config's automatic reload off: with it on, kube-apiserver registers the
    # kms-providers check whatever the providers are (tests/fixtures/kube-apiserver-v1.29.6/readyz/no-kms-reload-ok.txt)
    box = _box(sandbox_factory, provider, **({} if provider.startswith('kms-') else {'readyz_style': 'per-provider'}))
    make_secret(box, 'default', 'fidelity-kubectl', {'password': CANARY})
    key = '/registry/secrets/default/fidelity-kubectl'

    # Step 2: KMS health. A KMS cluster shows the aggregate [+]kms-providers ok; a local-key/identity one has none.
    health = kubectl(box, 'get', '--raw=/readyz?verbose')
    assert health.returncode == 0, health.stderr
    parsed = readyz.parse_readyz(health.stdout)
    assert readyz.overall_status(parsed) == 'ok'
    kms_lines = [(c['name'], c['status']) for c in readyz.kms_checks(parsed)]
    if provider.startswith('kms-'):
        assert b'[+]kms-providers ok\n' in health.stdout
        assert kms_lines == [('kms-providers', 'ok')]
    else:
        assert kms_lines == [] and b'kms-provider' not in health.stdout

    # Step 3: the etcd pod and the stored value, read by kubectl exec of etcdctl in the pod.
    pods = kubectl(box, 'get', 'pods', '-n', 'kube-system', '-l', 'component=etcd', '-o', 'name')
    assert pods.returncode == 0, pods.stderr
    names = pods.stdout.decode().split()
    assert names == ['pod/' + p for p in box.info['etcd_pods']] and len(names) == 1
    pod = names[0][len('pod/'):]
    assert ETCD_POD_NAME.fullmatch(pod), pod
    read = kubectl(box, 'exec', pod, '-n', 'kube-system', '--', *DOC_ETCDCTL, 'get', key, '-w', 'fields')
    assert read.returncode == 0, read.stderr
    fields = parse_fields(read.stdout)
    assert fields.count == 1 and not fields.more
    [kv] = fields.kvs
    assert kv.key == key.encode()
    # ... checked as a person does: the printed Value starts with the documented prefix.
    value_line = next(line for line in read.stdout.decode('utf-8', 'replace').splitlines()
                      if line.startswith('"Value" : "'))
    shown = value_line[len('"Value" : "'):]
    assert shown.startswith(DOC_PREFIX[provider]), shown[:40]
    for other, prefix in DOC_PREFIX.items():
        if other != provider and prefix != DOC_PREFIX[provider]:
            assert not shown.startswith(prefix)
    # Byte for byte what etcd holds (host-side etcdctl 3.5 over the etcd client port), also through -w protobuf.
    assert kv.value == box.etcdctl_get(key)
    binary = kubectl(box, 'exec', pod, '-n', 'kube-system', '--', *DOC_ETCDCTL, 'get', key, '-w', 'protobuf')
    assert binary.returncode == 0, binary.stderr
    assert [(k.key, k.value) for k in parse_protobuf(binary.stdout).kvs] == [(kv.key, kv.value)]
    if provider == 'identity':
        assert CANARY.encode() in kv.value  # plaintext really is plaintext
    else:
        assert CANARY.encode() not in kv.value and CANARY_B64.encode() not in kv.value

    # The command, for the same secret.
    result = _verify(az, box, '--secret', 'default/fidelity-kubectl', '-o', 'json')
    storage, kms_version, provider_name, encrypted, passes = EXPECTED[provider]
    assert result.code == (0 if passes else 4), result
    body = result.json()
    assert body['passed'] is passes
    assert body['etcdPod'] == pod
    [entry] = body['secrets']
    key_id = _kms_v2_key_id(kv.value) if provider == 'kms-v2' else None
    if provider == 'kms-v2':
        assert key_id == _current_key(box)
    assert entry == {'namespace': 'default', 'name': 'fidelity-kubectl', 'etcdKey': key, 'storage': storage,
                     'kmsVersion': kms_version, 'provider': provider_name, 'keyId': key_id, 'encrypted': encrypted}
    # The product's classifier on kubectl's bytes says what the command said from its own read.
    assert {k: v for k, v in classify(kv.value).items() if k != 'malformed'} == \
        {k: entry[k] for k in ('storage', 'kmsVersion', 'provider', 'keyId', 'encrypted')}
    health_check = _check(body, 'KmsProviderHealth')
    if provider.startswith('kms-'):
        assert health_check == {'name': 'KmsProviderHealth', 'target': None, 'status': 'Passed',
                                'detail': 'kms-providers ok'}
    else:
        assert health_check['status'] == 'Failed' and 'no KMS provider configured' in health_check['detail']
    assert _check(body, 'SecretEncryptedWithKms', 'default/fidelity-kubectl')['status'] == \
        ('Passed' if passes else 'Failed')
    assert_no_leak(result, [CANARY, CANARY_B64])


# --- 2. both in-pod etcdctl versions ----------------------------------------------------------------------------------


@pytest.mark.parametrize('etcdctl', ['3.4', '3.5'])
@pytest.mark.parametrize('provider', ['kms-v1', 'kms-v2'])
def test_in_pod_etcdctl_34_and_35_give_the_same_classification(az, kubectl, sandbox_factory, provider, etcdctl):
    box = _box(sandbox_factory, provider, etcdctl)
    pod = box.info['etcd_pods'][0]
    version = kubectl(box, 'exec', pod, '-n', 'kube-system', '--', 'etcdctl', 'version')
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith('etcdctl version: {}.'.format(etcdctl).encode()), version.stdout

    result = _verify(az, box, '--probe', '--secret', 'default/db-user-pass', '-o', 'json')
    assert result.code == 0, result
    body = result.json()
    assert body['passed'] is True and body['etcdPod'] == pod
    version_tag = provider.split('-')[1]
    probe, named = body['secrets']
    assert probe['name'].startswith('kmsverify-probe-') and named['name'] == 'db-user-pass'
    host = classify(box.etcdctl_get('/registry/secrets/default/db-user-pass'))  # host etcdctl 3.5
    for entry in (probe, named):
        assert (entry['storage'], entry['kmsVersion'], entry['provider'], entry['encrypted']) == \
            ('kms', version_tag, 'kms-plugin', True)
        assert entry['keyId'] == (_current_key(box) if provider == 'kms-v2' else None)
    assert {k: named[k] for k in ('storage', 'kmsVersion', 'provider', 'keyId', 'encrypted')} == \
        {k: v for k, v in host.items() if k != 'malformed'}
    assert all(c['status'] in ('Passed', 'Warning') for c in body['checks'])
    assert_no_leak(result)


# --- 3. kubeadm-like etcd pods, three control-plane nodes, one broken -------------------------------------------------


def test_etcd_pods_look_like_kubeadm_mirror_pods(kubectl, sandbox_factory):
    box = _box(sandbox_factory, 'kms-v2', nodes=3, broken_node=True)
    core = core_api(box)
    nodes = box.info['nodes']
    assert len(nodes) == 3 and all(re.fullmatch(r'moc-[a-z][a-z0-9]{10}', n) for n in nodes)
    listed = core.list_node().items
    assert sorted(n.metadata.name for n in listed) == sorted(nodes)
    assert all('node-role.kubernetes.io/control-plane' in n.metadata.labels for n in listed)

    pods = core.list_namespaced_pod('kube-system', label_selector='component=etcd').items
    assert sorted(p.metadata.name for p in pods) == sorted('etcd-' + n for n in nodes) == box.info['etcd_pods']
    for pod in pods:
        assert ETCD_POD_NAME.fullmatch(pod.metadata.name)
        assert pod.metadata.labels == {'component': 'etcd', 'tier': 'control-plane'}
        assert [c.name for c in pod.spec.containers] == ['etcd']
        assert pod.spec.node_name == pod.metadata.name[len('etcd-'):]
        assert pod.spec.host_network is True and pod.spec.priority_class_name == 'system-node-critical'
        assert [(o.kind, o.name) for o in pod.metadata.owner_references] == [('Node', pod.spec.node_name)]  # mirror
        assert pod.metadata.annotations['kubernetes.io/config.source'] == 'file'
        mounts = {m.mount_path for m in pod.spec.containers[0].volume_mounts}
        assert mounts == {'/etc/kubernetes/pki/etcd', '/var/lib/etcd'}
        assert pod.status.phase == 'Running'
    # Other control-plane pods are there and are not picked by the label.
    everything = [p.metadata.name for p in core.list_namespaced_pod('kube-system').items]
    assert sum(n.startswith('kube-apiserver-moc-') for n in everything) == 3
    assert sum(n.startswith('coredns-') for n in everything) == 2
    # kubectl sees the same.
    by_name = kubectl(box, 'get', 'pods', '-n', 'kube-system', '-l', 'component=etcd,tier=control-plane', '-o', 'name')
    assert by_name.stdout.decode().split() == ['pod/' + p for p in box.info['etcd_pods']]


def test_three_nodes_with_a_broken_one_fall_back_and_etcd_pod_selects(az, kubectl, sandbox_factory):
    box = _box(sandbox_factory, 'kms-v2', nodes=3, broken_node=True)
    [broken] = box.info['broken_pods']
    healthy = [p for p in box.info['etcd_pods'] if p != broken]
    assert box.info['etcd_pods'][0] == broken  # first by name: the command tries it first

    # kubectl sees a dead kubelet the way kube-apiserver reports it.
    dead = kubectl(box, 'exec', broken, '-n', 'kube-system', '--', 'etcdctl', 'version')
    assert dead.returncode == 1
    # (the sandbox's kubelets listen on free ports, not 10250)
    assert re.search(r'Error from server: error dialing backend: dial tcp [\d.]+:\d+: connect: connection refused',
                     dead.stderr.decode()), dead.stderr

    result = _verify(az, box, '--secret', 'default/db-user-pass', '-o', 'json')
    assert result.code == 0, result
    body = result.json()
    assert body['passed'] is True and body['etcdPod'] in healthy
    warnings = [line for line in result.stderr.splitlines() if line.startswith('WARNING')]
    # the product's WebSocket exec is translated to SPDY by the API server, which then reports the dead kubelet
    # on the error channel ("error sending request: Post <kubelet URL>: dial tcp ...: connection refused")
    assert any(broken in line and 'connection refused' in line for line in warnings), result.stderr
    assert result.stdout.count(broken) == 0  # stderr only: stdout is the result
    assert _entry(body, 'default', 'db-user-pass')['storage'] == 'kms'

    chosen = healthy[-1]
    selected = _verify(az, box, '--etcd-pod', chosen, '--secret', 'default/db-user-pass', '-o', 'json')
    assert selected.code == 0, selected
    assert selected.json()['etcdPod'] == chosen
    assert broken not in selected.stderr

    # Naming the broken pod leaves nothing to fall back to: exit 1, saying which pod and why.
    only_broken = _verify(az, box, '--etcd-pod', broken, '--secret', 'default/db-user-pass', '-o', 'json')
    assert only_broken.code == 1, only_broken
    assert broken in only_broken.stderr and 'connection refused' in only_broken.stderr
    assert only_broken.stdout == ''
    for r in (result, selected, only_broken):
        assert_no_leak(r)


# --- 4. distroless etcd image -----------------------------------------------------------------------------------------


@pytest.mark.parametrize('shell', ['sh', 'bash', '/bin/sh'])
def test_etcd_image_is_distroless_but_etcdctl_runs(kubectl, sandbox_factory, shell):
    box = _box(sandbox_factory, 'kms-v2')
    pod = box.info['etcd_pods'][0]
    core = core_api(box)
    if '/' in shell:
        why = 'exec: "{0}": stat {0}: no such file or directory: unknown'.format(shell)
    else:
        why = 'exec: "{}": executable file not found in $PATH: unknown'.format(shell)

    # The Python client: the kubelet's Status on the error channel, nothing on stdout/stderr. The API server's
    # WebSocket-to-SPDY translation turns the kubelet's Status into an error and wraps it once more
    # (streamtranslator.go: NewInternalError), hence the doubled prefix.
    out, err, status = _exec(core, pod, [shell, '-c', 'etcdctl version'])
    assert out == err == b''
    assert (status['status'], status['reason'], status['code']) == ('Failure', 'InternalError', 500)
    assert re.fullmatch(r'Internal error occurred: Internal error occurred: error executing command in container: '
                        r'failed to exec in container: '
                        r'failed to start exec "[0-9a-f]{64}": OCI runtime exec failed: exec failed: unable to start '
                        r'container process: ' + re.escape(why), status['message']), status['message']

    # kubectl: exit 1 and the same message.
    r = kubectl(box, 'exec', pod, '-n', 'kube-system', '--', shell, '-c', 'etcdctl version')
    assert r.returncode == 1 and r.stdout == b''
    assert r.stderr.decode().startswith('error: Internal error occurred: error executing command in container: ')
    assert why in r.stderr.decode()

    # ... while etcdctl itself runs, by name and by its path in the image.
    for exe in ('etcdctl', '/usr/local/bin/etcdctl'):
        out, err, status = _exec(core, pod, [exe, 'version'])
        assert status == {'metadata': {}, 'status': 'Success'}
        assert out.startswith(b'etcdctl version: 3.5.') and err == b''


# --- 5. KMS health variants -------------------------------------------------------------------------------------------


@pytest.mark.parametrize('provider, style, check', [('kms-v2', 'aggregate', 'kms-providers'),
                                                    ('kms-v1', 'per-provider', 'kms-provider-0')])
def test_kms_health_as_kubectl_shows_it_and_the_command_reports_the_real_reason(az, kubectl, tmp_path, provider,
                                                                                style, check):
    box = fresh_sandbox(tmp_path, provider=provider, readyz_style=style)
    try:
        healthy = kubectl(box, 'get', '--raw=/readyz?verbose')
        assert healthy.returncode == 0, healthy.stderr
        assert [(c['name'], c['status']) for c in readyz.kms_checks(readyz.parse_readyz(healthy.stdout))] == \
            [(check, 'ok')]
        auto_reload = b'[+]poststarthook/start-encryption-provider-config-automatic-reload ok'
        assert (auto_reload in healthy.stdout) is (style == 'aggregate')
        passed = _verify(az, box, '--secret', 'default/db-user-pass', '-o', 'json')
        assert passed.code == 0, passed
        assert _check(passed.json(), 'KmsProviderHealth')['detail'] == '{} ok'.format(check)

        box.kms('kill')  # a crash: the socket stays behind, connections are refused
        status, body = _wait_readyz(box, ok=False)
        assert status == 500 and '[-]{} failed: reason withheld\n'.format(check) in body
        assert body.endswith('readyz check failed\n')
        failed = kubectl(box, 'get', '--raw=/readyz?verbose')
        shown = _kubectl_server_error(failed)
        assert shown == body.strip()
        parsed = readyz.parse_readyz(shown)
        assert readyz.overall_status(parsed) == 'failed'
        assert [(c['name'], c['status'], c['line']) for c in readyz.kms_checks(parsed)] == \
            [(check, 'failed', '[-]{} failed: reason withheld'.format(check))]
        reason = _kubectl_server_error(kubectl(box, 'get', '--raw=/readyz/' + check))
        # kube-apiserver 1.29: the gRPC error of the plugin's Status (v2, inside the aggregate check, prefixed by
        # the provider's own check name) or Encrypt (v1) call
        assert reason.startswith('kms-provider-0: rpc error: ' if provider == 'kms-v2' else 'rpc error: '), reason
        assert 'connect: connection refused' in reason

        result = _verify(az, box, '--secret', 'default/db-user-pass', '-o', 'json')
        assert result.code == 4, result
        health = _check(result.json(), 'KmsProviderHealth')
        assert health['status'] == 'Failed'
        assert health['detail'] == '{}: {}'.format(check, reason)  # exactly what /readyz/<check> says
        assert 'reason withheld' not in health['detail']
        assert _entry(result.json(), 'default', 'db-user-pass')['storage'] == 'kms'  # etcd checks still ran

        box.kms('start')
        assert _wait_readyz(box)[0] == 200
        assert kubectl(box, 'get', '--raw=/readyz/' + check).stdout == b'ok'
        healed = _verify(az, box, '--secret', 'default/db-user-pass', '-o', 'json')
        assert healed.code == 0, healed

        if provider == 'kms-v2':  # the plugin answers Status, but not healthy
            box.kms('unhealthy')
            status, body = _wait_readyz(box, ok=False)
            assert status == 500 and '[-]kms-providers failed: reason withheld' in body
            reason = _kubectl_server_error(kubectl(box, 'get', '--raw=/readyz/kms-providers'))
            assert reason == ('kms-provider-0: kmsv2 Provider kms-plugin is not healthy, error: got unexpected healthz '
                              'status: unhealthy: key vault unreachable')
            sick = _verify(az, box, '--secret', 'default/db-user-pass', '-o', 'json')
            assert sick.code == 4, sick
            assert _check(sick.json(), 'KmsProviderHealth') == {
                'name': 'KmsProviderHealth', 'target': None, 'status': 'Failed', 'detail': 'kms-providers: ' + reason}
            box.kms('healthy')
            assert _wait_readyz(box)[0] == 200
            assert _verify(az, box, '--secret', 'default/db-user-pass', '-o', 'json').code == 0
        for r in (passed, result, healed):
            assert_no_leak(r)
    finally:
        box.down()


# --- 6. key rotation and history --------------------------------------------------------------------------------------


def _rewrite_with_kubectl(kubectl, box, namespace, name):
    """The documented remediation for one secret: read it and PUT it back unchanged (``kubectl replace``)."""
    got = kubectl(box, 'get', 'secret', '-n', namespace, name, '-o', 'json')
    assert got.returncode == 0, got.stderr
    replaced = kubectl(box, 'replace', '-f', '-', input=got.stdout)
    assert replaced.returncode == 0, replaced.stderr
    assert replaced.stdout.decode().strip() == 'secret/{} replaced'.format(name)
    return json.loads(got.stdout)['data']


def _secret_data(box, namespace, name):
    data = core_api(box).read_namespaced_secret(name, namespace).data
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def test_kms_v2_rotation_gives_each_secret_its_key_id_and_history_shows_plaintext(az, kubectl, sandbox_factory):
    box = _box(sandbox_factory, 'kms-v2', history=True)
    history = box.info['history']
    [plaintext] = history['plaintext']
    [old_key] = history['old_key']
    assert history['rotated_to'] == 'key-0002'  # the seed wrote old_key under key-0001, then rotated

    before_key = _current_key(box)
    make_secret(box, 'default', 'fidelity-before-rotation', {'password': CANARY})
    new_key = box.kms('rotate')
    assert new_key != before_key and _current_key(box) == new_key
    make_secret(box, 'default', 'fidelity-after-rotation', {'password': CANARY})
    assert _wait_readyz(box)[0] == 200  # a rotation is not a health problem

    names = ['default/fidelity-before-rotation', 'default/fidelity-after-rotation', old_key]
    result = _verify(az, box, '--probe', *[a for n in names for a in ('--secret', n)], '-o', 'json')
    assert result.code == 0, result
    body = result.json()
    probe = body['secrets'][0]
    assert probe['name'].startswith('kmsverify-probe-') and probe['keyId'] == new_key
    expected = {'default/fidelity-before-rotation': before_key, 'default/fidelity-after-rotation': new_key,
                old_key: 'key-0001'}
    for target, key_id in expected.items():
        namespace, name = target.split('/')
        entry = _entry(body, namespace, name)
        assert (entry['storage'], entry['kmsVersion'], entry['keyId']) == ('kms', 'v2', key_id), entry
        assert _kms_v2_key_id(box.etcdctl_get(entry['etcdKey'])) == key_id
        assert _check(body, 'SecretEncryptedWithKms', target)['detail'] == \
            'stored with KMS v2 provider kms-plugin, key id ' + key_id
    # Old keys still decrypt through the API.
    assert _secret_data(box, 'default', 'fidelity-before-rotation') == {'password': CANARY}
    assert set(_secret_data(box, *old_key.split('/'))) == {'token'}

    # History: the secret written before encryption was turned on is plaintext until it is rewritten.
    namespace, name = plaintext.split('/')
    key = '/registry/secrets/{}/{}'.format(namespace, name)
    assert box.etcdctl_get(key).startswith(b'k8s\x00')
    legacy = _verify(az, box, '--secret', plaintext, '-o', 'json')
    assert legacy.code == 4, legacy
    entry = _entry(legacy.json(), namespace, name)
    assert (entry['storage'], entry['encrypted'], entry['keyId']) == ('identity', False, None)
    assert _check(legacy.json(), 'SecretEncryptedWithKms', plaintext)['detail'] == 'stored in plaintext (identity)'
    assert_no_leak(legacy, ['Summer2023!'])

    data = _rewrite_with_kubectl(kubectl, box, namespace, name)
    assert _kms_v2_key_id(box.etcdctl_get(key)) == new_key
    rewritten = _verify(az, box, '--secret', plaintext, '-o', 'json')
    assert rewritten.code == 0, rewritten
    entry = _entry(rewritten.json(), namespace, name)
    assert (entry['storage'], entry['kmsVersion'], entry['keyId']) == ('kms', 'v2', new_key)
    assert core_api(box).read_namespaced_secret(name, namespace).data == data  # same secret, now encrypted
    for r in (result, rewritten):
        assert_no_leak(r, [CANARY, CANARY_B64, 'Summer2023!'])


def _kms_v1_kek(value):
    """The KEK that wrapped a KMS v1 value's DEK. KMS v1 has no key id on the wire; the sandbox plugin's opaque
    ciphertext names its key (``sbx1 | len | key id | ...``, see tests/sandbox/processes/kms_plugin.py)."""
    from tests.sandbox.processes.kms_plugin import MAGIC
    prefix = DOC_PREFIX['kms-v1'].encode()
    assert value.startswith(prefix)
    n = int.from_bytes(value[len(prefix):len(prefix) + 2], 'big')
    dek = value[len(prefix) + 2:len(prefix) + 2 + n]
    assert dek.startswith(MAGIC)
    return dek[len(MAGIC) + 1:len(MAGIC) + 1 + dek[len(MAGIC)]].decode()


def test_kms_v1_rotation_keeps_old_secrets_readable_and_history_shows_plaintext(az, kubectl, sandbox_factory):
    box = _box(sandbox_factory, 'kms-v1', history=True)
    history = box.info['history']
    [plaintext] = history['plaintext']
    [old_key] = history['old_key']
    old_etcd_key = '/registry/secrets/' + old_key
    assert _kms_v1_kek(box.etcdctl_get(old_etcd_key)) == 'key-0001' and history['rotated_to'] == 'key-0002'

    make_secret(box, 'default', 'fidelity-v1-before', {'password': CANARY})
    before = _current_key(box)
    new_kek = box.kms('rotate')
    assert new_kek != before
    make_secret(box, 'default', 'fidelity-v1-after', {'password': CANARY + '-after'})
    assert _kms_v1_kek(box.etcdctl_get('/registry/secrets/default/fidelity-v1-before')) == before
    assert _kms_v1_kek(box.etcdctl_get('/registry/secrets/default/fidelity-v1-after')) == new_kek
    # Every older secret still decrypts through the API (the plugin keeps old KEKs), and with kubectl.
    assert _secret_data(box, 'default', 'fidelity-v1-before') == {'password': CANARY}
    assert _secret_data(box, 'default', 'fidelity-v1-after') == {'password': CANARY + '-after'}
    assert set(_secret_data(box, *old_key.split('/'))) == {'token'}
    listed = kubectl(box, 'get', 'secrets', '-n', 'legacy', '-o', 'name')
    assert listed.returncode == 0, listed.stderr

    names = ['default/fidelity-v1-before', 'default/fidelity-v1-after', old_key]
    result = _verify(az, box, *[a for n in names for a in ('--secret', n)], '-o', 'json')
    assert result.code == 0, result
    body = result.json()
    for target in names:
        entry = _entry(body, *target.split('/'))
        assert (entry['storage'], entry['kmsVersion'], entry['provider'], entry['keyId']) == \
            ('kms', 'v1', 'kms-plugin', None)  # KMS v1 carries no key id: nothing to tell old from new
    assert _check(body, 'KmsV1Deprecated')['status'] == 'Warning'

    namespace, name = plaintext.split('/')
    legacy = _verify(az, box, '--secret', plaintext, '-o', 'json')
    assert legacy.code == 4, legacy
    assert _entry(legacy.json(), namespace, name)['storage'] == 'identity'
    assert 'stored in plaintext' in _check(legacy.json(), 'SecretEncryptedWithKms', plaintext)['detail']
    _rewrite_with_kubectl(kubectl, box, namespace, name)
    assert _kms_v1_kek(box.etcdctl_get('/registry/secrets/' + plaintext)) == new_kek
    rewritten = _verify(az, box, '--secret', plaintext, '-o', 'json')
    assert rewritten.code == 0, rewritten
    assert _entry(rewritten.json(), namespace, name)['kmsVersion'] == 'v1'
    for r in (result, legacy, rewritten):
        assert_no_leak(r, [CANARY, CANARY_B64, 'Summer2023!'])


# --- 7. RBAC ----------------------------------------------------------------------------------------------------------


def test_restricted_user_gets_real_403s_and_the_command_names_the_permission(az, kubectl, sandbox_factory):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    box = _box(sandbox_factory, 'kms-v2')
    pod = box.info['etcd_pods'][0]
    core = core_api(box, 'kubeconfig-restricted')
    assert core.read_namespaced_pod(pod, 'kube-system').metadata.name == pod  # may read

    with pytest.raises(ApiException) as denied:
        core.connect_post_namespaced_pod_exec(pod, 'kube-system', command=['etcdctl', 'version'], container='etcd',
                                              stdout=True, stderr=True)
    assert denied.value.status == 403
    assert json.loads(denied.value.body) == {
        'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Failure', 'reason': 'Forbidden', 'code': 403,
        'message': 'pods "{}" is forbidden: User "restricted-user" cannot create resource "pods/exec" in API group "" '
                   'in the namespace "kube-system"'.format(pod),
        'details': {'name': pod, 'kind': 'pods'}}

    body = client.V1Secret(metadata=client.V1ObjectMeta(name='fidelity-denied'), string_data={'a': 'b'})
    with pytest.raises(ApiException) as denied:
        core.create_namespaced_secret('default', body)
    assert denied.value.status == 403
    assert json.loads(denied.value.body) == {
        'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Failure', 'reason': 'Forbidden', 'code': 403,
        'message': 'secrets is forbidden: User "restricted-user" cannot create resource "secrets" in API group "" in '
                   'the namespace "default"',
        'details': {'kind': 'secrets'}}

    r = kubectl(box, 'exec', pod, '-n', 'kube-system', '--', *DOC_ETCDCTL, 'get',
                '/registry/secrets/default/db-user-pass', '-w', 'fields', kubeconfig=box.kubeconfig_restricted)
    assert r.returncode == 1 and r.stdout == b''
    assert 'Error from server (Forbidden): pods "{}" is forbidden: User "restricted-user" cannot create resource ' \
        '"pods/exec"'.format(pod) in r.stderr.decode()

    # The command asks the same server first (SelfSubjectAccessReview) and names what RBAC denies, before anything
    # is done: the probe needs to create a secret, a named secret needs exec.
    probe = _verify(az, box, '-o', 'json', kubeconfig=box.kubeconfig_restricted)
    assert probe.code == 1, probe
    assert probe.stdout == ''
    assert 'RBAC denies' in probe.stderr and 'create secrets in namespace default' in probe.stderr, probe.stderr
    named = _verify(az, box, '--secret', 'default/db-user-pass', '-o', 'json', kubeconfig=box.kubeconfig_restricted)
    assert named.code == 1, named
    assert named.stdout == ''
    assert 'RBAC denies' in named.stderr and 'create pods/exec in namespace kube-system' in named.stderr, named.stderr
    for result in (probe, named):
        assert_no_leak(result)
        assert 'Traceback' not in result.stderr
