# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Step 2, cluster access: API client from an in-memory kubeconfig, KMS health, etcd pod discovery, exec.

Uses the ``kubernetes`` client for kubeconfig handling (contexts, exec plugins, proxies, TLS) and for the
WebSocket exec protocol. Every failure becomes an azclierror with one line and a recommendation; no
response body, token or key reaches a message or a log line.
"""

import json
import os
import secrets as _random

from knack.log import get_logger

from azext_kmsverify import defaults
from azext_kmsverify.errors import argument_error, make
from azext_kmsverify.etcd import ExecResult

logger = get_logger(__name__)

_DATA_KEYS = {'certificate-authority-data': 'certificate-authority', 'client-certificate-data': 'client-certificate',
              'client-key-data': 'client-key'}
_METADATA_ONLY = 'application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json'
_METADATA_LIST = 'application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json'
PROBE_LABEL = 'app.kubernetes.io/managed-by'


class ExecError(Exception):
    """The exec itself failed (not etcdctl): the pod or the stream. ``fatal`` errors are not worth another pod."""

    def __init__(self, error, fatal=False):
        super().__init__(error.error_msg)
        self.error = error
        self.fatal = fatal


class _MemoryFiles:
    """Credential material as files that never touch a disk.

    ``ssl`` and the kubernetes client load certificates and keys from paths only. On Linux each file is a
    ``memfd`` reached through ``/proc/self/fd``: it lives in memory and vanishes with the process, even on
    SIGKILL. Elsewhere a private temporary folder, removed on close, is the fallback.
    """

    def __init__(self):
        self._fds = []
        self._dir = None

    def add(self, name, content):
        if hasattr(os, 'memfd_create') and os.path.isdir('/proc/self/fd'):
            fd = os.memfd_create('kmsverify-' + name, getattr(os, 'MFD_CLOEXEC', 0))
            os.write(fd, content)
            self._fds.append(fd)
            return '/proc/self/fd/{}'.format(fd)
        import tempfile
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix='kmsverify-')
        path = os.path.join(self._dir, name)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), 'wb') as handle:
            handle.write(content)
        return path

    def close(self):
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []
        if self._dir:
            import shutil
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _inline_data_as_memory_files(config, context_name, files):
    """Replace ``*-data`` fields of the context's cluster and user by memory-file paths (in a copy)."""
    import base64
    import copy
    config = copy.deepcopy(config)
    context = next(c['context'] for c in config['contexts'] if c.get('name') == context_name)
    for section, key in (('clusters', 'cluster'), ('users', 'user')):
        for entry in config.get(section) or []:
            if not isinstance(entry, dict) or entry.get('name') != context.get(key):
                continue
            body = entry.get(key) or {}
            for data_key, file_key in _DATA_KEYS.items():
                if body.get(data_key):
                    try:
                        content = base64.b64decode(body.pop(data_key))
                    except ValueError:
                        raise _invalid_kubeconfig('{} of {} is not base64'.format(data_key, entry.get('name')))
                    body[file_key] = files.add(file_key, content)
    return config


def _invalid_kubeconfig(what):
    from azure.cli.core.azclierror import InvalidArgumentValueError
    return make(InvalidArgumentValueError, 'The kubeconfig is not usable: {}.'.format(what),
                'Fetch fresh credentials (az aksarc get-credentials, or -g/-n with this command).')


