"""A hostile server on raw asyncio sockets, in a thread of the test process (see the package docstring).

One listener serves every role by path: the Kubernetes API (``/readyz``, pod list and get, the exec WebSocket
upgrade and its frames, secrets POST and DELETE), ARM (``listUserKubeconfig`` / ``listClusterAdminCredential`` as a
long-running operation with ``Azure-AsyncOperation`` and ``Location``), Entra (OIDC discovery, the token endpoint)
and Resource Graph (pages with skip tokens). Each role's phase answers normally until a test gives it a behaviour
with :meth:`HostileServer.set`. A :class:`Recorder` is a second listener that records every request and header it
receives (the target of redirects: a credential must never arrive there).
"""

import asyncio
import base64
import datetime
import hashlib
import ipaddress
import json
import ssl
import threading
import time
from pathlib import Path

# Every kind of character a terminal or a row parser must never get raw: C0 (ESC sequences, BEL, CR, LF, TAB),
# DEL, C1 (U+009B is CSI), the Arabic letter mark, line and paragraph separators, a tag character, soft hyphen,
# word joiner, bidi override and isolate.
HOSTILE_TEXT = ('evil\x1b]0;owned\x07\x1b[2J\r\nforged\trow\x7f\x9b31m\u061c\u2028\u2029\U000e0041\u00ad\u2060'
                '\u202etxt.exe\u2066')
RAW_CHARS = ['\x1b', '\x07', '\r', '\x7f', '\x9b', '\u061c', '\u2028', '\u2029', '\U000e0041', '\u00ad', '\u2060',
             '\u202e', '\u2066']

PHASES = ('readyz', 'pods', 'secret-create', 'secret-delete', 'exec', 'exec-frames', 'arm-kubeconfig',
          'arm-operation', 'entra-discovery', 'entra-token', 'graph')
BEHAVIOURS = ('normal', 'trickle', 'trickle-body', 'stall', 'redirect', 'endless', 'inject', 'oversized', 'nested',
              'status', 'trickle-frame')
WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'
TOKEN = 'hostile-harness-token-0123456789'  # what the kubeconfig carries: must never reach the recorder


def self_signed(directory):
    """(cert path, key path) of a certificate for 127.0.0.1 and localhost, also its own CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'hostile-harness')])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName('localhost'),
                                                        x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    directory = Path(directory)
    cert_path, key_path = directory / 'hostile.crt', directory / 'hostile.key'
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _Loop:
    """An asyncio loop in a daemon thread."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name='hostile-harness')
        self.thread.start()

    def run(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def _read_request(reader):
    """(method, target, headers (lower-case names), body) of one HTTP/1.1 request, or None at EOF."""
    head = await reader.readuntil(b'\r\n\r\n')
    lines = head.decode('latin-1').split('\r\n')
    method, target, _ = lines[0].split(' ', 2)
    headers = {}
    for line in lines[1:]:
        if ':' in line:
            name, _, value = line.partition(':')
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get('content-length') or 0)
    body = await reader.readexactly(length) if length else b''
    return method, target, headers, body


def _response(status, body=b'', content_type='application/json', headers=()):
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    reason = {200: 'OK', 201: 'Created', 202: 'Accepted', 302: 'Found', 400: 'Bad Request', 403: 'Forbidden',
              404: 'Not Found', 500: 'Internal Server Error'}.get(status, 'Status')
    head = [f'HTTP/1.1 {status} {reason}', f'Content-Type: {content_type}', f'Content-Length: {len(body)}',
            *(f'{k}: {v}' for k, v in headers)]
    return ('\r\n'.join(head) + '\r\n\r\n').encode('utf-8'), body


def _gone(writer):
    """The peer is gone (its socket closed once the loop ran the connection-lost callback)."""
    sock = writer.get_extra_info('socket')
    return writer.is_closing() or sock is None or sock.fileno() == -1


