"""Cluster.exec keeps every byte of etcdctl's output, however its frames and the close arrive.

An earlier loop over WSClient.update()/read_stdout()/read_stderr() lost the last stdout frames whenever the
close arrived in the update a read of an empty channel ran (intermittent on pages of megabytes: protobuf "declares
N bytes but only M remain"). Cluster.exec now reads the frames itself; these tests feed it frames as
websocket-client returns them from ``recv_data_frame``, through the same ``websocket_call`` it uses, and check
the request is the one CoreV1Api.connect_get_namespaced_pod_exec would send.
"""

import json
import socket

import pytest
import websocket

from azext_kmsverify.cluster import Cluster
from azext_kmsverify.deadline import Deadline

SUCCESS = json.dumps({'metadata': {}, 'status': 'Success'}).encode()
EXIT_3 = json.dumps({'metadata': {}, 'status': 'Failure', 'reason': 'NonZeroExitCode',
                     'details': {'causes': [{'reason': 'ExitCode', 'message': '3'}]}}).encode()
BINARY, TEXT, PING, CLOSE = (websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_PING,
                             websocket.ABNF.OPCODE_CLOSE)


class Frame:
    def __init__(self, data):
        self.data = data


class FakeSocket:
    """websocket.WebSocket as Cluster.exec uses it: ``recv_data_frame`` and a pollable ``sock``."""

    def __init__(self, frames):
        self.frames = list(frames)
        self.sock, self._peer = socket.socketpair()
        self._peer.send(b'x')  # always readable: each poll() says a frame is there

    def recv_data_frame(self, control_frame=False):
        if not self.frames:
            raise websocket.WebSocketConnectionClosedException('Connection to remote host was lost.')
        opcode, data = self.frames.pop(0)
        return opcode, Frame(data)

    def close(self):
        self.sock.close()
        self._peer.close()


class FakeClient:
    def __init__(self, frames):
        self.sock = FakeSocket(frames)
        self.closed = False

    def close(self):
        self.closed = True
        self.sock.close()


@pytest.fixture
def cluster():
    from kubernetes import client
    configuration = client.Configuration()
    configuration.host = 'https://127.0.0.1:6443'
    instance = object.__new__(Cluster)
    instance.deadline = Deadline(30)
    instance.credential = 'kubeconfig'
    instance.server = configuration.host
    instance._api = client.ApiClient(configuration=configuration)
    return instance


def _run(monkeypatch, cluster, frames, argv=('etcdctl', 'get', '--', '/registry/secrets/')):
    from kubernetes.stream import ws_client
    calls = []
    fake = FakeClient(frames)

    def websocket_call(configuration, method, url, **kwargs):
        calls.append((method, url, kwargs))
        return fake
    monkeypatch.setattr(ws_client, 'websocket_call', websocket_call)
    result = cluster.exec('etcd-node', 'etcd', list(argv))
    assert fake.closed
    return result, calls


@pytest.mark.parametrize('frames', [
    [(BINARY, b'\x01' + b'A' * 1000), (BINARY, b'\x01' + b'B' * 5000), (BINARY, b'\x03' + SUCCESS), (CLOSE, b'')],
    [(BINARY, b'\x02warn '), (BINARY, b'\x01' + b'A' * 10), (PING, b''), (BINARY, b'\x02more'),
     (BINARY, b'\xff\x01'), (BINARY, b'\xff\x02'), (BINARY, b'\x03' + SUCCESS), (CLOSE, b'')],
    [(BINARY, b'\x01' + bytes(range(256)) * 300), (TEXT, b'\x01tail'), (BINARY, b'\x01'), (BINARY, b'\x03' + SUCCESS),
     (CLOSE, b'')],
])
def test_exec_keeps_every_output_frame(monkeypatch, cluster, frames):
    data = [d for op, d in frames if op in (BINARY, TEXT)]
    result, calls = _run(monkeypatch, cluster, frames)
    assert result.returncode == 0
    assert result.stdout == b''.join(d[1:] for d in data if d[:1] == b'\x01')
    assert result.stderr == b''.join(d[1:] for d in data if d[:1] == b'\x02')
    [(method, url, kwargs)] = calls
    assert method == 'GET'
    assert url == ('https://127.0.0.1:6443/api/v1/namespaces/kube-system/pods/etcd-node/exec?command=etcdctl'
                   '&command=get&command=--&command=/registry/secrets/&container=etcd&stderr=true&stdin=false'
                   '&stdout=true&tty=false')
    assert kwargs['binary'] is True and kwargs['capture_all'] is False and kwargs['_preload_content'] is False


def test_exec_exit_code_from_the_status_frame(monkeypatch, cluster):
    result, _ = _run(monkeypatch, cluster, [(BINARY, b'\x02Error: boom\n'), (BINARY, b'\x03' + EXIT_3),
                                            (CLOSE, b'')])
    assert (result.returncode, result.stdout, result.stderr) == (3, b'', b'Error: boom\n')


def test_exec_stream_cut_without_close_is_an_error(monkeypatch, cluster):
    from azext_kmsverify.cluster import ExecError
    with pytest.raises(ExecError) as info:
        _run(monkeypatch, cluster, [(BINARY, b'\x01partial')])
    assert 'cut before etcdctl finished' in info.value.error.error_msg


def test_exec_url_matches_the_generated_client(cluster):
    """The request is byte for byte the one CoreV1Api.connect_get_namespaced_pod_exec sends through stream()."""
    import importlib

    from kubernetes import client
    stream_module = importlib.import_module('kubernetes.stream.stream')
    seen = []

    def capture(configuration, method, url, **kwargs):
        seen.append((method, url, kwargs.get('headers')))
        raise RuntimeError('captured')
    argv = ['etcdctl', '--endpoints=https://127.0.0.1:2379', 'get', '--', '/registry/secrets/a b+c&d']
    with pytest.raises(RuntimeError):
        stream_module._websocket_request(capture, None, client.CoreV1Api(cluster._api).connect_get_namespaced_pod_exec,
                                         'etcd-node', 'kube-system', command=argv, container='etcd', stderr=True,
                                         stdin=False, stdout=True, tty=False, _preload_content=False, binary=True)
    from kubernetes.stream import ws_client
    mine = []
    original = ws_client.websocket_call
    try:
        ws_client.websocket_call = lambda configuration, method, url, **kwargs: mine.append(
            (method, url, kwargs.get('headers'))) or FakeClient([(BINARY, b'\x03' + SUCCESS), (CLOSE, b'')])
        cluster.exec('etcd-node', 'etcd', argv)
    finally:
        ws_client.websocket_call = original
    assert mine == seen
