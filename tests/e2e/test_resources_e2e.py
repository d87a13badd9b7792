"""``--resource``: configmaps and a custom resource scanned and rewritten, on the real kube-apiserver.

The sandbox's API server first stores configmaps and ``widgets.kmsverify.test`` objects in plaintext (the
EncryptionConfiguration lists secrets only, as a default AKS Arc cluster does); then ``encrypt_resources`` lists
them with the KMS v2 provider and restarts it. Objects written before stay in plaintext in etcd, as on a real
cluster: ``verify --all-secrets --resource`` must find them, ``reencrypt --resource`` rewrite them through the API
(the custom resource at its CRD's storage version), and etcd (etcdctl) must show the result.
"""

import time

import pytest

from tests.conftest import Az

GROUP = 'kmsverify.test'
CR = f'widgets.{GROUP}'
KMS_PREFIX = b'k8s:enc:kms:v2:kms-plugin:'

CRD = {
    'apiVersion': 'apiextensions.k8s.io/v1', 'kind': 'CustomResourceDefinition',
    'metadata': {'name': CR},
    'spec': {'group': GROUP, 'scope': 'Namespaced',
             'names': {'plural': 'widgets', 'singular': 'widget', 'kind': 'Widget'},
             # v1 is served and stored; v1beta1 served only: the rewrite must use the storage version
             'versions': [{'name': 'v1beta1', 'served': True, 'storage': False,
                           'schema': {'openAPIV3Schema': {'type': 'object',
                                                          'x-kubernetes-preserve-unknown-fields': True}}},
                          {'name': 'v1', 'served': True, 'storage': True,
                           'schema': {'openAPIV3Schema': {'type': 'object',
                                                          'x-kubernetes-preserve-unknown-fields': True}}}]}}


def _created(box, path, body):
    status, answer = box.api('POST', path, body)
    assert status in (200, 201), (status, answer)


