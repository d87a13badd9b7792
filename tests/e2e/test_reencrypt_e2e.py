"""End to end: ``az aksarc kms reencrypt`` through the installed az against fresh sandboxes with a planted history.

Every verdict here is reached without the command's own word: what must be rewritten is what the test planted,
how each secret is stored is read from etcd host-side (etcdctl, parsed here: KMS v2 key ids from the
EncryptedObject, KMS v1 KEK ids from the sandbox plugin's ciphertext of the DEK), what a secret holds is read
through the API with the kubernetes client before and after, and what a concurrent writer wrote is read back
from etcd's history (decrypted host-side with the sandbox's own transformers and KMS plugin).
"""

import base64
import calendar
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.sandbox import codec
from tests.sandbox.control import Sandbox
from tests.sandbox.processes.etcdproc import find_etcdctl
from tests.sandbox.processes.kms_plugin import MAGIC
from tests.sandbox.transformers import split_v1

from tests.conftest import assert_no_leak, core_api

PREFIX = '/registry/secrets/'
ANNOTATION = 'kmsverify.aksarc/reencrypted-at'
DONE = ('reencrypted', 'alreadyCurrent')
HISTORY_PASSWORD = 'Summer2023!'  # the --history plaintext secret's password


def _canary(tag):
    return 'canary-reenc-{}-{}'.format(tag, os.urandom(4).hex())


class Planted:
    """What a test planted: names by kind, and every value written (the canaries no output may show)."""

    def __init__(self):
        self.values = [HISTORY_PASSWORD]

    def data(self, tag, keys=('token',)):
        data = {k: _canary(tag) for k in keys}
        self.values.extend(data.values())
        return data

    @property
    def canaries(self):
        return self.values + [base64.b64encode(v.encode()).decode() for v in self.values]


# --- host-side oracles ----------------------------------------------------------------------------------------


def plugin_key_id(cipher):
    """The KEK id inside the sandbox plugin's ciphertext (``sbx1 | len | key id | nonce | ct``)."""
    assert cipher.startswith(MAGIC), cipher[:8]
    n = cipher[len(MAGIC)]
    return cipher[len(MAGIC) + 1:len(MAGIC) + 1 + n].decode()


def stored(value):
    """(storage, kmsVersion, key id) of a raw etcd value: KMS v2 the EncryptedObject's keyID, KMS v1 the KEK
    that encrypted the value's DEK, a local key its provider kind; plaintext ``identity``."""
    if value.startswith(b'k8s:enc:kms:v2:'):
        _, payload = value[len(b'k8s:enc:kms:v2:'):].split(b':', 1)
        obj = codec.decode_encrypted_object(payload)
        assert plugin_key_id(obj['encryptedDEKSource']) == obj['keyID']
        return 'kms', 'v2', obj['keyID']
    if value.startswith(b'k8s:enc:kms:v1:'):
        _, payload = value[len(b'k8s:enc:kms:v1:'):].split(b':', 1)
        encrypted_dek, _ = split_v1(payload)
        return 'kms', 'v1', plugin_key_id(encrypted_dek)
    if value.startswith(b'k8s:enc:'):
        return value.split(b':')[2].decode(), None, None
    assert value.startswith(b'k8s\x00'), value[:16]
    return 'identity', None, None


def etcd_state(box):
    """({(namespace, name): (raw value, mod revision)}, the secrets' revision), read host-side in one range. The
    secrets' revision is the newest mod revision among them: etcd's own revision also moves with kube-apiserver's
    writes of its leases, every few seconds."""
    result = box.etcdctl('get', PREFIX, '--prefix', '-w', 'json', version='3.5', timeout=120)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    state = {}
    for kv in body.get('kvs') or []:
        namespace, name = base64.b64decode(kv['key']).decode()[len(PREFIX):].split('/', 1)
        state[(namespace, name)] = (base64.b64decode(kv.get('value', '')), int(kv['mod_revision']))
    return state, max((rev for _, rev in state.values()), default=0)


def etcd_revision(box):
    """The newest mod revision among the secrets (see :func:`etcd_state`): it moves only with a secret's write."""
    result = box.etcdctl('get', PREFIX, '--prefix', '--keys-only', '-w', 'json', version='3.5', timeout=120)
    assert result.returncode == 0, result.stderr
    return max((int(kv['mod_revision']) for kv in json.loads(result.stdout).get('kvs') or []), default=0)


def storage_view(state):
    return {key: stored(value) for key, (value, _) in state.items()}


def host_encryption(box):
    """The sandbox's EncryptionConfiguration, with a client of its running KMS plugin: reads and writes values
    exactly as its API server does."""
    from tests.sandbox.processes.kms_client import KMSClient
    from tests.sandbox.transformers import EncryptionConfig
    provider = box.info['provider']
    client = KMSClient(box.info['kms_socket'], provider.split('-')[1])
    return EncryptionConfig.for_provider(provider, kms_client=client), client


def backdate(box, namespace, name, when):
    """Store the object again as if it had last been written at ``when`` (creationTimestamp and every
    managedFields time), encrypted as the API server stores it now: for objects only the API can make
    (immutable, typed, with owner references) that must look written before the last rotation."""
    key = f'{PREFIX}{namespace}/{name}'
    config, client = host_encryption(box)
    try:
        obj = codec.decode_secret(config.read(key, box.etcdctl_get(key)))
        obj['metadata']['creationTimestamp'] = when
        for entry in obj['metadata'].get('managedFields') or []:
            entry['time'] = when
        value = config.write(key, codec.encode_secret(obj))
    finally:
        client.close()
    result = box.etcdctl('put', key, input=value)
    assert result.returncode == 0, result.stderr


def api_objects(box, keys):
    """{key: the Secret as the API returns it (JSON, read raw with the kubernetes client)}."""
    api = core_api(box)
    objects = {}
    for namespace, name in sorted(keys):
        raw = api.read_namespaced_secret(name, namespace, _preload_content=False).data
        objects[(namespace, name)] = json.loads(raw)
    api.api_client.close()
    return objects


