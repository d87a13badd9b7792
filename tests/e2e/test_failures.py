"""Failure modes end to end: the installed wheel through ``az`` against sandboxes, one failure at a time.

Each failure must give the right exit code (0 passed, 4 verified and found a problem, 1 could not verify,
2 bad arguments, 3 not found), exactly one ``ERROR: `` line saying what is wrong followed by a recommendation
line, no traceback, nothing leaked, and no probe secret left behind. The azclierror class is visible to a user
only through the exit code and the message, so both are asserted. README.md "Failure modes" lists them all.

Sandboxes: ``box`` (KMS v2, one node, the Entra emulator with PoP enforced) is shared and every fault injected into
it is undone in ``finally``; tests that stop etcd use a sandbox of their own. az is signed in to it for real
(conftest ``sign_in``); a sign-in that has expired is a real one too: the emulator's ``sign_ins`` control, and az's
token cache past expiry on a copy of the sign-in.
"""

import base64
import contextlib
import json
import os
import socket
import time
import uuid

import pytest
import yaml

from tests.conftest import (verify, wait_kms_health,
    ENTRA_SERVER_ID,
    assert_no_leak,
    copy_of,
    expire_cached_tokens,
    fresh_sandbox,
    make_secret,
    probe_secrets_left,
)

CANARY = 'failure-canary-4d1e8b'


# --- helpers -----------------------------------------------------------------------------------------------------


def assert_error(result, code, message, recommendation, canaries=()):
    """Exit ``code``; one ``ERROR: `` line holding every part of ``message``; the next line holding every part
    of ``recommendation``; no traceback; nothing on stdout; nothing leaked."""
    assert result.code == code, result
    assert 'Traceback' not in result.output, result
    assert result.stdout.strip() == '', result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith('ERROR: ')]
    assert len(errors) == 1, result
    for part in [message] if isinstance(message, str) else message:
        assert part in errors[0], '{!r} not in the error line:\n{!r}'.format(part, result)
    following = lines[lines.index(errors[0]) + 1:]
    assert following and not following[0].startswith(('ERROR', 'WARNING')), result
    for part in [recommendation] if isinstance(recommendation, str) else recommendation:
        assert part in following[0], '{!r} not in the recommendation:\n{!r}'.format(part, result)
    assert_no_leak(result, canaries)
    return errors[0]


def timed(call, *args, **kwargs):
    start = time.monotonic()
    result = call(*args, **kwargs)
    return result, time.monotonic() - start


def write_kubeconfig(box, path, change):
    """A copy of the sandbox's admin kubeconfig with ``change(config)`` applied."""
    config = yaml.safe_load(open(box.kubeconfig, encoding='utf-8'))
    change(config)
    path.write_text(yaml.safe_dump(config))
    return str(path)


def closed_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def fault(box, on, off):
    box.ctl(on)
    try:
        yield
    finally:
        box.ctl(off)


def etcd_pod(box):
    return box.info['etcd_pods'][0]


# --- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def box(sandbox_factory):
    return sandbox_factory(provider='kms-v2')


@pytest.fixture(scope='module')
def arm_az(sign_in, box):
    """az signed in (a service principal, az login for real) to the sandbox cloud: the box's ARM and Entra."""
    return sign_in(box)


@pytest.fixture(scope='module')
def user_az(sign_in, box):
    """az signed in as the sandbox's operator (device code): a user sign-in, with refresh tokens."""
    return sign_in(box, 'user')


def arm_verify(arm_az, box, name, *args, **kwargs):
    return arm_az('aksarc', 'kms', 'verify', '-g', box.info['arm']['resource_group'], '-n', name, *args, **kwargs)


# --- ARM: credentials from Azure ---------------------------------------------------------------------------------


def test_arm_missing_cluster_is_not_found_exit_3(arm_az, box):
    result = arm_verify(arm_az, box, 'missing-cluster')
    assert_error(result, 3, ["AKS Arc cluster 'missing-cluster' was not found in resource group 'sandbox-rg'",
                             'subscription'], ['--resource-group and --name', 'az account show'])


def test_arm_wrong_subscription_recommends_az_account_set_exit_1(arm_az, box):
    result = arm_verify(arm_az, box, box.info['arm']['cluster'], '--subscription',
                        '0000dead-0000-4000-8000-000000000bad')
    assert_error(result, 1, ['Could not get an Entra ID token for Azure Resource Manager',
                             '0000dead-0000-4000-8000-000000000bad'],
                 ['az account set --subscription ID', '--subscription', 'az account list'])
    assert "Sign in with 'az login'" not in result.stderr


