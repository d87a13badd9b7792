"""``az aksarc kms status`` and the issue-18 wiring of verify/reencrypt, end to end through the installed wheel.

Two API servers: the sandbox's real kube-apiserver (real RBAC, SelfSubjectAccessReview and SelfSubjectReview: the
admin can do everything, the restricted identity is told what it lacks and the least-privilege grant), and the
emulated one kept for what a real server cannot be made to do here: answer 404 to the access reviews (every
permission unknown, with why, and the commands go on).

The stalled-rotation case is made by seeding etcd: after a key rotation, a secret is written under the new key with a
creationTimestamp 60 days ago (the sandbox's ``write_secret`` with ``written_at``), so the earliest write under the
current key, as etcd and the API give it, is 60 days old.
"""

import json
import time
import xml.etree.ElementTree as ET

import pytest

from tests.sandbox.control import SUBSCRIPTION, Sandbox
from tests.sandbox.fleet import Fleet

from tests.conftest import assert_no_leak, probe_secrets_left, verify

CANARY = 'canary-status-7c3e19'


def status(az, box, *args, **kwargs):
    return az('aksarc', 'kms', 'status', '--kubeconfig', box.kubeconfig, *args, **kwargs)


def _iso(seconds_ago):
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(time.time() - seconds_ago))


def _check(body, name):
    found = [c for c in body['checks'] if c['name'] == name]
    assert len(found) == 1, body['checks']
    return found[0]


@pytest.fixture(scope='module')
def box(tmp_path_factory):
    box = Sandbox(str(tmp_path_factory.mktemp('status-sandbox')))
    box.up(provider='kms-v2')
    yield box
    box.down()


@pytest.fixture(scope='module')
def emu(tmp_path_factory):
    """The emulated API server: it serves no SelfSubjectAccessReview / SelfSubjectReview (404)."""
    box = Sandbox(str(tmp_path_factory.mktemp('status-emulator')))
    box.up(provider='kms-v2', apiserver='emulator')
    yield box
    box.down()


def test_status_as_admin_on_the_real_server_can_run_everything(az, box):
    box.create_secret('default', 'status-real', {'token': CANARY})
    result = status(az, box, '-o', 'json')
    assert result.code == 0, result
    body = result.json()
    assert body['command'] == 'status' and body['passed'] is True
    assert body['identity']['value']['username'] == 'kubernetes-admin', body['identity']
    assert {a['command'] for a in body['access']} == {'verify', 'verify --all-secrets', 'reencrypt', 'status'}
    assert all(a['canRun'] is True and not a['missing'] for a in body['access']), body['access']
    assert body['leastPrivilegeGrant'] is None
    assert body['currentKeyIdHash']['value'] and body['kmsVersions']['value'] == ['v2']
    assert_no_leak(result, [CANARY])


def test_status_as_admin_reads_health_and_metrics_and_says_why_access_is_unknown(az, emu):
    box = emu
    box.create_secret('default', 'status-canary', {'token': CANARY})  # a KMS v2 write: /metrics has its key hash
    result = status(az, box, '-o', 'json')
    assert result.code == 0, result
    body = result.json()
    assert body['passed'] is True
    assert _check(body, 'KmsProviderHealth')['status'] == 'Passed'
    assert body['health'] == {'value': 'healthy', 'source': '/readyz?verbose', 'unknownReason': None}
    assert body['metricsEvidence']['metricsRead'] is True
    assert body['kmsVersions']['value'] == ['v2'], body['kmsVersions']
    assert body['currentKeyIdHash']['value'] and body['currentKeyIdHash']['source'].startswith('/metrics')
    assert body['metricsEvidence']['keyIdHashTotalUsed'] is False
    # the emulator serves no SelfSubjectReview / SelfSubjectAccessReview: unknown, with why, and the command went on
    assert body['identity']['value'] is None and '404' in body['identity']['unknownReason']
    assert {a['command'] for a in body['access']} == {'verify', 'verify --all-secrets', 'reencrypt', 'status'}
    for access in body['access']:
        assert access['canRun'] is None and not access['missing'], access
        assert access['unknown'] and all('does not serve' in u['reason'] for u in access['unknown'])
    assert body['leastPrivilegeGrant'] is None
    assert body['kmsVersion'] == 'v2'
    assert {c['name'] for c in body['checks']} >= {'KmsProviderHealth', 'KmsKeyRotation'}
    assert _check(body, 'KmsKeyRotation')['status'] in ('Skipped', 'Passed')
    assert not any(c['name'] == 'KmsV1Deprecated' for c in body['checks'])
    assert_no_leak(result, [CANARY])
    assert probe_secrets_left(box) == []


