# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""``pods/exec`` over WebSocket (the ``v5``/``v4.channel.k8s.io`` protocols), with websocket-client.

Runs an argv without a shell or TTY and returns its exact stdout and stderr bytes and exit code. Frames are
read one at a time into per-channel lists (a page of etcd values is megabytes), the output cap checked as each
frame arrives, and every wait (TCP connect, TLS and WebSocket handshakes, each frame) is bounded by the run's
deadline from outside (the socket is registered with its watchdog). A redirect is never followed.
"""

from __future__ import annotations

import json
import re
import ssl
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from knack.log import get_logger

from azext_kmsverify import defaults
from azext_kmsverify.errors import argument_error, make
from azext_kmsverify.kube.errors import status_message
from azext_kmsverify.text import printable, truncate

logger = get_logger(__name__)

STDOUT, STDERR, ERROR = 1, 2, 3
_PROTOCOLS = ['v5.channel.k8s.io', 'v4.channel.k8s.io']
# kube-apiserver >= 1.30 (1.29 with TranslateStreamCloseWebsocketRequests) upgrades the WebSocket before it dials
# the kubelet, so a kubelet it cannot reach comes as an InternalError Status on the error channel whose message
# quotes the kubelet's exec URL (the whole argv) before the cause.
_KUBELET_UNREACHABLE = re.compile(r'error (?:sending request|dialing backend)')
_QUOTED_URL = re.compile(r'"https?://[^"]*"')


@dataclass(repr=False)
class ExecResult:
    """What one exec returned. ``stdout`` holds etcd values: never shown."""

    returncode: int
    stdout: bytes
    stderr: bytes

    def __repr__(self) -> str:
        return (f'ExecResult(returncode={self.returncode}, stdout=<{len(self.stdout)} bytes>, '
                f'stderr=<{len(self.stderr)} bytes>)')

    __str__ = __repr__


class ExecError(Exception):
    """The exec itself failed (not the program): the pod or the stream. ``fatal``: not worth another pod."""

    def __init__(self, error, fatal: bool = False):
        super().__init__(error.error_msg)
        self.error = error
        self.fatal = fatal


def exec_in_pod(client, namespace: str, pod: str, container: str, argv: list[str], *,
                max_bytes: int = defaults.EXEC_OUTPUT_MAX_BYTES) -> ExecResult:
    """Run ``argv`` in ``container`` of ``pod``. Raises ExecError when the exec itself fails."""
    import websocket
    deadline = client.deadline
    pod = printable(pod)  # a name from the API server: in messages only, escaped
    doing = f'exec into pod {pod}'
    if deadline.expired():
        raise ExecError(client.errors.timeout(doing), True)
    # argv holds flags, paths and etcd keys only, never a value.
    logger.debug('exec in %s/%s container %s: %s', namespace, pod, printable(container), printable(' '.join(argv)))
    query = [('command', arg) for arg in argv] + [('container', container), ('stderr', 'true'),
                                                  ('stdout', 'true'), ('tty', 'false')]
    path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}/exec"
    url = 'ws' + client.url(path, query)[len('http'):]
    sock = websocket.WebSocket(sslopt=_sslopt(client), skip_utf8_validation=True)
    headers = [f'{k}: {v}' for k, v in client.auth_headers().items()] + [f'User-Agent: {defaults.USER_AGENT}']
    registry = getattr(client, 'sockets', None)
    try:
        # Without a proxy the TCP connection and TLS are made here, the socket registered with the deadline's
        # watchdog before the TLS handshake: the handshake, the upgrade's headers and every frame are cut at the
        # deadline however slowly the server answers. redirect_limit=0: a redirect is refused, never followed
        # (websocket-client would send the same headers, Authorization included, to the new address).
        options = {'socket': _open_socket(client, url, registry, sock)} if not client.proxy else {}
        sock.connect(url, header=headers, subprotocols=_PROTOCOLS, timeout=deadline.bound(30),
                     suppress_origin=True, redirect_limit=0, **options, **_proxy_options(client.proxy))
    except websocket.WebSocketBadStatusException as ex:
        raise _handshake_error(client, pod, ex.status_code, getattr(ex, 'resp_body', b'') or b'') from None
    except (websocket.WebSocketException, OSError, ssl.SSLError) as ex:
        response = getattr(sock, 'handshake_response', None)
        if response is not None and 300 <= (response.status or 0) < 400:
            raise ExecError(client.errors.redirect(response.status, (response.headers or {}).get('location'),
                                                   f'opening the exec stream to pod {pod}'), True) from None
        if _cut(deadline) or isinstance(ex, (websocket.WebSocketTimeoutException, TimeoutError)):
            raise ExecError(client.errors.timeout(f'connecting to exec into {pod}'), True) from None
        if 'CERTIFICATE_VERIFY_FAILED' in str(ex):
            raise ExecError(client.errors.transport(ex, doing), True) from None
        raise ExecError(client.errors.transport(ex, f'opening an exec stream to pod {pod}')) from None
    response = getattr(sock, 'handshake_response', None)
    if response is not None and 300 <= (response.status or 0) < 400:
        # websocket-client before 1.9 (az's own copy comes first on sys.path) returns a redirect as connected
        try:
            sock.close(timeout=0.2)
        finally:
            if registry is not None:
                registry.remove(sock)
        raise ExecError(client.errors.redirect(response.status, (response.headers or {}).get('location'),
                                               f'opening the exec stream to pod {pod}'), True)
    try:
        if registry is not None and client.proxy:
            registry.add(sock, sock.sock)  # through a proxy: watched from the first frame on
        return _read(client, sock, pod, container, argv, max_bytes=max_bytes)
    finally:
        try:
            sock.close(timeout=0.2)
        except Exception:  # pylint: disable=broad-except  # closing a broken stream: nothing left to do
            pass
        if registry is not None:
            registry.remove(sock)


def _cut(deadline) -> bool:
    return bool(getattr(deadline, 'fired', False)) or deadline.expired()


def _open_socket(client, url: str, registry, owner):
    """The TCP connection (and TLS for wss) of the exec, registered with the client's sockets as it is made."""
    import socket
    parts = urlsplit(url)
    secure = parts.scheme == 'wss'
    raw = socket.create_connection((parts.hostname, parts.port or (443 if secure else 80)),
                                   timeout=client.deadline.bound(30))
    try:
        if registry is not None:
            registry.add(owner, raw)
        raw.settimeout(client.deadline.bound(30))
        if not secure:
            return raw
        return client.ssl_context.wrap_socket(raw, server_hostname=client.tls_server_name or parts.hostname)
    except BaseException:
        raw.close()
        raise