@pytest.mark.parametrize('admin, action, role', [
    (False, 'listUserKubeconfig', 'Azure Kubernetes Service Arc Cluster User Role'),
    (True, 'listAdminKubeconfig', 'Azure Kubernetes Service Arc Cluster Admin Role')])
def test_arm_forbidden_names_the_role_exit_1(arm_az, box, admin, action, role):
    result = arm_verify(arm_az, box, 'forbidden-cluster', *(['--admin'] if admin else []))
    assert_error(result, 1, ['Not allowed to run {} on AKS Arc cluster'.format(action), 'AuthorizationFailed'],
                 ["'{}'".format(role), action + '/action'])


def test_arm_failed_operation_reports_its_error_exit_1(arm_az, box):
    result = arm_verify(arm_az, box, 'failing-cluster')
    assert_error(result, 1, ['The listUserKubeconfig operation ended Failed', 'ListCredentialFailed',
                             'could not reach the cluster'], 'Check the cluster state')


def test_arm_stuck_operation_ends_within_the_timeout_exit_1(arm_az, box):
    result, seconds = timed(arm_verify, arm_az, box, 'stuck-cluster', '--timeout', '3')
    assert_error(result, 1, "operation on AKS Arc cluster 'stuck-cluster' did not finish within the --timeout of 3 s",
                 ['larger --timeout', 'az aksarc show'])
    assert seconds < 3 + 5, seconds


def test_arm_malformed_kubeconfig_is_not_echoed_exit_1(arm_az, box):
    result = arm_verify(arm_az, box, 'malformed-cluster')
    html = '<html><body><h1>502 Bad Gateway</h1></body></html>\n'
    assert_error(result, 1, "The kubeconfig returned by listUserKubeconfig for cluster 'malformed-cluster' is not "
                 'a valid kubeconfig.', 'az aksarc get-credentials',
                 canaries=['502 Bad Gateway', base64.b64encode(html.encode()).decode()[:24]])


def test_arm_synchronous_answer_works(arm_az, box):
    # --admin: the user kubeconfig of sync-cluster asks for PoP tokens for sync-cluster, which the box's API server
    # (sandbox-cluster's) refuses
    result = arm_verify(arm_az, box, 'sync-cluster', '--admin', '-o', 'json')
    assert result.code == 0, result
    body = result.json()
    assert body['passed'] is True and body['cluster']['name'] == 'sync-cluster'
    assert_no_leak(result)
    assert probe_secrets_left(box) == []


def test_not_signed_in_recommends_az_login_exit_1(az):
    result = az('aksarc', 'kms', 'verify', '-g', 'sandbox-rg', '-n', 'sandbox-cluster')
    assert_error(result, 1, ['Could not find an Azure subscription in the az login', 'az login'], "'az login'")


def test_all_clusters_not_signed_in_is_our_one_line_with_a_recommendation_exit_1(az):
    result = az('aksarc', 'kms', 'verify', '--all-clusters')
    assert_error(result, 1, ['--all-clusters needs the az login to list its subscriptions', 'az login'],
                 ["'az login'", '--ids'])


def test_token_request_failing_recommends_az_login_exit_1(user_az, box, tmp_path):
    """An expired sign-in: the access tokens in az's cache are past expiry, and the refresh token has expired."""
    expired = copy_of(user_az, tmp_path / 'azure')
    expire_cached_tokens(expired.config_dir)
    with fault(box, {'sign_ins': 'expired'}, {'sign_ins': 'valid'}):
        result = arm_verify(expired, box, box.info['arm']['cluster'])
    assert_error(result, 1, ['Could not get an Entra ID token for Azure Resource Manager', 'AADSTS700082'],
                 "'az login'")
    assert probe_secrets_left(box) == []


