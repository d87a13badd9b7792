"""verdict.status: the status record from real /readyz bodies and /metrics pages (tests/fixtures), each fact with its
source or why it is unknown."""

import json
from datetime import datetime, timedelta, timezone

from azext_kmsverify.verdict.access import ALLOWED, DENIED, Answer, assess, requirements
from azext_kmsverify.verdict.readyz import parse_check_error
from azext_kmsverify.verdict.status import HASH_TOTAL, build_status, parse_metrics

from tests.support.paths import FIXTURES

READYZ = FIXTURES / 'readyz'
METRICS = FIXTURES / 'metrics'
CURRENT = 'sha256:bebf6d3d0e56014e05e9abf1857385f0ea3fc74ad3649b8485ac7d688bf72224'
STARTED = datetime.fromtimestamp(1.7961625540086184e9, tz=timezone.utc)
NOW = STARTED + timedelta(days=2)


def _status(readyz, code=200, metrics=None, reasons=None, **kwargs):
    return build_status(readyz_status=code, readyz_body=(READYZ / readyz).read_text(),
                        check_reasons=reasons or {},
                        metrics_text=(METRICS / metrics).read_text() if metrics else None,
                        metrics_why='' if metrics else "/metrics is not allowed (it needs 'get' on the non-resource "
                                                        "URL /metrics)",
                        now=kwargs.pop('now', NOW), **kwargs)


def test_admin_view_of_a_healthy_kms_v2_cluster_with_reload():
    status = _status('aggregate-ok.txt', metrics='kms-v2.txt')
    data = status.to_dict()
    assert data['passed'] is True
    assert data['health'] == {'value': 'healthy', 'source': '/readyz?verbose', 'unknownReason': None}
    assert data['automaticReload']['value'] is True and 'automatic-reload' in data['automaticReload']['source']
    assert data['kmsVersions']['value'] == ['v2']
    assert data['providers'] == [{'name': 'kms-plugin', 'kmsVersion': 'v2', 'source': '/metrics'}]
    assert data['currentKeyIdHash']['value'] == CURRENT
    assert 'status_last_timestamp' in data['currentKeyIdHash']['source']
    assert data['currentKeyLastUsed']['value'] == '2026-12-01T22:02:34Z'
    assert data['metricsEvidence']['keyIdHashTotalPresent'] is True
    assert data['metricsEvidence']['keyIdHashTotalUsed'] is False
    assert HASH_TOTAL not in data['metricsEvidence']['metricsUsed']
    assert [c['name'] for c in data['checks']] == ['KmsProviderHealth', 'KmsKeyRotation']
    json.dumps(data)  # plain JSON


def test_the_same_facts_without_the_hash_total_metric_and_it_says_so():
    with_total = _status('aggregate-ok.txt', metrics='kms-v2.txt').to_dict()
    without = _status('aggregate-ok.txt', metrics='kms-v2-without-hash-total.txt').to_dict()
    assert without['metricsEvidence']['keyIdHashTotalPresent'] is False
    for key in ('currentKeyIdHash', 'currentKeyLastUsed', 'currentKeyLastReported', 'keyAge', 'kmsVersions', 'checks'):
        assert with_total[key] == without[key], key


def test_a_readyz_only_identity_gets_health_and_reload_and_unknowns_with_why():
    data = _status('aggregate-ok.txt').to_dict()
    assert data['health']['value'] == 'healthy'
    assert data['automaticReload']['value'] is True
    for key in ('currentKeyIdHash', 'currentKeyLastUsed', 'currentKeyLastReported'):
        assert data[key]['value'] is None and '/metrics is not allowed' in data[key]['unknownReason']
    assert data['kmsVersions']['value'] is None and '/metrics is not allowed' in data['kmsVersions']['unknownReason']
    assert data['metricsEvidence'] == {'metricsRead': False, 'metricsUnknownReason': data['currentKeyIdHash'][
        'unknownReason'], 'metricsUsed': [], 'keyIdHashTotalPresent': None, 'keyIdHashTotalUsed': False}
    rotation = data['checks'][1]
    assert rotation['status'] == 'Skipped'


def test_kms_v2_only_without_reload_is_told_by_the_missing_hook():
    data = _status('aggregate-v2-no-reload-ok.txt').to_dict()
    assert data['automaticReload']['value'] is False and 'do not include' in data['automaticReload']['source']
    assert data['kmsVersions']['value'] == ['v2']
    assert 'without automatic reload' in data['kmsVersions']['source']