class _Frames:  # pylint: disable=too-few-public-methods  # one frame at a time
    """WebSocket frames read straight from the socket, each read bounded (the watchdog cuts it at the deadline),
    each frame's length checked before a byte of it is read."""

    def __init__(self, sock, deadline, max_frame: int):
        self.sock = sock
        self.deadline = deadline
        self.max_frame = max_frame

    def _exact(self, count: int) -> bytes:
        parts, got = [], 0
        while got < count:
            self.sock.settimeout(self.deadline.bound(30))
            chunk = self.sock.recv(min(count - got, 256 * 1024))
            if not chunk:
                raise EOFError
            parts.append(chunk)
            got += len(chunk)
        return b''.join(parts)

    def next(self) -> tuple[bool, int, bytes]:
        """(fin, opcode, payload) of the next frame."""
        head = self._exact(2)
        fin, opcode, masked, length = bool(head[0] & 0x80), head[0] & 0x0f, bool(head[1] & 0x80), head[1] & 0x7f
        if length == 126:
            length = int.from_bytes(self._exact(2), 'big')
        elif length == 127:
            length = int.from_bytes(self._exact(8), 'big')
        if length > self.max_frame:
            raise _TooLarge(length)
        mask = self._exact(4) if masked else None
        payload = self._exact(length) if length else b''
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return fin, opcode, payload


class _TooLarge(Exception):
    pass


def _read(client, sock, pod: str, container: str, argv: list[str], *, max_bytes: int) -> ExecResult:
    """Read the exec's messages frame by frame: a message's channel is its first byte, continuation frames add to
    that channel as they arrive, so the output cap holds as a message grows (a message that never ends cannot
    grow past it), and every frame wait is cut at the deadline."""
    import websocket
    abnf = websocket.ABNF
    deadline = client.deadline
    sinks: dict[int, list[bytes]] = {STDOUT: [], STDERR: [], ERROR: []}
    size = 0
    frames = _Frames(sock.sock, deadline, max_bytes + 1)
    channel = None  # the channel of the message being read (None: between messages)
    try:
        while True:
            if deadline.expired():
                raise ExecError(client.errors.timeout(f'exec into {pod} produced no end of output'), True)
            fin, opcode, data = frames.next()
            if opcode == abnf.OPCODE_CLOSE:
                break
            if opcode == abnf.OPCODE_PING:
                sock.pong(data[:125])
                continue
            if opcode == abnf.OPCODE_PONG:
                continue
            if opcode in (abnf.OPCODE_BINARY, abnf.OPCODE_TEXT):
                channel = data[0] if data else -1
                data = data[1:]
            elif opcode != abnf.OPCODE_CONT or channel is None:
                raise ExecError(_stream_cut(pod, 'a frame out of order'))
            if channel in sinks and data:  # 255 <n> is v5's end of stream n: nothing to keep
                size += len(data)
                if size > max_bytes:
                    raise ExecError(_stream_cut(pod, f'more than {max_bytes // (1024 * 1024)} MiB of output'), True)
                sinks[channel].append(data)
            if fin:
                channel = None
    except _TooLarge:
        raise ExecError(_stream_cut(pod, f'a frame of more than {max_bytes // (1024 * 1024)} MiB'), True) from None
    except (EOFError, OSError, ssl.SSLError) as ex:
        if _cut(deadline):
            raise ExecError(client.errors.timeout(f'exec into {pod} produced no end of output'), True) from None
        if isinstance(ex, TimeoutError):
            raise ExecError(_stream_cut(pod, 'a frame stopped arriving midway')) from None
        if isinstance(ex, EOFError):
            raise ExecError(_stream_cut(pod, 'the connection closed without an exit status')) from None
        raise ExecError(_stream_cut(pod, getattr(ex, 'strerror', None) or type(ex).__name__)) from None
    returncode = _exit_status(pod, argv, b''.join(sinks[ERROR]), container)
    return ExecResult(returncode=returncode, stdout=b''.join(sinks[STDOUT]), stderr=b''.join(sinks[STDERR]))


