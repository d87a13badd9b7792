"""429 Too Many Requests as kube-apiserver v1.29.6's API Priority and Fairness answers it (measured in the sandbox,
tests/sandbox/README.md): a plain-text body, ``Retry-After`` in whole seconds that doubles (1, 2, 4, ... 32) while
the flow keeps being rejected, and the matched FlowSchema's and priority level's uids. Every request but the
rewrites (which count their own) sends a 429 again after its Retry-After, within the deadline, through the real
KubeClient against a local HTTP server."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from azure.cli.core.azclierror import AzureResponseError

from azext_kmsverify import defaults
from azext_kmsverify.auth.kubeconfig import Kubeconfig
from azext_kmsverify.deadline import Deadline
from azext_kmsverify.kube import rewrite as rewriting
from azext_kmsverify.kube.client import KubeClient
from azext_kmsverify.kube.errors import retry_after

# What kube-apiserver v1.29.6 sent a throttled identity (Sandbox.throttle), byte for byte but the uids and date.
APF_BODY = b'Too many requests, please try again later.\n'
APF_HEADERS = {'Cache-Control': 'no-cache, private', 'Content-Type': 'text/plain; charset=utf-8',
               'X-Content-Type-Options': 'nosniff',
               'X-Kubernetes-Pf-Flowschema-Uid': 'b1a00964-73fb-45f2-891f-783aa702aa6e',
               'X-Kubernetes-Pf-Prioritylevel-Uid': '64af33fd-c6b7-4fb1-8701-b065568ba036'}
SECRET = {'apiVersion': 'v1', 'kind': 'Secret', 'metadata': {'name': 's', 'namespace': 'ns', 'resourceVersion': '7'},
          'data': {'k': 'dg=='}}


class Server:
    """Answers each request with the next of ``script`` (``429`` + Retry-After, or ``200`` with ``SECRET``)."""

    def __init__(self, script):
        self.script, self.seen = list(script), []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get('Content-Length') or 0)
                if length:
                    self.rfile.read(length)
                owner.seen.append(self.command)
                step = owner.script.pop(0) if owner.script else ('200',)
                if step[0] == '429':
                    self.send_response(429)
                    for k, v in APF_HEADERS.items():
                        self.send_header(k, v)
                    if step[1] is not None:
                        self.send_header('Retry-After', step[1])
                    self.send_header('Content-Length', str(len(APF_BODY)))
                    self.end_headers()
                    self.wfile.write(APF_BODY)
                    return
                body = json.dumps(SECRET).encode()
                self.send_response(200)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = _answer

            def log_message(self, *_):
                pass

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(request):
    servers, clients = [], []

    def make(script, seconds=30):
        server = Server(script)
        servers.append(server)
        config = Kubeconfig(source='test', from_azure=False, base_dir='', context_name='c', cluster_name='c',
                            user_name='u', cluster={'server': server.url}, user={'token': 'not-a-secret'})
        client = KubeClient(config, Deadline(seconds))
        clients.append(client)
        return server, client

    yield make
    for client in clients:
        client.close()
        client.deadline.close()
    for server in servers:
        server.close()


@pytest.fixture
def sleeps(monkeypatch):
    """time.sleep recorded, not slept (the retries' waits)."""
    slept = []
    monkeypatch.setattr(time, 'sleep', slept.append)
    return slept


def test_a_429_is_sent_again_after_its_retry_after(served, sleeps):
    server, client = served([('429', '1'), ('429', '2'), ('429', '32')], seconds=120)
    status, body = client.request('GET', '/api/v1/namespaces/kube-system/pods', doing='listing pods')
    assert status == 200 and json.loads(body)['kind'] == 'Secret'
    assert server.seen == ['GET'] * 4
    assert len(sleeps) == 3
    for slept, asked in zip(sleeps, (1, 2, 32)):
        assert asked <= slept <= asked * 1.2 + 0.05  # the Retry-After, with jitter upwards only


def test_a_post_is_sent_again_too_apf_rejected_it_before_doing_anything(served, sleeps):
    server, client = served([('429', '1')])
    status, _ = client.request('POST', '/api/v1/namespaces/default/secrets', body={'metadata': {'name': 'p'}})
    assert status == 200 and server.seen == ['POST', 'POST'] and len(sleeps) == 1


def test_the_last_429_is_returned_after_the_retries_and_reported_in_one_line(served, sleeps):
    server, client = served([('429', '1')] * (defaults.THROTTLED_RETRIES + 1))
    headers = {}
    status, body = client.request('GET', '/readyz', headers_out=headers, doing='reading /readyz')
    assert status == 429 and len(server.seen) == defaults.THROTTLED_RETRIES + 1
    assert headers['retry-after'] == '1' and len(sleeps) == defaults.THROTTLED_RETRIES
    error = client.errors.api(status, body, 'reading /readyz')
    assert isinstance(error, AzureResponseError)
    assert '429 Too Many Requests while reading /readyz' in error.error_msg and '\n' not in error.error_msg
    assert 'no details' not in error.error_msg
    assert 'FlowSchema' in error.recommendations[0]


def test_no_retry_when_the_caller_honours_429s_itself(served, sleeps):
    server, client = served([('429', '4')])
    headers = {}
    status, _ = client.request('GET', '/x', headers_out=headers, throttled_retries=0)
    assert status == 429 and headers['retry-after'] == '4' and server.seen == ['GET'] and sleeps == []


def test_a_rewrite_counts_each_429_of_its_get_and_put(served, sleeps):
    server, client = served([('429', '1'), ('200',), ('429', '2'), ('200',)])
    outcome = rewriting.rewrite(client, 'ns', 's', force=False)
    assert outcome.status == rewriting.WRITTEN and outcome.throttled == 2
    # the client sent none of them again on its own: the rewrite read again after the PUT's 429, and waited each
    assert server.seen == ['GET', 'GET', 'PUT', 'GET', 'PUT']
    assert [round(s) for s in sleeps] == [1, 2]


def test_a_retry_after_beyond_the_deadline_is_cut_short_to_one_last_try_before_it(served, sleeps):
    server, client = served([('429', '32')] * 3, seconds=10.0)
    status, body = client.request('DELETE', '/api/v1/namespaces/default/secrets/p', doing='deleting the probe')
    assert status == 429 and server.seen == ['DELETE', 'DELETE']  # one last try, then the 429 is the answer
    assert len(sleeps) == 1 and 7.0 < sleeps[0] <= 8.0  # the 10 s less the last try's 2 s, not the 32 asked
    assert 'kept answering 429' in client.errors.api(status, body, 'deleting the probe').error_msg
    server, client = served([('429', '32'), ('200',)], seconds=10.0)
    assert client.request('DELETE', '/x', bounded=False, timeout=10)[0] == 200  # the probe's delete on the way out
    assert 7.0 < sleeps[1] <= 8.0


def test_with_less_time_left_than_the_last_try_keeps_it_is_sent_at_once(served):
    server, client = served([('429', '1')] * 3, seconds=1.5)
    started = time.monotonic()
    status, _ = client.request('GET', '/api/v1/namespaces/kube-system/pods', doing='listing pods in kube-system')
    assert status == 429 and server.seen == ['GET', 'GET'] and time.monotonic() - started < 1.0


@pytest.mark.parametrize('value,seconds', [
    ('1', 1.0), ('32', 32.0), ('60', defaults.RETRY_AFTER_MAX_SECONDS), (None, defaults.RETRY_AFTER_SECONDS),
    ('Wed, 21 Oct 2026 07:28:00 GMT', defaults.RETRY_AFTER_SECONDS), ('-3', defaults.RETRY_AFTER_SECONDS),
    ('nan', defaults.RETRY_AFTER_SECONDS), ('0', 0.0)])
def test_retry_after_values(value, seconds):
    assert retry_after({} if value is None else {'retry-after': value}) == seconds


def test_the_longest_retry_after_apf_sends_is_waited_whole():
    # k8s.io/apiserver v0.29.6 pkg/util/flowcontrol/dropped_requests_tracker.go: maxRetryAfter = 32
    assert defaults.RETRY_AFTER_MAX_SECONDS >= 32