def test_token_request_failing_for_a_kubelogin_kubeconfig_exit_1(user_az, box, tmp_path):
    def kubelogin_azurecli(config):
        config['users'][0]['user'] = {'exec': {
            'apiVersion': 'client.authentication.k8s.io/v1beta1', 'command': 'kubelogin',
            'args': ['get-token', '--login', 'azurecli', '--server-id', ENTRA_SERVER_ID, '--pop-enabled',
                     '--pop-claims', 'u=' + box.info['entra']['cluster_id']]}}
    path = write_kubeconfig(box, tmp_path / 'kubeconfig', kubelogin_azurecli)
    with fault(box, {'sign_ins': 'expired'}, {'sign_ins': 'valid'}):
        result = verify(copy_of(user_az, tmp_path / 'azure'), path)
    assert_error(result, 1, ['Could not get an Entra ID token for the cluster (Entra server id {}'.format(
        ENTRA_SERVER_ID), 'azurecli sign-in', 'AADSTS700082'], "'az login'")


# --- the API server ----------------------------------------------------------------------------------------------


def test_api_server_unreachable_exit_1(az, box, tmp_path):
    port = closed_port()

    def to_closed_port(config):
        config['clusters'][0]['cluster']['server'] = 'https://127.0.0.1:{}'.format(port)
    result, seconds = timed(verify, az, write_kubeconfig(box, tmp_path / 'kubeconfig', to_closed_port),
                            '--timeout', '20')
    assert_error(result, 1, 'Could not reach the API server https://127.0.0.1:{}: Connection refused.'.format(port),
                 'network line of sight')
    assert seconds < 20, seconds


def test_api_server_certificate_not_trusted_exit_1(az, box, tmp_path):
    other_ca = base64.b64encode(open(box.info['pki']['etcd_ca_cert'], 'rb').read()).decode()

    def another_ca(config):
        config['clusters'][0]['cluster']['certificate-authority-data'] = other_ca
    result = verify(az, write_kubeconfig(box, tmp_path / 'kubeconfig', another_ca))
    assert_error(result, 1, 'The TLS certificate of the API server {} is not trusted by the kubeconfig.'.format(
        box.info['apiserver']['url']), 'cluster CA in the kubeconfig does not match')


def test_bad_bearer_token_is_401_exit_1_and_not_echoed(az, box, tmp_path):
    token = 'bogus-bearer-' + uuid.uuid4().hex

    def bogus_token(config):
        config['users'][0]['user'] = {'token': token}
    path = write_kubeconfig(box, tmp_path / 'kubeconfig', bogus_token)
    result = verify(az, path)
    assert_error(result, 1, 'The API server rejected the credentials (401 Unauthorized)', 'Fetch fresh credentials',
                 canaries=[token])
    debug = verify(az, path, '--debug')
    assert debug.code == 1 and 'DEBUG' in debug.stderr, debug
    assert_no_leak(debug, [token])


def test_unknown_context_is_a_bad_argument_exit_2(az, box):
    result = verify(az, box.kubeconfig, '--context', 'no-such-context')
    assert_error(result, 2, "Context 'no-such-context' is not in --kubeconfig",
                 'Choose one of: kubernetes-admin@sandbox')


def test_named_secret_that_does_not_exist_exit_3(az, box):
    result = verify(az, box.kubeconfig, '--secret', 'default/no-such-secret')
    assert_error(result, 3, 'Secret default/no-such-secret was not found.',
                 'kubectl get secret -n default no-such-secret')


def test_one_missing_secret_among_others_is_its_own_entry_exit_3(az, box):
    result = verify(az, box.kubeconfig, '--secret', 'default/db-user-pass', '--secret', 'default/no-such-secret',
                    '-o', 'json')
    assert result.code == 3, result
    checks = {(c['name'], c['target']): c for c in result.json()['checks']}
    missing = checks[('SecretFound', 'default/no-such-secret')]
    assert missing['status'] == 'Failed' and missing['detail'] == 'Secret default/no-such-secret was not found.'
    assert ('SecretEncryptedWithKms', 'default/db-user-pass') in checks, checks  # the other one was verified
    assert [s['name'] for s in result.json()['secrets']] == ['db-user-pass']
    assert 'Traceback' not in result.output


# --- etcd pods and exec ------------------------------------------------------------------------------------------


def test_named_etcd_pod_that_does_not_exist_exit_3(az, box):
    result = verify(az, box.kubeconfig, '--etcd-pod', 'etcd-no-such-node')
    assert_error(result, 3, "etcd pod 'etcd-no-such-node' was not found in kube-system.", 'component=etcd')
    assert probe_secrets_left(box) == []


def test_no_etcd_pod_in_kube_system_exit_3(az, box):
    with fault(box, {'etcd_pods': 'hidden'}, {'etcd_pods': 'visible'}):
        result = verify(az, box.kubeconfig)
    assert_error(result, 3, 'No etcd pod found in kube-system (label component=etcd or name etcd-*).',
                 ['--etcd-pod', 'external or managed etcd'])
    assert probe_secrets_left(box) == []


