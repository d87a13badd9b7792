# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Ask the API server what this identity may do: SelfSubjectAccessReview (authorization.k8s.io/v1), one per
permission (``verdict.access`` says which and judges the answers).

Why SSAR and not a trial request: it writes nothing and reads nothing, and it answers for requests that cannot be
tried harmlessly (update every secret, exec into etcd). Every authenticated user may create one by default
(``system:basic-user``); a server that forbids even that, or does not serve the API, leaves every permission
*unknown* with the reason, and the command then goes on as it would without a preflight.
"""

from __future__ import annotations

import json

from azext_kmsverify.kube.errors import status_message
from azext_kmsverify.text import printable, truncate
from azext_kmsverify.verdict.access import ALLOWED, DENIED, UNKNOWN, Answer, Permission

SSAR_PATH = '/apis/authorization.k8s.io/v1/selfsubjectaccessreviews'


def review(client, permission: Permission) -> tuple[Answer, bool]:
    """``(answer, go_on)``: one SelfSubjectAccessReview. ``go_on`` False means the review API itself is not
    usable (forbidden, not served), so asking for the other permissions would only repeat that.

    Raises the client's azclierror for 401 (the credentials are bad: everything else would fail too), transport
    failures and the deadline."""
    body = {'apiVersion': 'authorization.k8s.io/v1', 'kind': 'SelfSubjectAccessReview',
            'spec': permission.review_spec()}
    doing = 'asking the API server for the permissions (SelfSubjectAccessReview)'
    status, answer = client.request('POST', SSAR_PATH, body=body, timeout=20, doing=doing)
    if status == 401:
        raise client.errors.api(status, answer, doing)
    if status in (403, 404, 405):
        why = {403: 'the API server does not let this identity ask (SelfSubjectAccessReview is forbidden: '
                    "it needs 'create' on selfsubjectaccessreviews.authorization.k8s.io)",
               404: 'the API server does not serve authorization.k8s.io/v1 SelfSubjectAccessReview',
               405: 'the API server does not serve authorization.k8s.io/v1 SelfSubjectAccessReview'}[status]
        message = status_message(answer)
        return Answer(permission, UNKNOWN, why + (f': {message}' if message and status == 403 else '')), False
    if status not in (200, 201):
        message = status_message(answer)
        return Answer(permission, UNKNOWN, f"the review answered HTTP {status}{f': {message}' if message else ''}"), \
            True
    return parse_review(permission, answer), True


def parse_review(permission: Permission, body: bytes) -> Answer:
    """The ``status`` of a SelfSubjectAccessReview answer as an :class:`Answer`.

    ``allowed`` true is allowed. ``allowed`` false is denied, also without ``denied`` (no authorizer had an
    opinion: RBAC never says deny, it just does not allow). An ``evaluationError`` with ``allowed`` false means an
    authorizer failed to decide (a webhook authorizer down): that is unknown, not denied."""
    try:
        status = json.loads(body).get('status') or {}
        allowed = status.get('allowed')
    except (ValueError, AttributeError, TypeError, RecursionError):
        return Answer(permission, UNKNOWN, 'the review answer is not a SelfSubjectAccessReview')
    reason = printable(truncate(str(status.get('reason') or ''), 300))
    if allowed is True:
        return Answer(permission, ALLOWED, reason)
    if allowed is not False:
        return Answer(permission, UNKNOWN, 'the review answer says neither allowed nor denied')
    error = printable(truncate(str(status.get('evaluationError') or ''), 300))
    if error and not status.get('denied'):
        return Answer(permission, UNKNOWN, f'the authorizer could not decide: {error}')
    return Answer(permission, DENIED, reason)


def review_all(client, permissions) -> list[Answer]:
    """One answer per permission, in order. When the review API is unusable the rest are unknown with the same
    reason, without asking again."""
    answers, stopped = [], None
    for permission in permissions:
        if stopped is not None:
            answers.append(Answer(permission, UNKNOWN, stopped))
            continue
        answer, go_on = review(client, permission)
        answers.append(answer)
        if not go_on:
            stopped = answer.reason
    return answers
