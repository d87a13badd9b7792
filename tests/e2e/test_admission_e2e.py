"""End to end: ``az aksarc kms reencrypt`` meets a validating admission webhook that refuses some rewrites.

The sandbox's real kube-apiserver (v1.29.6) calls a real webhook (tests/sandbox/apiserver/admission.py, installed
through the API as the ValidatingWebhookConfiguration ``deny-secret-updates.sandbox.kmsverify.test``): UPDATE of a
secret labelled ``kmsverify.test/deny-update: "true"`` is refused with a message (``"silent"``: with no status),
everything else allowed. Secrets under an older KMS v2 key (a rotation) and plaintext ones, some of them labelled,
are re-encrypted through the installed az. What the command claims is checked against etcd (host-side etcdctl) and
against the API's own answer.
"""

import json
import re
import time
from pathlib import Path

import pytest

from tests.conftest import Az, assert_no_leak
from tests.e2e.test_reencrypt_e2e import (Planted, _create, _namespace, _outcomes, _reencrypt, _verify_all, _write,
                                          etcd_revision, etcd_state, stored)
from tests.sandbox.apiserver import admission
from tests.sandbox.control import Sandbox

WEBHOOK = 'deny-secret-updates.sandbox.kmsverify.test'
DENIED = {('locked', 'denied-kms'), ('apps', 'denied-plain'), ('apps', 'denied-silent')}
SILENT = ('apps', 'denied-silent')  # the webhook refuses it with no status: no message, no code
PLANTED = {('apps', 'open-kms'), ('locked', 'open-kms'), ('apps', 'open-plain')}  # allowed (and the seeded ones)
# What kube-apiserver 1.29.6 answered the sandbox's own PUT (the same webhook, the same secret's label).
API_MESSAGE = ('admission webhook "deny-secret-updates.sandbox.kmsverify.test" denied the request: updates of '
               "secrets labelled kmsverify.test/deny-update=true are refused by the sandbox's admission policy")
# And when the webhook gives no status: no reason, and 1.29 picks the code (400).
API_SILENT = 'admission webhook "deny-secret-updates.sandbox.kmsverify.test" denied the request without explanation'


@pytest.fixture(scope='module')
def run(tmp_path_factory, installed):
    """KMS v2: secrets made through the API under key-0001, plaintext ones written before encryption; three of them
    labelled for denial; a rotation to key-0002; the webhook installed; then a dry run, the run (JSON), the run
    again (table), and the run once the webhook configuration is deleted."""
    box = Sandbox(str(tmp_path_factory.mktemp('admission')))
    box.up(provider='kms-v2')
    try:
        planted = Planted()
        for ns in ('apps', 'locked'):
            _namespace(box, ns)
        deny = {admission.LABEL: 'true'}
        _create(box, 'locked', 'denied-kms', planted.data('dk'), labels={**deny, 'app': 'vault'})
        _create(box, 'locked', 'open-kms', planted.data('lok'))
        _create(box, 'apps', 'open-kms', planted.data('aok'), labels={'app': 'web'})
        _write(box, 'apps', 'denied-plain', planted.data('dp'), labels=deny, **{'with': 'identity'})
        _write(box, 'apps', 'open-plain', planted.data('op'), **{'with': 'identity'})
        _create(box, 'apps', 'denied-silent', planted.data('ds'), labels={admission.LABEL: 'silent'})
        assert box.kms('rotate') == 'key-0002'
        assert box.admission_webhook() == WEBHOOK
        result = {'box': box, 'planted': planted}
        result['before'], _ = etcd_state(box)
        # What must be rewritten, found host-side: everything not under the current key (the sandbox's seeded
        # secrets too); all of it but the labelled ones is allowed.
        result['targets'] = {key for key, (value, _) in result['before'].items()
                             if stored(value) != ('kms', 'v2', 'key-0002')}
        result['allowed'] = result['targets'] - DENIED
        # The API's own answer to an unchanged PUT of a labelled secret (dry run: nothing is written).
        for ns, name in (('locked', 'denied-kms'), SILENT):
            status, obj = box.api('GET', f'/api/v1/namespaces/{ns}/secrets/{name}')
            assert status == 200, obj
            result[f'api_{name}'] = box.api('PUT', f'/api/v1/namespaces/{ns}/secrets/{name}?dryRun=All', obj)
            del obj
        az = Az(tmp_path_factory.mktemp('az-admission'))
        revision = etcd_revision(box)
        result['dry'] = _reencrypt(az, box, '--dry-run', '-o', 'json')
        result['dry_wrote'] = etcd_revision(box) != revision
        result['run'] = _reencrypt(az, box, '--yes', '--debug', '-o', 'json')
        result['after'], _ = etcd_state(box)
        result['table'] = _reencrypt(az, box, '--yes', '-o', 'table')
        result['after_table'], _ = etcd_state(box)
        result['verify_denied'] = _verify_all(az, box)
        box.admission_webhook(install=False)
        result['unblocked'] = _reencrypt(az, box, '--yes', '-o', 'json')
        result['final'], _ = etcd_state(box)
        yield result
    finally:
        box.down()


