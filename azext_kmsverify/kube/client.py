# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""HTTP to one API server, from one resolved kubeconfig: urllib3 with the kubeconfig's TLS, proxy and token.

Every wait is bounded by the run's deadline, from outside: each connection's socket is registered with the
deadline's watchdog, which shuts it down at expiry, so a peer that trickles bytes cannot stretch a read. Nothing
is retried but a 429 Too Many Requests, which API Priority and Fairness answers before doing anything, after its
``Retry-After`` and within the deadline (a retry of anything else could double ``--timeout``); no redirect is
followed (a credential goes only to the server it is for), and every body read from the cluster is capped, so a
hostile or broken server can neither hang nor exhaust the run.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import warnings
from urllib.parse import urlencode, urlsplit

from knack.log import get_logger

from azext_kmsverify import defaults
from azext_kmsverify.auth.kubeconfig import Kubeconfig
from azext_kmsverify.auth.memfiles import MemoryFiles
from azext_kmsverify.errors import argument_error, make
from azext_kmsverify.kube.compat import LoadedKubeconfig, load
from azext_kmsverify.kube.errors import KubeErrors, throttle_delay
from azext_kmsverify.text import printable

logger = get_logger(__name__)

_TOKEN_OK = frozenset(range(0x21, 0x7f))  # what an HTTP header can carry of a token, after kubectl's trim
_LAST_TRY_SECONDS = 2.0  # what a throttled request's last try keeps of the deadline for itself


