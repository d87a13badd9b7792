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

import re

from azext_kmsverify import defaults

ONLY = defaults.REENCRYPT_ONLY
LOCAL_KEYS = ('aescbc', 'aesgcm', 'secretbox')
REENCRYPTED, ALREADY_CURRENT, SKIPPED, FAILED, PLANNED = 'reencrypted', 'alreadyCurrent', 'skipped', 'failed', 'planned'
_LABEL = re.compile(r'[a-z0-9]([-a-z0-9]*[a-z0-9])?')
_SUBDOMAIN = re.compile(r'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')


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
    return (len(namespace) <= 63 and bool(_LABEL.fullmatch(namespace)) and len(name) <= 253
            and bool(_SUBDOMAIN.fullmatch(name)))


def force_write(target: dict) -> bool:
    """KMS v1 values are not stale after a key rotation, so an unchanged PUT would not be written: annotate."""
    return target.get('kmsVersion') == 'v1'


def verdict_after(_target: dict, classification: dict | None, mod_revision: int | None, current_key_id: str | None,
                  before: int | None) -> tuple[bool, str]:
    """Whether the value now in etcd is stored with KMS under the current key, with the reason when not."""
    if classification is None:
        return False, 'the key is gone from etcd'
    if classification.get('storage') != 'kms' or classification.get('malformed'):
        return False, (f"still stored as {classification.get('storage')} after the rewrite: the API server's "
                       'first provider is not KMS')
    if classification.get('kmsVersion') == 'v2':
        if current_key_id and classification.get('keyId') != current_key_id:
            return False, f"stored under KMS v2 key id {classification.get('keyId')}, not the current {current_key_id}"
        return True, ''
    if before is not None and mod_revision is not None and mod_revision <= before:
        return False, 'KMS v1 value not rewritten (its etcd ModRevision did not change)'
    return True, ''
