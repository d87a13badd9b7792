# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""An update refused by admission control (a validating or mutating webhook, or a ValidatingAdmissionPolicy),
read from the API's answer into its own outcome, naming who refused. Pure.

Why: a webhook that refuses an unchanged rewrite (a policy engine that rejects any update of a secret without some
label, or a webhook that is down with ``failurePolicy: Fail``) is a known cause of failed re-encryption. Reported
as a generic "the API refused the rewrite", the operator looks at KMS; named, they know which webhook to fix or
exempt, and that the secret itself is fine.

The shapes are kube-apiserver's (staging/src/k8s.io/apiserver/pkg/admission/plugin/webhook/errors/statuserror.go
and errors.go, .../admission/plugin/policy/validating/): a refusal is a Status whose message is
``admission webhook "NAME" denied the request: <the webhook's message or reason>`` (or ``... denied the request
without explanation``), with the webhook's code (at least 400; releases differ in the default when it gives none,
400 or 403), so the code is not relied on; a webhook that could not be called under
``failurePolicy: Fail`` is a 500 InternalError ``Internal error occurred: failed calling webhook "NAME": ...``;
a ValidatingAdmissionPolicy refusal reads ``ValidatingAdmissionPolicy 'NAME' with binding 'BINDING' denied
request: ...``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from azext_kmsverify.text import printable, truncate

DENIED_BY_WEBHOOK = 'deniedByWebhook'
WEBHOOK_UNREACHABLE = 'webhookUnavailable'
DENIED_BY_POLICY = 'deniedByPolicy'

_DENIED = re.compile(r'admission webhook "((?:[^"\\]|\\.)*)" denied the request(?:: (.*)| without explanation)?',
                     re.DOTALL)
_CALLING = re.compile(r'failed calling webhook "((?:[^"\\]|\\.)*)": ?(.*)', re.DOTALL)
_POLICY = re.compile(r"ValidatingAdmissionPolicy '([^']*)'(?: with binding '([^']*)')? denied request: ?(.*)",
                     re.DOTALL)


@dataclass(frozen=True)
class AdmissionRefusal:
    """Who refused a write and why: ``kind`` is one of :data:`DENIED_BY_WEBHOOK`, :data:`WEBHOOK_UNREACHABLE`,
    :data:`DENIED_BY_POLICY`; ``name`` the webhook (or policy) name; ``binding`` the policy binding."""

    kind: str
    name: str
    message: str
    code: int | None = None
    binding: str | None = None

    def describe(self) -> str:
        if self.kind == DENIED_BY_WEBHOOK:
            head = f'refused by admission webhook "{self.name}"'
        elif self.kind == WEBHOOK_UNREACHABLE:
            head = f'admission webhook "{self.name}" could not be called (failurePolicy Fail)'
        else:
            head = f"refused by ValidatingAdmissionPolicy '{self.name}'"
            if self.binding:
                head += f" (binding '{self.binding}')"
        return head + (f': {self.message}' if self.message else '')

    def to_dict(self) -> dict:
        return {'kind': self.kind, 'name': self.name, 'binding': self.binding, 'message': self.message,
                'code': self.code, 'description': self.describe()}


# pylint: disable-next=too-many-return-statements  # one return per answer shape
def refusal(status: int, body: bytes | str) -> AdmissionRefusal | None:
    """The admission refusal in a write's answer (HTTP ``status``, Kubernetes Status ``body``), or None when the
    answer is something else (RBAC 403, conflict, validation). Names and messages come back on one printable
    line (they are chosen by whoever wrote the webhook or policy)."""
    if status < 400:
        return None
    try:
        decoded = json.loads(body)
    except (ValueError, TypeError, RecursionError):
        return None
    if not isinstance(decoded, dict):
        return None
    message = decoded.get('message')
    if not isinstance(message, str):
        return None
    code = decoded.get('code') if isinstance(decoded.get('code'), int) else status
    match = _DENIED.search(message)
    if match:
        return AdmissionRefusal(DENIED_BY_WEBHOOK, _clean(_unquote(match.group(1))), _clean(match.group(2) or ''),
                                code)
    match = _CALLING.search(message)
    if match:
        return AdmissionRefusal(WEBHOOK_UNREACHABLE, _clean(_unquote(match.group(1))), _clean(match.group(2)), code)
    match = _POLICY.search(message)
    if match:
        return AdmissionRefusal(DENIED_BY_POLICY, _clean(match.group(1)), _clean(match.group(3)), code,
                                _clean(match.group(2)) if match.group(2) else None)
    return None


def _unquote(name: str) -> str:
    """A Go %q name back to its text (the escapes Go writes for a webhook name are JSON's)."""
    try:
        return json.loads(f'"{name}"')
    except ValueError:
        return name


def _clean(text: str) -> str:
    return printable(truncate(text, 500))