def _secret_names(box):
    code, listed = box.api('GET', '/api/v1/secrets')
    assert code == 200, listed
    return sorted((s['metadata']['namespace'], s['metadata']['name']) for s in listed['items'])


def test_status_never_execs_nor_writes(az, box):
    before = _secret_names(box)
    box.ctl({'etcd_pods': 'hidden'})  # no etcd pod to exec into: status does not need one
    try:
        result = status(az, box, '-o', 'json')
        assert result.code == 0, result
    finally:
        box.ctl({'etcd_pods': 'visible'})
    assert _secret_names(box) == before


def test_status_as_the_restricted_user_names_what_it_lacks_and_the_grant(az, box):
    # The real server's RBAC: the restricted identity may read /readyz, not exec into kube-system nor write secrets.
    result = az('aksarc', 'kms', 'status', '--kubeconfig', box.kubeconfig_restricted, '-o', 'json')
    assert result.code == 0, result
    body = result.json()
    assert body['health']['value'] == 'healthy'
    assert _check(body, 'KmsProviderHealth')['status'] == 'Passed'
    by_command = {a['command']: a for a in body['access']}
    assert by_command['status']['canRun'] is True
    for command in ('verify', 'verify --all-secrets', 'reencrypt'):
        assert by_command[command]['canRun'] is False and by_command[command]['missing'], by_command[command]
    missing = json.dumps(by_command['verify']['missing'])
    assert 'pods/exec' in missing or 'exec' in missing, missing
    grant = '\n'.join(body['leastPrivilegeGrant'])  # lines: --query leastPrivilegeGrant -o tsv | kubectl apply -f -
    assert 'kind: "Role"' in grant and 'pods/exec' in grant and 'kube-system' in grant, grant
    assert 'name: "restricted-user"' in grant
    assert_no_leak(result)


def test_verify_as_the_restricted_user_stops_before_the_probe_naming_the_permission(az, box):
    before = _secret_names(box)
    result = verify(az, box.kubeconfig_restricted, '-o', 'json')
    assert result.code == 1, result
    line = result.stderr.strip().splitlines()[0]
    assert 'pods/exec' in line and 'kube-system' in line, result.stderr
    assert _secret_names(box) == before and probe_secrets_left(box) == []


def test_status_table(az, emu):
    result = status(az, emu, '-o', 'table')
    assert result.code == 0, result
    lines = result.stdout.splitlines()
    assert lines[0].split() == ['Check', 'Target', 'Status', 'Detail']
    assert any(line.startswith('Health') and 'healthy' in line for line in lines), result.stdout
    assert any(line.startswith('Access') and 'Unknown' in line for line in lines), result.stdout


def test_status_with_the_kms_plugin_stopped_fails_with_the_reason(az, emu, tmp_path):
    box = emu  # the real server caches KMS health for up to 20 s; its reasons are tested in the sandbox's tests
    box.kms('stop')
    try:
        report = tmp_path / 'status.xml'
        result = status(az, box, '--junit-xml', str(report), '-o', 'json')
        assert result.code == 4, result
        body = result.json()
        assert body['passed'] is False
        assert _check(body, 'KmsProviderHealth')['status'] == 'Failed'
        assert body['health']['value'] == 'unhealthy'
        failing = [c for c in body['healthChecks'] if c['status'] != 'ok']
        assert failing and all(c['reason'] for c in failing), body['healthChecks']
        suite = ET.parse(report).getroot()
        assert 'KmsProviderHealth' in ET.tostring(suite, encoding='unicode')
    finally:
        box.kms('start')


def test_status_bad_arguments_exit_2(az, box):
    result = az('aksarc', 'kms', 'status', '--kubeconfig', box.kubeconfig, '--rotation-days', '0')
    assert result.code == 2, result
    assert '--rotation-days' in result.stderr


def test_verify_goes_on_when_the_server_cannot_answer_the_preflight(az, emu):
    result = verify(az, emu, '-o', 'json', '--debug')
    assert result.code == 0, result
    assert 'Permissions not checked first' in result.stderr
    assert probe_secrets_left(emu) == []


# --- stalled rotation, from etcd -------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def stalled(tmp_path_factory):
    """KMS v2: seeded secrets under key-0001, then a rotation to key-0002, and the first secret under key-0002
    created 60 days ago (seeded etcd metadata): the current key has been in use for at least 60 days."""
    box = Sandbox(str(tmp_path_factory.mktemp('stalled-sandbox')))
    box.up(provider='kms-v2')
    try:
        assert box.kms('rotate') == 'key-0002'
        answer = box.ctl({'write_secret': {'namespace': 'default', 'name': 'first-under-key-2',
                                           'data': {'token': CANARY}, 'written_at': _iso(60 * 86400)}})
        assert answer['ok'], answer
        box.create_secret('default', 'later-under-key-2', {'token': CANARY})
        yield box
    finally:
        box.down()


