"""kubelogin arguments read as kubelogin reads them, and PoP tokens made as kubelogin makes them (pure)."""

import base64
import hashlib
import json

import pytest

from azext_kmsverify.auth import kubelogin
from azext_kmsverify.auth.pop import PopKey

AKS_ARC_ARGS = ['get-token', '--login', 'interactive', '--server-id', '6256c85f-0aad-4d50-b960-e6e9b21efe35',
                '--client-id', '3f4439ff-e698-4d6d-84fe-09c9d574f06b', '--tenant-id', 'tenant-1', '--environment',
                'AzurePublicCloud', '--pop-enabled', '--pop-claims',
                'u=/subscriptions/s/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/c']


def _b64d(text):
    return base64.urlsafe_b64decode(text + '=' * (-len(text) % 4))


def test_the_aks_arc_user_entry():
    args = kubelogin.parse(AKS_ARC_ARGS, environ={})
    assert (args.login, args.server_id, args.client_id, args.tenant_id) == (
        'interactive', '6256c85f-0aad-4d50-b960-e6e9b21efe35', '3f4439ff-e698-4d6d-84fe-09c9d574f06b', 'tenant-1')
    assert args.pop_enabled and args.pop_u().endswith('/connectedClusters/c')
    assert args.authority() == 'https://login.microsoftonline.com'


def test_kubelogin_defaults_and_forms():
    args = kubelogin.parse(['get-token'], environ={})
    assert (args.login, args.environment, args.pop_enabled) == ('devicecode', 'AzurePublicCloud', False)
    args = kubelogin.parse(['get-token', '-l', 'spn', '--server-id=x', '-t', 't', '-e', 'AzureChinaCloud'], environ={})
    assert (args.login, args.server_id, args.tenant_id) == ('spn', 'x', 't')
    assert args.authority() == 'https://login.chinacloudapi.cn'


def test_the_environment_overrides_flags_as_in_kubelogin():
    env = {'AAD_LOGIN_METHOD': 'spn', 'AAD_SERVICE_PRINCIPAL_CLIENT_ID': 'a', 'AZURE_CLIENT_ID': 'b',
           'AZURE_CLIENT_SECRET': 's', 'AZURE_TENANT_ID': 't2', 'AZURE_AUTHORITY_HOST': 'https://127.0.0.1:9/'}
    args = kubelogin.parse(['get-token', '--login', 'devicecode', '--client-id', 'flag', '--tenant-id', 't1'], env)
    assert (args.login, args.client_id, args.client_secret, args.tenant_id) == ('spn', 'b', 's', 't2')
    assert args.authority() == 'https://127.0.0.1:9'
    wi = kubelogin.parse(['get-token', '--login', 'workloadidentity'],
                         {'AZURE_CLIENT_ID': 'c', 'AZURE_FEDERATED_TOKEN_FILE': '/var/run/token'})
    assert (wi.client_id, wi.federated_token_file) == ('c', '/var/run/token')


@pytest.mark.parametrize('claims, u', [('u=/a/b', '/a/b'), ('k=v,u=/x', '/x'), ('u=', None), ('', None), (None, None)])
def test_pop_claims(claims, u):
    args = kubelogin.parse(['get-token', '--pop-enabled'] + (['--pop-claims', claims] if claims is not None else []),
                           environ={})
    assert args.pop_u() == u


def test_secrets_stay_out_of_the_repr():
    args = kubelogin.parse(['get-token', '--client-secret', 'CANARY-SECRET'], environ={})
    assert 'CANARY' not in repr(args)


def test_pop_key_thumbprint_request_and_signed_token():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    key = PopKey()
    jwk = key.jwk()
    canonical = json.dumps({'e': jwk['e'], 'kty': 'RSA', 'n': jwk['n']}, separators=(',', ':')).encode()
    assert key.kid == base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b'=').decode()
    data = key.token_request_data()
    assert data['token_type'] == 'pop' and data['key_id'] == key.kid
    assert json.loads(_b64d(data['req_cnf'])) == {'kid': key.kid, 'xms_ksl': 'sw'}
    token = key.sign('the-access-token', '/subscriptions/s/x', now=1700000000)
    header, payload, signature = token.split('.')
    assert json.loads(_b64d(header)) == {'typ': 'pop', 'alg': 'RS256', 'kid': key.kid}
    claims = json.loads(_b64d(payload))
    assert (claims['at'], claims['ts'], claims['u']) == ('the-access-token', 1700000000, '/subscriptions/s/x')
    assert claims['cnf'] == {'jwk': jwk} and len(claims['nonce']) == 32
    public = rsa.RSAPublicNumbers(int.from_bytes(_b64d(jwk['e']), 'big'),
                                  int.from_bytes(_b64d(jwk['n']), 'big')).public_key()
    public.verify(_b64d(signature), f'{header}.{payload}'.encode(), padding.PKCS1v15(), hashes.SHA256())
    assert key.sign('t', 'u').split('.')[1] != key.sign('t', 'u').split('.')[1]  # a fresh nonce each time
    assert 'PRIVATE' not in repr(key) and key.kid in repr(key)


