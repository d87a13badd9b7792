"""Sign-in end to end: the installed wheel through az against sandboxes whose Entra ID emulator az, MSAL and
azure-identity sign in to for real, and whose API server demands PoP tokens (``box``) or also takes bearer tokens
(``lax``, ``enforce_pop=False``).

``-g/-n`` replaces the AKS Arc user kubeconfig's kubelogin entry with the az login's PoP token; ``--kubeconfig``
serves each kubelogin mode without kubelogin (the az login, or azure-identity configured from the environment as
kubelogin reads it). Every failure is one line and a recommendation with exit code 1; no token, signed PoP token,
client secret, federated assertion or certificate key appears in any output, ``--debug`` included.
"""

from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import verify, ENTRA_SERVER_ID, assert_no_leak, copy_of, probe_secrets_left
from tests.e2e.test_failures import assert_error, fault

CANARY_SECRET = 'kmsverify-canary-secret-9f3c2a'  # a recognisable (wrong) client secret
OTHER_TENANT = '0badc0de-1111-4222-8333-944445555666'


@pytest.fixture(scope='module')
def box(sandbox_factory):
    """The default sandbox: the Entra emulator, PoP enforced."""
    return sandbox_factory(provider='kms-v2')


@pytest.fixture(scope='module')
def lax(sandbox_factory):
    """The Entra emulator without PoP enforcement: verified bearer tokens are accepted too."""
    return sandbox_factory(provider='kms-v2', enforce_pop=False)


def entra(box):
    return box.info['entra']


def pop_flags(box):
    return ['--pop-enabled', '--pop-claims', 'u=' + entra(box)['cluster_id']]


def kubelogin_kubeconfig(box, path, *args):
    """The box's kubeconfig whose user signs in with ``kubelogin get-token --server-id <AKS Arc> ARGS``."""
    config = yaml.safe_load(Path(box.kubeconfig).read_text())
    config['users'][0]['user'] = {'exec': {'apiVersion': 'client.authentication.k8s.io/v1beta1',
                                           'command': 'kubelogin', 'interactiveMode': 'IfAvailable',
                                           'args': ['get-token', '--server-id', ENTRA_SERVER_ID, *args]}}
    path.write_text(yaml.safe_dump(config))
    return str(path)


def mode(box, name):
    """(kubelogin arguments, environment) of a kubelogin sign-in against ``box``'s Entra emulator."""
    e = entra(box)
    sp, cert = e['service_principal'], e['certificate_principal']
    authority = {'AZURE_AUTHORITY_HOST': e['url']}
    spn = ['--login', 'spn', '--client-id', sp['client_id'], '--tenant-id', e['tenant'], '--environment',
           'AzurePublicCloud']
    spn_cert = ['--login', 'spn', '--client-id', cert['client_id'], '--tenant-id', e['tenant'],
                '--client-certificate', cert['certificate']]
    secret = dict(authority, AAD_SERVICE_PRINCIPAL_CLIENT_SECRET=sp['secret'])
    return {
        'azurecli': (['--login', 'azurecli', '--tenant-id', e['tenant']], {}),
        'azurecli-pop': (['--login', 'azurecli', '--tenant-id', e['tenant'], *pop_flags(box)], {}),
        'spn-secret': (spn, secret),
        'spn-secret-pop': (spn + pop_flags(box), secret),
        'spn-certificate': (spn_cert, authority),
        'spn-certificate-pop': (spn_cert + pop_flags(box), authority),
        'msi': (['--login', 'msi', '--client-id', e['managed_identity']['client_id']], e['managed_identity']['env']),
        'workloadidentity': (['--login', 'workloadidentity'], e['workload_identity']['env']),
        'azurepipelines': (['--login', 'azurepipelines'], dict(e['pipelines']['env'], **authority)),
    }[name]


def canaries(box):
    """What no output may hold: the sign-ins' secrets (and recognisable pieces of them), the certificate's key, the
    federated assertions (a workload identity token, the pipelines' access token) and their subjects."""
    e = entra(box)
    secret = e['service_principal']['secret']
    key = ''.join(Path(e['certificate_principal']['key_file']).read_text().splitlines()[1:-1])
    wi_token = Path(e['workload_identity']['token_file']).read_text().strip()
    access = e['pipelines']['system_access_token']
    return [CANARY_SECRET, secret, secret[:12], secret[-12:], key[:24], key[-24:], wi_token[-24:],
            e['workload_identity']['subject'], e['pipelines']['subject'], access, access[:12],
            e['managed_identity']['header'], e['user']['password']]


def verify_kubeconfig(az, box, path, *args, env=None):
    return verify(az, path, *args, env=dict({'REQUESTS_CA_BUNDLE': box.info['ca_bundle']}, **(env or {})))


def verify_arm(az, box, *args, **kwargs):
    return verify(az, ('arm', box), *args, **kwargs)


def json_of(result):
    assert result.code == 0, result
    return result.json()


# --- from Azure: the AKS Arc user kubeconfig, PoP from the az login ---------------------------------------------------