def content(obj, strip_annotation=True):
    """What a rewrite must never change: data, type, immutable, labels, annotations (less ours), owner
    references, finalizers, uid and creation time."""
    meta = obj['metadata']
    annotations = dict(meta.get('annotations') or {})
    if strip_annotation:
        annotations.pop(ANNOTATION, None)
    return {'data': obj.get('data'), 'type': obj.get('type'), 'immutable': obj.get('immutable'),
            'labels': meta.get('labels'), 'annotations': annotations or None,
            'ownerReferences': meta.get('ownerReferences'), 'finalizers': meta.get('finalizers'),
            'uid': meta['uid'], 'creationTimestamp': meta.get('creationTimestamp')}


def etcd_history(box, keys, since, until_revisions, timeout=60):
    """{key: [(mod revision, raw value), ...]} of every write to ``keys`` from revision ``since`` on, replayed by
    ``etcdctl watch --rev`` until each key's history reaches its revision in ``until_revisions``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('ETCDCTL_')}
    for line in Path(box.info['etcd_env']).read_text().splitlines():
        name, _, value = line.partition('=')
        env[name] = value
    wanted = {f'{PREFIX}{ns}/{name}': (ns, name) for ns, name in keys}
    common = os.path.commonprefix(sorted(wanted))
    proc = subprocess.Popen([find_etcdctl('3.5'), 'watch', '--rev', str(since), '--prefix', common, '-w', 'json'],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    found = {key: [] for key in keys}
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            for event in json.loads(line).get('Events') or []:
                kv = event['kv']
                key = wanted.get(base64.b64decode(kv['key']).decode())
                if key is not None and event.get('type') != 'DELETE':
                    found[key].append((int(kv['mod_revision']), base64.b64decode(kv.get('value', ''))))
            if all(found[k] and found[k][-1][0] >= until_revisions[k] for k in keys):
                break
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()
    assert all(found[k] and found[k][-1][0] == until_revisions[k] for k in keys), 'etcd history incomplete'
    return found


# --- running the command --------------------------------------------------------------------------------------


def _reencrypt(az, box, *args, **kwargs):
    return az('aksarc', 'kms', 'reencrypt', '--kubeconfig', box.kubeconfig, *args, **kwargs)


def _verify_all(az, box, *args):
    return az('aksarc', 'kms', 'verify', '--kubeconfig', box.kubeconfig, '--all-secrets', '--fail-on-stale',
              '-o', 'json', *args)


def _iso(seconds_ago):
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(time.time() - seconds_ago))


def _write(box, namespace, name, data, **spec):
    answer = box.ctl({'write_secret': dict(spec, namespace=namespace, name=name, data=data)})
    assert answer['ok'], answer


def _create(box, namespace, name, data, type_='Opaque', **fields):
    """Create through the API (so stored as the API server stores it); ``fields``: metadata extras, immutable."""
    meta = {'name': name, 'namespace': namespace}
    meta.update({k: v for k, v in fields.items() if k != 'immutable'})
    body = {'apiVersion': 'v1', 'kind': 'Secret', 'metadata': meta, 'type': type_,
            'data': {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
    if 'immutable' in fields:
        body['immutable'] = fields['immutable']
    status, answer = box.api('POST', f'/api/v1/namespaces/{namespace}/secrets?fieldManager=kubectl-create', body)
    assert status == 201, answer


def _namespace(box, name):
    status, answer = box.api('POST', '/api/v1/namespaces', {'metadata': {'name': name}})
    assert status in (201, 409), answer


def _targets(body):
    return {(t['namespace'], t['name']) for t in body['targets']}


def _outcomes(body):
    return {(t['namespace'], t['name']): t['outcome'] for t in body['targets']}


def _up(tmp_path_factory, label, **options):
    box = Sandbox(str(tmp_path_factory.mktemp(label)))
    box.up(**options)
    return box


def _owned_and_typed(box, planted, namespace):
    """The secrets only the API can make: kubernetes.io/tls with labels, owner references and finalizers,
    one immutable, one annotated by someone else."""
    _create(box, namespace, 'tls-owned', planted.data('tls', ('tls.crt', 'tls.key')), type_='kubernetes.io/tls',
            labels={'app.kubernetes.io/name': 'web', 'tier': 'frontend'},
            ownerReferences=[{'apiVersion': 'apps/v1', 'kind': 'Deployment', 'name': 'web',
                              'uid': '6f0c6c62-7d1a-4c2e-9a51-0d6a1f1f7e01', 'controller': True}],
            finalizers=['example.com/keep'])
    _create(box, namespace, 'frozen', planted.data('frozen', ('password', 'username')), immutable=True,
            labels={'frozen': 'yes'})
    _create(box, namespace, 'annotated', planted.data('annotated'), annotations={'example.com/owner': 'team-b'})


# --- KMS v2: plaintext, local keys and two older key ids ------------------------------------------------------


@pytest.fixture(scope='module')
def v2run(tmp_path_factory, installed):
    """KMS v2 with history (2023 plaintext; one secret under key-0001, the rest under key-0002), plus planted
    plaintext with labels, the three local keys as written before KMS, and API-made secrets (tls with owner
    references, immutable, annotated); then a rotation to key-0003 and one write under it. Then the run:
    dry run, --yes --debug, again, and verify --all-secrets --fail-on-stale, each through the installed az."""
    from tests.conftest import Az
    box = _up(tmp_path_factory, 'reencrypt-v2', provider='kms-v2', history=True)
    try:
        planted = Planted()
        for ns in ('team-a', 'team-b'):
            _namespace(box, ns)
        _write(box, 'team-a', 'plain-labelled', planted.data('plain'), labels={'app': 'legacy', 'tier': 'db'},
               **{'with': 'identity', 'written_at': '2023-02-01T10:00:00Z'})
        for local in ('aescbc', 'aesgcm', 'secretbox'):
            _write(box, 'team-a', f'{local}-before-kms', planted.data(local), **{'with': local})
        _owned_and_typed(box, planted, 'team-b')
        current = box.kms('rotate')
        assert current == 'key-0003'
        _create(box, 'team-b', 'after-rotation', planted.data('after'))
        run = {'box': box, 'planted': planted, 'current': current}
        run['etcd_before'], run['rev_before'] = etcd_state(box)
        readable = set(run['etcd_before'])
        run['api_before'] = api_objects(box, readable)
        az = Az(tmp_path_factory.mktemp('az-v2'))
        run['dry'] = _reencrypt(az, box, '--dry-run', '-o', 'json')
        run['rev_after_dry'] = etcd_revision(box)
        started = time.time()
        run['run'] = _reencrypt(az, box, '--yes', '--debug', '-o', 'json')
        run['window'] = (started, time.time())
        run['etcd_after'], run['rev_after'] = etcd_state(box)
        run['api_after'] = api_objects(box, readable)
        run['verify'] = _verify_all(az, box)  # read-only: straight after the run, before any second run
        run['again'] = _reencrypt(az, box, '--yes', '-o', 'json')
        run['rev_after_again'] = etcd_revision(box)
        yield run
    finally:
        box.down()


def v2_expected_targets(run):
    """Everything etcd holds that is not KMS v2 under the current key: found host-side, before the run."""
    return {key for key, s in storage_view(run['etcd_before']).items() if s != ('kms', 'v2', run['current'])}


def test_v2_planted_history_is_what_the_test_thinks(v2run):
    view = storage_view(v2run['etcd_before'])
    assert view[('legacy', 'app-credentials-2023')] == ('identity', None, None)
    assert view[('legacy', 'api-token-before-rotation')] == ('kms', 'v2', 'key-0001')
    assert view[('team-a', 'plain-labelled')] == ('identity', None, None)
    for local in ('aescbc', 'aesgcm', 'secretbox'):
        assert view[('team-a', f'{local}-before-kms')] == (local, None, None)
    for name in ('tls-owned', 'frozen', 'annotated'):
        assert view[('team-b', name)] == ('kms', 'v2', 'key-0002')
    assert view[('team-b', 'after-rotation')] == ('kms', 'v2', 'key-0003')
    assert {k for k, s in view.items() if s[2] == 'key-0002'} >= {tuple(s.split('/', 1))
                                                                  for s in v2run['box'].info['seeded'][2:]}


def test_v2_dry_run_plans_exactly_the_stale_and_unencrypted_secrets_and_writes_nothing(v2run):
    dry = v2run['dry']
    assert dry.code == 4, dry
    body = dry.json()
    assert body['dryRun'] is True and body['passed'] is False
    assert _targets(body) == v2_expected_targets(v2run)
    assert set(_outcomes(body).values()) == {'planned'}
    assert body['plan']['byKind'] == {'local-key': 3, 'plaintext': 2, 'stale': len(v2_expected_targets(v2run)) - 5}
    assert (body['currentKeyId'], body['currentKeyIdSource']) == ('key-0003', 'metrics')
    assert v2run['rev_after_dry'] == v2run['rev_before']
    assert_no_leak(dry, v2run['planted'].canaries)


def test_v2_every_target_ends_kms_under_the_current_key_in_etcd(v2run):
    result = v2run['run']
    assert result.code == 0, result
    body = result.json()
    assert body['passed'] is True and body['dryRun'] is False and body['interrupted'] is False
    assert _targets(body) == v2_expected_targets(v2run)
    assert set(_outcomes(body).values()) == {'reencrypted'}
    assert body['summary'] == {'reencrypted': len(v2_expected_targets(v2run))}
    view = storage_view(v2run['etcd_after'])
    assert set(view) == set(v2run['etcd_before'])  # nothing created or deleted
    assert {k: s for k, s in view.items() if s != ('kms', 'v2', 'key-0003')} == {}
    # the one secret already current was left alone
    assert v2run['etcd_after'][('team-b', 'after-rotation')] == v2run['etcd_before'][('team-b', 'after-rotation')]
    for target in body['targets']:
        key = (target['namespace'], target['name'])
        assert target['modRevisionAfter'] == v2run['etcd_after'][key][1] > target['modRevisionBefore']
        assert target['modRevisionBefore'] == v2run['etcd_before'][key][1]
        assert (target['storageAfter'], target['keyIdAfter']) == ('kms', 'key-0003')


def test_v2_data_type_labels_and_owner_references_are_unchanged(v2run):
    before, after = v2run['api_before'], v2run['api_after']
    assert set(before) == set(after)
    for key in before:
        assert content(after[key], strip_annotation=False) == content(before[key], strip_annotation=False), key
    tls = after[('team-b', 'tls-owned')]
    assert tls['type'] == 'kubernetes.io/tls' and set(tls['data']) == {'tls.crt', 'tls.key'}
    assert tls['metadata']['labels'] == {'app.kubernetes.io/name': 'web', 'tier': 'frontend'}
    assert after[('team-b', 'frozen')]['immutable'] is True
    assert after[('team-a', 'plain-labelled')]['metadata']['labels'] == {'app': 'legacy', 'tier': 'db'}
    assert after[('team-b', 'annotated')]['metadata']['annotations'] == {'example.com/owner': 'team-b'}


def test_v2_a_second_run_writes_nothing(v2run):
    again = v2run['again']
    assert again.code == 0, again
    body = again.json()
    assert body['passed'] is True and body['plan']['targets'] == 0 and body['targets'] == []
    assert body['summary'] == {} and body['currentKeyId'] == 'key-0003'
    assert v2run['rev_after_again'] == v2run['rev_after']


def test_v2_verify_all_secrets_fail_on_stale_passes_afterwards(v2run):
    verify = v2run['verify']
    assert verify.code == 0, verify
    scan = verify.json()['scan']
    assert scan['failing'] == [] and scan['stale'] == [] and scan['currentKeyId'] == 'key-0003'


def test_v2_no_value_or_token_leaks_with_debug(v2run):
    result = v2run['run']
    assert 'DEBUG' in result.stderr and 'PUT /api/v1/namespaces/team-b/secrets/frozen' in result.stderr
    ciphertexts = []
    for value, _ in v2run['etcd_before'].values():
        tail = value[-24:]
        ciphertexts += [base64.b64encode(tail).decode()[:24], tail.hex()[:24]]
    for output in (v2run['dry'], result, v2run['again'], v2run['verify']):
        assert_no_leak(output, v2run['planted'].canaries + ciphertexts)


def test_the_sandbox_keeps_owner_references_so_the_comparison_means_something(v2run):
    meta = v2run['api_before'][('team-b', 'tls-owned')]['metadata']
    assert meta.get('ownerReferences') and meta.get('finalizers')


# --- KMS v1: found by age, forced by the annotation -----------------------------------------------------------


@pytest.fixture(scope='module')
def v1run(tmp_path_factory, installed):
    """KMS v1 with history (2023 plaintext; one secret 45 days old under key-0001), secrets backdated 40 days
    (labelled; tls with owner references; immutable), a 2024 plaintext, an aescbc one from before KMS, two
    recent ones (10 days, and the seeded ones of today), then a KEK rotation to key-0003."""
    from tests.conftest import Az
    box = _up(tmp_path_factory, 'reencrypt-v1', provider='kms-v1', history=True)
    try:
        planted = Planted()
        _namespace(box, 'apps')
        old = _iso(40 * 86400)
        for i in range(3):
            _write(box, 'apps', f'old-{i}', planted.data(f'old{i}'), labels={'n': str(i)}, written_at=old)
        _write(box, 'apps', 'plain-2024', planted.data('plain'), **{'with': 'identity',
                                                                   'written_at': '2024-03-01T00:00:00Z'})
        _write(box, 'apps', 'aescbc-before-kms', planted.data('aescbc'), **{'with': 'aescbc', 'written_at': old})
        _write(box, 'apps', 'recent', planted.data('recent'), written_at=_iso(10 * 86400))
        _owned_and_typed(box, planted, 'apps')
        for name in ('tls-owned', 'frozen', 'annotated'):
            backdate(box, 'apps', name, old)
        first_kek = box.kms('rotate')
        assert first_kek == 'key-0003'
        run = {'box': box, 'planted': planted, 'current': first_kek,
               'expected': {('legacy', 'app-credentials-2023'), ('legacy', 'api-token-before-rotation'),
                            ('apps', 'old-0'), ('apps', 'old-1'), ('apps', 'old-2'), ('apps', 'plain-2024'),
                            ('apps', 'aescbc-before-kms'), ('apps', 'tls-owned'), ('apps', 'frozen'),
                            ('apps', 'annotated')}}
        run['etcd_before'], run['rev_before'] = etcd_state(box)
        run['api_before'] = api_objects(box, set(run['etcd_before']))
        az = Az(tmp_path_factory.mktemp('az-v1'))
        run['dry'] = _reencrypt(az, box, '--dry-run', '-o', 'json')
        run['rev_after_dry'] = etcd_revision(box)
        started = time.time()
        run['run'] = _reencrypt(az, box, '--yes', '--debug', '-o', 'json')
        run['window'] = (started, time.time())
        run['etcd_after'], run['rev_after'] = etcd_state(box)
        run['api_after'] = api_objects(box, set(run['etcd_before']))
        run['verify'] = _verify_all(az, box)  # read-only: straight after the run, before any second run
        run['again'] = _reencrypt(az, box, '--yes', '-o', 'json')
        run['rev_after_again'] = etcd_revision(box)
        yield run
    finally:
        box.down()


def test_v1_planted_history_is_what_the_test_thinks(v1run):
    view = storage_view(v1run['etcd_before'])
    assert view[('legacy', 'app-credentials-2023')] == ('identity', None, None)
    assert view[('apps', 'plain-2024')] == ('identity', None, None)
    assert view[('apps', 'aescbc-before-kms')] == ('aescbc', None, None)
    assert view[('legacy', 'api-token-before-rotation')] == ('kms', 'v1', 'key-0001')
    assert {view[('apps', n)] for n in ('old-0', 'old-1', 'old-2', 'recent', 'tls-owned', 'frozen', 'annotated')} \
        == {('kms', 'v1', 'key-0002')}
    assert not any(s[2] == 'key-0003' for s in view.values())  # nothing written since the rotation


def test_v1_dry_run_finds_the_targets_by_age_and_writes_nothing(v1run):
    dry = v1run['dry']
    assert dry.code == 4, dry
    body = dry.json()
    assert _targets(body) == v1run['expected']
    assert body['plan']['byKind'] == {'local-key': 1, 'plaintext': 2, 'stale': 7}
    assert body['currentKeyId'] is None  # KMS v1 has no key id
    assert v1run['rev_after_dry'] == v1run['rev_before']
    assert_no_leak(dry, v1run['planted'].canaries)


def test_v1_targets_are_rewritten_under_the_new_kek_and_nothing_else_is_touched(v1run):
    result = v1run['run']
    assert result.code == 0, result
    body = result.json()
    assert _targets(body) == v1run['expected']
    assert set(_outcomes(body).values()) == {'reencrypted'}
    before, after = v1run['etcd_before'], v1run['etcd_after']
    assert set(before) == set(after)
    for key in after:
        if key in v1run['expected']:
            assert stored(after[key][0]) == ('kms', 'v1', 'key-0003'), key
            assert after[key][1] > before[key][1], key
        else:  # recent enough: left alone (same value, same ModRevision, still under the old KEK)
            assert after[key] == before[key], key


def test_v1_rewritten_secrets_carry_the_annotation_and_nothing_else_changed(v1run):
    start, end = v1run['window']
    for key, obj in v1run['api_after'].items():
        assert content(obj) == content(v1run['api_before'][key]), key
        annotations = obj['metadata'].get('annotations') or {}
        if key in v1run['expected']:
            stamp = calendar.timegm(time.strptime(annotations[ANNOTATION], '%Y-%m-%dT%H:%M:%SZ'))
            assert start - 2 <= stamp <= end + 2, (key, annotations[ANNOTATION])
        else:
            assert ANNOTATION not in annotations, key
    assert v1run['api_after'][('apps', 'frozen')]['immutable'] is True
    assert v1run['api_after'][('apps', 'tls-owned')]['type'] == 'kubernetes.io/tls'


def test_v1_verify_all_secrets_fail_on_stale_passes_afterwards(v1run):
    verify = v1run['verify']
    assert verify.code == 0, verify
    body = verify.json()
    assert body['scan']['failing'] == [] and body['scan']['stale'] == []
    assert {c['name']: c['status'] for c in body['checks']}['KmsV1WrittenBeforeRotation'] == 'Passed'


def test_v1_a_second_run_writes_nothing(v1run):
    again = v1run['again']
    assert again.code == 0, again
    assert again.json()['plan']['targets'] == 0
    assert v1run['rev_after_again'] == v1run['rev_after']


def test_v1_no_value_or_token_leaks_with_debug(v1run):
    assert 'DEBUG' in v1run['run'].stderr
    for output in (v1run['dry'], v1run['run'], v1run['again'], v1run['verify']):
        assert_no_leak(output, v1run['planted'].canaries)


# --- KMS v2 right after a rotation: /metrics knows the new key, no value carries it yet -----------------------


def test_v2_right_after_a_rotation_every_secret_is_a_target(tmp_path, az):
    box = Sandbox(str(tmp_path / 'sandbox'))
    box.up(provider='kms-v2')
    try:
        assert box.ctl({'seed': {'namespace': 'bulk', 'count': 40, 'size': 64}})['ok']
        assert box.kms('rotate') == 'key-0002'
        assert {s[2] for s in storage_view(etcd_state(box)[0]).values()} == {'key-0001'}
        result = _reencrypt(az, box, '--yes', '-o', 'json')
        assert result.code == 0, result
        body = result.json()
        assert body['plan']['targets'] == 43 and body['summary'] == {'reencrypted': 43}
        assert (body['currentKeyId'], body['currentKeyIdSource']) == ('key-0002', 'metrics')
        assert {s for s in storage_view(etcd_state(box)[0]).values()} == {('kms', 'v2', 'key-0002')}
    finally:
        box.down()


# --- a concurrent writer --------------------------------------------------------------------------------------


def _run_in_background(az, box, *args):
    holder = {}
    thread = threading.Thread(target=lambda: holder.update(result=_reencrypt(az, box, *args)), daemon=True)
    thread.start()
    return thread, holder


@pytest.mark.parametrize('provider', ['kms-v2', 'kms-v1'])
def test_a_concurrent_writers_updates_all_survive(tmp_path, az, provider):
    box = Sandbox(str(tmp_path / 'sandbox'))
    box.up(provider=provider)
    try:
        count = 120
        if provider == 'kms-v2':
            assert box.ctl({'seed': {'namespace': 'busy', 'prefix': 'w-', 'count': count, 'size': 200}})['ok']
        else:
            old = _iso(40 * 86400)
            for i in range(count):
                _write(box, 'busy', f'w-{i}', {'token': f'v-{i}'}, written_at=old)
        current = box.kms('rotate')
        names = sorted(f'w-{i}' for i in range(count))
        watched = [('busy', n) for n in names[count // 2::count // 16]][:8]  # not reached when the writer starts
        before, rev0 = etcd_state(box)
        api_before = api_objects(box, set(before))

        thread, holder = _run_in_background(az, box, '--yes', '--max-per-second', '40', '-o', 'json')
        deadline = time.monotonic() + 60
        while etcd_revision(box) == rev0:  # the plan is made; the first rewrite is in
            assert time.monotonic() < deadline and thread.is_alive(), holder
            time.sleep(0.05)
        started = box.ctl({'writes': {'writer': {'secrets': [f'{ns}/{n}' for ns, n in watched], 'interval': 0.05,
                                                 'key': 'rotated'}}})
        assert started['ok'] and started['result']['writes']['state']['writer']['running']
        thread.join(120)
        assert not thread.is_alive()
        stats = box.ctl({'writes': {'writer': None}})['result']['writes']['writer']
        result = holder['result']

        assert result.code == 0, result
        body = result.json()
        # every secret under the old key (KMS v2), or every one last written 40 days ago (KMS v1: not the seeded
        # ones of today), the writer's included
        expected = {k for k in before if k[0] == 'busy' or provider == 'kms-v2'}
        assert _targets(body) == expected
        assert set(_outcomes(body).values()) <= set(DONE)
        assert stats['writes'] >= len(watched) and stats['errors'] == 0 and stats['rejected'] == 0

        after, _ = etcd_state(box)
        assert {stored(after[k][0]) for k in expected} == {('kms', provider[-2:], current)}
        api_after = api_objects(box, set(after))
        config, client = host_encryption(box)
        interleaved = {}
        try:
            history = etcd_history(box, watched, rev0 + 1, {k: after[k][1] for k in watched})
            for key in watched:
                # the writer's last write survives: the object now holds what the writer wrote last
                last_revision = int(stats['last'][f'{key[0]}/{key[1]}'])
                at_last = box.etcdctl('get', f'{PREFIX}{key[0]}/{key[1]}', '--rev', str(last_revision), '-w', 'json')
                value = base64.b64decode(json.loads(at_last.stdout)['kvs'][0]['value'])
                written = codec.decode_secret(config.read(f'{PREFIX}{key[0]}/{key[1]}', value))
                assert 'rotated' in written['data'], key
                # and no write in between lost one: each revision either changes the writer's key to a value never
                # seen before (the writer) or keeps the data of the revision before it (a rewrite)
                previous, seen, kinds = api_before[key]['data'], set(), []
                for _, raw in history[key]:
                    data = codec.decode_secret(config.read(f'{PREFIX}{key[0]}/{key[1]}', raw))['data']
                    if data != previous:
                        assert {k: v for k, v in data.items() if k != 'rotated'} == \
                            {k: v for k, v in previous.items() if k != 'rotated'}, key
                        assert data.get('rotated') and data['rotated'] not in seen, f'{key}: an older write came back'
                        seen.add(data['rotated'])
                    kinds.append('writer' if data != previous else 'rewrite')
                    previous = data
                interleaved[key] = kinds
                # the writer's last recorded write is in etcd's history, and the object now holds the last revision's
                # data (a write the writer had in flight when it was stopped may be later than its recorded last)
                assert written['data']['rotated'] in seen, key
                assert api_after[key]['data'] == previous, key
        finally:
            client.close()
        if provider == 'kms-v1':
            # KMS v1 rewrites are real writes (the annotation): each watched secret was rewritten once, or its PUT met
            # the writer (409) and etcd showed it current; and the rewrites landed between the writer's writes
            for key in watched:
                expected_rewrites = 0 if _outcomes(body)[key] == 'alreadyCurrent' else 1
                assert interleaved[key].count('rewrite') == expected_rewrites, (key, interleaved[key])
            assert any(0 < k.index('rewrite') < len(k) - 1 for k in interleaved.values() if 'rewrite' in k), interleaved
        for key in set(before) - set(watched):
            assert content(api_after[key]) == content(api_before[key]), key
        assert_no_leak(result)
    finally:
        box.down()


# --- API Priority and Fairness: 429 with Retry-After ----------------------------------------------------------


def test_real_apf_429s_are_honoured_and_the_run_still_ends_current(tmp_path, az):
    """The real kube-apiserver's API Priority and Fairness throttles the identity reencrypt runs as
    (``Sandbox.throttle``: its own FlowSchema and a priority level of 3 seats that rejects what exceeds them with 429
    at once). ``--parallel 32`` meets real 429s, waits their Retry-After, and every target ends under the current
    key, proven from etcd; the result counts exactly the 429s the server says it sent to that identity."""
    box = Sandbox(str(tmp_path / 'sandbox'))
    box.up(provider='kms-v2')
    try:
        assert box.ctl({'seed': {'namespace': 'bulk', 'count': 150, 'size': 64}})['ok']
        current = box.kms('rotate')
        before, _ = etcd_state(box)
        throttle = box.throttle()
        assert throttle['nominal_limit'] == 3
        counts = box.flow_counts()
        started = time.monotonic()
        result = az('aksarc', 'kms', 'reencrypt', '--kubeconfig', throttle['kubeconfig'], '--yes', '--parallel', '32',
                    '-o', 'json')
        elapsed = time.monotonic() - started
        sent = {k: v - counts[k] for k, v in box.flow_counts().items()}
        assert result.code == 0, result
        body = result.json()
        assert body['cluster']['context'] == 'throttled-admin@sandbox'
        assert body['summary'] == {'reencrypted': len(before)}
        counted = sum(t['throttled'] for t in body['targets'])
        assert counted == sent['rejected'] > 0, (counted, sent)  # every 429 the API server sent was seen and waited out
        assert sent['dispatched'] > 2 * len(before)  # the run's requests went through the throttled flow: GET+PUT each
        assert elapsed >= 1.0  # at least one Retry-After (1 s at least) was waited
        after, _ = etcd_state(box)
        assert {stored(v) for v, _ in after.values()} == {('kms', 'v2', current)}
        assert all(after[key][1] > before[key][1] for key in before)  # each written again: its ModRevision moved
        assert_no_leak(result)
    finally:
        box.down()


def _saturate(box, stop, threads=40):
    """A noisy neighbour in the throttled identity's flow: ``threads`` clients GETting as that identity until
    ``stop`` is set, each at once again after an answer (429s included), so its seats stay taken and the server's
    Retry-After grows (1, 2, 4, ... 32 s)."""
    def worker():
        while not stop.is_set():
            box.request('GET', '/api/v1/namespaces/kube-system/secrets', identity='throttled')
    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    return workers


def test_timeout_while_throttled_reports_what_was_not_rewritten(tmp_path, az):
    """Rewrites throttled by the real server's APF until --timeout: the run still ends in a result (exit 4) that
    says which targets were not rewritten (still as they were in etcd) and which were (under the current key)."""
    from tests.conftest import AZ, EXTENSION_DIR
    box = Sandbox(str(tmp_path / 'sandbox'))
    box.up(provider='kms-v2')
    stop = threading.Event()
    try:
        assert box.ctl({'seed': {'namespace': 'bulk', 'count': 60, 'size': 64}})['ok']
        current = box.kms('rotate')
        before, _ = etcd_state(box)
        throttle = box.throttle()
        env = dict(os.environ, AZURE_CONFIG_DIR=str(tmp_path / 'azure'), AZURE_EXTENSION_DIR=str(EXTENSION_DIR),
                   AZURE_CORE_COLLECT_TELEMETRY='false', PYTHONSAFEPATH='1')
        started = time.monotonic()
        # paced (4 a second: 15 s for the 60) so that the neighbour is at work before the rewrites are done
        proc = subprocess.Popen([str(AZ), 'aksarc', 'kms', 'reencrypt', '--kubeconfig', throttle['kubeconfig'],
                                 '--yes', '--parallel', '8', '--max-per-second', '4', '--timeout', '20', '-o', 'json'],
                                env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)
        try:
            end = time.monotonic() + 60
            while time.monotonic() < end and proc.poll() is None and sum(
                    rev > before[key][1] for key, (_, rev) in etcd_state(box)[0].items() if key in before) < 2:
                time.sleep(0.2)
            counts = box.flow_counts()
            _saturate(box, stop)
            out, err = proc.communicate(timeout=90)
        finally:
            stop.set()
            if proc.poll() is None:
                proc.kill()
        elapsed = time.monotonic() - started
        assert proc.returncode == 4, (proc.returncode, err)  # a result, not a timeout error
        assert elapsed < 30
        assert box.flow_counts()['rejected'] > counts['rejected']
        body = json.loads(out)
        assert body['cluster']['context'] == 'throttled-admin@sandbox'
        outcomes = _outcomes(body)
        assert set(outcomes.values()) == {'reencrypted', 'failed'}, body['summary']
        # the server's 429s reached the rewrites (a target never started has no count)
        assert sum(t['throttled'] or 0 for t in body['targets']) > 0
        after, _ = etcd_state(box)
        for target in body['targets']:
            key = (target['namespace'], target['name'])
            if target['outcome'] == 'failed':
                assert target['reason'] == 'not rewritten: the --timeout of 20 s was reached', target
                assert after[key] == before[key]
            else:
                assert stored(after[key][0]) == ('kms', 'v2', current)
        assert {c['name']: c['status'] for c in body['checks']}['Reencrypt'] == 'Failed'
        assert 'Traceback' not in err
    finally:
        stop.set()
        box.down()


# --- secrets the API cannot decrypt ---------------------------------------------------------------------------


V2_UNKNOWN_KEY = ("Internal error occurred: failed to decrypt DEK, error: rpc error: code = InvalidArgument desc = "
                  "failed to decrypt: unknown key id 'key-9999'")
V2_GARBAGE = 'Internal error occurred: unexpected EOF'  # kube-apiserver 1.29's gogo decoding of 64 bytes of 0xff
V1_GARBAGE = ('Internal error occurred: invalid data encountered by envelope transformer: failed to read uint16 '
              'length prefixed data')


@pytest.mark.parametrize('provider', ['kms-v2', 'kms-v1'])
def test_undecryptable_secrets_are_skipped_with_the_apis_reason(tmp_path, az, provider):
    box = Sandbox(str(tmp_path / 'sandbox'))
    box.up(provider=provider)
    try:
        planted = Planted()
        _write(box, 'apps', 'plain', planted.data('plain'), **{'with': 'identity'})
        for mode in ('unknown-key', 'garbage'):
            answer = box.ctl({'writes': {'undecryptable': {'namespace': 'broken', 'name': mode,
                                                           'data': planted.data(mode), 'mode': mode}}})
            assert answer['ok'], answer
        current = box.kms('rotate')
        before, _ = etcd_state(box)
        result = _reencrypt(az, box, '--yes', '-o', 'json')
        assert result.code == 4, result
        body = result.json()
        outcomes = _outcomes(body)
        reasons = {(t['namespace'], t['name']): t['reason'] for t in body['targets']}
        after, _ = etcd_state(box)
        assert outcomes[('apps', 'plain')] == 'reencrypted'
        assert stored(after[('apps', 'plain')][0]) == ('kms', provider[-2:], current)
        assert outcomes[('broken', 'garbage')] == 'skipped'
        assert reasons[('broken', 'garbage')] == 'the API cannot read it: ' + (
            V2_GARBAGE if provider == 'kms-v2' else V1_GARBAGE)
        if provider == 'kms-v2':  # its key id is not the current one: a target the API cannot read
            assert outcomes[('broken', 'unknown-key')] == 'skipped'
            assert reasons[('broken', 'unknown-key')] == 'the API cannot read it: ' + V2_UNKNOWN_KEY
        else:  # KMS v1 keeps no key id, and the metadata list that dates KMS v1 values fails on the garbage one
            assert ('broken', 'unknown-key') not in outcomes
            assert 'KMS v1 secrets written before the last rotation cannot be found' in result.stderr
        for mode in ('unknown-key', 'garbage'):
            assert after[('broken', mode)] == before[('broken', mode)]  # never written
        skipped = [c for c in body['checks'] if c['status'] == 'Skipped']
        assert {c['target'] for c in skipped} == {f'{ns}/{n}' for (ns, n), o in outcomes.items() if o == 'skipped'}
        assert_no_leak(result, planted.canaries)
    finally:
        box.down()


# --- confirmation and narrowing -------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def narrow(tmp_path_factory, installed):
    """KMS v2 with history: legacy/app-credentials-2023 (plaintext) and legacy/api-token-before-rotation
    (key-0001), plus plaintext and local-key secrets in team-a and team-b."""
    box = _up(tmp_path_factory, 'reencrypt-narrow', provider='kms-v2', history=True)
    try:
        box.planted = Planted()
        for ns in ('team-a', 'team-b'):
            _write(box, ns, 'plain', box.planted.data(ns + 'p'), **{'with': 'identity'})
            local = 'aescbc' if ns == 'team-a' else 'secretbox'
            _write(box, ns, 'local', box.planted.data(ns + 'l'), **{'with': local})
        yield box
    finally:
        box.down()


NARROW_ALL = {('legacy', 'app-credentials-2023'), ('legacy', 'api-token-before-rotation'), ('team-a', 'plain'),
              ('team-a', 'local'), ('team-b', 'plain'), ('team-b', 'local')}


def test_without_a_terminal_and_without_yes_nothing_is_written(az, narrow):
    revision = etcd_revision(narrow)
    result = _reencrypt(az, narrow)
    assert result.code == 2, result
    assert result.stdout == ''
    lines = result.stderr.strip().splitlines()
    assert lines[-2] == ('ERROR: reencrypt would rewrite 6 secrets (2 local-key, 3 plaintext, 1 stale) and there is '
                         'no terminal to confirm it.')
    assert lines[-1] == 'Pass --yes to rewrite them (or --dry-run to see the plan).'
    assert etcd_revision(narrow) == revision
    assert_no_leak(result, narrow.planted.canaries)


@pytest.mark.parametrize('args, expected', [
    ((), NARROW_ALL),
    (('--namespace', 'team-a'), {('team-a', 'plain'), ('team-a', 'local')}),
    (('--namespace', 'team-a', '--namespace', 'legacy'),
     {('team-a', 'plain'), ('team-a', 'local'), ('legacy', 'app-credentials-2023'),
      ('legacy', 'api-token-before-rotation')}),
    (('--secret', 'team-b/local'), {('team-b', 'local')}),
    (('--secret', 'team-b/local', 'legacy/api-token-before-rotation'),
     {('team-b', 'local'), ('legacy', 'api-token-before-rotation')}),
    (('--only', 'plaintext'), {('legacy', 'app-credentials-2023'), ('team-a', 'plain'), ('team-b', 'plain')}),
    (('--only', 'local-key'), {('team-a', 'local'), ('team-b', 'local')}),
    (('--only', 'stale'), {('legacy', 'api-token-before-rotation')}),
    (('--only', 'plaintext', '--namespace', 'team-b'), {('team-b', 'plain')}),
    (('--only', 'stale', '--namespace', 'team-a'), set()),
])
def test_namespace_secret_and_only_narrow_the_plan(az, narrow, args, expected):
    revision = etcd_revision(narrow)
    result = _reencrypt(az, narrow, '--dry-run', '-o', 'json', *args)
    assert result.code == (4 if expected else 0), result
    assert _targets(result.json()) == expected
    assert etcd_revision(narrow) == revision


def test_a_namespace_that_matches_nothing_is_not_a_silent_green(az, narrow):
    result = _reencrypt(az, narrow, '--dry-run', '-o', 'json', '--namespace', 'does-not-exist')
    assert result.code == 3, result
    errors = [line for line in result.stderr.splitlines() if line.startswith('ERROR: ')]
    assert errors == ['ERROR: No secret in etcd is in namespace does-not-exist: nothing matched --namespace.'], result
    assert 'kubectl get secrets -n NAMESPACE' in result.stderr
    some = _reencrypt(az, narrow, '--dry-run', '-o', 'json', '--namespace', 'team-a', '--namespace', 'nope')
    assert some.code == 4 and 'WARNING: No secret in etcd is in namespace nope' in some.stderr, some


def test_a_named_secret_that_needs_no_rewrite_is_said_so(az, narrow):
    result = _reencrypt(az, narrow, '--dry-run', '-o', 'json', '--secret', 'default/db-user-pass', 'team-a/plain')
    assert result.code == 4, result
    assert _targets(result.json()) == {('team-a', 'plain')}
    assert ('WARNING: Secret default/db-user-pass needs no rewrite (already stored with KMS under the current key, '
            'or not in etcd).') in result.stderr


def test_a_narrowed_run_rewrites_only_its_targets(az, narrow):
    before, _ = etcd_state(narrow)
    result = _reencrypt(az, narrow, '--yes', '-o', 'json', '--namespace', 'team-b')
    assert result.code == 0, result
    assert _targets(result.json()) == {('team-b', 'plain'), ('team-b', 'local')}
    after, _ = etcd_state(narrow)
    for key in before:
        if key[0] == 'team-b':
            assert stored(after[key][0]) == ('kms', 'v2', 'key-0002'), key
        else:
            assert after[key] == before[key], key
    assert_no_leak(result, narrow.planted.canaries)


# --- KMS v1 secrets without managedFields ---------------------------------------------------------------------


def test_v1_secret_without_managed_fields_converges(tmp_path, az):
    box = Sandbox(str(tmp_path / 'sandbox'))
    box.up(provider='kms-v1')
    try:
        _write(box, 'apps', 'untracked', {'token': _canary('untracked')}, written_at=_iso(40 * 86400))
        status, obj = box.api('GET', '/api/v1/namespaces/apps/secrets/untracked')
        obj['metadata']['managedFields'] = [{}]  # a client stripping them, as the API documents
        assert box.api('PUT', '/api/v1/namespaces/apps/secrets/untracked', obj)[0] == 200
        status, obj = box.api('GET', '/api/v1/namespaces/apps/secrets/untracked')
        assert status == 200 and 'managedFields' not in obj['metadata']  # like objects from before 1.18
        box.kms('rotate')
        first = _reencrypt(az, box, '--yes', '-o', 'json')
        assert first.code == 0 and _targets(first.json()) == {('apps', 'untracked')}, first
        verify = _verify_all(az, box)
        again = _reencrypt(az, box, '--yes', '-o', 'json')
        assert verify.code == 0, verify
        assert again.json()['plan']['targets'] == 0, again
    finally:
        box.down()


# --- a server failure during the rewrites ---------------------------------------------------------------------


def test_a_server_failure_mid_run_reports_what_was_rewritten_what_was_not_and_what_is_unknown(tmp_path, az):
    """The API server dies during the rewrites: the result is printed (exit 1) with every target's outcome, and one
    error line says why; nothing claims to be verified that was not."""
    import signal

    from tests.conftest import AZ, EXTENSION_DIR
    box = Sandbox(str(tmp_path / 'sandbox'))
    box.up(provider='kms-v2')  # the real kube-apiserver: its process is killed mid-run
    try:
        assert box.ctl({'seed': {'namespace': 'bulk', 'count': 60, 'size': 64}})['ok']
        box.kms('rotate')
        before, _ = etcd_state(box)
        env = dict(os.environ, AZURE_CONFIG_DIR=str(tmp_path / 'azure'), AZURE_EXTENSION_DIR=str(EXTENSION_DIR),
                   AZURE_CORE_COLLECT_TELEMETRY='false', PYTHONSAFEPATH='1')
        # paced (4 rewrites a second: 15 s for the 60) so that the run is caught mid-rewrite
        proc = subprocess.Popen([str(AZ), 'aksarc', 'kms', 'reencrypt', '--kubeconfig', box.kubeconfig, '--yes',
                                 '--parallel', '2', '--max-per-second', '4', '--timeout', '120', '-o', 'json'],
                                env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)
        try:
            end = time.monotonic() + 90
            while time.monotonic() < end and sum(rev > before[key][1] for key, (_, rev) in etcd_state(box)[0].items()
                                                 if key in before) < 2:  # two rewrites are in etcd
                time.sleep(0.2)
            assert proc.poll() is None, 'the run ended before the API server could be killed'
            os.kill(box.info['pids']['kube_apiserver'], signal.SIGKILL)
            out, err = proc.communicate(timeout=150)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 1, (proc.returncode, err)
        errors = [line for line in err.splitlines() if line.startswith('ERROR: ')]
        assert len(errors) == 1 and errors[0].startswith('ERROR: Rewriting stopped: ') and \
            'what was rewritten, what was not, and what is unknown' in errors[0], err
        body = json.loads(out)
        assert body['passed'] is False and len(body['targets']) >= 60
        reasons = [t.get('reason') or '' for t in body['targets']]
        outcomes = [t['outcome'] for t in body['targets']]
        assert 'written' in outcomes or 'reencrypted' in outcomes, body['summary']  # some were rewritten
        assert any(r.startswith('unknown whether rewritten: ') for r in reasons), reasons  # the one in flight
        assert any(r == 'not rewritten: stopped by an earlier error' for r in reasons), reasons  # never started
        assert all(r.startswith('rewritten (the API answered), not verified from etcd: ')
                   for t, r in zip(body['targets'], reasons) if t['outcome'] == 'written'), body['targets']
        assert 'Traceback' not in err
    finally:
        box.down()