def test_first_etcd_pod_broken_falls_back_with_a_warning(az, sandbox_factory):
    three = sandbox_factory(provider='kms-v2', nodes=3, broken_node=True)
    [broken] = three.info['broken_pods']
    result = verify(az, three.kubeconfig, '-o', 'json')
    assert result.code == 0, result
    warnings = [line for line in result.stderr.splitlines() if line.startswith('WARNING: ')]
    assert len(warnings) == 1 and broken in warnings[0] and 'trying' in warnings[0], result
    # kube-apiserver 1.29 with the WebSocket translation (1.30+ by default) reports the dead kubelet after the
    # upgrade ("error sending request: Post <kubelet URL>: dial tcp ...: connect: connection refused")
    assert 'connection refused' in warnings[0] and ').)' not in warnings[0], result
    body = result.json()
    assert body['passed'] is True and body['etcdPod'] in three.info['etcd_pods'] and body['etcdPod'] != broken
    assert 'ERROR' not in result.stderr and 'Traceback' not in result.stderr
    assert_no_leak(result)
    assert probe_secrets_left(three) == []


def test_only_etcd_pod_broken_exit_1_recommends_checking_the_node(az, box):
    pod = etcd_pod(box)
    with fault(box, {'exec_fault': {'pod': pod, 'mode': 'broken'}}, {'exec_fault': {'pod': pod, 'mode': None}}):
        result = verify(az, box.kubeconfig)
    assert_error(result, 1, ['pod {}'.format(pod), 'connection refused'],
                 ['Check the node that runs pod ' + pod, '--etcd-pod'])
    assert probe_secrets_left(box) == []


def test_exec_forbidden_names_pods_exec_in_kube_system_exit_1(az, box):
    # The access preflight (SelfSubjectAccessReview) names the missing permission before anything is done; without
    # it the real server's 403 came only from the exec (1.29 authorizes the WebSocket GET as get pods/exec).
    result = verify(az, box.kubeconfig_restricted, '--secret', 'default/db-user-pass')
    assert_error(result, 1, ["'verify --secret' cannot run with this identity",
                             'denies get pods/exec in namespace kube-system; '
                             'create pods/exec in namespace kube-system'],
                 'az aksarc kms status prints the Role/ClusterRole')


def test_exec_forbidden_for_an_entra_user_through_arm_exit_1(sign_in, box):
    restricted = sign_in(box, 'restricted')  # az login (device code) as restricted-operator@contoso.com
    result = arm_verify(restricted, box, box.info['arm']['cluster'], '--secret', 'default/db-user-pass')
    assert_error(result, 1, ["'verify --secret' cannot run with this identity", 'pods/exec in namespace kube-system'],
                 'az aksarc kms status prints the Role/ClusterRole')


def test_probe_forbidden_says_so_and_recommends_secret_exit_1(az, box):
    result = verify(az, box.kubeconfig_restricted)
    assert_error(result, 1, ["'verify' cannot run with this identity",
                             'create secrets in namespace default; delete secrets in namespace default'],
                 'az aksarc kms status prints the Role/ClusterRole')
    assert 'delete it with' not in result.stderr and 'Could not delete' not in result.stderr, result  # none made
    assert probe_secrets_left(box) == []


def test_missing_etcdctl_executable_exit_1(az, box):
    node = box.info['nodes'][0]
    pod = 'kube-apiserver-' + node
    result = verify(az, box.kubeconfig, '--etcd-pod', pod, '--etcd-container', 'kube-apiserver')
    assert_error(result, 1, ["'etcdctl' was not found in container 'kube-apiserver' of pod " + pod,
                             'exec: "etcdctl": executable file not found in $PATH'], '--etcd-container')
    assert probe_secrets_left(box) == []


def test_container_not_in_the_etcd_pod_is_a_bad_argument_exit_2(az, box):
    result = verify(az, box.kubeconfig, '--etcd-container', 'no-such-container')
    assert_error(result, 2, 'container no-such-container is not valid for pod ' + etcd_pod(box), '--etcd-container')
    assert probe_secrets_left(box) == []