def _wait_established(box, name, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, crd = box.api('GET', f'/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}')
        if status == 200 and any(c.get('type') == 'Established' and c.get('status') == 'True'
                                 for c in (crd.get('status') or {}).get('conditions') or []):
            # discovery of the new group lags the condition a little
            if box.api('GET', f'/apis/{GROUP}/v1')[0] == 200:
                return
        time.sleep(0.5)
    raise AssertionError(f'CRD {name} not established')


def _configmap(name, value):
    return {'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': {'name': name}, 'data': {'k': value}}


def _widget(name):
    return {'apiVersion': f'{GROUP}/v1', 'kind': 'Widget', 'metadata': {'name': name}, 'spec': {'size': 3}}


@pytest.fixture(scope='module')
def box(tmp_path_factory):
    from tests.sandbox.control import Sandbox
    sandbox = Sandbox(str(tmp_path_factory.mktemp('resources') / 'sandbox'))
    sandbox.up(provider='kms-v2')
    try:
        _created(sandbox, '/apis/apiextensions.k8s.io/v1/customresourcedefinitions', CRD)
        _wait_established(sandbox, CR)
        _created(sandbox, '/api/v1/namespaces/default/configmaps', _configmap('plain-cm', 'before'))
        _created(sandbox, f'/apis/{GROUP}/v1/namespaces/default/widgets', _widget('plain-widget'))
        sandbox.encrypt_resources(['configmaps', CR])
        _created(sandbox, '/api/v1/namespaces/default/configmaps', _configmap('kms-cm', 'after'))
        _created(sandbox, f'/apis/{GROUP}/v1/namespaces/default/widgets', _widget('kms-widget'))
        yield sandbox
    finally:
        sandbox.down()


@pytest.fixture(scope='module')
def run(installed, tmp_path_factory, box):
    az = Az(tmp_path_factory.mktemp('azure-config'))
    return lambda *args: az('aksarc', 'kms', *args, '--kubeconfig', box.kubeconfig)


def test_verify_scans_each_resource_and_counts_it_apart(box, run):
    assert box.etcdctl_get('/registry/configmaps/default/plain-cm').startswith(b'k8s\x00')  # protobuf, plaintext
    assert box.etcdctl_get(f'/registry/{GROUP}/widgets/default/plain-widget').startswith(b'{')  # JSON, plaintext
    assert box.etcdctl_get('/registry/configmaps/default/kms-cm').startswith(KMS_PREFIX)
    assert box.etcdctl_get(f'/registry/{GROUP}/widgets/default/kms-widget').startswith(KMS_PREFIX)

    result = run('verify', '--all-secrets', '--resource', 'configmaps', CR, '-o', 'json')
    assert result.code == 4, result
    body = result.json()
    assert 'scan' not in body  # secrets were not named
    by_name = {r['resource']: r for r in body['resources']}
    assert list(by_name) == ['configmaps', CR]
    configmaps, widgets = by_name['configmaps'], by_name[CR]
    assert configmaps['etcdPrefix'] == '/registry/configmaps/' and configmaps['namespaced'] is True
    assert widgets['etcdPrefix'] == f'/registry/{GROUP}/widgets/'
    assert widgets['total'] == 2 and widgets['byStorage'] == {'identity': 1, 'kms': 1}
    assert [(f['namespace'], f['name']) for f in widgets['failing']] == [('default', 'plain-widget')]
    # kube-apiserver writes configmaps of its own (kube-root-ca.crt per namespace) before the restart: plaintext too
    assert ('default', 'plain-cm') in [(f['namespace'], f['name']) for f in configmaps['failing']]
    assert ('default', 'kms-cm') not in [(f['namespace'], f['name']) for f in configmaps['failing']]
    assert configmaps['byKmsVersion']['v2'] >= 1
    checks = {(c['name'], c['target']): c for c in body['checks']}
    assert checks[('AllObjectsEncrypted', 'configmaps')]['status'] == 'Failed'
    assert checks[('AllObjectsEncrypted', CR)]['status'] == 'Failed'
    assert '1 of 2 objects is not encrypted with KMS: 1 identity' in checks[('AllObjectsEncrypted', CR)]['detail']
    assert f'reencrypt --resource {CR}' in widgets['remediation']

    table = run('verify', '--all-secrets', '--resource', CR, '-o', 'table')
    assert table.code == 4 and 'AllObjectsEncrypted' in table.stdout and CR in table.stdout, table


def test_reencrypt_rewrites_each_resource_through_the_api_and_proves_it_from_etcd(box, run):
    planned = run('reencrypt', '--resource', 'configmaps', CR, '--dry-run', '-o', 'json')
    assert planned.code == 4, planned  # targets planned: a problem found
    plan = planned.json()
    assert plan['plan']['byResource'][CR] == {'scanned': 2, 'targets': 1}
    assert {(t.get('resource'), t['namespace'], t['name']) for t in plan['targets']} >= {
        ('configmaps', 'default', 'plain-cm'), (CR, 'default', 'plain-widget')}
    before = box.etcdctl_get(f'/registry/{GROUP}/widgets/default/plain-widget')
    assert before.startswith(b'{')  # a dry run writes nothing

    result = run('reencrypt', '--resource', 'configmaps', CR, '--yes', '-o', 'json')
    assert result.code == 0, result
    body = result.json()
    assert body['passed'] is True
    targets = {(t.get('resource'), t['namespace'], t['name']): t for t in body['targets']}
    for key in (('configmaps', 'default', 'plain-cm'), (CR, 'default', 'plain-widget')):
        assert targets[key]['outcome'] == 'reencrypted', targets[key]
        assert targets[key]['storageAfter'] == 'kms' and targets[key]['keyIdAfter'] == body['currentKeyId']
    # etcd, read with etcdctl, agrees; the object is unchanged through the API (the storage version was used)
    assert box.etcdctl_get('/registry/configmaps/default/plain-cm').startswith(KMS_PREFIX)
    assert box.etcdctl_get(f'/registry/{GROUP}/widgets/default/plain-widget').startswith(KMS_PREFIX)
    status, widget = box.api('GET', f'/apis/{GROUP}/v1/namespaces/default/widgets/plain-widget')
    assert status == 200 and widget['spec'] == {'size': 3}
    status, configmap = box.api('GET', '/api/v1/namespaces/default/configmaps/plain-cm')
    assert status == 200 and configmap['data'] == {'k': 'before'}

    again = run('verify', '--all-secrets', '--resource', 'configmaps', CR, '-o', 'json')
    assert again.code == 0, again
    assert all(not r['failing'] and not r['stale'] for r in again.json()['resources'])


def test_bad_resources_are_refused_with_one_line(run):
    missing = run('verify', '--all-secrets', '--resource', f'gadgets.{GROUP}', '-o', 'json')
    assert missing.code == 3, missing
    assert f'--resource gadgets.{GROUP}' in missing.stderr and 'Traceback' not in missing.stderr
    wrong = run('verify', '--all-secrets', '--resource', 'ConfigMap')
    assert wrong.code == 2 and 'lower-case plurals' in wrong.stderr, wrong
    alone = run('verify', '--resource', 'configmaps')
    assert alone.code == 2 and '--all-secrets' in alone.stderr, alone
    mixed = run('reencrypt', '--resource', 'configmaps', '--secret', 'default/x', '--dry-run')
    assert mixed.code == 2 and 'does not include secrets' in mixed.stderr, mixed