def test_the_setup_is_what_the_test_thinks(run):
    before = run['before']
    assert DENIED | PLANTED <= run['targets']
    for key in DENIED | PLANTED:
        assert stored(before[key][0]) == (('identity', None, None) if key[1].endswith('plain')
                                          else ('kms', 'v2', 'key-0001')), key


def test_the_real_api_server_names_the_webhook_as_the_product_expects(run):
    """The premise of verdict/admission.py, from the real server: 403, the webhook's name quoted, its message."""
    status, body = run['api_denied-kms']
    assert status == 403, body
    assert (body['reason'], body['code'], body['message']) == ('Forbidden', 403, API_MESSAGE)
    status, body = run['api_denied-silent']
    assert status == 400, body
    assert ('reason' not in body, body['code'], body['message']) == (True, 400, API_SILENT)


def test_the_dry_run_plans_every_target_and_writes_nothing(run):
    result = run['dry']
    assert result.code == 4, result
    body = result.json()
    assert _outcomes(body) == {key: 'planned' for key in run['targets']}
    assert not run['dry_wrote']


def test_refused_secrets_have_their_own_outcome_naming_the_webhook(run):
    result = run['run']
    assert result.code == 4, result  # a secret left under the old key is a problem found
    body = result.json()
    outcomes = _outcomes(body)
    assert outcomes == {**{key: 'refusedByAdmission' for key in DENIED},
                        **{key: 'reencrypted' for key in run['allowed']}}
    assert body['summary'] == {'reencrypted': len(run['allowed']), 'refusedByAdmission': 3}
    assert body['passed'] is False
    for target in body['targets']:
        if (target['namespace'], target['name']) not in DENIED:
            assert 'admission' not in target, target
            continue
        if (target['namespace'], target['name']) == SILENT:
            expected = {'message': '', 'code': 400, 'description': f'refused by admission webhook "{WEBHOOK}"'}
        else:
            expected = {'message': admission.MESSAGE, 'code': 403,
                        'description': f'refused by admission webhook "{WEBHOOK}": {admission.MESSAGE}'}
        assert target['admission'] == {'kind': 'deniedByWebhook', 'name': WEBHOOK, 'binding': None, **expected}
        assert target['reason'] == target['admission']['description']
    failed = {c['target']: c for c in body['checks'] if c['name'] == 'SecretReencrypted'}
    assert set(failed) == {f'{ns}/{name}' for ns, name in DENIED}
    assert {c['status'] for c in failed.values()} == {'Failed'}


def test_refused_secrets_are_untouched_and_the_others_current_in_etcd(run):
    before, after = run['before'], run['after']
    for key in DENIED:
        assert after[key] == before[key], key  # same value, same ModRevision: never written
    for key in run['allowed']:
        assert stored(after[key][0]) == ('kms', 'v2', 'key-0002'), key
        assert after[key][1] > before[key][1], key