class Cluster:  # pylint: disable=too-many-instance-attributes
    """One Kubernetes cluster reached through one kubeconfig context. Use as a context manager."""

    def __init__(self, config, context_name, deadline, config_dir='', credential='kubeconfig'):
        from kubernetes import client
        from kubernetes.config.config_exception import ConfigException
        from kubernetes.config.kube_config import KubeConfigLoader

        self.deadline = deadline
        self.credential = credential
        self._files = _MemoryFiles()
        try:
            loader = KubeConfigLoader(
                config_dict=_inline_data_as_memory_files(config, context_name, self._files),
                active_context=context_name, config_base_path=config_dir)
            configuration = client.Configuration()
            loader.load_and_set(configuration)
        except ConfigException as ex:
            self._files.close()
            # Loader messages name fields, not values; keep the first line only.
            raise _invalid_kubeconfig(str(ex).splitlines()[0][:200]) from None
        except Exception:
            self._files.close()
            raise
        configuration.retries = 1  # fail fast; the deadline bounds the run anyway
        self.server = configuration.host
        self._api = client.ApiClient(configuration=configuration)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self._api.close()
        finally:
            self._files.close()

    # -- raw HTTP ---------------------------------------------------------------------------------
    def request(self, method, path, query=None, accept='application/json', body=None, timeout=30, bounded=True):
        """Return (status, body bytes); raises azclierrors for transport failures only."""
        from kubernetes.client.exceptions import ApiException
        import urllib3
        params = self._api.param_serialize(
            method=method, resource_path=path, query_params=list(query or []),
            header_params={'Accept': accept, **({'Content-Type': 'application/json'} if body is not None else {})},
            body=body, auth_settings=['BearerToken'])
        try:
            limit = self.deadline.bound(timeout) if bounded else timeout
            response = self._api.call_api(*params, _request_timeout=limit)
            return response.status, response.read()
        except ApiException as ex:
            if ex.status:
                return ex.status, (ex.body or '').encode('utf-8', 'replace')
            raise self._transport_error(ex.reason) from None
        except urllib3.exceptions.HTTPError as ex:
            raise self._transport_error(ex) from None

    def _transport_error(self, reason):
        from azure.cli.core.azclierror import AzureConnectionError
        text = str(reason)
        if 'CERTIFICATE_VERIFY_FAILED' in text or 'certificate verify failed' in text:
            return make(AzureConnectionError, 'The TLS certificate of the API server {} is not trusted by the '
                        'kubeconfig.'.format(self.server),
                        'Fetch fresh credentials; the cluster CA in the kubeconfig does not match the server.')
        if 'timed out' in text.lower() or 'timeout' in text.lower():
            if self.deadline.expired():
                return self.timeout_error('waiting for the API server')
            return make(AzureConnectionError, 'The API server {} did not answer in time.'.format(self.server),
                        'Check network line of sight to the cluster, then retry.')
        return make(AzureConnectionError, 'Could not reach the API server {}: {}.'.format(
            self.server, _network_reason(reason)),
            'Check network line of sight to the cluster (hosted pipeline agents usually have none: use a '
            'self-hosted agent in the cluster network), then retry.')

    def timeout_error(self, doing):
        from azure.cli.core.azclierror import AzureConnectionError
        return make(AzureConnectionError, 'Verification did not finish within the --timeout of {} s ({}).'.format(
            self.deadline.seconds, doing), 'Retry with a larger --timeout.')

    def api_error(self, status, body, doing, permission=None, not_found=None):
        """Map an API error answer (a Kubernetes Status) to an azclierror."""
        from azure.cli.core.azclierror import (AzureResponseError, ForbiddenError, ResourceNotFoundError,
                                               UnauthorizedError)
        message = _status_message(body)
        if status == 401:
            hint = ("Sign in again with 'az login'" if self.credential == 'user' else
                    'Fetch fresh credentials for the cluster')
            return make(UnauthorizedError, 'The API server rejected the credentials (401 Unauthorized) while '
                        '{}.'.format(doing), hint + ', then retry.')
        if status == 403:
            return make(ForbiddenError, 'Forbidden while {}: {}'.format(doing, message or 'access denied'),
                        'Ask a cluster admin for Kubernetes RBAC permission to {}.'.format(permission or doing))
        if status == 404 and not_found:
            return make(ResourceNotFoundError, not_found[0], not_found[1])
        return make(AzureResponseError, 'The API server answered {} while {}: {}'.format(
            status, doing, message or 'no details'), 'Retry; if it persists, check the API server logs.')

    # -- health -----------------------------------------------------------------------------------
    def readyz(self):
        """(HTTP status, body text) of ``/readyz?verbose``."""
        status, body = self.request('GET', '/readyz', query=[('verbose', 'true')], accept='text/plain', timeout=20)
        return status, body.decode('utf-8', 'replace')

    def readyz_check(self, name):
        status, body = self.request('GET', '/readyz/{}'.format(name), accept='text/plain', timeout=20)
        return status, body.decode('utf-8', 'replace')

    # -- etcd pods --------------------------------------------------------------------------------
    def etcd_pods(self, explicit=None):
        """Names of etcd pods to try, healthiest first (``--etcd-pod`` alone when given)."""
        ns = defaults.ETCD_NAMESPACE
        if explicit:
            status, body = self.request('GET', '/api/v1/namespaces/{}/pods/{}'.format(ns, explicit), timeout=20)
            if status != 200:
                raise self.api_error(status, body, "reading pod '{}' in {}".format(explicit, ns),
                                     permission='get pods in {}'.format(ns),
                                     not_found=("etcd pod '{}' was not found in {}.".format(explicit, ns),
                                                "List the etcd pods with 'kubectl get pods -n kube-system -l "
                                                "component=etcd', or drop --etcd-pod to find it."))
            return [explicit]
        pods = self._list_pods(ns, defaults.ETCD_LABEL_SELECTOR)
        if not pods:  # not kubeadm-labelled: fall back to the static pod naming scheme
            pods = [p for p in self._list_pods(ns, None)
                    if p['metadata']['name'].startswith(defaults.ETCD_POD_PREFIX)]
        if not pods:
            from azure.cli.core.azclierror import ResourceNotFoundError
            raise make(ResourceNotFoundError, 'No etcd pod found in {} (label {} or name {}*).'.format(
                ns, defaults.ETCD_LABEL_SELECTOR, defaults.ETCD_POD_PREFIX),
                'Name the pod with --etcd-pod. Clusters with external or managed etcd cannot be verified this way.')
        pods.sort(key=lambda p: (not _pod_ready(p), p['metadata']['name']))
        return [p['metadata']['name'] for p in pods]

    def _list_pods(self, ns, selector):
        query = [('labelSelector', selector)] if selector else []
        status, body = self.request('GET', '/api/v1/namespaces/{}/pods'.format(ns), query=query, timeout=30)
        if status != 200:
            raise self.api_error(status, body, 'listing pods in {}'.format(ns), permission='list pods in ' + ns)
        return json.loads(body).get('items') or []

    # -- exec -------------------------------------------------------------------------------------
    def exec(self, pod, container, argv):
        """Run ``argv`` in the container without a shell or TTY; return exact stdout/stderr bytes and exit code.

        Raises ExecError when the exec itself fails (handshake refused, missing executable, stream cut,
        deadline reached).
        """
        import ssl
        from urllib.parse import quote

        import websocket
        from kubernetes.client.exceptions import ApiException
        from kubernetes.stream import ws_client

        ns = defaults.ETCD_NAMESPACE
        # websocket-client has no connect timeout of its own; its module default bounds connect and reads.
        websocket.setdefaulttimeout(self.deadline.bound(30))
        # argv holds flags, paths and etcd keys only, never a value.
        logger.debug('exec in %s/%s container %s: %s', ns, pod, container, ' '.join(argv))
        # The request CoreV1Api.connect_get_namespaced_pod_exec builds (same URL, headers and token refresh), without
        # importing CoreV1Api (over a second of the run) and without capture_all (a second copy of all output).
        query = [('command', arg) for arg in argv] + [('container', container), ('stderr', True), ('stdin', False),
                                                      ('stdout', True), ('tty', False)]
        method, url, headers, _, _ = self._api.param_serialize(
            method='GET', resource_path='/api/v1/namespaces/{}/pods/{}/exec'.format(quote(ns, safe=''),
                                                                                  quote(pod, safe='')),
            query_params=query, header_params={'Accept': '*/*'}, auth_settings=['BearerToken'])
        try:
            client = ws_client.websocket_call(self._api.configuration, method, url, headers=headers,
                                              _preload_content=False, binary=True, capture_all=False)
        except ApiException as ex:
            raise self._exec_handshake_error(pod, ex) from None
        # Frames are read here, one at a time, into per-channel lists: WSClient.update() appends every frame
        # already received to one bytes object (quadratic in a page of megabytes), and its channel reads can
        # meet the close with output still buffered.
        stdout, stderr, status = [], [], []
        sinks = {ws_client.STDOUT_CHANNEL: stdout, ws_client.STDERR_CHANNEL: stderr, ws_client.ERROR_CHANNEL: status}
        sock = client.sock
        readable = _readable_waiter(sock.sock)
        try:
            while True:
                if self.deadline.expired():
                    raise ExecError(self.timeout_error('exec into {} produced no end of output'.format(pod)), True)
                # TLS may hold whole frames already decrypted, which poll() on the socket cannot see.
                if not (isinstance(sock.sock, ssl.SSLSocket) and sock.sock.pending()) and \
                        not readable(self.deadline.bound(1.0)):
                    continue
                opcode, frame = sock.recv_data_frame(True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    break
                data = frame.data if opcode in (websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_TEXT) else b''
                if len(data) > 1 and data[0] in sinks:  # 255 <n> is v5's end of stream n: nothing to keep
                    sinks[data[0]].append(data[1:])
        except websocket.WebSocketConnectionClosedException:
            raise ExecError(self._stream_cut(pod, 'the connection closed without an exit status')) from None
        except websocket.WebSocketTimeoutException:
            raise ExecError(self._stream_cut(pod, 'a frame stopped arriving midway')) from None
        except websocket.WebSocketException as ex:
            raise ExecError(self._stream_cut(pod, type(ex).__name__)) from None
        except OSError as ex:
            raise ExecError(self._stream_cut(pod, ex.strerror or type(ex).__name__)) from None
        finally:
            try:
                client.close()
            except Exception:  # pylint: disable=broad-except
                pass
        error_frame = b''.join(status)
        returncode = self._exit_status(pod, argv, error_frame, container)
        return ExecResult(returncode=returncode, stdout=b''.join(stdout), stderr=b''.join(stderr))

    def _exit_status(self, pod, argv, frame, container=None):
        from azure.cli.core.azclierror import AzureResponseError
        if not frame:
            raise ExecError(self._stream_cut(pod, 'no exit status received'))
        try:
            status = json.loads(frame)
        except ValueError:
            raise ExecError(self._stream_cut(pod, 'unreadable exit status')) from None
        if status.get('status') == 'Success':
            return 0
        if status.get('reason') == 'NonZeroExitCode':
            for cause in (status.get('details') or {}).get('causes') or []:
                if cause.get('reason') == 'ExitCode':
                    try:
                        return int(cause.get('message'))
                    except (TypeError, ValueError):
                        break
            return 1
        full = str(status.get('message') or 'exec failed')
        message = _short_reason(full)
        if 'executable file not found' in full or 'no such file or directory' in full:
            # containerd's message is long (exec id, OCI runtime prefix); its "exec: ..." part says it all.
            import re
            cause = re.search(r'exec: "[^"]*": [^:]*(?:: no such file or directory)?', full)
            raise ExecError(make(AzureResponseError, "'{}' was not found in container '{}' of pod {} ({}).".format(
                argv[0], container or '?', pod, cause.group(0) if cause else message),
                'Give the etcd pod with --etcd-pod and its etcd container with --etcd-container (kubeadm: etcd); '
                'the etcd image must ship etcdctl.'))
        raise ExecError(make(AzureResponseError, 'exec into pod {} failed: {}'.format(pod, message),
                             'Check the pod with kubectl describe pod -n kube-system {}.'.format(pod)))

    def _stream_cut(self, pod, why):
        from azure.cli.core.azclierror import AzureConnectionError
        return make(AzureConnectionError, 'The exec stream to pod {} was cut before etcdctl finished ({}).'.format(
            pod, why), 'Retry; if it persists, check the API server and kubelet of that node.')

    def _exec_handshake_error(self, pod, ex):
        from azure.cli.core.azclierror import AzureConnectionError
        cause = ex.__context__
        status = getattr(cause, 'status_code', None)
        if status:
            body = getattr(cause, 'resp_body', b'') or b''
            error = self.api_error(status, body, 'exec into pod {} in kube-system'.format(pod),
                                   permission='get and create pods/exec in namespace kube-system',
                                   not_found=("etcd pod '{}' was not found in kube-system.".format(pod),
                                              'Drop --etcd-pod to find the etcd pod by its label.'))
            message = _status_message(body)
            if status == 400 and 'container' in message:  # "container X is not valid for pod Y": --etcd-container
                from azure.cli.core.azclierror import InvalidArgumentValueError
                return ExecError(argument_error(make(
                    InvalidArgumentValueError, 'The API server refused the exec into pod {}: {}.'.format(pod, message),
                    'Give the container of the etcd pod that has etcdctl with --etcd-container (kubeadm: etcd).')),
                    fatal=True)
            if status >= 500:  # "error dialing backend": the API server cannot reach that node's kubelet
                error = make(type(error), error.error_msg,
                             "Check the node that runs pod {} and its kubelet ('kubectl get nodes'); with several "
                             'control-plane nodes, name a healthy etcd pod with --etcd-pod.'.format(pod))
            return ExecError(error, fatal=status in (401, 403))
        if self.deadline.expired():
            return ExecError(self.timeout_error('connecting to exec into ' + pod), True)
        reason = type(cause).__name__ if cause else 'connection failed'
        if cause is not None and ('CERTIFICATE_VERIFY_FAILED' in str(cause)):
            return ExecError(self._transport_error(str(cause)), True)
        return ExecError(make(AzureConnectionError, 'Could not open an exec stream to pod {}: {}.'.format(
            pod, _short_reason(str(cause) if isinstance(cause, OSError) else reason)),
            'Check network line of sight to the API server, then retry.'))

    # -- secrets ----------------------------------------------------------------------------------
    def secret_exists(self, ns, name):
        """Whether the API knows the secret. Asks for metadata only: the value never crosses the wire."""
        status, body = self.request('GET', '/api/v1/namespaces/{}/secrets/{}'.format(ns, name),
                                    accept=_METADATA_ONLY, timeout=20)
        if status == 200:
            return True
        if status == 404:
            return False
        raise self.api_error(status, body, 'reading secret {}/{}'.format(ns, name),
                             permission='get secrets in namespace ' + ns)

    def create_probe_secret(self, ns):
        """Create a probe secret with a random name and random value; return its name."""
        import base64
        name = 'kmsverify-probe-' + _random.token_hex(5)
        value = base64.b64encode(_random.token_bytes(32)).decode('ascii')
        body = {'apiVersion': 'v1', 'kind': 'Secret', 'type': 'Opaque',
                'metadata': {'name': name, 'namespace': ns, 'labels': {PROBE_LABEL: 'kmsverify'},
                             'annotations': {'kmsverify/purpose': 'temporary probe of KMS encryption at rest'}},
                'data': {'probe': value}}
        status, answer = self.request('POST', '/api/v1/namespaces/{}/secrets'.format(ns), body=body,
                                      accept=_METADATA_ONLY, timeout=30)
        if status not in (200, 201):
            error = self.api_error(status, answer, 'creating a probe secret in namespace ' + ns,
                                   permission='create secrets in namespace {} (or verify existing secrets with '
                                              '--secret NAMESPACE/NAME or --all-secrets)'.format(ns),
                                   not_found=("Namespace '{}' for the probe secret was not found.".format(ns),
                                              'Choose an existing namespace with --probe-namespace.'))
            raise error
        return name

    def delete_secret(self, ns, name, timeout=15):
        """Delete a secret; True when gone. Never raises: it runs on the way out of errors too, so it is not
        bounded by --timeout (which may be spent) but by its own short timeout."""
        try:
            status, _ = self.request('DELETE', '/api/v1/namespaces/{}/secrets/{}'.format(ns, name),
                                     timeout=timeout, bounded=False)
        except Exception:  # pylint: disable=broad-except
            return False
        return status in (200, 202, 404)

    def list_secret_metadata(self, page_size=500):
        """Yield the metadata of every secret, page by page (metadata only, never data)."""
        token = None
        while True:
            query = [('limit', str(page_size))] + ([('continue', token)] if token else [])
            status, body = self.request('GET', '/api/v1/secrets', query=query, accept=_METADATA_LIST, timeout=60)
            if status != 200:
                raise self.api_error(status, body, 'listing secret metadata',
                                     permission='list secrets in all namespaces')
            page = json.loads(body)
            for item in page.get('items') or []:
                yield item.get('metadata') or {}
            token = (page.get('metadata') or {}).get('continue')
            if not token:
                return


def _readable_waiter(sock):
    """``wait(seconds) -> bool``: whether ``sock`` has data. poll() where there is one (no fd limit), else
    select() (Windows)."""
    import select
    if hasattr(select, 'poll'):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return lambda seconds: bool(poller.poll(int(seconds * 1000)))
    return lambda seconds: bool(select.select([sock], [], [], seconds)[0])


def _pod_ready(pod):
    status = pod.get('status') or {}
    if status.get('phase') != 'Running':
        return False
    return all(c.get('status') == 'True' for c in status.get('conditions') or [] if c.get('type') == 'Ready')


def _status_message(body):
    try:
        status = json.loads(body)
        return _short_reason(status.get('message') or status.get('reason') or '')
    except (ValueError, AttributeError, TypeError):
        return ''


def _short_reason(text, limit=300):
    text = ' '.join(str(text).split())
    return text if len(text) <= limit else text[:limit] + '...'


def _network_reason(reason):
    """The root cause of a urllib3 transport error in a few words ("Connection refused"), not urllib3's
    "HTTPSConnectionPool(...): Max retries exceeded with url: ... (Caused by ...)" wrapper."""
    import re
    inner = getattr(reason, 'reason', None) or reason  # MaxRetryError wraps the real error
    args = getattr(inner, 'args', ())
    if len(args) > 1 and isinstance(args[1], BaseException):  # ProtocolError('Connection aborted.', cause)
        inner = args[1]
    text = str(inner)
    errno_text = re.search(r"\[Errno -?\d+\] ([^'\"()\[\]]+)", text)
    if errno_text:
        return errno_text.group(1).strip()
    return _short_reason(text or type(inner).__name__, 200)


class EtcdExec:
    """Runs etcdctl in the etcd pods, falling back to the next pod when one cannot serve.

    Several control-plane nodes mean several etcd pods, and any healthy member serves reads. A pod whose exec
    fails (node down, stream cut) or whose etcdctl fails is skipped with a warning; authorization failures and
    the deadline are not worth another pod.
    """

    def __init__(self, cluster, pods, container):
        self.cluster = cluster
        self.pods = list(pods)
        self.container = container
        self.pod = None  # the pod that last served
        self.last_pod = None  # the pod whose answer was returned, failing or not

    def __call__(self, argv):
        first_failure = None
        candidates = [self.pod] + [p for p in self.pods if p != self.pod] if self.pod else list(self.pods)
        for index, pod in enumerate(candidates):
            last = index == len(candidates) - 1
            try:
                result = self.cluster.exec(pod, self.container, argv)
            except ExecError as ex:
                if ex.fatal or last:
                    raise (first_failure if isinstance(first_failure, ExecError) and not ex.fatal
                           else ex).error from None
                first_failure = first_failure or ex
                logger.warning('etcd pod %s could not run etcdctl (%s); trying %s.', pod,
                               ex.error.error_msg.rstrip('.'), candidates[index + 1])
                continue
            if result.returncode != 0 and not last:
                first_failure = first_failure or result
                logger.warning('etcdctl failed in etcd pod %s (exit code %s); trying %s.', pod, result.returncode,
                               candidates[index + 1])
                continue
            if result.returncode != 0 and isinstance(first_failure, ExecResult):
                self.last_pod = candidates[0]
                return first_failure  # the first pod's error explains best; the others usually repeat it
            self.last_pod = pod
            if result.returncode == 0:
                self.pod = pod
            return result
        raise AssertionError('unreachable')


class ProbeSecret:
    """A probe secret that is deleted on every way out: return, error, Ctrl-C and SIGTERM (pipeline cancel)."""

    def __init__(self, cluster, namespace):
        self.cluster = cluster
        self.namespace = namespace
        self.name = None
        self.deleted = None
        self._previous_handler = None

    def __enter__(self):
        import signal
        import threading
        if threading.current_thread() is threading.main_thread():
            def _terminate(signum, _frame):
                raise SystemExit(128 + signum)
            self._previous_handler = signal.signal(signal.SIGTERM, _terminate)
        try:
            self.name = self.cluster.create_probe_secret(self.namespace)
        except BaseException:
            self._restore()
            raise
        logger.info('Created probe secret %s/%s', self.namespace, self.name)
        return self

    def __exit__(self, *exc):
        try:
            self.deleted = self.cluster.delete_secret(self.namespace, self.name)
            if self.deleted:
                logger.info('Deleted probe secret %s/%s', self.namespace, self.name)
            else:
                logger.warning('Could not delete probe secret %s/%s; delete it with: kubectl delete secret -n %s %s',
                               self.namespace, self.name, self.namespace, self.name)
        finally:
            self._restore()

    def _restore(self):
        import signal
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None
