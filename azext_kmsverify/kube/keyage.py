# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Date the current KMS v2 key from etcd evidence: the ``creationTimestamp`` of the (at most two) objects
``verdict.rotation.EarliestWrites`` picked, read as metadata only (never data).

Why here and not in the scan: etcd holds revisions, not times; the API holds the time an object was created. An
object whose etcd ``version`` is 1 was written once, at its creation, so its creation time is the time of the write
that stored the value under its key id. The read is checked against the scan: the object's ``resourceVersion`` must
still be the etcd revision the scan saw (for a value written once, its create revision); otherwise it was
rewritten or re-created since, and is not evidence.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from urllib.parse import quote

from azext_kmsverify.kube.secrets import METADATA_ONLY
from azext_kmsverify.verdict.rotation import EarliestWrites, FirstWrite, KeyAge, age_from_etcd


# pylint: disable-next=too-many-return-statements  # one return per way the evidence fails
def creation_time(client, write: FirstWrite, collection: str = '/api/v1/namespaces/{namespace}/secrets') \
        -> tuple[datetime | None, str]:
    """``(creationTimestamp, '')`` of the object behind ``write``, or ``(None, why)``: gone, rewritten since the
    scan, not readable (``get`` on it is denied), or no usable time. ``collection`` is the API path of the
    resource's collection, ``{namespace}`` filled in (secrets by default)."""
    from azure.cli.core.azclierror import AzCLIError
    path = collection.format(namespace=quote(write.namespace, safe='')) + '/' + quote(write.name, safe='')
    try:
        status, body = client.request('GET', path, accept=METADATA_ONLY, timeout=20,
                                      doing=f'reading the metadata of {write.namespace}/{write.name}')
    except AzCLIError as error:
        if client.deadline.expired():
            raise
        return None, f'could not read {write.namespace}/{write.name}: {error.error_msg}'
    if status == 404:
        return None, f'{write.namespace}/{write.name} was deleted since the scan'
    if status != 200:
        return None, f'{write.namespace}/{write.name} could not be read (HTTP {status})'
    try:
        meta = json.loads(body).get('metadata') or {}
        version, stamp = meta.get('resourceVersion'), meta.get('creationTimestamp')
    except (ValueError, AttributeError, TypeError, RecursionError):
        return None, f'the API answered {write.namespace}/{write.name} with something that is not an object'
    if str(version) != str(write.create_revision):
        return None, f'{write.namespace}/{write.name} was written again since the scan'
    try:
        return datetime.strptime(stamp, '%Y-%m-%dT%H:%M:%SZ').replace(tzinfo=timezone.utc), ''
    except (TypeError, ValueError):
        return None, f'{write.namespace}/{write.name} has no usable creationTimestamp'


def key_age(client, writes: EarliestWrites, current_key_id: str | None) -> tuple[KeyAge | None, str]:
    """The current key's :class:`KeyAge` from etcd evidence, or ``(None, why)`` for ``KmsKeyRotation``'s Skipped."""
    if not current_key_id:
        return None, 'the current KMS v2 key id is not known'
    first = writes.first(current_key_id)
    previous = writes.last_under_other_keys(current_key_id)
    if first is None and previous is None:
        return None, ('no secret stored under any KMS v2 key was written only once (etcd version 1), so no write '
                      'under it can be dated')
    none_first = (None, 'no secret under the current key was written only once (etcd version 1)')
    created, why_first = creation_time(client, first) if first else none_first
    before, why_previous = creation_time(client, previous) if previous else (None, '')
    age = age_from_etcd(current_key_id, first, created, previous, before)
    if age is None:
        return None, '; '.join(w for w in (why_first, why_previous) if w)
    return age, ''