def test_per_provider_checks_mean_no_reload_and_kms_v1():
    data = _status('per-provider-ok.txt', metrics='kms-v1.txt').to_dict()
    assert data['automaticReload']['value'] is False
    assert data['kmsVersions']['value'] == ['v1']
    assert [c['name'] for c in data['healthChecks']] == ['kms-provider-0', 'kms-provider-1']
    checks = {c['name']: c for c in data['checks']}
    assert checks['KmsKeyRotation']['status'] == 'Skipped' and 'KMS v1' in checks['KmsKeyRotation']['detail']
    assert checks['KmsV1Deprecated']['status'] == 'Warning'
    assert data['currentKeyIdHash']['value'] is None and 'no KMS v2 key id' in data['currentKeyIdHash'][
        'unknownReason']


def test_a_failing_plugin_gives_the_real_reason_and_the_provider_from_it():
    reason = parse_check_error((READYZ / 'aggregate-failed.kms-providers.http500.txt').read_text())
    data = _status('aggregate-failed.http500.txt', code=500, reasons={'kms-providers': reason}).to_dict()
    assert data['passed'] is False
    assert data['health']['value'] == 'unhealthy'
    assert data['healthChecks'][0]['reason'].startswith('kms-provider-0: failed to perform status section')
    assert 'connect: no such file or directory' in data['checks'][0]['detail']
    assert data['providers'] == [{'name': 'kms-plugin', 'kmsVersion': 'v2', 'source': '/readyz/kms-providers'}]


def test_unknown_health_when_readyz_cannot_be_read():
    status = build_status(readyz_status=None, readyz_body=None, readyz_unreachable='HTTP 403', now=NOW)
    data = status.to_dict()
    assert data['health']['value'] is None and 'HTTP 403' in data['health']['unknownReason']
    assert data['automaticReload']['value'] is None and 'HTTP 403' in data['automaticReload']['unknownReason']
    assert data['passed'] is False


def test_a_nonverbose_body_cannot_tell_reload():
    data = _status('nonverbose-ok.txt').to_dict()
    assert data['automaticReload']['value'] is None and 'not verbose' in data['automaticReload']['unknownReason']


def test_reload_metrics_are_evidence_of_reload():
    page = ('apiserver_encryption_config_controller_automatic_reloads_total{apiserver_id_hash="sha256:ab",'
            'status="success"} 2\n')
    status = build_status(readyz_status=200, readyz_body=(READYZ / 'nonverbose-ok.txt').read_text(),
                          metrics_text=page, now=NOW)
    assert status.automatic_reload.value is True and '/metrics' in status.automatic_reload.source


def test_a_stalled_rotation_from_metrics_only():
    status = _status('aggregate-ok.txt', metrics='kms-v2-one-key.txt', now=STARTED + timedelta(days=45))
    rotation = status.to_dict()['checks'][1]
    assert rotation['status'] == 'Warning' and CURRENT in rotation['detail']
    assert status.to_dict()['keyAge']['minAgeDays'] == 45.0
    failing = _status('aggregate-ok.txt', metrics='kms-v2-one-key.txt', now=STARTED + timedelta(days=45),
                      fail_on_stale=True)
    assert failing.passed is False


def test_access_records_are_carried_per_command():
    needs = requirements('reencrypt')
    answers = [Answer(p, DENIED if p.verb == 'update' else ALLOWED) for p in needs]
    status = _status('aggregate-ok.txt', access=[assess('reencrypt', needs, answers)])
    access = status.to_dict()['access']
    assert access[0]['command'] == 'reencrypt' and access[0]['canRun'] is False
    assert access[0]['missing'][0]['description'] == 'update secrets in all namespaces'


def test_metric_parsing_skips_odd_lines_and_keeps_the_newest():
    page = '\n'.join([
        'apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds{key_id_hash="sha256:a",'
        'provider_name="p"} 5',
        'apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds{key_id_hash="sha256:b",'
        'provider_name="p"} 9',
        'apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds{key_id_hash="sha256:a"} nope',
        'apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds{key_id_hash="sha256:a",'
        'transformation_type="from_storage"} 20',
        'apiserver_storage_transformation_operations_total{status="OK",transformation_type="to_storage",'
        'transformer_prefix="k8s:enc:kms:v2:my:plugin:"} 3',
        'apiserver_storage_transformation_operations_total{status="OK",transformation_type="to_storage",'
        'transformer_prefix="k8s:enc:aescbc:v1:key1:"} 3',
        '# HELP process_start_time_seconds x',
        'process_start_time_seconds 1e9',
    ])
    facts = parse_metrics(page)
    assert facts.current_hash == 'sha256:b' and facts.status_hashes == ['sha256:a', 'sha256:b']
    assert facts.from_storage_last == {'sha256:a': 20.0} and facts.to_storage_last == {}
    assert facts.providers == {'p': 'v2', 'my:plugin': 'v2'}
    assert facts.process_start == 1e9