def test_verify_all_secrets_warns_of_a_stalled_rotation(az, stalled):
    result = verify(az, stalled, '--all-secrets', '--probe', '-o', 'json')
    assert result.code == 0, result
    body = result.json()
    rotation = _check(body, 'KmsKeyRotation')
    assert rotation['status'] == 'Warning', rotation
    assert 'key-0002' in rotation['detail'] and 'default/first-under-key-2' in rotation['detail']
    assert body['scan']['keyAge']['minAgeDays'] >= 59.9
    assert body['scan']['keyAge']['source'] == 'etcdFirstWrite'
    assert_no_leak(result, [CANARY])

    failing = verify(az, stalled, '--all-secrets', '--probe', '--fail-on-stale', '-o', 'json')
    assert failing.code == 4, failing
    assert _check(failing.json(), 'KmsKeyRotation')['status'] == 'Failed'

    longer = verify(az, stalled, '--all-secrets', '--probe', '--rotation-days', '90', '-o', 'json')
    assert longer.code == 0, longer
    assert _check(longer.json(), 'KmsKeyRotation')['status'] == 'Passed'


def test_verify_all_secrets_on_a_fresh_key_passes_the_rotation_check(az, box):
    result = verify(az, box, '--all-secrets', '--probe', '-o', 'json')
    assert result.code == 0, result
    rotation = _check(result.json(), 'KmsKeyRotation')
    assert rotation['status'] == 'Passed', rotation


# --- fleet ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def fleet(tmp_path_factory):
    box = Fleet(str(tmp_path_factory.mktemp('status-fleet')))
    box.up(clusters=2, providers='kms-v2,kms-v1')
    yield box
    box.down()


def test_fleet_status_one_row_per_cluster_with_its_kms_version(sign_in, fleet):
    fleet_az = sign_in(fleet)
    result = fleet_az('aksarc', 'kms', 'status', '--all-clusters', '--subscriptions', SUBSCRIPTION, '-o', 'json')
    body = result.json()
    rows = {c['cluster']['name']: c for c in body['clusters']}
    assert set(rows) == {'sandbox-1', 'sandbox-2'}, body
    assert rows['sandbox-1']['kmsVersion'] == 'v2' and rows['sandbox-1']['outcome'] == 'passed', rows['sandbox-1']
    assert rows['sandbox-2']['kmsVersion'] == 'v1', rows['sandbox-2']
    assert _check(rows['sandbox-2'], 'KmsV1Deprecated')['status'] == 'Warning'
    assert result.code == 0, result

    strict = fleet_az('aksarc', 'kms', 'status', '--all-clusters', '--fail-on-kms-v1', '-o', 'json')
    assert strict.code == 4, strict
    rows = {c['cluster']['name']: c for c in strict.json()['clusters']}
    assert rows['sandbox-2']['outcome'] == 'failed'
    assert _check(rows['sandbox-2'], 'KmsV1Deprecated')['status'] == 'Failed'

    table = fleet_az('aksarc', 'kms', 'status', '--all-clusters', '-o', 'table')
    lines = table.stdout.splitlines()
    assert 'KmsVersion' in lines[0].split() and 'MissingPermissions' in lines[0].split()
    assert any(line.startswith('sandbox-2') and ' v1 ' in line for line in lines), table.stdout
    assert_no_leak(table)


def test_fleet_verify_names_each_clusters_kms_version(sign_in, fleet):
    fleet_az = sign_in(fleet)
    result = fleet_az('aksarc', 'kms', 'verify', '--all-clusters', '--fail-on-kms-v1', '-o', 'json')
    rows = {c['cluster']['name']: c for c in result.json()['clusters']}
    assert rows['sandbox-1']['kmsVersion'] == 'v2' and rows['sandbox-1']['outcome'] == 'passed'
    assert rows['sandbox-2']['kmsVersion'] == 'v1' and rows['sandbox-2']['outcome'] == 'failed'
    assert result.code == 4, result
    assert json.dumps(result.json()).count(CANARY) == 0


def test_status_help_lists_its_options_and_no_etcd_ones(az):
    result = az('aksarc', 'kms', 'status', '--help')
    assert result.code == 0, result
    for option in ('--fail-on-kms-v1', '--fail-on-stale', '--rotation-days', '--junit-xml', '--sarif', '--all-clusters',
                   '--ids', '--kubeconfig', '--admin'):
        assert option in result.stdout, option
    assert '--etcd-pod' not in result.stdout and '--secret ' not in result.stdout
    verify_help = az('aksarc', 'kms', 'verify', '--help')
    assert '--fail-on-kms-v1' in verify_help.stdout