class KubeClient:  # pylint: disable=too-many-instance-attributes  # one per part of the kubeconfig's transport
    """One API server reached through one kubeconfig context. Use as a context manager."""

    def __init__(self, kubeconfig: Kubeconfig, deadline, credential: str = 'kubeconfig'):
        self.deadline = deadline
        self.credential = credential
        self._files = MemoryFiles()
        try:
            self.loaded = load(kubeconfig, self._files.add)
            self.server = self.loaded.server
            self.ssl_context = _ssl_context(self.loaded)
            self.proxy = self.loaded.proxy_url or _environment_proxy(self.server)
            self.tls_server_name = self.loaded.tls_server_name
            self.sockets = SocketRegistry()
            self._pool = self._pool_manager()
        except BaseException:
            self._files.close()
            raise
        self.errors = KubeErrors(self.server, credential, deadline, self.proxy)
        self._watch = deadline.watch(self.sockets.shutdown_all) if hasattr(deadline, 'watch') else None

    def __enter__(self) -> KubeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self._watch is not None:
                self.deadline.unwatch(self._watch)
            self._pool.clear()
        finally:
            self.sockets.close_all()
            self._files.close()

    def _pool_manager(self):
        import urllib3
        # as many connections as reencrypt's workers, so none is opened and dropped again
        options = {'ssl_context': self.ssl_context, 'num_pools': 2, 'maxsize': defaults.REENCRYPT_PARALLEL,
                   'retries': False}
        if self.tls_server_name:
            options['server_hostname'] = self.tls_server_name
        manager = urllib3.ProxyManager(self.proxy, **options) if self.proxy else urllib3.PoolManager(**options)
        manager.pool_classes_by_scheme = _watched_pools(self.sockets)
        return manager

    def auth_headers(self, deadline=None) -> dict:
        """The Authorization header (refreshing an expiring exec-plugin token as the kubernetes client does).
        A token request (azure-identity, msal, az) has no socket to give the watchdog: it runs in a worker that
        is no longer waited for at the deadline."""
        loaded = self.loaded
        source = loaded.token_source
        if source is not None:
            deadline = deadline or self.deadline
            if not hasattr(deadline, 'call'):
                return {'Authorization': source.authorization()}
            from azext_kmsverify.deadline import DeadlineExpired
            try:
                return {'Authorization': deadline.call(source.authorization, doing='requesting a token')}
            except DeadlineExpired:
                raise self.errors.timeout('requesting an Entra ID token for the cluster') from None
        token = loaded.token()
        if token:
            scheme, _, value = token.strip().partition(' ')
            value = value.strip()  # kubectl trims token files: `echo "$TOKEN" > file` ends in a newline
            if not value or not all(ord(c) in _TOKEN_OK for c in value):
                raise argument_error(make(_invalid_kubeconfig_class(), f'{loaded.source} is not usable: '
                                          f"the token of user '{printable(loaded.user_name)}' has characters "
                                          'an HTTP header cannot carry.',
                                          'Fix the token in the kubeconfig (a token is one line of printable '
                                          'characters).'))
            return {'Authorization': f'{scheme or "Bearer"} {value}'}
        basic = loaded.basic_auth()
        return {'Authorization': basic} if basic else {}

    def url(self, path: str, query=None) -> str:
        return self.server + path + (('?' + urlencode(list(query))) if query else '')

    def request(self, method: str, path: str, *, query=None, accept: str = 'application/json', body=None,
                timeout: float = 30, max_bytes: int = defaults.BODY_MAX_BYTES, doing: str | None = None,
                bounded: bool = True, headers_out: dict | None = None,
                throttled_retries: int = defaults.THROTTLED_RETRIES) -> tuple[int, bytes]:
        """(status, body bytes). Raises azclierrors for transport failures, redirects and oversized answers.
        ``headers_out``, if given, receives the answer's headers (e.g. Retry-After). ``bounded=False`` (the
        probe's delete on the way out, when the run's deadline may be spent): the request gets a deadline of its
        own of ``timeout`` seconds, enforced from outside like the run's. A 429 is sent again after its
        Retry-After up to ``throttled_retries`` times while the deadline allows (0: the caller honours 429s
        itself); the last answer is returned."""
        kwargs = {'query': query, 'accept': accept, 'body': body, 'timeout': timeout, 'max_bytes': max_bytes,
                  'doing': doing, 'headers_out': headers_out, 'retries': throttled_retries}
        if bounded:
            return self._throttled(method, path, self.deadline, **kwargs)
        from azext_kmsverify.deadline import Deadline
        self.sockets.resume()
        with Deadline(timeout) as own:
            own.watch(self.sockets.shutdown_all)
            return self._throttled(method, path, own, **kwargs)

    def _throttled(self, method: str, path: str, deadline, *, retries: int, headers_out, doing, **kwargs):
        """:meth:`_request`, sent again after each 429's Retry-After (:func:`kube.errors.throttle_delay`) up to
        ``retries`` times. A Retry-After that outlasts the deadline is cut short: one last try, a moment before the
        deadline (the probe's delete has 10 s; kube-apiserver asks for up to 32), and its answer is returned."""
        import time
        doing = doing or f'{method} {path}'
        left = retries
        while True:
            headers = {}
            status, content = self._request(method, path, deadline, doing=doing, headers_out=headers, **kwargs)
            if status != 429 or left <= 0:
                break
            left -= 1
            delay, spare = throttle_delay(headers), deadline.remaining() - _LAST_TRY_SECONDS
            if delay > spare:
                delay, left = max(0.0, spare), 0
            logger.debug('429 Too Many Requests while %s: sending it again in %.1f s', printable(doing), delay)
            time.sleep(delay)
        if headers_out is not None:
            headers_out.update(headers)
        return status, content

    def _request(self, method: str, path: str, deadline, *, query, accept, body, timeout, max_bytes, doing,
                 headers_out) -> tuple[int, bytes]:
        import json

        import urllib3
        doing = doing or f'{method} {path}'
        if deadline.expired():
            raise self.errors.timeout(doing)
        limit = deadline.bound(timeout)
        logger.debug('%s %s', method, printable(path))  # the path names objects only; never query or body
        headers = {'Accept': accept, 'User-Agent': defaults.USER_AGENT, **self.auth_headers(deadline)}
        data = None
        if body is not None:
            headers['Content-Type'] = 'application/json'
            data = json.dumps(body).encode('utf-8')
        try:
            with warnings.catch_warnings():  # insecure-skip-tls-verify: our own one-line warning instead
                warnings.simplefilter('ignore', urllib3.exceptions.InsecureRequestWarning)
                response = self._pool.request(method, self.url(path, query), body=data, headers=headers,
                                              timeout=urllib3.Timeout(connect=limit, read=limit),
                                              preload_content=False, redirect=False)
            try:
                if 300 <= response.status < 400 and response.status != 304:
                    raise self.errors.redirect(response.status, response.headers.get('Location'), doing)
                content = self._read(response, max_bytes, doing, deadline)
            finally:
                response.release_conn()
            if headers_out is not None:
                headers_out.update({k.lower(): v for k, v in response.headers.items()})
        except (urllib3.exceptions.HTTPError, OSError) as ex:
            if getattr(deadline, 'fired', False) or deadline.expired():  # the watchdog cut the connection
                raise self.errors.timeout(doing) from None
            raise self.errors.transport(ex, doing) from None
        return response.status, content

    def _read(self, response, max_bytes: int, doing: str, deadline) -> bytes:
        from azure.cli.core.azclierror import AzureResponseError
        chunks, size = [], 0
        for chunk in response.stream(64 * 1024, decode_content=True):
            size += len(chunk)
            if size > max_bytes:
                raise make(AzureResponseError, f'The API server {printable(self.server)} answered with more than '
                                               f'{max_bytes // (1024 * 1024)} MiB while {doing}.',
                           'Retry; if it persists, check what answers at that address.')
            chunks.append(chunk)
            if deadline.expired():
                raise self.errors.timeout(doing)
        if getattr(deadline, 'fired', False):  # a body the watchdog cut short is not a body
            raise self.errors.timeout(doing)
        return b''.join(chunks)