# ---- a real kube-apiserver v1.29.6 with the sandbox's gRPC KMS plugin (tests/fixtures/*/kas-1.29.6-*) -------------

def _real(readyz, metrics=None, code=200, reasons=None, now=None):
    return _status(readyz, code=code, metrics=metrics, reasons=reasons, now=now or NOW).to_dict()


def test_real_kms_v2_with_reload_and_a_rotation():
    data = _real('kas-1.29.6-v2-reload-ok.txt', 'kas-1.29.6-kms-v2-rotated.txt')
    assert data['health']['value'] == 'healthy' and data['automaticReload']['value'] is True
    assert data['kmsVersions']['value'] == ['v2']
    # the sandbox plugin's second key (key-0002) after SIGHUP: its hash is the Status key
    assert data['currentKeyIdHash']['value'] == CURRENT
    assert data['keyAge']['source'] == 'metricsPreviousKey'
    assert data['metricsEvidence']['keyIdHashTotalPresent'] is True


def test_real_kms_v2_without_reload_is_one_aggregate_check_and_no_hook():
    data = _real('kas-1.29.6-v2-noreload-ok.txt')
    assert [c['name'] for c in data['healthChecks']] == ['kms-providers']
    assert data['automaticReload']['value'] is False
    assert data['kmsVersions']['value'] == ['v2']


def test_real_kms_v1_without_and_with_reload():
    without = _real('kas-1.29.6-v1-noreload-ok.txt', 'kas-1.29.6-kms-v1.txt')
    assert [c['name'] for c in without['healthChecks']] == ['kms-provider-0']
    assert without['automaticReload']['value'] is False and without['kmsVersions']['value'] == ['v1']
    assert without['providers'] == [{'name': 'kms-plugin', 'kmsVersion': 'v1', 'source': '/metrics'}]
    assert without['currentKeyIdHash']['value'] is None
    with_reload = _real('kas-1.29.6-v1-reload-ok.txt')
    assert [c['name'] for c in with_reload['healthChecks']] == ['kms-providers']
    assert with_reload['automaticReload']['value'] is True
    assert with_reload['kmsVersions']['value'] is None  # reload hides the per-provider checks; /metrics not read


def test_real_mixed_v2_and_v1_providers():
    data = _real('kas-1.29.6-v2-v1-noreload.http500.txt', 'kas-1.29.6-kms-v2-v1-mixed.txt', code=500)
    assert data['kmsVersions']['value'] == ['v1', 'v2']
    assert data['health']['value'] == 'healthy'  # the KMS checks pass; readyz fails on informer-sync
    assert any(c['name'] == 'KmsV1Deprecated' for c in data['checks'])


def test_real_plugin_down_reason_without_a_provider_name():
    reason = parse_check_error((READYZ / 'kas-1.29.6-kms-providers-plugin-down.http500.txt').read_text())
    assert reason.startswith('kms-provider-0: rpc error: code = DeadlineExceeded')
    data = _real('kas-1.29.6-v2-noreload-plugin-down.http500.txt', code=500, reasons={'kms-providers': reason})
    assert data['health']['value'] == 'unhealthy' and data['passed'] is False
    assert 'connect: no such file or directory' in data['checks'][0]['detail']
    assert data['providers'] == []  # 1.29's reason does not name the provider (later releases do)


def test_the_identity_and_its_least_privilege_grant_are_carried():
    needs = requirements('reencrypt')
    answers = [Answer(p, DENIED if p.verb == 'update' else ALLOWED) for p in needs]
    user = {'username': 'alice@example.com', 'groups': ['system:authenticated']}
    data = _status('aggregate-ok.txt', access=[assess('reencrypt', needs, answers)], identity=(user, '')).to_dict()
    assert data['identity'] == {'value': user, 'source': 'SelfSubjectReview', 'unknownReason': None}
    grant = '\n'.join(data['leastPrivilegeGrant'])  # a list of lines (the sanitiser escapes line breaks in strings)
    assert 'verbs: ["update"]' in grant and '"alice@example.com"' in grant
    unknown = _status('aggregate-ok.txt', identity=(None, 'SelfSubjectReview answered HTTP 403')).to_dict()
    assert unknown['identity']['unknownReason'] == 'SelfSubjectReview answered HTTP 403'
    assert unknown['leastPrivilegeGrant'] is None