@pytest.mark.parametrize('mode, message, recommendation', [
    # A stream the kubelet cuts reaches the client through the API server's translation as a Success with the
    # output so far: the product finds the output truncated.
    ('drop', 'etcdctl output could not be read', 'etcdctl'),
    ('hang', 'Verification did not finish within the --timeout of 6 s (exec into {pod}', 'larger --timeout')])
def test_exec_dropped_or_hanging_ends_within_the_timeout_and_deletes_the_probe(az, box, mode, message,
                                                                                recommendation):
    pod = etcd_pod(box)
    with fault(box, {'exec_fault': {'pod': pod, 'mode': mode}}, {'exec_fault': {'pod': pod, 'mode': None}}):
        result, seconds = timed(verify, az, box.kubeconfig, '--timeout', '6')
    assert_error(result, 1, message.format(pod=pod), recommendation)
    assert seconds < 6 + 5, seconds
    assert probe_secrets_left(box) == []


# --- etcdctl -----------------------------------------------------------------------------------------------------


def test_wrong_certificate_path_exit_1(az, box):
    result = verify(az, box.kubeconfig, '--etcd-cacert', '/etc/kubernetes/pki/etcd/nope.crt')
    assert_error(result, 1, ['etcdctl failed in ' + etcd_pod(box), 'nope.crt: no such file or directory'],
                 ['does not exist in the etcd container', '/etc/kubernetes/pki/etcd/'])
    assert probe_secrets_left(box) == []


@pytest.mark.parametrize('flags, message, recommendation', [
    (['--etcd-cert', '/etc/kubernetes/pki/etcd/foreign.crt', '--etcd-key', '/etc/kubernetes/pki/etcd/foreign.key'],
     'tls: bad certificate', ['etcd rejected the TLS handshake', 'not signed by the etcd CA']),
    (['--etcd-cacert', '/etc/kubernetes/pki/etcd/foreign.crt'],
     'x509: certificate signed by unknown authority', ['not signed by the given CA', 'Pass the etcd CA'])],
    ids=['client-cert-rejected', 'server-cert-untrusted'])
def test_etcd_tls_handshake_refused_exit_1(az, box, flags, message, recommendation):
    # A certificate in the pod's etcd folder from another CA (the API server's admin client certificate).
    folder = os.path.join(str(box.dir), 'nodes', box.info['nodes'][0], 'pki', 'etcd')
    for source, name in ((box.info['pki']['admin_cert'], 'foreign.crt'), (box.info['pki']['admin_key'], 'foreign.key')):
        with open(source, 'rb') as src, open(os.path.join(folder, name), 'wb') as dst:
            dst.write(src.read())
    result = verify(az, box.kubeconfig, '--secret', 'default/db-user-pass', *flags)
    assert_error(result, 1, ['etcdctl failed in ' + etcd_pod(box), message], recommendation)


def test_plain_http_endpoint_against_tls_etcd_exit_1(az, box):
    result = verify(az, box.kubeconfig, '--etcd-endpoint', 'http://127.0.0.1:2379')
    assert_error(result, 1, ['etcdctl failed in ' + etcd_pod(box), 'context deadline exceeded'],
                 ['etcd did not answer in time', 'endpoint and certificates'])
    assert probe_secrets_left(box) == []


def test_etcd_down_exit_1_and_heals_when_it_is_back(az, tmp_path):
    own = fresh_sandbox(tmp_path, provider='kms-v2')
    try:
        own.ctl({'etcd': 'stop'})
        try:
            # A real API server keeps its pods in etcd: with etcd down it cannot even list kube-system's pods
            named = verify(az, own.kubeconfig, '--secret', 'default/db-user-pass', '--timeout', '20')
            assert_error(named, 1, 'did not finish within the --timeout of 20 s (listing pods in kube-system)',
                         'larger --timeout')
            probe = verify(az, own.kubeconfig, '--timeout', '20')
            assert_error(probe, 1, 'did not finish within the --timeout of 20 s', 'larger --timeout')
        finally:
            own.ctl({'etcd': 'start'})
        deadline = time.monotonic() + 30  # the API server's etcd client reconnects on its own schedule
        while own.api('GET', '/readyz', timeout=5)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert probe_secrets_left(own) == []
        healed = verify(az, own.kubeconfig, '--secret', 'default/db-user-pass')
        assert healed.code == 0, healed
    finally:
        own.down()


