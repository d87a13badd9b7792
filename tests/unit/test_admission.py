"""verdict.admission: a write refused by an admission webhook or policy, named, from kube-apiserver's Status shapes
(tests/fixtures/admission)."""

import json

import pytest

from azext_kmsverify.verdict.admission import (DENIED_BY_POLICY, DENIED_BY_WEBHOOK, WEBHOOK_UNREACHABLE, refusal)

from tests.support.paths import FIXTURES

ADMISSION = FIXTURES / 'admission'


def _answer(name):
    body = (ADMISSION / name).read_bytes()
    return json.loads(body)['code'], body


def test_a_webhook_refusal_names_the_webhook_and_its_message():
    found = refusal(*_answer('webhook-denied.json'))
    assert found.kind == DENIED_BY_WEBHOOK
    assert found.name == 'validate.secrets.policy.example.com'
    assert found.message == 'secrets must carry the label team'
    assert found.code == 400
    assert found.describe() == ('refused by admission webhook "validate.secrets.policy.example.com": secrets must '
                                'carry the label team')
    assert found.to_dict()['name'] == 'validate.secrets.policy.example.com'


def test_a_refusal_without_explanation_still_names_the_webhook():
    found = refusal(*_answer('webhook-denied-without-explanation.json'))
    assert (found.kind, found.name, found.message) == (DENIED_BY_WEBHOOK, 'deny-all.example.com', '')


def test_an_unreachable_webhook_is_its_own_outcome():
    found = refusal(*_answer('webhook-unreachable.json'))
    assert found.kind == WEBHOOK_UNREACHABLE and found.name == 'mutate.kyverno.svc-fail'
    assert 'connection refused' in found.message and found.code == 500
    assert 'could not be called' in found.describe()


def test_a_validating_admission_policy_refusal_names_policy_and_binding():
    found = refusal(*_answer('policy-denied.json'))
    assert (found.kind, found.name, found.binding) == (DENIED_BY_POLICY, 'freeze-secrets', 'freeze-secrets-binding')
    assert found.message == 'secrets are frozen during the change window'


@pytest.mark.parametrize('status,body', [
    (403, (ADMISSION / 'rbac-forbidden.json').read_bytes()),
    (409, b'{"kind":"Status","message":"Operation cannot be fulfilled: the object has been modified","code":409}'),
    (500, b'<html>bad gateway</html>'),
    (400, b'["not", "a", "status"]'),
    (400, b'{"message": 7}'),
    (200, (ADMISSION / 'webhook-denied.json').read_bytes()),
])
def test_other_answers_are_not_admission_refusals(status, body):
    assert refusal(status, body) is None


def test_names_and_messages_are_one_printable_line():
    body = json.dumps({'message': 'admission webhook "evil\\u001b[31m" denied the request: line1\nline2\u202e',
                       'code': 400})
    found = refusal(400, body)
    assert '\x1b' not in found.name and '\n' not in found.message and '\u202e' not in found.message
    assert found.name.startswith('evil')


# What a real kube-apiserver v1.29.6 answered (python -m tests.sandbox.apiserver.capture --only admission):
# the sandbox's webhook refusing with a message and code 403, refusing with no status, and its URL refusing connections.
REAL = FIXTURES / 'kube-apiserver-v1.29.6' / 'admission'
SANDBOX_WEBHOOK = 'deny-secret-updates.sandbox.kmsverify.test'


@pytest.mark.parametrize('name, kind, message, code', [
    ('webhook-denied.http403.json', DENIED_BY_WEBHOOK,
     "updates of secrets labelled kmsverify.test/deny-update=true are refused by the sandbox's admission policy", 403),
    ('webhook-denied-without-explanation.http400.json', DENIED_BY_WEBHOOK, '', 400),
    ('webhook-unreachable.http500.json', WEBHOOK_UNREACHABLE,
     'failed to call webhook: Post "https://127.0.0.1:PORT/admission/deny-secret-updates?timeout=5s": dial tcp '
     '127.0.0.1:PORT: connect: connection refused', 500),
])
def test_the_real_servers_answers_name_the_webhook(name, kind, message, code):
    status = int(name.rsplit('.http', 1)[1].split('.')[0])
    found = refusal(status, (REAL / name).read_bytes())
    assert (found.kind, found.name, found.message, found.code, found.binding) == (kind, SANDBOX_WEBHOOK, message,
                                                                                  code, None)
