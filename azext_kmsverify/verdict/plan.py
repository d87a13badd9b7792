# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""What ``az aksarc kms reencrypt`` rewrites, and whether a rewrite took: pure rules over the scan's findings and
the values read back from etcd.

Targets are what ``verify --all-secrets`` flags: secrets not stored with KMS (plaintext, a local key, a value no
transformer wrote) and secrets under an older key (KMS v2 key id other than the current one; KMS v1 last written
before the last rotation).
"""

from __future__ import annotations

from azext_kmsverify import defaults
from azext_kmsverify.names import is_namespace, is_secret_name
from azext_kmsverify.verdict.keys import HASH_PREFIX, key_id_hash

ONLY = defaults.REENCRYPT_ONLY
LOCAL_KEYS = ('aescbc', 'aesgcm', 'secretbox')
REENCRYPTED, ALREADY_CURRENT, SKIPPED, FAILED, PLANNED = 'reencrypted', 'alreadyCurrent', 'skipped', 'failed', 'planned'


def kind_of(storage: str | None, stale: bool) -> str:
    if stale:
        return 'stale'
    if storage == 'identity':
        return 'plaintext'
    if storage in LOCAL_KEYS:
        return 'local-key'
    return 'other'  # unknown or malformed: only --only all rewrites it (the API usually cannot read it)


def targets(scan: dict, only: str = 'all', namespaces=(), secrets=()) -> list[dict]:
    """The secrets to rewrite, in key order, from a finished scan (``ScanSummary.finish``)."""
    wanted_ns, wanted = set(namespaces), set(map(tuple, secrets))
    found = []
    for entry, stale in [(f, False) for f in scan.get('failing') or []] + [(s, True) for s in scan.get('stale') or []]:
        kind = kind_of(entry.get('storage', 'kms' if stale else None), stale)
        if only not in ('all', kind):
            continue
        namespace, name = entry['namespace'], entry['name']
        if (wanted_ns and namespace not in wanted_ns) or (wanted and (namespace, name) not in wanted):
            continue
        found.append({'namespace': namespace, 'name': name, 'kind': kind,
                      'storage': entry.get('storage', 'kms' if stale else None), 'kmsVersion': entry.get('kmsVersion'),
                      'keyId': entry.get('keyId'), 'planReason': entry.get('reason')})
    found.sort(key=lambda t: (t['namespace'], t['name']))
    return found


def addressable(namespace: str, name: str) -> bool:
    """Whether the API can name this secret (a key in etcd can be anything; the API's names cannot)."""
    return is_namespace(namespace) and is_secret_name(name)


def force_write(target: dict, current_key_id: str | None = None) -> bool:
    """Whether the rewrite must change something (add the annotation).

    KMS v1 values are not stale after a key rotation, so an unchanged PUT would not be written. A value not
    stored with KMS is stale and written anyway, but where no KMS v2 key is current (a KMS v1 cluster) it is
    stored as KMS v1, whose age check reads the last write from managedFields: an unchanged PUT adds no entry,
    so a secret from 2023 would still look written before the rotation. Annotate both."""
    if target.get('kmsVersion') == 'v1':
        return True
    return target.get('storage') != 'kms' and not current_key_id


def is_current_key(key_id: str | None, current_key_id: str | None) -> bool:
    """``key_id`` is the current KMS v2 key. ``current_key_id`` is a key id, or (when /metrics named the current
    key but no stored value carried it yet) its ``sha256:`` hash as /metrics publishes it."""
    if not current_key_id:
        return True
    if key_id == current_key_id:
        return True
    return (current_key_id.startswith(HASH_PREFIX) and key_id is not None
            and key_id_hash(key_id) == current_key_id)


def verdict_after(_target: dict, classification: dict | None, mod_revision: int | None, current_key_id: str | None,
                  before: int | None) -> tuple[bool, str]:
    """Whether the value now in etcd is stored with KMS under the current key, with the reason when not."""
    if classification is None:
        return False, 'the key is gone from etcd'
    if classification.get('storage') != 'kms' or classification.get('malformed'):
        return False, (f"still stored as {classification.get('storage')} after the rewrite: the API server's "
                       'first provider is not KMS')
    if classification.get('kmsVersion') == 'v2':
        if not is_current_key(classification.get('keyId'), current_key_id):
            return False, f"stored under KMS v2 key id {classification.get('keyId')}, not the current {current_key_id}"
        return True, ''
    if before is not None and mod_revision is not None and mod_revision <= before:
        return False, 'KMS v1 value not rewritten (its etcd ModRevision did not change)'
    return True, ''
