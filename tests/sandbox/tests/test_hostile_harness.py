"""The hostile harness itself (tests/sandbox/apiserver/hostile): every role answers, every behaviour misbehaves as
documented, and the recorder sees a credential when one is sent (so a test asserting none arrived can fail)."""

import json
import socket
import ssl
import time

import pytest
import requests

from tests.sandbox.apiserver.hostile import HOSTILE_TEXT, HostileServer
from tests.sandbox.apiserver.hostile.server import RAW_CHARS, TOKEN


@pytest.fixture
def server(tmp_path):
    hostile = HostileServer(tmp_path / 'h')
    yield hostile
    hostile.close()


def _get(server, path, method='GET', **kwargs):
    return requests.request(method, server.url(path), verify=str(server.tls_files[0]), timeout=30,
                            allow_redirects=False, **kwargs)


def test_every_role_answers_normally(server):
    assert 'readyz check passed' in _get(server, '/readyz?verbose=true').text
    pods = _get(server, '/api/v1/namespaces/kube-system/pods').json()
    assert pods['items'][0]['metadata']['name'] == 'etcd-hostile'
    assert _get(server, '/api/v1/namespaces/default/secrets', 'POST',
                json={'metadata': {'name': 'p'}}).status_code == 201
    assert _get(server, '/api/v1/namespaces/default/secrets/p', 'DELETE').status_code == 200
    arm = _get(server, '/subscriptions/s/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/c/'
                       'providers/Microsoft.HybridContainerService/provisionedClusterInstances/default/'
                       'listUserKubeconfig?api-version=2024-01-01', 'POST')
    assert arm.status_code == 202
    assert _get(server, arm.headers['Azure-AsyncOperation'][len(server.url()):]).json() == {'status': 'Succeeded'}
    result = _get(server, arm.headers['Location'][len(server.url()):]).json()
    assert 'kubeconfigs' in result
    discovery = _get(server, '/hostile-tenant/v2.0/.well-known/openid-configuration').json()
    token = _get(server, discovery['token_endpoint'][len(server.url()):], 'POST', data={'grant_type': 'x'}).json()
    assert token['access_token'] == TOKEN
    page = _get(server, '/providers/Microsoft.ResourceGraph/resources?api-version=2022-10-01', 'POST',
                json={'query': 'x', 'options': {}}).json()
    assert len(page['data']) == 1 and '$skipToken' not in page


def test_trickle_sends_a_byte_every_interval(server):
    server.set('readyz', 'trickle', interval=0.3)
    context = ssl.create_default_context(cafile=str(server.tls_files[0]))
    with socket.create_connection(('127.0.0.1', server.port)) as raw, \
            context.wrap_socket(raw, server_hostname='127.0.0.1') as tls:
        tls.sendall(b'GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n')
        started = time.monotonic()
        got = b''
        while len(got) < 5:
            got += tls.recv(1)
        assert time.monotonic() - started >= 1.0 and got == b'HTTP/'


def test_redirect_points_at_the_recorder_and_the_recorder_sees_credentials(server):
    server.set('pods', 'redirect', scheme='http')
    answer = _get(server, '/api/v1/namespaces/kube-system/pods')
    assert answer.status_code == 302 and answer.headers['Location'].startswith(server.recorder.url('/'))
    assert server.recorder.credentials_seen() == []
    requests.get(answer.headers['Location'], headers={'Authorization': f'Bearer {TOKEN}'}, timeout=30)
    assert server.recorder.credentials_seen() == [('authorization', f'Bearer {TOKEN}')]


def test_inject_puts_every_hostile_character_in_the_fields(server):
    server.set('pods', 'inject').set('entra-token', 'inject').set('arm-operation', 'inject').set('graph', 'inject')
    name = _get(server, '/api/v1/namespaces/kube-system/pods').json()['items'][0]['metadata']['name']
    assert name == HOSTILE_TEXT and all(char in name for char in RAW_CHARS)
    error = _get(server, '/t/oauth2/v2.0/token', 'POST').json()
    assert error['error'] == HOSTILE_TEXT and 'Trace ID: 25c9a1b2-0000-4000-8000-00000000abcd' in \
        error['error_description']
    assert _get(server, '/hostile-operations/op1').json()['error']['code'] == HOSTILE_TEXT
    row = _get(server, '/providers/Microsoft.ResourceGraph/resources', 'POST', json={}).json()['data'][0]
    assert row['name'].startswith(HOSTILE_TEXT)


def test_endless_graph_pages_always_carry_a_new_skip_token(server):
    server.set('graph', 'endless')
    token = None
    for page in range(3):
        answer = _get(server, '/providers/Microsoft.ResourceGraph/resources', 'POST',
                      json={'options': {'$skipToken': token} if token else {}}).json()
        assert len(answer['data']) == 1000 and answer['$skipToken'] == str(page + 1)
        token = answer['$skipToken']


def test_nested_and_oversized_bodies(server):
    server.set('pods', 'nested', depth=5000)
    body = _get(server, '/api/v1/namespaces/kube-system/pods').content
    assert body == b'[' * 5000 + b']' * 5000
    server.set('pods', 'oversized', size=3 * 1024 * 1024)
    assert len(_get(server, '/api/v1/namespaces/kube-system/pods').content) == 3 * 1024 * 1024


def test_arm_operation_urls_can_point_at_another_host(server):
    elsewhere = server.recorder.url('/elsewhere')
    server.set('arm-kubeconfig', 'normal', async_url=elsewhere, location=elsewhere)
    answer = _get(server, '/x/listClusterAdminCredential', 'POST')
    assert answer.headers['Azure-AsyncOperation'] == elsewhere and answer.headers['Location'] == elsewhere
    json.dumps(server.requests[-1][3])  # headers are recorded as plain strings
