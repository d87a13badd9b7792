"""Issue 18 phase 2 wiring, pure and with fake clients: the preflight a command runs first (``kube.access.require``),
an admission refusal during a rewrite (``kube.rewrite``), the KMS posture of a result (``verdict.posture``), and the
status table."""

import json

import pytest
from azure.cli.core.azclierror import ForbiddenError

from azext_kmsverify.deadline import Deadline
from azext_kmsverify.kube import rewrite as rewriting
from azext_kmsverify.kube.access import SSAR_PATH, require
from azext_kmsverify.kube.errors import KubeErrors
from azext_kmsverify.report.table import fleet_table_format, status_table_format
from azext_kmsverify.verdict.checks import FAILED, KMS_V1_DEPRECATED, WARNING
from azext_kmsverify.verdict.posture import fleet_columns, with_posture
from azext_kmsverify.verdict.status import build_status


class FakeClient:
    def __init__(self, answers):
        self.answers = list(answers)
        self.sent = []
        self.deadline = Deadline(30)
        self.errors = KubeErrors('https://api.example:6443', 'kubeconfig', self.deadline)

    def request(self, method, path, **kwargs):
        self.sent.append((method, path, kwargs.get('body')))
        status, body = self.answers.pop(0)
        return status, json.dumps(body).encode() if not isinstance(body, bytes) else body


def _ssar(allowed):
    return 201, {'kind': 'SelfSubjectAccessReview', 'status': {'allowed': allowed}}


def test_require_raises_before_anything_is_written_naming_what_is_denied():
    # verify with the probe: readyz, readyz/*, pods list, pods/exec get+create, create+delete secrets
    answers = [_ssar(True)] * 20
    client = FakeClient(answers)
    from azext_kmsverify.verdict.access import requirements
    needs = requirements('verify', probe_namespace='default')
    denied = next(i for i, p in enumerate(needs) if p.verb == 'create' and p.resource == 'secrets')
    client.answers[denied] = _ssar(False)
    with pytest.raises(ForbiddenError) as raised:
        require(client, ['verify'], probe_namespace='default')
    assert 'create secrets in namespace default' in raised.value.error_msg
    assert '\n' not in raised.value.error_msg
    assert all(path == SSAR_PATH for _, path, _ in client.sent)


def test_require_goes_on_when_the_server_does_not_serve_the_review_api():
    client = FakeClient([(404, {'kind': 'Status', 'code': 404})])
    found = require(client, ['verify --all-secrets', 'verify'], probe_namespace='default')
    assert found.can_run is None and not found.missing
    assert found.unknown and all('does not serve' in a.reason for a in found.unknown)
    assert len(client.sent) == 1  # asked once, not once per permission


def _secret():
    return {'kind': 'Secret', 'metadata': {'name': 's', 'namespace': 'ns', 'resourceVersion': '7'},
            'data': {'k': 'dg=='}}


@pytest.mark.parametrize('status', [400, 403])
def test_a_webhook_denial_is_its_own_outcome_naming_the_webhook(status):
    denial = {'kind': 'Status', 'status': 'Failure', 'code': status, 'reason': 'Forbidden' if status == 403 else '',
              'message': 'admission webhook "deny-secrets.example.com" denied the request: secrets are frozen'}
    client = FakeClient([(200, _secret()), (status, denial)])
    outcome = rewriting.rewrite(client, 'ns', 's', force=False)
    assert outcome.status == rewriting.REFUSED
    assert outcome.admission.name == 'deny-secrets.example.com'
    assert 'refused by admission webhook "deny-secrets.example.com": secrets are frozen' == outcome.reason


def test_rbac_403_on_the_rewrite_still_raises():
    forbidden = {'kind': 'Status', 'code': 403, 'reason': 'Forbidden',
                 'message': 'secrets "s" is forbidden: User "bob" cannot update resource "secrets"'}
    client = FakeClient([(200, _secret()), (403, forbidden)])
    with pytest.raises(Exception) as raised:
        rewriting.rewrite(client, 'ns', 's', force=False)
    assert 'update' in str(getattr(raised.value, 'error_msg', raised.value))


def _v1_result(with_warning):
    checks = [{'name': 'KmsProviderHealth', 'status': 'Passed', 'detail': ''}]
    if with_warning:
        checks.append({'name': KMS_V1_DEPRECATED, 'status': WARNING, 'detail': 'KMS v1 in use'})
    return {'passed': True, 'checks': checks, 'scan': {'byKmsVersion': {'v1': 3, 'v2': 0}}}


@pytest.mark.parametrize('with_warning', [True, False])
def test_posture_names_the_version_and_fails_on_kms_v1_only_when_asked(with_warning):
    warned = with_posture(_v1_result(with_warning))
    assert warned['kmsVersion'] == 'v1' and warned['passed'] is True
    assert [c['status'] for c in warned['checks'] if c['name'] == KMS_V1_DEPRECATED] == [WARNING]
    failed = with_posture(_v1_result(with_warning), True)
    assert failed['passed'] is False
    assert [c['status'] for c in failed['checks'] if c['name'] == KMS_V1_DEPRECATED] == [FAILED]


def test_posture_of_a_v2_cluster_adds_no_check():
    result = {'passed': True, 'checks': [], 'scan': {'byKmsVersion': {'v1': 0, 'v2': 4}}}
    posture = with_posture(result, True)
    assert posture['kmsVersion'] == 'v2' and posture['passed'] is True and posture['checks'] == []


READYZ = ('[+]ping ok\n[+]kms-providers ok\n[+]poststarthook/start-kube-apiserver-admission-initializer ok\n'
          'readyz check passed\n')


def test_status_table_shows_facts_with_sources_and_unknowns_with_why():
    status = build_status(readyz_status=200, readyz_body=READYZ, metrics_text=None,
                          metrics_why="/metrics is not allowed (it needs 'get' on the non-resource URL /metrics)",
                          identity=(None, 'SelfSubjectReview answered HTTP 404')).to_dict()
    rows = status_table_format(status)
    by_check = {r['Check']: r for r in rows}
    assert by_check['KmsProviderHealth']['Status'] == 'Passed'
    assert by_check['Health']['Target'] == 'healthy' and by_check['Health']['Detail'] == '/readyz?verbose'
    assert by_check['CurrentKeyIdHash']['Status'] == 'Unknown'
    assert '/metrics is not allowed' in by_check['CurrentKeyIdHash']['Detail']
    assert by_check['Identity']['Detail'] == 'SelfSubjectReview answered HTTP 404'


def test_fleet_rows_carry_the_posture_columns():
    entry = {'outcome': 'passed', 'cluster': {'name': 'c1', 'resourceGroup': 'rg'}, 'checks': [],
             'kmsVersions': {'value': ['v2'], 'source': '/metrics'}, 'keyAge': {'minAgeDays': 41.5},
             'access': [{'command': 'verify', 'missing': [{'verb': 'create'}, {'verb': 'delete'}]},
                        {'command': 'status', 'missing': []}]}
    entry.update(fleet_columns(entry))
    row = fleet_table_format({'clusters': [entry]})[0]
    assert (row['KmsVersion'], row['KeyMinAgeDays'], row['MissingPermissions']) == ('v2', 41.5, 2)


def test_fleet_columns_take_the_key_age_of_a_verify_scan():
    result = {'scan': {'byKmsVersion': {'v1': 0, 'v2': 2}, 'keyAge': {'minAgeDays': 61.0}}}
    assert fleet_columns(result) == {'kmsVersion': 'v2', 'keyMinAgeDays': 61.0, 'missingPermissions': None}