def test_the_table_names_the_webhook_on_one_line_per_refused_secret(run):
    result = run['table']
    assert result.code == 4, result
    for ns, name in DENIED:
        lines = [line for line in result.stdout.splitlines() if f'{ns}/{name}' in line]
        assert len(lines) == 1, result.stdout
        assert re.search(rf'\bFailed\b.*refused by admission webhook "{re.escape(WEBHOOK)}"', lines[0]), lines[0]
    # The second run planned only the refused secrets, and still wrote nothing of them.
    assert '3 of ' in result.stdout and 'secrets to rewrite' in result.stdout, result.stdout
    assert {key: run['after_table'][key] for key in DENIED} == {key: run['before'][key] for key in DENIED}


def test_verify_still_finds_the_refused_secrets(run):
    result = run['verify_denied']
    assert result.code == 4, result
    body = result.json()
    found = {(f['namespace'], f['name']) for f in body['scan']['stale'] + body['scan']['failing']}
    assert found == DENIED


def test_without_the_webhook_the_refused_secrets_are_rewritten(run):
    result = run['unblocked']
    assert result.code == 0, result
    body = result.json()
    assert _outcomes(body) == {key: 'reencrypted' for key in DENIED}
    for key in run['targets']:
        assert stored(run['final'][key][0]) == ('kms', 'v2', 'key-0002'), key


def test_no_value_or_token_leaks(run):
    for name in ('dry', 'run', 'table', 'unblocked'):
        assert_no_leak(run[name], run['planted'].canaries)


def test_an_unreachable_webhook_with_failure_policy_fail_is_named_too(tmp_path, az):
    """The webhook's URL refuses connections (failurePolicy Fail): the API answers 500 ``failed calling webhook``,
    reported as ``refusedByAdmission`` of kind ``webhookUnavailable``, naming it."""
    box = Sandbox(str(tmp_path / 'sandbox'))
    box.up(provider='kms-v2')
    try:
        planted = Planted()
        _write(box, 'apps', 'blocked', planted.data('b'), labels={admission.LABEL: 'true'}, **{'with': 'identity'})
        _write(box, 'apps', 'free', planted.data('f'), **{'with': 'identity'})
        refused_port = json.loads((box.dir / 'serve-ready.json').read_text())['refused_port']
        body = admission.configuration(f'https://127.0.0.1:{refused_port}{admission.PATH}',
                                       Path(box.info['pki']['ca_cert']).read_bytes())
        status, answer = box.api('POST', '/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations',
                                 body)
        assert status == 201, answer
        before, _ = etcd_state(box)
        result = _wait_for_refusal(az, box)
        assert result.code == 4, result
        out = result.json()
        assert _outcomes(out) == {('apps', 'blocked'): 'refusedByAdmission', ('apps', 'free'): 'reencrypted'}
        target = next(t for t in out['targets'] if t['name'] == 'blocked')
        refusal = target['admission']
        assert (refusal['kind'], refusal['name'], refusal['code']) == ('webhookUnavailable', WEBHOOK, 500)
        assert 'connection refused' in refusal['message'], refusal
        assert target['reason'].startswith(f'admission webhook "{WEBHOOK}" could not be called (failurePolicy Fail)')
        after, _ = etcd_state(box)
        assert after[('apps', 'blocked')] == before[('apps', 'blocked')]
        assert stored(after[('apps', 'free')][0]) == ('kms', 'v2', 'key-0001')
        assert_no_leak(result, planted.canaries)
    finally:
        box.down()


def _wait_for_refusal(az, box, attempts=10):
    """The API server picks the configuration up from its informer, within a second or so: until it does, the
    labelled secret is rewritten. Wait for the API to refuse a dry-run update of it first."""
    path = '/api/v1/namespaces/apps/secrets/blocked'
    obj = box.api('GET', path)[1]
    for _ in range(attempts * 10):
        status, _answer = box.api('PUT', path + '?dryRun=All', obj)
        if status == 500:
            break
        time.sleep(0.1)
    del obj
    return _reencrypt(az, box, '--yes', '-o', 'json')
