"""kube.execstream keeps every byte of etcdctl's output, however its frames and the close arrive.

An earlier loop over the kubernetes client's WSClient lost the last stdout frames whenever the close arrived in
the update a read of an empty channel ran (intermittent on pages of megabytes). The stream is now read frame by
frame from the socket after websocket-client's handshake; these tests feed it the frames' bytes through a socket
pair and check the request it sends (URL, subprotocols, headers) without a server.
"""

import json
import socket
import ssl

import pytest
import websocket

from azext_kmsverify.deadline import Deadline
from azext_kmsverify.kube import execstream
from azext_kmsverify.kube.execstream import ExecError, exec_in_pod

SUCCESS = json.dumps({'metadata': {}, 'status': 'Success'}).encode()
EXIT_3 = json.dumps({'metadata': {}, 'status': 'Failure', 'reason': 'NonZeroExitCode',
                     'details': {'causes': [{'reason': 'ExitCode', 'message': '3'}]}}).encode()
BINARY, TEXT, PING, CLOSE = (websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_PING,
                             websocket.ABNF.OPCODE_CLOSE)


def encode(opcode, data, fin=True):
    """One server frame (unmasked), as an API server sends it."""
    return websocket.ABNF(fin=int(fin), opcode=opcode, mask_value=0, data=data).format()


class FakeWebSocket:
    """websocket.WebSocket as execstream uses it: ``connect`` (the handshake), then its ``sock``, which execstream
    reads frame by frame; the peer writes ``next_frames`` (``(opcode, data)`` or raw bytes) and closes."""

    instances = []

    def __init__(self, sslopt=None, skip_utf8_validation=False):
        self.sslopt = sslopt
        self.frames = list(FakeWebSocket.next_frames)
        self.sock, self._peer = socket.socketpair()
        self.connected_with = None
        self.closed = False
        self.pongs = []
        FakeWebSocket.instances.append(self)

    def connect(self, url, **options):
        import threading
        self.connected_with = (url, options)

        def write():
            try:
                for frame in self.frames:
                    self._peer.sendall(frame if isinstance(frame, bytes) else encode(*frame))
                self._peer.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        threading.Thread(target=write, daemon=True).start()

    def pong(self, data):
        self.pongs.append(data)

    def close(self, timeout=None):
        self.closed = True
        self.sock.close()
        self._peer.close()


class FakeClient:
    """What exec_in_pod needs of a KubeClient."""

    server = 'https://127.0.0.1:6443'
    proxy = None
    tls_server_name = None

    def __init__(self):
        from azext_kmsverify.kube.errors import KubeErrors
        self.deadline = Deadline(30)
        self.ssl_context = ssl.create_default_context()
        self.errors = KubeErrors(self.server, 'kubeconfig', self.deadline)

    def url(self, path, query=None):
        from urllib.parse import urlencode
        return self.server + path + ('?' + urlencode(list(query)) if query else '')

    def auth_headers(self):
        return {'Authorization': 'Bearer not-a-real-token'}


def _run(monkeypatch, frames, argv=('etcdctl', 'get', '--', '/registry/secrets/')):
    FakeWebSocket.next_frames = frames
    FakeWebSocket.instances = []
    monkeypatch.setattr(websocket, 'WebSocket', FakeWebSocket)
    monkeypatch.setattr(execstream, '_open_socket', lambda *args: None)
    result = exec_in_pod(FakeClient(), 'kube-system', 'etcd-node', 'etcd', list(argv))
    [fake] = FakeWebSocket.instances
    assert fake.closed
    return result, fake


