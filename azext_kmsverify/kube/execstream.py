# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""``pods/exec`` over WebSocket (the ``v5``/``v4.channel.k8s.io`` protocols), with websocket-client.

Runs an argv without a shell or TTY and returns its exact stdout and stderr bytes and exit code. Frames are
read one at a time into per-channel lists (a page of etcd values is megabytes), and every wait (TCP connect,
TLS and WebSocket handshakes, each frame) is bounded by the run's deadline.
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
    try:
        sock.connect(url, header=headers, subprotocols=_PROTOCOLS, timeout=deadline.bound(30),
                     suppress_origin=True, **_proxy_options(client.proxy))
    except websocket.WebSocketBadStatusException as ex:
        raise _handshake_error(client, pod, ex.status_code, getattr(ex, 'resp_body', b'') or b'') from None
    except (websocket.WebSocketException, OSError) as ex:
        if deadline.expired() or isinstance(ex, (websocket.WebSocketTimeoutException, TimeoutError)):
            raise ExecError(client.errors.timeout(f'connecting to exec into {pod}'), True) from None
        if 'CERTIFICATE_VERIFY_FAILED' in str(ex):
            raise ExecError(client.errors.transport(ex, doing), True) from None
        raise ExecError(client.errors.transport(ex, f'opening an exec stream to pod {pod}')) from None
    try:
        return _read(client, sock, pod, container, argv, max_bytes=max_bytes)
    finally:
        try:
            sock.close(timeout=0.2)
        except Exception:  # pylint: disable=broad-except  # closing a broken stream: nothing left to do
            pass


def _read(client, sock, pod: str, container: str, argv: list[str], *, max_bytes: int) -> ExecResult:
    import websocket
    deadline = client.deadline
    sinks: dict[int, list[bytes]] = {STDOUT: [], STDERR: [], ERROR: []}
    size = 0
    raw = sock.sock
    readable = _readable_waiter(raw)
    try:
        while True:
            if deadline.expired():
                raise ExecError(client.errors.timeout(f'exec into {pod} produced no end of output'), True)
            # TLS may hold whole frames already decrypted, which poll() on the socket cannot see.
            if not (isinstance(raw, ssl.SSLSocket) and raw.pending()) and not readable(deadline.bound(1.0)):
                continue
            sock.sock.settimeout(deadline.bound(30))
            opcode, frame = sock.recv_data_frame(True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                break
            data = frame.data if opcode in (websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_TEXT) else b''
            if isinstance(data, str):
                data = data.encode('utf-8')
            if len(data) > 1 and data[0] in sinks:  # 255 <n> is v5's end of stream n: nothing to keep
                size += len(data) - 1
                if size > max_bytes:
                    raise ExecError(_stream_cut(pod, f'more than {max_bytes // (1024 * 1024)} MiB of output'), True)
                sinks[data[0]].append(data[1:])
    except websocket.WebSocketConnectionClosedException:
        raise ExecError(_stream_cut(pod, 'the connection closed without an exit status')) from None
    except websocket.WebSocketTimeoutException:
        if deadline.expired():
            raise ExecError(client.errors.timeout(f'reading the exec stream of {pod}'), True) from None
        raise ExecError(_stream_cut(pod, 'a frame stopped arriving midway')) from None
    except websocket.WebSocketException as ex:
        raise ExecError(_stream_cut(pod, type(ex).__name__)) from None
    except OSError as ex:
        raise ExecError(_stream_cut(pod, ex.strerror or type(ex).__name__)) from None
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


def _readable_waiter(sock):
    """``wait(seconds) -> bool``: whether ``sock`` has data. poll() where there is one (no fd limit), else
    select() (Windows)."""
    import select
    if hasattr(select, 'poll'):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return lambda seconds: bool(poller.poll(int(seconds * 1000)))
    return lambda seconds: bool(select.select([sock], [], [], seconds)[0])


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