class _Profile:
    """What AzLoginSource reads of az's Profile: the cached accounts."""

    def __init__(self, accounts):
        self.accounts = accounts

    def load_cached_subscriptions(self):
        return self.accounts


def _account(sub, tenant, default=False):
    return {'id': sub, 'tenantId': tenant, 'isDefault': default}


@pytest.mark.parametrize('tenant, pop_u, expected', [
    (None, None, None),  # no --tenant-id: az's default subscription, as before
    ('t-a', None, None),  # the default subscription is in the tenant
    ('t-b', None, 's-b1'),  # the first account in the entry's tenant
    ('T-B', '/subscriptions/S-B2/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/c', 's-b2'),
])
def test_the_az_login_account_follows_the_entry_tenant(tenant, pop_u, expected):
    from azext_kmsverify.auth.tokens import AzLoginSource
    profile = _Profile([_account('s-a', 't-a', default=True), _account('s-b1', 't-b'), _account('s-b2', 't-b')])
    source = AzLoginSource(None, 'azurecli', '6256c85f-0aad-4d50-b960-e6e9b21efe35', pop_u, tenant=tenant)
    assert source._subscription(profile) == expected


def test_a_tenant_id_the_az_login_has_no_account_in_is_one_line():
    from azure.cli.core.azclierror import AuthenticationError

    from azext_kmsverify.auth.tokens import AzLoginSource
    other = '0badc0de-1111-4222-8333-944445555666'
    source = AzLoginSource(None, 'azurecli', 'server', None, tenant=other)
    with pytest.raises(AuthenticationError) as raised:
        source._subscription(_Profile([_account('s-a', '72f988bf-86f1-41af-91ab-2d7cd011db47', default=True)]))
    assert 'the az login has no account in tenant ' + other in str(raised.value)
    assert AzLoginSource(None, 'azurecli', 'server', None, tenant=other)._subscription(_Profile([])) is None


class _Failure(Exception):
    pass


class _Browser:
    """msal's app: its interactive flow would open a browser."""

    def acquire_token_interactive(self, scopes, **kwargs):
        raise AssertionError('a browser was opened')


def _expired(fallback):
    """Raise the request's failure and call ``fallback`` while handling it, as az's UserCredential does."""
    try:
        raise _Failure('AADSTS700082: The refresh token has expired')
    except _Failure:
        return fallback()


class _UserCredential266:
    """az 2.66 on (msal_credentials.py): the fallback is its own ``_acquire_token_interactive``."""

    def get_token(self, *scopes, **kwargs):
        return _expired(lambda: self._acquire_token_interactive(scopes, **kwargs))

    def _acquire_token_interactive(self, scopes, **kwargs):
        raise AssertionError('a browser was opened')


class _UserCredential265:
    """az 2.65: UserCredential wraps the msal app and calls ``self._msal_app.acquire_token_interactive``."""
    _msal_app = _Browser()

    def get_token(self, *scopes, **kwargs):
        return _expired(lambda: self._msal_app.acquire_token_interactive(list(scopes), **kwargs))


class _UserCredential264(_Browser):
    """az 2.64 and before (msal_authentication.py): UserCredential is msal's PublicClientApplication."""

    def get_token(self, *scopes, **kwargs):
        return _expired(lambda: self.acquire_token_interactive(list(scopes), **kwargs))


@pytest.mark.parametrize('credential', [_UserCredential266, _UserCredential265, _UserCredential264])
def test_a_failed_pop_request_never_opens_a_browser(credential):
    """az's user credential falls back to an interactive browser flow when a request with ``data`` fails; the
    run raises the request's own failure instead, in each shape the fallback has had across the az releases."""
    from azext_kmsverify.auth.tokens import _no_browser
    credential.__name__ = 'UserCredential'  # what az calls it; only a UserCredential is touched

    class Adaptor:
        _credential = credential()

    adaptor = Adaptor()
    _no_browser(adaptor)
    with pytest.raises(_Failure, match='AADSTS700082'):
        adaptor._credential.get_token('x/.default', data={'token_type': 'pop'})
    _no_browser(object())  # a credential without the fallback is left alone


def test_cloud_shells_credential_keeps_its_interactive_call():
    """Cloud Shell's credential gets every token through msal's acquire_token_interactive(prompt="none")."""
    from azext_kmsverify.auth.tokens import _no_browser

    class App:
        def acquire_token_interactive(self, scopes, **kwargs):
            return {'access_token': 'x', 'prompt': kwargs.get('prompt')}

    class CloudShellCredential:
        _msal_app = App()

    class Adaptor:
        _credential = CloudShellCredential()

    adaptor = Adaptor()
    _no_browser(adaptor)
    assert adaptor._credential._msal_app.acquire_token_interactive(['x'], prompt='none')['prompt'] == 'none'