@pytest.mark.parametrize('frames', [
    [(BINARY, b'\x01' + b'A' * 1000), (BINARY, b'\x01' + b'B' * 5000), (BINARY, b'\x03' + SUCCESS), (CLOSE, b'')],
    [(BINARY, b'\x02warn '), (BINARY, b'\x01' + b'A' * 10), (PING, b''), (BINARY, b'\x02more'),
     (BINARY, b'\xff\x01'), (BINARY, b'\xff\x02'), (BINARY, b'\x03' + SUCCESS), (CLOSE, b'')],
    [(BINARY, b'\x01' + bytes(range(256)) * 300), (TEXT, b'\x01tail'), (BINARY, b'\x01'), (BINARY, b'\x03' + SUCCESS),
     (CLOSE, b'')],
])
def test_exec_keeps_every_output_frame(monkeypatch, frames):
    data = [d for op, d in frames if op in (BINARY, TEXT)]
    result, fake = _run(monkeypatch, frames)
    assert result.returncode == 0
    assert result.stdout == b''.join(d[1:] for d in data if d[:1] == b'\x01')
    assert result.stderr == b''.join(d[1:] for d in data if d[:1] == b'\x02')
    url, options = fake.connected_with
    assert url == ('wss://127.0.0.1:6443/api/v1/namespaces/kube-system/pods/etcd-node/exec?command=etcdctl'
                   '&command=get&command=--&command=%2Fregistry%2Fsecrets%2F&container=etcd&stderr=true'
                   '&stdout=true&tty=false')
    assert options['subprotocols'] == ['v5.channel.k8s.io', 'v4.channel.k8s.io']
    assert 'Authorization: Bearer not-a-real-token' in options['header']
    assert 0 < options['timeout'] <= 30


def test_exec_exit_code_from_the_status_frame(monkeypatch):
    result, _ = _run(monkeypatch, [(BINARY, b'\x02Error: boom\n'), (BINARY, b'\x03' + EXIT_3), (CLOSE, b'')])
    assert (result.returncode, result.stdout, result.stderr) == (3, b'', b'Error: boom\n')


def test_exec_stream_cut_without_close_is_an_error(monkeypatch):
    with pytest.raises(ExecError) as info:
        _run(monkeypatch, [(BINARY, b'\x01partial')])
    assert 'cut before etcdctl finished' in info.value.error.error_msg


def test_exec_output_is_capped(monkeypatch):
    monkeypatch.setattr(execstream.defaults, 'EXEC_OUTPUT_MAX_BYTES', 1024 * 1024)
    frames = [(BINARY, b'\x01' + b'A' * 600 * 1024)] * 2 + [(BINARY, b'\x03' + SUCCESS), (CLOSE, b'')]
    FakeWebSocket.next_frames = frames
    FakeWebSocket.instances = []
    monkeypatch.setattr(websocket, 'WebSocket', FakeWebSocket)
    monkeypatch.setattr(execstream, '_open_socket', lambda *args: None)
    with pytest.raises(ExecError) as info:
        exec_in_pod(FakeClient(), 'kube-system', 'etcd-node', 'etcd', ['etcdctl'], max_bytes=1024 * 1024)
    assert 'more than 1 MiB of output' in info.value.error.error_msg and info.value.fatal


def test_exec_handshake_refusal_names_the_permission(monkeypatch):
    class Refusing(FakeWebSocket):
        def connect(self, url, **options):
            body = json.dumps({'kind': 'Status', 'message': 'pods "etcd-node" is forbidden: User "u" cannot create '
                                                            'resource "pods/exec"'}).encode()
            raise websocket.WebSocketBadStatusException('Handshake status 403 Forbidden', 403, resp_body=body)
    FakeWebSocket.next_frames = []
    monkeypatch.setattr(websocket, 'WebSocket', Refusing)
    monkeypatch.setattr(execstream, '_open_socket', lambda *args: None)
    with pytest.raises(ExecError) as info:
        exec_in_pod(FakeClient(), 'kube-system', 'etcd-node', 'etcd', ['etcdctl'])
    assert info.value.fatal
    assert any('get and create pods/exec' in r for r in info.value.error.recommendations)


CONT = websocket.ABNF.OPCODE_CONT


def test_a_message_split_in_continuation_frames_keeps_its_channel(monkeypatch):
    frames = [encode(BINARY, b'\x01AB', fin=False), encode(PING, b'hi'), encode(CONT, b'CD', fin=False),
              encode(CONT, b'EF'), encode(BINARY, b'\x02err'), encode(BINARY, b'\x03' + SUCCESS), encode(CLOSE, b'')]
    result, fake = _run(monkeypatch, frames)
    assert (result.stdout, result.stderr) == (b'ABCDEF', b'err') and fake.pongs == [b'hi']


def test_a_message_that_never_ends_is_cut_at_the_cap_as_it_grows(monkeypatch):
    """Continuation frames without a final one: stopped once the output passes the cap, not at the end."""
    chunk = b'A' * (64 * 1024)
    frames = [encode(BINARY, b'\x01' + chunk, fin=False)] + [encode(CONT, chunk, fin=False)] * 40
    FakeWebSocket.next_frames = frames
    FakeWebSocket.instances = []
    monkeypatch.setattr(websocket, 'WebSocket', FakeWebSocket)
    monkeypatch.setattr(execstream, '_open_socket', lambda *args: None)
    with pytest.raises(ExecError) as info:
        exec_in_pod(FakeClient(), 'kube-system', 'etcd-node', 'etcd', ['etcdctl'], max_bytes=1024 * 1024)
    assert 'more than 1 MiB of output' in info.value.error.error_msg and info.value.fatal


