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
from azext_kmsverify.verdict.access import (
    ALLOWED,
    DENIED,
    UNKNOWN,
    Answer,
    CommandAccess,
    Permission,
    assess,
    preflight_commands,
    requirements,
    unique_permissions,
)

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


def preflight(client, command: str, **kwargs) -> CommandAccess:
    """What ``command`` (``verdict.access.COMMANDS``) lacks, asked before it writes or execs anything. ``kwargs``:
    ``verdict.access.requirements``'s (probe namespace, secret namespaces, etcd pod)."""
    needs = requirements(command, **kwargs)
    return assess(command, needs, review_all(client, needs))


def preflight_many(client, commands, **kwargs) -> CommandAccess:
    """:func:`preflight` for a run that does what several ``commands`` do (``verify`` with the probe and
    ``--all-secrets``): their permissions combined, each asked once, judged as one command named by all."""
    from azext_kmsverify.verdict.access import combine
    needs = combine(*(requirements(command, **kwargs) for command in commands))
    return assess(' and '.join(commands), needs, review_all(client, needs))


CHECKING_ACCESS = 'checking the permissions of this identity (SelfSubjectAccessReview)'


def require(client, commands, **kwargs) -> CommandAccess:
    """Before anything is exec'd or written: a required permission the API server denies raises
    :func:`missing_error` (verb, resource, namespace; exit 1, as the 403 it would meet later); one it does not
    answer for (no SelfSubjectAccessReview, an authorizer that cannot decide) is logged and the run goes on."""
    from knack.log import get_logger
    found = preflight_many(client, commands, **kwargs)
    if found.missing:
        raise missing_error(found)
    unknown = [a for a in found.unknown if a.permission.required]
    if unknown:
        get_logger(__name__).info('Permissions not checked first (%s): %s',
                                  '; '.join(sorted({a.reason for a in unknown})),
                                  ', '.join(a.permission.describe() for a in unknown))
    return found


def preflight_all(client, probe_namespace: str) -> list[CommandAccess]:
    """For ``status``: what each command a user may run next lacks, asking each distinct permission once."""
    per_command = preflight_commands(probe_namespace)
    answers = review_all(client, unique_permissions(per_command))
    return [assess(command, needs, answers) for command, needs in per_command.items()]


def missing_error(access: CommandAccess):
    """The ForbiddenError a command raises before its first write or exec when a required permission is denied:
    which verbs on which resources, subresources, namespaces or URLs, and how to grant exactly those (the YAML is
    ``status``'s to print; one line here)."""
    from azure.cli.core.azclierror import ForbiddenError

    from azext_kmsverify.errors import make
    what = '; '.join(a.permission.describe() for a in access.missing)
    return make(ForbiddenError, f"'{access.command}' cannot run with this identity: Kubernetes RBAC denies {what}.",
                'Ask a cluster admin to grant exactly these (az aksarc kms status prints the Role/ClusterRole and '
                'bindings that do), or run it with an identity that has them.')


SSR_PATH = '/apis/authentication.k8s.io/v1/selfsubjectreviews'


def whoami(client) -> tuple[dict | None, str]:
    """``({'username', 'groups'}, '')`` of this identity as the API server sees it (SelfSubjectReview,
    authentication.k8s.io/v1, GA in 1.28, granted to every authenticated user by ``system:basic-user``): the
    subject the printed RBAC binds. ``(None, why)`` when the server does not say. Raises as :func:`review`."""
    doing = 'asking the API server who this identity is (SelfSubjectReview)'
    body = {'apiVersion': 'authentication.k8s.io/v1', 'kind': 'SelfSubjectReview'}
    status, answer = client.request('POST', SSR_PATH, body=body, timeout=20, doing=doing)
    if status == 401:
        raise client.errors.api(status, answer, doing)
    if status not in (200, 201):
        return None, f'SelfSubjectReview answered HTTP {status}'
    try:
        info = (json.loads(answer).get('status') or {}).get('userInfo') or {}
        username, groups = info.get('username'), info.get('groups') or []
    except (ValueError, AttributeError, TypeError, RecursionError):
        return None, 'the SelfSubjectReview answer is not one'
    if not isinstance(username, str) or not username or not isinstance(groups, list):
        return None, 'the SelfSubjectReview answer names no user'
    return {'username': printable(truncate(username, 300)),
            'groups': [printable(truncate(g, 300)) for g in groups if isinstance(g, str)]}, ''