async def _drain(writer):
    """``drain()`` and then a yield. Over TLS, ``drain()`` returns at once without yielding after the peer has
    gone, so an endless writer never let the loop run the connection-lost callback: it spun, asyncio logging
    "socket.send() raised exception." for every write, hundreds of thousands a second, for the rest of the run."""
    await writer.drain()
    await asyncio.sleep(0)


def ws_frame(opcode, payload, fin=True):
    """One unmasked server frame."""
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    if length < 126:
        head += bytes([length])
    elif length < 65536:
        head += bytes([126]) + length.to_bytes(2, 'big')
    else:
        head += bytes([127]) + length.to_bytes(8, 'big')
    return head + payload


class Recorder:
    """A second listener that records every request (method, path, headers) it receives and answers 404."""

    def __init__(self, tls_files=None):
        self.requests = []
        self._tls = tls_files
        self._loop = _Loop()
        self.port = self._loop.run(self._start())
        self.scheme = 'https' if tls_files else 'http'

    async def _start(self):
        context = None
        if self._tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*self._tls)
        self._server = await asyncio.start_server(self._serve, '127.0.0.1', 0, ssl=context)
        return self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader, writer):
        try:
            while True:
                method, target, headers, _ = await _read_request(reader)
                self.requests.append((method, target, headers))
                head, body = _response(404, {'kind': 'Status', 'message': 'recorder'})
                writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.LimitOverrunError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def url(self, path='/', scheme=None):
        return f'{scheme or self.scheme}://127.0.0.1:{self.port}{path}'

    def credentials_seen(self):
        """Every credential-bearing header or token that arrived here (must stay empty)."""
        seen = []
        for _, target, headers in self.requests:
            for name, value in headers.items():
                if name in ('authorization', 'proxy-authorization', 'cookie', 'x-ms-authorization-auxiliary') or \
                        TOKEN in value or 'eyJ' in value:
                    seen.append((name, value))
            if TOKEN in target or 'eyJ' in target:
                seen.append(('target', target))
        return seen

    def close(self):
        self._loop.run(self._stop())
        self._loop.stop()

    async def _stop(self):
        self._server.close()