@pytest.mark.parametrize('identity', ['sp', 'user'])
def test_resource_group_and_name_sign_in_with_a_pop_token(sign_in, box, identity):
    az = sign_in(box, identity)  # az login for real: a service principal, or the operator by device code
    body = json_of(verify_arm(az, box, '-o', 'json', '--debug'))
    assert body['passed'] is True
    assert body['cluster']['credential'] == {'type': 'user', 'login': 'azurecli', 'pop': True}
    assert body['cluster']['source'] == 'azure' and body['cluster']['context'] == 'sandbox-cluster-user'
    assert probe_secrets_left(box) == []
    admin = verify_arm(az, box, '--admin', '-o', 'json', '--debug')
    assert json_of(admin)['cluster']['credential'] == {'type': 'admin', 'login': None, 'pop': False}
    for result in (admin, verify_arm(az, box, '-o', 'table')):
        assert result.code == 0, result
        assert_no_leak(result, canaries(box))


def test_a_bearer_token_is_refused_where_pop_is_enforced_and_taken_where_not(sign_in, box, lax):
    """The az login's token for the AKS Arc server app, sent as a plain bearer token: 401 on the enforcing cluster
    (whose -g/-n run passes with PoP), 200 on the lax one."""
    for sandbox, expected in ((box, 401), (lax, 200)):
        az = sign_in(sandbox)
        got = az('account', 'get-access-token', '--resource', ENTRA_SERVER_ID, '-o', 'json')
        assert got.code == 0, got
        answer = requests.get(sandbox.info['apiserver']['url'] + '/api/v1/namespaces/kube-system/pods',
                              headers={'Authorization': 'Bearer ' + got.json()['accessToken']},
                              verify=sandbox.info['ca_bundle'], timeout=30)
        assert answer.status_code == expected, answer.text
        if expected == 401:
            # kube-apiserver never tells the client why a token failed: the webhook's reason stays in its log.
            assert answer.json()['reason'] == 'Unauthorized' and answer.json()['message'] == 'Unauthorized'
            assert 'requires a PoP token' in (Path(sandbox.dir) / 'logs' / 'server.log').read_text()
        result = verify_arm(az, sandbox, '-o', 'json')
        assert json_of(result)['cluster']['credential']['pop'] is True
        assert_no_leak(result)


# --- --kubeconfig: each kubelogin mode -------------------------------------------------------------------------------


@pytest.mark.parametrize('name, login, pop', [
    ('azurecli', 'azurecli', False),
    ('azurecli-pop', 'azurecli', True),
    ('spn-secret', 'spn', False),
    ('spn-secret-pop', 'spn', True),
    ('spn-certificate', 'spn', False),
    ('spn-certificate-pop', 'spn', True),
    ('msi', 'msi', False),
    ('workloadidentity', 'workloadidentity', False),
    ('azurepipelines', 'azurepipelines', False),
])
def test_each_kubelogin_mode_passes_and_says_how_it_signed_in(az, sign_in, box, lax, tmp_path, name, login, pop):
    """PoP modes against the enforcing cluster, bearer ones against the lax one (kubelogin has PoP for its
    interactive and spn sign-ins only). Only azurecli uses the az login; the others run with an empty config dir."""
    sandbox = box if pop else lax
    args, env = mode(sandbox, name)
    runner = sign_in(sandbox) if login == 'azurecli' else az
    result = verify_kubeconfig(runner, sandbox, kubelogin_kubeconfig(sandbox, tmp_path / 'kubeconfig', *args),
                               '-o', 'json', '--debug', env=env)
    body = json_of(result)
    assert body['passed'] is True and body['cluster']['source'] == 'kubeconfig'
    assert body['cluster']['credential'] == {'type': 'kubeconfig', 'login': login, 'pop': pop}
    assert 'DEBUG' in result.stderr and 'Traceback' not in result.output
    assert_no_leak(result, canaries(sandbox))
    assert probe_secrets_left(sandbox) == []


@pytest.mark.parametrize('name', ['azurecli', 'spn-secret'])
def test_without_pop_enabled_the_enforcing_cluster_answers_401_in_one_line(sign_in, box, tmp_path, name):
    args, env = mode(box, name)
    result = verify_kubeconfig(sign_in(box), box, kubelogin_kubeconfig(box, tmp_path / 'kubeconfig', *args), env=env)
    assert_error(result, 1, 'The API server rejected the credentials (401 Unauthorized) while reading /readyz.',
                 'Fetch fresh credentials for the cluster', canaries=canaries(box))


# --- failures: expired sign-in, wrong tenant, no managed identity, no pipeline ---------------------------------------