class SocketRegistry:
    """The sockets of one client's connections, shut down together by the deadline's watchdog.

    Holds a duplicate of each connection's socket (made before TLS, so the handshake is covered too): shutdown
    acts on the connection, not the descriptor, so shutting the duplicate down ends every wait on the original,
    and a descriptor number reused after a close can never be hit. The duplicate is closed with the connection.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._dups: dict[int, socket.socket] = {}
        self._stopped = False

    def add(self, owner, sock) -> None:
        dup = sock.dup()
        with self._lock:
            previous = self._dups.pop(id(owner), None)
            self._dups[id(owner)] = dup
            stopped = self._stopped
        _close(previous)
        if stopped:
            _shutdown(dup)

    def remove(self, owner) -> None:
        with self._lock:
            dup = self._dups.pop(id(owner), None)
        _close(dup)

    def shutdown_all(self) -> None:
        with self._lock:
            self._stopped = True
            dups = list(self._dups.values())
        for dup in dups:
            _shutdown(dup)

    def resume(self) -> None:
        """New connections are no longer shut down at once (a grace deadline of its own follows)."""
        with self._lock:
            self._stopped = False

    def close_all(self) -> None:
        with self._lock:
            dups, self._dups = list(self._dups.values()), {}
        for dup in dups:
            _close(dup)


def _shutdown(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _close(sock) -> None:
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass


def _watched_pools(registry: SocketRegistry) -> dict:
    """urllib3 pool classes whose connections register their socket with ``registry`` as it is made."""
    from urllib3 import HTTPConnectionPool, HTTPSConnectionPool
    from urllib3.connection import HTTPConnection, HTTPSConnection

    def watched(base):
        class Watched(base):  # pylint: disable=too-few-public-methods  # urllib3's, with two hooks
            def _new_conn(self):
                sock = super()._new_conn()
                registry.add(self, sock)
                return sock

            def close(self):
                try:
                    super().close()
                finally:
                    registry.remove(self)
        Watched.__name__ = f'Watched{base.__name__}'
        return Watched

    class Pool(HTTPConnectionPool):
        ConnectionCls = watched(HTTPConnection)

    class TlsPool(HTTPSConnectionPool):
        ConnectionCls = watched(HTTPSConnection)
    return {'http': Pool, 'https': TlsPool}


def _ssl_context(loaded: LoadedKubeconfig) -> ssl.SSLContext:
    """The TLS context of the kubeconfig; a CA or key that does not load is a kubeconfig problem."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    where, what = loaded.source, 'certificate-authority'
    try:
        if not loaded.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            logger.warning('The kubeconfig skips TLS verification (insecure-skip-tls-verify): the API server %s is '
                           'not authenticated.', printable(loaded.server))
        elif loaded.ca_file:
            context.load_verify_locations(cafile=loaded.ca_file)
        else:
            try:
                import certifi
                context.load_verify_locations(cafile=certifi.where())
            except ImportError:
                pass
        if loaded.cert_file:
            what = 'client-certificate/client-key'
            context.load_cert_chain(loaded.cert_file, loaded.key_file)
    except (ssl.SSLError, OSError, ValueError):
        raise argument_error(make(_invalid_kubeconfig_class(), f'{where} is not usable: its {what} is not a PEM '
                                  'certificate (and matching key).',
                                  'Fetch fresh credentials (az aksarc get-credentials, or -g/-n with this '
                                  'command).')) from None
    return context


def _environment_proxy(server: str) -> str | None:
    """HTTPS_PROXY/NO_PROXY from the environment, as kubectl honours them."""
    from urllib.request import getproxies, proxy_bypass
    host = urlsplit(server).hostname or ''
    scheme = urlsplit(server).scheme
    proxy = getproxies().get(scheme)
    if not proxy or os.environ.get('NO_PROXY') == '*' or proxy_bypass(host):
        return None
    return proxy


def _invalid_kubeconfig_class():
    from azure.cli.core.azclierror import InvalidArgumentValueError
    return InvalidArgumentValueError