class HostileServer:
    """The hostile stand-in. ``set(phase, behaviour, **options)`` makes ``phase`` misbehave (see PHASES and
    BEHAVIOURS); options: ``interval`` (trickle, default 0.5 s a byte), ``target`` (redirect: a URL, default the
    recorder at the same path), ``status`` / ``body`` (status), ``size`` (oversized, bytes), ``depth`` (nested),
    ``pages`` (graph: rows per page). ``requests`` lists (phase, method, path, headers) of every request served.
    """

    def __init__(self, directory, tls=True, recorder_scheme='http'):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tls_files = self_signed(self.directory) if tls else None
        self.recorder = Recorder(self.tls_files if recorder_scheme == 'https' else None)
        self.behaviours = {}
        self.requests = []
        self.pod_name = 'etcd-hostile'
        self._loop = _Loop()
        self._writers = set()
        self._tasks = set()
        self.port = self._loop.run(self._start())
        self.scheme = 'https' if tls else 'http'

    # --- configuration -------------------------------------------------------------------------------------------
    def set(self, phase, behaviour='normal', **options):
        assert phase in PHASES, phase
        assert behaviour in BEHAVIOURS, behaviour
        self.behaviours[phase] = (behaviour, options)
        return self

    def url(self, path=''):
        return f'{self.scheme}://127.0.0.1:{self.port}{path}'

    def kubeconfig(self, path=None, token=TOKEN):
        """A kubeconfig (token auth; the harness's CA when https) pointing at this server."""
        path = Path(path or self.directory / 'kubeconfig')
        cluster = {'server': self.url()}
        if self.tls_files:
            cluster['certificate-authority-data'] = base64.b64encode(self.tls_files[0].read_bytes()).decode()
        config = {'apiVersion': 'v1', 'kind': 'Config', 'current-context': 'hostile',
                  'clusters': [{'name': 'hostile', 'cluster': cluster}],
                  'users': [{'name': 'hostile', 'user': {'token': token}}],
                  'contexts': [{'name': 'hostile', 'context': {'cluster': 'hostile', 'user': 'hostile'}}]}
        path.write_text(json.dumps(config))
        return str(path)

    def close(self):
        """Stop serving; a connection still being written to for ever is cancelled, not waited for."""
        import concurrent.futures
        try:
            self._loop.run(self._stop(), timeout=10)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass  # the loop is stopped below; its thread is a daemon
        finally:
            self._loop.stop()
            self.recorder.close()

    # --- serving -------------------------------------------------------------------------------------------------
    async def _start(self):
        context = None
        if self.tls_files:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*self.tls_files)
        self._server = await asyncio.start_server(self._serve, '127.0.0.1', 0, ssl=context, limit=1 << 20)
        return self._server.sockets[0].getsockname()[1]

    async def _stop(self):
        self._server.close()
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        for writer in list(self._writers):
            writer.transport.abort()  # no flushing of what a stalled peer never read
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def _serve(self, reader, writer):
        self._writers.add(writer)
        self._tasks.add(asyncio.current_task())
        try:
            while True:
                method, target, headers, body = await _read_request(reader)
                phase = self._phase(method, target, headers)
                self.requests.append((phase, method, target, headers))
                keep = await self._answer(phase, method, target, headers, body, reader, writer)
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.LimitOverrunError, ssl.SSLError,
                OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    def _phase(method, target, headers):
        path = target.split('?', 1)[0]
        if path.startswith('/readyz'):
            return 'readyz'
        if path.endswith('/exec'):
            return 'exec'
        if '/pods' in path:
            return 'pods'
        if '/secrets' in path:
            return 'secret-create' if method == 'POST' else 'secret-delete'
        if path.endswith(('/listUserKubeconfig', '/listClusterAdminCredential', '/listClusterUserCredential')):
            return 'arm-kubeconfig'
        if '/hostile-operations/' in path:
            return 'arm-operation'
        if path.endswith('/openid-configuration') or path.endswith('/instance'):
            return 'entra-discovery'
        if path.endswith('/token'):
            return 'entra-token'
        if 'Microsoft.ResourceGraph' in path:
            return 'graph'
        return 'unknown'

    async def _answer(self, phase, method, target, headers, body, reader, writer):
        behaviour, options = self.behaviours.get(phase, ('normal', {}))
        if phase == 'exec' and behaviour in ('normal', 'inject', 'trickle'):
            return await self._exec(headers, behaviour, options, writer)
        if behaviour == 'stall':
            await asyncio.sleep(3600)
            return False
        if behaviour == 'redirect':
            location = options.get('target') or self.recorder.url(target, options.get('scheme'))
            head, payload = _response(options.get('status', 302), b'', headers=[('Location', location)])
            writer.write(head + payload)
            await writer.drain()
            return True
        if behaviour == 'status':
            head, payload = _response(options.get('status', 500), options.get('body', b''))
            writer.write(head + payload)
            await writer.drain()
            return True
        if behaviour == 'oversized':
            await self._oversized(writer, options.get('size', 80 * 1024 * 1024))
            return False
        if behaviour == 'nested':
            depth = options.get('depth', 100000)
            head, payload = _response(200, ('[' * depth + ']' * depth).encode())
            writer.write(head + payload)
            await writer.drain()
            return True
        if behaviour == 'endless' and phase != 'graph':
            await self._endless_body(writer)
            return False
        inject = behaviour == 'inject'
        status, payload, extra, content_type = self._normal(phase, method, target, body, inject, options)
        head, payload = _response(status, payload, content_type, extra)
        if behaviour == 'trickle':
            await self._trickle(writer, head + payload, options.get('interval', 0.5))
            return False
        if behaviour == 'trickle-body':
            writer.write(head)
            await writer.drain()
            await self._trickle(writer, payload, options.get('interval', 0.5))
            return False
        writer.write(head + payload)
        await writer.drain()
        return True

    @staticmethod
    async def _trickle(writer, data, interval):
        for index in range(len(data)):
            if _gone(writer):
                return
            writer.write(data[index:index + 1])
            await writer.drain()
            await asyncio.sleep(interval)

    @staticmethod
    async def _oversized(writer, size):
        writer.write(f'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n'.encode())
        chunk = b'[' + b'0,' * (512 * 1024)
        sent = 0
        while sent < size and not _gone(writer):
            piece = chunk[:size - sent]
            writer.write(piece)
            await _drain(writer)
            sent += len(piece)

    @staticmethod
    async def _endless_body(writer):
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n')
        piece = b'{"items":[' + b'{"metadata":{"name":"x"}},' * 2000
        chunk = f'{len(piece):x}\r\n'.encode() + piece + b'\r\n'
        while not _gone(writer):
            writer.write(chunk)
            await _drain(writer)

    # --- what each phase answers when it behaves (with every field hostile under 'inject') -----------------------
    def _normal(self, phase, method, target, body, inject, options):
        text = HOSTILE_TEXT if inject else None
        if phase == 'readyz':
            if target.startswith('/readyz/'):
                return 500, f'[-]{target[8:]} failed: {text or "plugin down"}\n', (), 'text/plain'
            if inject:
                return 500, f'[+]ping ok\n[-]kms-providers failed: reason withheld\n[-]{text} failed\n' \
                            f'readyz check failed\n', (), 'text/plain'
            return 200, '[+]ping ok\n[+]etcd ok\n[+]kms-providers ok\nreadyz check passed\n', (), 'text/plain'
        if phase == 'pods':
            name = (HOSTILE_TEXT if inject else self.pod_name)
            pod = {'metadata': {'name': name, 'namespace': 'kube-system', 'labels': {'component': 'etcd'}},
                   'status': {'phase': 'Running', 'conditions': [{'type': 'Ready', 'status': 'True'}]}}
            if target.split('?')[0].endswith('/pods'):
                return 200, {'kind': 'PodList', 'apiVersion': 'v1', 'items': [pod]}, (), 'application/json'
            return 200, pod, (), 'application/json'
        if phase == 'secret-create':
            if inject:
                return 403, {'kind': 'Status', 'status': 'Failure', 'reason': 'Forbidden', 'code': 403,
                             'message': text}, (), 'application/json'
            meta = (json.loads(body or b'{}').get('metadata') or {})
            return 201, {'kind': 'Secret', 'apiVersion': 'v1', 'metadata': meta}, (), 'application/json'
        if phase == 'secret-delete':
            return 200, {'kind': 'Status', 'status': 'Success'}, (), 'application/json'
        if phase == 'arm-kubeconfig':
            location = self.url('/hostile-operations/op1')
            return 202, b'', [('Azure-AsyncOperation', options.get('async_url', location)),
                              ('Location', options.get('location', location + '/result')),
                              ('Retry-After', '0')], 'application/json'
        if phase == 'arm-operation':
            if target.split('?')[0].endswith('/result'):
                value = base64.b64encode(Path(self.kubeconfig(self.directory / 'arm-kubeconfig')).read_bytes())
                return 200, {'kubeconfigs': [{'name': 'user', 'value': value.decode()}]}, (), 'application/json'
            if inject:
                return 200, {'status': 'Failed', 'error': {'code': text, 'message': text}}, (), 'application/json'
            return 200, {'status': 'Succeeded'}, (), 'application/json'
        if phase == 'entra-discovery':
            base = self.url('/hostile-tenant')
            return 200, {'token_endpoint': base + '/oauth2/v2.0/token', 'issuer': base + '/v2.0',
                         'authorization_endpoint': base + '/oauth2/v2.0/authorize',
                         'device_authorization_endpoint': base + '/oauth2/v2.0/devicecode',
                         'tenant_discovery_endpoint': base + '/v2.0/.well-known/openid-configuration'}, (), \
                'application/json'
        if phase == 'entra-token':
            if inject:
                return 400, {'error': text, 'error_description': f'AADSTS7000215: {text} Trace ID: '
                                                                 f'25c9a1b2-0000-4000-8000-00000000abcd'}, (), \
                    'application/json'
            return 200, {'access_token': TOKEN, 'token_type': 'Bearer', 'expires_in': 3600}, (), 'application/json'
        if phase == 'graph':
            return self._graph_page(body, inject, options)
        return 404, {'kind': 'Status', 'message': 'not served by the hostile harness'}, (), 'application/json'

    def _graph_page(self, body, inject, options):
        behaviour = self.behaviours.get('graph', ('normal', {}))[0]
        request = json.loads(body or b'{}')
        skip = ((request.get('options') or {}).get('$skipToken')) or '0'
        page = int(skip) if skip.isdigit() else 0
        rows = options.get('pages', 1000 if behaviour == 'endless' else 1)
        name = HOSTILE_TEXT if inject else 'cluster'
        data = [{'id': f'/subscriptions/00000000-0000-0000-0000-00000000c0de/resourceGroups/rg/providers/'
                       f'Microsoft.Kubernetes/connectedClusters/{name}-{page}-{i}', 'name': f'{name}-{page}-{i}',
                 'resourceGroup': 'rg', 'subscriptionId': '00000000-0000-0000-0000-00000000c0de',
                 'tags': {'env': name}} for i in range(rows)]
        answer = {'totalRecords': len(data), 'count': len(data), 'resultTruncated': 'false', 'data': data}
        if behaviour == 'endless':
            answer['$skipToken'] = str(page + 1)
        return 200, answer, (), 'application/json'

    # --- the exec WebSocket --------------------------------------------------------------------------------------
    async def _exec(self, headers, behaviour, options, writer):
        frames_behaviour, frame_options = self.behaviours.get('exec-frames', ('normal', {}))
        key = headers.get('sec-websocket-key', '')
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        head = ('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
                f'Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n').encode()
        if behaviour == 'trickle':  # the upgrade's headers, a byte every interval
            await self._trickle(writer, head, options.get('interval', 0.5))
            return False
        writer.write(head)
        await writer.drain()
        if frames_behaviour == 'stall':
            await asyncio.sleep(3600)
            return False
        if frames_behaviour == 'endless':  # continuation frames, never a final one
            writer.write(ws_frame(0x2, b'\x01' + b'A' * 65535, fin=False))
            piece = ws_frame(0x0, b'A' * 65536, fin=False)
            while not _gone(writer):
                writer.write(piece)
                await _drain(writer)
            return False
        if frames_behaviour == 'trickle-frame':  # one 64 KiB frame, a byte every interval
            frame = ws_frame(0x2, b'\x01' + b'A' * 65535)
            writer.write(frame[:4])
            await self._trickle(writer, frame[4:], frame_options.get('interval', 0.5))
            return False
        if frames_behaviour == 'oversized':  # a frame that announces more than any cap
            writer.write(bytes([0x82, 127]) + (1 << 40).to_bytes(8, 'big'))
            await writer.drain()
            await asyncio.sleep(3600)
            return False
        message = HOSTILE_TEXT if behaviour == 'inject' or frames_behaviour == 'inject' else \
            'etcdctl is not served by the hostile harness'
        status = {'metadata': {}, 'status': 'Failure', 'message': message, 'reason': 'InternalError'}
        writer.write(ws_frame(0x2, b'\x02' + message.encode()) + ws_frame(0x2, b'\x03' + json.dumps(status).encode())
                     + ws_frame(0x8, b'\x03\xe8'))
        await writer.drain()
        return False


def wait_for(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


__all__ = ['HostileServer', 'Recorder', 'HOSTILE_TEXT', 'RAW_CHARS', 'PHASES', 'BEHAVIOURS', 'ws_frame', 'wait_for']