@pytest.mark.parametrize('identity, code', [('user', 'AADSTS700082'), ('sp', 'AADSTS7000222')])
def test_an_expired_sign_in_is_one_line_recommending_az_login(sign_in, box, tmp_path, identity, code):
    """The operator's refresh token expired (AADSTS700082), or the service principal's secret (AADSTS7000222): the
    ARM token still in az's cache gets the kubeconfig, the cluster's PoP token cannot be had."""
    az = copy_of(sign_in(box, identity), tmp_path / 'azure')
    with fault(box, {'sign_ins': 'expired'}, {'sign_ins': 'valid'}):
        result = verify_arm(az, box)
        debug = verify_arm(az, box, '--debug')
    assert_error(result, 1, ['Could not get an Entra ID token for the cluster (Entra server id {}, azurecli '
                             'sign-in)'.format(ENTRA_SERVER_ID), code],
                 "Sign in with 'az login' (in pipelines, use an AzureCLI task with a service connection), then retry.",
                 canaries=canaries(box))
    assert debug.code == 1 and 'DEBUG' in debug.stderr
    assert_no_leak(debug, canaries(box))
    assert probe_secrets_left(box) == []


def test_a_tenant_the_az_login_is_not_in_is_one_line(sign_in, box, tmp_path):
    args = ['--login', 'azurecli', '--tenant-id', OTHER_TENANT, *pop_flags(box)]
    result = verify_kubeconfig(sign_in(box), box, kubelogin_kubeconfig(box, tmp_path / 'kubeconfig', *args))
    assert_error(result, 1, ['Could not get an Entra ID token for the cluster', 'azurecli sign-in',
                             'the az login has no account in tenant ' + OTHER_TENANT, '--tenant-id',
                             entra(box)['tenant']],
                 "Sign in to that tenant with 'az login --tenant {}'".format(OTHER_TENANT), canaries=canaries(box))


def test_a_service_principal_of_a_wrong_tenant_is_one_line(az, box, tmp_path):
    e = entra(box)
    args = ['--login', 'spn', '--client-id', e['service_principal']['client_id'], '--tenant-id', OTHER_TENANT,
            *pop_flags(box)]
    path = kubelogin_kubeconfig(box, tmp_path / 'kubeconfig', *args)
    env = {'AZURE_AUTHORITY_HOST': e['url'], 'AAD_SERVICE_PRINCIPAL_CLIENT_SECRET': e['service_principal']['secret']}
    for extra in ([], ['--debug']):
        result = verify_kubeconfig(az, box, path, *extra, env=env)
        if extra:
            assert result.code == 1 and 'DEBUG' in result.stderr, result
            assert_no_leak(result, canaries(box))
            continue
        assert_error(result, 1, ['Could not get an Entra ID token for the cluster', 'spn sign-in', OTHER_TENANT],
                     'Check the service principal, its secret or certificate, and the tenant.',
                     canaries=canaries(box))


def test_a_wrong_client_secret_is_one_line_and_never_shown(az, lax, tmp_path):
    args, env = mode(lax, 'spn-secret')
    path = kubelogin_kubeconfig(lax, tmp_path / 'kubeconfig', *args)
    for extra in ([], ['--debug']):
        result = verify_kubeconfig(az, lax, path, *extra,
                                   env=dict(env, AAD_SERVICE_PRINCIPAL_CLIENT_SECRET=CANARY_SECRET))
        if extra:
            assert result.code == 1 and 'DEBUG' in result.stderr, result
            assert_no_leak(result, canaries(lax))
            continue
        assert_error(result, 1, ['spn sign-in', 'AADSTS7000215'],
                     'Check the service principal, its secret or certificate, and the tenant.', canaries=canaries(lax))


def test_the_managed_identity_endpoint_down_is_one_line(az, lax, tmp_path):
    args, env = mode(lax, 'msi')
    path = kubelogin_kubeconfig(lax, tmp_path / 'kubeconfig', *args)
    with fault(lax, {'managed_identity': 'down'}, {'managed_identity': 'up'}):
        result = verify_kubeconfig(az, lax, path, env=env)
        debug = verify_kubeconfig(az, lax, path, '--debug', env=env)
    assert_error(result, 1, ['Could not get an Entra ID token for the cluster (Entra server id {}, msi '
                             'sign-in)'.format(ENTRA_SERVER_ID), 'Connection refused'],
                 'Check that a managed identity is available here (IDENTITY_ENDPOINT, or IMDS on a VM).',
                 canaries=canaries(lax))
    assert debug.code == 1
    assert_no_leak(debug, canaries(lax))
    assert json_of(verify_kubeconfig(az, lax, path, '-o', 'json', env=env))['cluster']['credential']['login'] == 'msi'


def test_azurepipelines_outside_a_pipeline_names_the_missing_access_token(az, lax, tmp_path):
    args, env = mode(lax, 'azurepipelines')
    env = dict(env, SYSTEM_ACCESSTOKEN='')  # an AzureCLI task without `SYSTEM_ACCESSTOKEN: $(System.AccessToken)`
    result = verify_kubeconfig(az, lax, kubelogin_kubeconfig(lax, tmp_path / 'kubeconfig', *args), env=env)
    assert_error(result, 1, 'kubelogin azurepipelines sign-in needs a SYSTEM_ACCESSTOKEN, which is not set.',
                 'Run in', canaries=canaries(lax))