def test_secret_in_etcd_unknown_to_the_api_is_classified_from_etcd(az, box):
    # A plaintext key left in etcd under a namespace the API does not know (JSON, as old clusters stored it):
    # etcd is the source of truth, so it is classified from etcd and fails as plaintext.
    namespace, name = 'orphaned-' + uuid.uuid4().hex[:6], 'leftover'
    key = '/registry/secrets/{}/{}'.format(namespace, name)
    value = json.dumps({'kind': 'Secret', 'apiVersion': 'v1', 'metadata': {'name': name, 'namespace': namespace},
                        'data': {'password': base64.b64encode(CANARY.encode()).decode()}})
    put = box.etcdctl('put', key, input=value.encode())
    assert put.returncode == 0, put
    try:
        assert box.api('GET', '/api/v1/namespaces/' + namespace)[0] == 404  # unknown to the API
        result = verify(az, box.kubeconfig, '--secret', '{}/{}'.format(namespace, name), '-o', 'json')
    finally:
        box.etcdctl('del', key)
    assert result.code == 4, result
    body = result.json()
    assert body['secrets'][0]['storage'] == 'identity' and body['secrets'][0]['etcdKey'] == key
    assert any(c['status'] == 'Failed' and 'stored in plaintext' in c['detail'] for c in body['checks'])
    assert 'ERROR' not in result.stderr and 'Traceback' not in result.output
    assert_no_leak(result, [CANARY, base64.b64encode(CANARY.encode()).decode()])


@pytest.mark.parametrize('probe', [False, True])
def test_secret_in_the_api_but_not_in_etcd_exit_1(az, box, probe):
    make_secret(box, 'default', 'api-only', {'password': CANARY})
    args = [] if probe else ['--secret', 'default/api-only']
    try:
        with fault(box, {'exec_key_prefix': '/elsewhere/'}, {'exec_key_prefix': None}):
            result = verify(az, box.kubeconfig, *args)
    finally:
        box.api('DELETE', '/api/v1/namespaces/default/secrets/api-only')
    name = 'kmsverify-probe-' if probe else 'api-only'
    assert_error(result, 1, ['The API has secret default/' + name, 'but etcd has no key /registry/secrets/default/'
                             + name], ['another etcd or under another key prefix', '--etcd-pod'],
                 canaries=[CANARY, base64.b64encode(CANARY.encode()).decode()])
    assert probe_secrets_left(box) == []


# --- KMS health --------------------------------------------------------------------------------------------------


def test_kms_v2_plugin_reporting_unhealthy_fails_health_exit_4(az, box):
    box.kms('unhealthy')
    try:
        wait_kms_health(box, healthy=False)  # the real server sees it at its next Status call
        result = verify(az, box.kubeconfig, '-o', 'json')
    finally:
        box.kms('healthy')
        assert wait_kms_health(box, healthy=True)[0] == 200
    assert result.code == 4, result
    checks = {c['name']: c for c in result.json()['checks']}
    assert checks['KmsProviderHealth']['status'] == 'Failed'
    assert 'unhealthy: key vault unreachable' in checks['KmsProviderHealth']['detail'], checks
    assert checks['SecretEncryptedWithKms']['status'] == 'Passed'  # the etcd check still ran
    assert 'ERROR' not in result.stderr and 'Traceback' not in result.output
    assert_no_leak(result)
    assert probe_secrets_left(box) == []


@pytest.mark.parametrize('readyz, reason', [
    ('unreachable', 'Remote end closed connection without response'),
    ('unavailable', 'HTTP 503')])
def test_readyz_unreachable_fails_health_but_etcd_is_still_checked_exit_4(az, sandbox_factory, readyz, reason):
    box = sandbox_factory(provider='kms-v2', apiserver='emulator')  # a /readyz fault: the emulator's ctl
    with fault(box, {'readyz': readyz}, {'readyz': None}):
        result = verify(az, box.kubeconfig, '-o', 'json')
    assert result.code == 4, result
    checks = {c['name']: c for c in result.json()['checks']}
    assert checks['KmsProviderHealth']['status'] == 'Failed'
    detail = checks['KmsProviderHealth']['detail']
    assert detail.startswith('could not read /readyz') and reason in detail, detail
    assert 'HTTPSConnectionPool' not in detail and 'Max retries' not in detail, detail
    assert checks['SecretEncryptedWithKms']['status'] == 'Passed'
    assert 'ERROR' not in result.stderr and 'Traceback' not in result.output
    assert_no_leak(result)
    assert probe_secrets_left(box) == []