def _sslopt(client) -> dict:
    options = {'context': client.ssl_context}
    if client.tls_server_name:
        options['server_hostname'] = client.tls_server_name
    if client.ssl_context.verify_mode == ssl.CERT_NONE:
        options.update(cert_reqs=ssl.CERT_NONE, check_hostname=False)
    return options


def _proxy_options(proxy: str | None) -> dict:
    if not proxy:
        return {}
    parts = urlsplit(proxy)
    options = {'http_proxy_host': parts.hostname, 'http_proxy_port': parts.port or 80, 'proxy_type': 'http'}
    if parts.username:
        options['http_proxy_auth'] = (parts.username, parts.password or '')
    return options


def _exit_status(pod: str, argv: list[str], frame: bytes, container: str) -> int:
    from azure.cli.core.azclierror import AzureResponseError
    if not frame:
        raise ExecError(_stream_cut(pod, 'no exit status received'))
    try:
        status = json.loads(frame)
    except (ValueError, RecursionError):
        raise ExecError(_stream_cut(pod, 'unreadable exit status')) from None
    if not isinstance(status, dict):
        raise ExecError(_stream_cut(pod, 'unreadable exit status'))
    if status.get('status') == 'Success':
        return 0
    if status.get('reason') == 'NonZeroExitCode':
        for cause in (status.get('details') or {}).get('causes') or []:
            if isinstance(cause, dict) and cause.get('reason') == 'ExitCode':
                try:
                    return int(cause.get('message'))
                except (TypeError, ValueError):
                    break
        return 1
    full = str(status.get('message') or 'exec failed')
    message = printable(truncate(full))
    if 'executable file not found' in full or 'no such file or directory' in full:
        # containerd's message is long (exec id, OCI runtime prefix); its "exec: ..." part says it all.
        cause = re.search(r'exec: "[^"]{0,200}": [^:]{0,200}(?:: no such file or directory)?', full)
        raise ExecError(make(AzureResponseError, f"'{printable(argv[0])}' was not found in container "
                                                 f"'{printable(container or '?')}' of pod {pod} "
                                                 f'({printable(cause.group(0)) if cause else message}).',
                             'Give the etcd pod with --etcd-pod and its etcd container with --etcd-container '
                             '(kubeadm: etcd); the etcd image must ship etcdctl.'))
    if status.get('reason') == 'InternalError' and _KUBELET_UNREACHABLE.search(full):
        cause = printable(truncate(_QUOTED_URL.sub('<kubelet>', full)))
        raise ExecError(make(AzureResponseError, f'The API server could not reach the kubelet of pod {pod}: {cause}',
                             f"Check the node that runs pod {pod} and its kubelet ('kubectl get nodes'); with "
                             'several control-plane nodes, name a healthy etcd pod with --etcd-pod.'))
    raise ExecError(make(AzureResponseError, f'exec into pod {pod} failed: {message}',
                         f'Check the pod with kubectl describe pod -n kube-system {pod}.'))


def _stream_cut(pod: str, why: str):
    from azure.cli.core.azclierror import AzureConnectionError
    return make(AzureConnectionError, f'The exec stream to pod {pod} was cut before etcdctl finished ({why}).',
                'Retry; if it persists, check the API server and kubelet of that node.')


def _handshake_error(client, pod: str, status: int, body: bytes) -> ExecError:
    if isinstance(body, str):
        body = body.encode('utf-8', 'replace')
    error = client.errors.api(status, body, f'exec into pod {pod} in kube-system',
                              permission='get and create pods/exec in namespace kube-system',
                              not_found=(f"etcd pod '{pod}' was not found in kube-system.",
                                         'Drop --etcd-pod to find the etcd pod by its label.'))
    message = status_message(body)
    if status == 400 and 'container' in message:  # "container X is not valid for pod Y": --etcd-container
        from azure.cli.core.azclierror import InvalidArgumentValueError
        return ExecError(argument_error(make(
            InvalidArgumentValueError, f'The API server refused the exec into pod {pod}: {message}.',
            'Give the container of the etcd pod that has etcdctl with --etcd-container (kubeadm: etcd).')),
            fatal=True)
    if status >= 500:  # "error dialing backend": the API server cannot reach that node's kubelet
        error = make(type(error), error.error_msg,
                     f"Check the node that runs pod {pod} and its kubelet ('kubectl get nodes'); with several "
                     'control-plane nodes, name a healthy etcd pod with --etcd-pod.')
    return ExecError(error, fatal=status in (401, 403))
