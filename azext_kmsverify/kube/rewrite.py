# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Rewrite one secret through the API so the API server stores it again with its current first provider.

GET the object, then PUT it back unchanged with its ``resourceVersion`` as precondition: nothing can be lost,
since a concurrent change makes the PUT fail with 409 instead of overwriting it. kube-apiserver skips a write
whose encoding is unchanged unless the read was stale (``GuaranteedUpdate``): plaintext, local-key and old KMS v2
values are stale, but a KMS v1 value under a rotated key is not, so for KMS v1 one annotation
(:data:`ANNOTATION`, the time of the rewrite) makes the write real. ``data``, ``type``, labels, owner
references, finalizers and ``immutable`` are never touched, and nothing is ever deleted. 429 answers (API
Priority and Fairness) are honoured with their ``Retry-After``. The object (with its data) lives in memory for
the length of one rewrite and never reaches a log line or a message.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from urllib.parse import quote

from azext_kmsverify import defaults
from azext_kmsverify.kube.errors import status_message, throttle_delay
from azext_kmsverify.verdict.admission import AdmissionRefusal, refusal

ANNOTATION = defaults.REENCRYPTED_ANNOTATION
WRITTEN, CONFLICT, SKIPPED, FAILED, DELETED = 'written', 'conflict', 'skipped', 'failed', 'deleted'
REFUSED = 'refused'  # by an admission webhook or policy (``Outcome.admission`` names it)
# 429 answers honoured per secret before it is given up (client-go's rest client retries 10 times). Each waits
# its Retry-After; --timeout and Ctrl-C end the waits sooner. A throttled flow rejects a share of requests
# whatever the client does, so a low bound fails secrets that the next round would have written.
THROTTLED_ROUNDS = 30


@dataclass
class Outcome:
    status: str              # written | conflict (changed meanwhile: check etcd) | deleted | skipped | failed
    reason: str = ''
    resource_version: str | None = None
    throttled: int = 0       # 429 answers honoured
    stopped: bool = False    # not written: ``stop`` was set while waiting out a 429
    admission: AdmissionRefusal | None = None  # who refused the PUT (an admission webhook or policy)


# pylint: disable-next=too-many-return-statements  # one return per outcome of the GET and the PUT
def rewrite(client, namespace: str, name: str, force: bool, stop=None, *, path: str | None = None,
            what: str = 'secret', resource: str = 'secrets') -> Outcome:
    """One GET + PUT. ``force``: add :data:`ANNOTATION` so an unchanged KMS v1 object is written. ``path``: the
    object's API path when it is not a secret (``verdict.resources.api_path``), ``what`` how messages name it,
    ``resource`` how a missing permission names the resource."""
    path = path or f"/api/v1/namespaces/{quote(namespace, safe='')}/secrets/{quote(name, safe='')}"
    shown = f'{namespace}/{name}' if namespace else name
    throttled = 0
    while throttled < THROTTLED_ROUNDS:
        if throttled and stop is not None and stop.is_set():
            return Outcome(FAILED, 'not rewritten: stopped while throttled (429)', throttled=throttled, stopped=True)
        headers = {}
        status, body = client.request('GET', path, timeout=30, doing=f'reading {what} {shown}',
                                      headers_out=headers, throttled_retries=0)
        if status == 429:
            throttled += 1
            _wait(client, headers, stop)
            continue
        if status == 404:
            return Outcome(DELETED, 'deleted since the plan was made', throttled=throttled)
        if status >= 500:
            # kube-apiserver answers 500 when the stored value cannot be decrypted: the API cannot rewrite it.
            return Outcome(SKIPPED, f"the API cannot read it: {status_message(body) or f'HTTP {status}'}",
                           throttled=throttled)
        if status != 200:
            raise client.errors.api(status, body, f'reading {what} {shown}',
                                    permission=f'get {resource} in all namespaces')
        try:
            obj = json.loads(body)
        except ValueError:
            return Outcome(FAILED, f'the API answered with something that is not a {what}', throttled=throttled)
        finally:
            del body
        if force:
            metadata = obj.setdefault('metadata', {})
            annotations = metadata.get('annotations') or {}
            annotations[ANNOTATION] = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
            metadata['annotations'] = annotations
        headers = {}
        status, answer = client.request('PUT', path, body=obj, accept=defaults.METADATA_ONLY_ACCEPT, timeout=30,
                                        doing=f'rewriting {what} {shown}', headers_out=headers,
                                        throttled_retries=0)
        del obj
        if status in (200, 201):
            try:
                version = (json.loads(answer).get('metadata') or {}).get('resourceVersion')
            except (ValueError, AttributeError):
                version = None
            return Outcome(WRITTEN, resource_version=version, throttled=throttled)
        if status == 409:
            return Outcome(CONFLICT, 'changed by someone else meanwhile (409 Conflict)', throttled=throttled)
        if status == 429:
            throttled += 1
            _wait(client, headers, stop)
            continue
        if status == 404:
            return Outcome(DELETED, 'deleted since the plan was made', throttled=throttled)
        # A webhook's or policy's refusal (often 403 or 400) is its own outcome, naming who refused: not RBAC's 403.
        refused = refusal(status, answer)
        if refused is not None:
            return Outcome(REFUSED, refused.describe(), throttled=throttled, admission=refused)
        if status in (401, 403):
            raise client.errors.api(status, answer, f'rewriting {what} {shown}',
                                    permission=f'update {resource} in all namespaces')
        return Outcome(FAILED, f"the API refused the rewrite: {status_message(answer) or f'HTTP {status}'}",
                       throttled=throttled)
    return Outcome(FAILED, f'still throttled after {throttled} answers 429 Too Many Requests', throttled=throttled)


def _wait(client, headers: dict, stop) -> None:
    """Sleep as API Priority and Fairness asks (``Retry-After`` seconds, plus up to a fifth more so the workers
    throttled together do not all come back at the same moment), bounded by the deadline and woken by ``stop``
    (an interrupt, or the end of the time for rewrites)."""
    delay = min(throttle_delay(headers), client.deadline.remaining())
    if stop is not None:
        stop.wait(delay)
    else:
        time.sleep(delay)
