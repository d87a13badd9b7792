"""The one private az name the extension uses (auth/armclient.az_client_kwargs) still gives what the ARM pipeline
takes, on the az the tests run (requirements-az.txt pins the az version the extension claims)."""

from azure.cli.core.mock import DummyCli
from azure.core.pipeline.policies import HTTPPolicy, SansIOHTTPPolicy

from azext_kmsverify.auth import armclient
from azext_kmsverify.deadline import Deadline


def test_az_gives_every_client_kwarg_the_pipeline_takes():
    kwargs = armclient.az_client_kwargs(DummyCli())
    for name in armclient.AZ_CLIENT_KWARGS:
        assert name in kwargs, name
    assert isinstance(kwargs['headers'], dict)
    for name in ('user_agent_policy', 'logging_policy'):
        assert isinstance(kwargs[name], (HTTPPolicy, SansIOHTTPPolicy)), (name, type(kwargs[name]))
    # az's test hook: absent before az 2.61, None unless a test of az's own registered one; the pipeline drops None
    assert kwargs.get('custom_hook_policy') is None or isinstance(kwargs['custom_hook_policy'],
                                                                  (HTTPPolicy, SansIOHTTPPolicy))
    assert 'AZURECLI/' in kwargs['user_agent_policy'].user_agent  # az's user agent, not azure-core's alone


def test_the_pipeline_builds_with_az_policies(monkeypatch):
    client = armclient._pipeline_client(DummyCli(), 'not-a-token', Deadline(5))
    assert client._base_url.startswith('https://management.')
    # az 2.60 gives no custom_hook_policy: the pipeline is built without it
    real = armclient.az_client_kwargs
    monkeypatch.setattr(armclient, 'az_client_kwargs',
                        lambda ctx: {k: v for k, v in real(ctx).items() if k != 'custom_hook_policy'})
    assert armclient._pipeline_client(DummyCli(), 'not-a-token', Deadline(5)) is not None


def test_no_module_but_the_factory_names_a_private_az_name():
    from pathlib import Path
    package = Path(armclient.__file__).resolve().parents[1]
    users = [p.relative_to(package).as_posix() for p in package.rglob('*.py')
             if '_prepare_client_kwargs_track2' in p.read_text()]
    assert users == ['auth/armclient.py']


class _Transport:
    """An azure-core transport that records every request and answers the listUserKubeconfig POST with 202 and
    an operation URL (``async_url``)."""

    def __init__(self, async_url):
        self.async_url = async_url
        self.sent = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def open(self):
        return None

    def close(self):
        return None

    def send(self, request, **_kwargs):
        from azure.core.pipeline.transport import HttpResponse
        self.sent.append((request.method, request.url, request.headers.get('Authorization')))

        class _Response(HttpResponse):
            def body(self):
                return b'{}'

            def text(self, encoding=None):
                return '{}'
        response = _Response(request, None)
        response.status_code, response.reason = 202, 'Accepted'
        from azure.core.utils import CaseInsensitiveDict
        response.headers = CaseInsensitiveDict({'Azure-AsyncOperation': self.async_url, 'Retry-After': '0',
                                                'Content-Type': 'application/json'})
        return response


import pytest  # noqa: E402


@pytest.mark.parametrize('async_url', ['https://elsewhere.example/op', 'http://management.azure.com/op',
                                       'https://management.azure.com.elsewhere.example/op'])
def test_an_operation_url_elsewhere_stops_the_run_and_gets_no_token(monkeypatch, async_url):
    from azure.cli.core.azclierror import AzureResponseError
    from azure.core.pipeline import transport as transports

    from azext_kmsverify.auth import arm
    recorder = _Transport(async_url)
    monkeypatch.setattr(armclient, 'get_arm_token', lambda *a, **k: 'arm-token-canary')
    monkeypatch.setattr(transports, 'RequestsTransport', lambda **_kw: recorder)
    with Deadline(20) as deadline, pytest.raises(AzureResponseError) as raised:
        arm.fetch_kubeconfig(DummyCli(), 'rg', 'c1', False, deadline, subscription='sub')
    assert 'not followed, and no token was sent there' in raised.value.error_msg
    assert '\n' not in raised.value.error_msg
    assert [url for _, url, _ in recorder.sent if not url.startswith('https://management.azure.com/')] == []
    assert recorder.sent and recorder.sent[0][2] == 'Bearer arm-token-canary'  # the POST itself, on ARM's host


def test_an_arm_url_on_the_endpoint_passes_the_check():
    armclient.check_arm_url('https://Management.Azure.com/subscriptions/x?api-version=1', 'https://management.azure.com/')
