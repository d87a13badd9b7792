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
