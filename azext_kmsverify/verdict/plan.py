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

from dataclasses import dataclass
from enum import Enum

from azext_kmsverify import defaults
from azext_kmsverify.names import is_namespace, is_secret_name
from azext_kmsverify.text import printable
from azext_kmsverify.verdict.keys import HASH_PREFIX, key_id_hash

ONLY = defaults.REENCRYPT_ONLY
LOCAL_KEYS = ('aescbc', 'aesgcm', 'secretbox')


class Outcome(str, Enum):
    """What happened to one target (``targets[].outcome``)."""

    PLANNED = 'planned'  # --dry-run, or nothing rewritten yet
    WRITTEN = 'written'  # the PUT was answered; etcd has not been read again yet
    REENCRYPTED = 'reencrypted'  # etcd shows it stored with KMS under the current key
    ALREADY_CURRENT = 'alreadyCurrent'  # someone else rewrote it meanwhile
    DELETED = 'deleted'  # deleted meanwhile: nothing left under the old key
    SKIPPED = 'skipped'
    FAILED = 'failed'
    REFUSED_BY_ADMISSION = 'refusedByAdmission'  # an admission webhook or policy refused the rewrite (``admission``)


DONE = (Outcome.REENCRYPTED, Outcome.ALREADY_CURRENT, Outcome.DELETED)  # nothing left under an old key


@dataclass
class Target:  # pylint: disable=too-many-instance-attributes  # one field per reported column
    """One secret to rewrite, and what happened to it. ``namespace`` and ``name`` are raw (from the etcd key)."""

    namespace: str
    name: str
    kind: str
    storage: str | None
    kms_version: str | None = None
    key_id: str | None = None
    plan_reason: str | None = None
    outcome: Outcome | None = None
    reason: str | None = None
    mod_revision_before: int | None = None
    mod_revision_after: int | None = None
    storage_after: str | None = None
    key_id_after: str | None = None
    throttled: int | None = None
    admission: dict | None = None  # verdict.admission.AdmissionRefusal.to_dict() of a refused rewrite
    resource: str | None = None  # the --resource it is an object of; None: a secret
    etcd_key: str | None = None  # its etcd key, when not a secret (a secret's is /registry/secrets/NS/NAME)

    def end(self, outcome: Outcome, reason: str | None) -> None:
        self.outcome, self.reason = outcome, reason

    def to_dict(self) -> dict:
        """The target as ``-o json`` shows it (camelCase; names escaped for any output)."""
        return {'namespace': printable(self.namespace), 'name': printable(self.name), 'kind': self.kind,
                'storage': self.storage, 'kmsVersion': self.kms_version, 'keyId': self.key_id,
                'outcome': self.outcome.value if self.outcome else None, 'reason': self.reason,
                'modRevisionBefore': self.mod_revision_before, 'modRevisionAfter': self.mod_revision_after,
                'storageAfter': self.storage_after, 'keyIdAfter': self.key_id_after, 'throttled': self.throttled,
                **({'admission': self.admission} if self.admission else {}),
                **({'resource': self.resource, 'etcdKey': printable(self.etcd_key or '')} if self.resource else {})}


def kind_of(storage: str | None, stale: bool) -> str:
    if stale:
        return 'stale'
    if storage == 'identity':
        return 'plaintext'
    if storage in LOCAL_KEYS:
        return 'local-key'
    return 'other'  # unknown or malformed: only --only all rewrites it (the API usually cannot read it)


def targets(scan: dict, only: str = 'all', namespaces=(), secrets=()) -> list[Target]:
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
        found.append(Target(namespace, name, kind, entry.get('storage', 'kms' if stale else None),
                            kms_version=entry.get('kmsVersion'), key_id=entry.get('keyId'),
                            plan_reason=entry.get('reason')))
    found.sort(key=lambda t: (t.namespace, t.name))
    return found


def addressable(namespace: str, name: str, namespaced: bool = True) -> bool:
    """Whether the API can name this object (a key in etcd can be anything; the API's names cannot)."""
    return (is_namespace(namespace) if namespaced else namespace == '') and is_secret_name(name)


def force_write(target: Target, current_key_id: str | None = None) -> bool:
    """Whether the rewrite must change something (add the annotation).

    KMS v1 values are not stale after a key rotation, so an unchanged PUT would not be written. A value not
    stored with KMS is stale and written anyway, but where no KMS v2 key is current (a KMS v1 cluster) it is
    stored as KMS v1, whose age check reads the last write from managedFields: an unchanged PUT adds no entry,
    so a secret from 2023 would still look written before the rotation. Annotate both."""
    if target.kms_version == 'v1':
        return True
    return target.storage != 'kms' and not current_key_id


def is_current_key(key_id: str | None, current_key_id: str | None) -> bool:
    """``key_id`` is the current KMS v2 key. ``current_key_id`` is a key id, or (when /metrics named the current
    key but no stored value carried it yet) its ``sha256:`` hash as /metrics publishes it."""
    if not current_key_id:
        return True
    if key_id == current_key_id:
        return True
    return (current_key_id.startswith(HASH_PREFIX) and key_id is not None
            and key_id_hash(key_id) == current_key_id)


def verdict_after(classification: dict | None, mod_revision: int | None, current_key_id: str | None,
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