def test_a_frame_announcing_more_than_the_cap_is_refused_before_it_is_read(monkeypatch):
    huge = bytes([0x82, 127]) + (1 << 40).to_bytes(8, 'big')  # a 1 TiB binary frame's header, nothing after
    FakeWebSocket.next_frames = [huge]
    FakeWebSocket.instances = []
    monkeypatch.setattr(websocket, 'WebSocket', FakeWebSocket)
    monkeypatch.setattr(execstream, '_open_socket', lambda *args: None)
    with pytest.raises(ExecError) as info:
        exec_in_pod(FakeClient(), 'kube-system', 'etcd-node', 'etcd', ['etcdctl'], max_bytes=1024 * 1024)
    assert 'a frame of more than 1 MiB' in info.value.error.error_msg


def test_a_redirect_of_the_exec_is_refused_and_named(monkeypatch):
    class Redirecting(FakeWebSocket):
        def connect(self, url, **options):
            assert options['redirect_limit'] == 0
            self.handshake_response = type('R', (), {'status': 302,
                                                     'headers': {'location': 'ws://evil.example/x\x1b'}})()
            raise websocket.WebSocketException('Redirect limit exhausted')
    FakeWebSocket.next_frames = []
    monkeypatch.setattr(websocket, 'WebSocket', Redirecting)
    monkeypatch.setattr(execstream, '_open_socket', lambda *args: None)
    with pytest.raises(ExecError) as info:
        exec_in_pod(FakeClient(), 'kube-system', 'etcd-node', 'etcd', ['etcdctl'])
    message = info.value.error.error_msg
    assert info.value.fatal and 'answered 302 (a redirect to ws://evil.example/x\\x1b)' in message
    assert 'opening the exec stream to pod etcd-node' in message and 'not followed' in message


def test_a_redirect_returned_as_connected_is_refused(monkeypatch):
    """websocket-client 1.8 (az's own copy) returns a redirect with redirect_limit=0 as a connection."""
    class Redirected(FakeWebSocket):
        def connect(self, url, **options):
            self.handshake_response = type('R', (), {'status': 307, 'headers': {'location': 'wss://other/x'}})()
    FakeWebSocket.next_frames = []
    monkeypatch.setattr(websocket, 'WebSocket', Redirected)
    monkeypatch.setattr(execstream, '_open_socket', lambda *args: None)
    with pytest.raises(ExecError) as info:
        exec_in_pod(FakeClient(), 'kube-system', 'etcd-node', 'etcd', ['etcdctl'])
    assert 'answered 307 (a redirect to wss://other/x)' in info.value.error.error_msg and info.value.fatal
def test_a_kubelet_the_api_server_cannot_reach_after_the_upgrade_names_the_node_and_keeps_the_cause():
    """kube-apiserver 1.29.6 (translation gate on, as 1.30+ by default) answered a dead kubelet with this Status on
    the error channel (captured from the sandbox's real server): the kubelet URL goes, the cause stays."""
    url = ('https://127.0.0.1:37519/exec/kube-system/etcd-moc-a/etcd?command=etcdctl' +
           '&command=--cacert%3D%2Fetc%2Fkubernetes%2Fpki%2Fetcd%2Fca.crt' * 8)
    message = (f'error sending request: Post "{url}": dial tcp 127.0.0.1:37519: connect: connection refused')
    frame = json.dumps({'metadata': {}, 'status': 'Failure', 'message': f'Internal error occurred: {message}',
                        'reason': 'InternalError', 'details': {'causes': [{'message': message}]}, 'code': 500})
    with pytest.raises(ExecError) as raised:
        execstream._exit_status('etcd-moc-a', ['etcdctl'], frame.encode(), 'etcd')
    error = raised.value.error
    assert 'could not reach the kubelet of pod etcd-moc-a' in error.error_msg
    assert 'connect: connection refused' in error.error_msg and '/exec/' not in error.error_msg
    assert 'Check the node that runs pod etcd-moc-a' in error.recommendations[0]
