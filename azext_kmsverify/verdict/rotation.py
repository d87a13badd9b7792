# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Stalled key rotation: the ``KmsKeyRotation`` check. Pure.

Why: the AKS Arc KMS plugin makes a new key every 30 days, and a rotation that silently stopped (a machine off
for more than 30 days is the documented case: AKS Edge Essentials ships ``Repair-AksEdgeKms`` for it) leaves
every new secret under an ever older key. Nothing else says "the current key is 70 days old".

What can be known, and from where:

* **KMS v2, from etcd** (``verify --all-secrets``): every KMS v2 value names the key id it was written under, and a
  write uses the key that is current at that moment. So the current key has been current at least since the
  earliest write still stored under it. The write time must be *exact*: a value whose etcd ``version`` is 1 was
  written once, at its creation, so the object's ``creationTimestamp`` is the time of the very write that stored
  it. managedFields times are **not** used as evidence: an unchanged rewrite (``reencrypt``, or ``kubectl
  replace`` of a stale value) stores the value again under the new key without touching them, so they would date
  a fresh key by an old edit and raise the warning right after a healthy rotation and re-encryption.
  :class:`EarliestWrites` keeps, per key id, the version-1 value with the smallest ``create_revision`` (etcd
  revisions grow with time, so that is the oldest creation): one entry per key id, whatever the secret count.
* **KMS v2, from /metrics only** (``status``): ``apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds``
  and ``..._status_last_timestamp_seconds`` say when a key id hash was *last* used or reported, never when it was
  first: a key used today may be a year old. One lower bound exists: the series are kept per API server process
  (an LRU of 100 label sets, staging/src/k8s.io/apiserver/pkg/storage/value/encrypt/envelope/metrics/metrics.go),
  and the KMS v2 health probe calls the plugin's Status from the start; so when the Status series names one key
  id hash only, the plugin has reported no other key since the process started (``process_start_time_seconds``),
  and the key is at least as old as the API server's uptime. An older key's ``to_storage`` timestamp bounds the
  age from above instead (the switch happened after it). Neither needs ``..._key_id_hash_total``, which
  kubernetes PR #136354 may remove. All of it is one API server process's view: with several control-plane nodes,
  the page is that of the instance that answered, and its uptime is its own.
* **KMS v1** stores no key id, and /metrics publishes none: the check is Skipped with that reason (the write-age
  check ``KmsV1WrittenBeforeRotation`` covers what the API's metadata can tell).

Grace: :data:`GRACE_DAYS` (7) on top of ``--rotation-days``. The earliest write under a key is later than the
rotation itself (nothing may be written for days after it), plugins check for a due rotation on their own
schedule (daily, or at restart), and a week absorbs a maintenance window or a node kept off over a weekend, while
still flagging a missed rotation long before the next one (day 60) is due.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from azext_kmsverify import defaults
from azext_kmsverify.verdict.checks import FAILED, PASSED, SKIPPED, WARNING, check

KMS_KEY_ROTATION = 'KmsKeyRotation'
GRACE_DAYS = 7

SOURCE_ETCD = 'etcdFirstWrite'
SOURCE_METRICS_UPTIME = 'metricsUptime'
SOURCE_METRICS_PREVIOUS_KEY = 'metricsPreviousKey'


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _iso(moment: datetime | None) -> str | None:
    return _utc(moment).strftime('%Y-%m-%dT%H:%M:%SZ') if moment is not None else None


def _days(delta: timedelta) -> float:
    return round(delta.total_seconds() / 86400, 1)


@dataclass(frozen=True)
class FirstWrite:
    """The oldest value stored under one key id that was written exactly once (etcd version 1)."""

    key_id: str
    namespace: str
    name: str
    create_revision: int


class EarliestWrites:
    """Fed every KMS v2 value of a scan; keeps the oldest and the newest exact write (:class:`FirstWrite`) per key
    id: memory bounded by the number of key ids, whatever the number of secrets."""

    def __init__(self):
        self._first = {}
        self._last = {}

    def add(self, key_id: str | None, namespace: str, name: str, create_revision: int, version: int) -> None:
        if not key_id or version != 1 or create_revision <= 0:
            return
        write = FirstWrite(key_id, namespace, name, create_revision)
        known = self._first.get(key_id)
        if known is None or create_revision < known.create_revision:
            self._first[key_id] = write
        known = self._last.get(key_id)
        if known is None or create_revision > known.create_revision:
            self._last[key_id] = write

    def first(self, key_id: str | None) -> FirstWrite | None:
        """The object whose ``creationTimestamp`` dates the earliest exact write under ``key_id``: the key has been
        current at least since then."""
        return self._first.get(key_id) if key_id else None

    def last_under_other_keys(self, current_key_id: str | None) -> FirstWrite | None:
        """The newest exact write under any key id but the current one: the older key was still current then, so
        the current key became current after it."""
        others = [w for k, w in self._last.items() if k != current_key_id]
        return max(others, key=lambda w: w.create_revision) if others else None


@dataclass(frozen=True)
class KeyAge:
    """How long the current key has been in use, at least (``since``), or at most (``at_most_since``)."""

    key: str                    # the key id (etcd) or its hash (metrics)
    source: str                 # SOURCE_*
    evidence: str               # what the bound rests on, for the check's detail
    since: datetime | None = None           # in use at least since then
    at_most_since: datetime | None = None   # became current after then

    def to_dict(self, now: datetime) -> dict:
        now = _utc(now)
        return {'key': self.key, 'source': self.source, 'evidence': self.evidence,
                'inUseSince': _iso(self.since), 'minAgeDays': _days(now - _utc(self.since)) if self.since else None,
                'currentAfter': _iso(self.at_most_since),
                'maxAgeDays': _days(now - _utc(self.at_most_since)) if self.at_most_since else None}


def age_from_etcd(key_id: str, first: FirstWrite | None, created: datetime | None,
                  previous: FirstWrite | None = None, previous_created: datetime | None = None) -> KeyAge | None:
    """The KMS v2 key's age from exact writes (:class:`EarliestWrites`) and those objects' ``creationTimestamp`` as
    the API gives them (None: gone since, or no metadata): ``first`` under the current key bounds the age from
    below, ``previous`` (the newest under an older key) from above."""
    since = _utc(created) if first is not None and created is not None else None
    after = _utc(previous_created) if previous is not None and previous_created is not None else None
    if since is None and after is None:
        return None
    evidence = []
    if since is not None:
        evidence.append(f'secret {first.namespace}/{first.name} was written under it at its creation ({_iso(since)}) '
                        'and never since (etcd version 1)')
    if after is not None:
        evidence.append(f'secret {previous.namespace}/{previous.name} was written under the older key '
                        f'{previous.key_id} at its creation ({_iso(after)})')
    return KeyAge(key_id, SOURCE_ETCD, '; '.join(evidence), since=since, at_most_since=after)


def age_from_metrics(facts) -> KeyAge | None:
    """The bound /metrics alone gives (see the module docstring), from ``verdict.status.MetricFacts``."""
    current = facts.current_hash
    if not current:
        return None
    status_hashes = set(facts.status_hashes)
    older = [t for h, t in facts.to_storage_last.items() if h != current]
    if older:
        switched = datetime.fromtimestamp(max(older), tz=timezone.utc)
        return KeyAge(current, SOURCE_METRICS_PREVIOUS_KEY,
                      f'an older key id hash was still used for encryption at {_iso(switched)} '
                      '(apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds, to_storage)',
                      at_most_since=switched)
    if status_hashes == {current} and facts.process_start is not None:
        started = datetime.fromtimestamp(facts.process_start, tz=timezone.utc)
        return KeyAge(current, SOURCE_METRICS_UPTIME,
                      'the KMS plugin has reported no other key id since this API server started at '
                      f'{_iso(started)} (apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds, '
                      'process_start_time_seconds)', since=started)
    return None


# pylint: disable-next=too-many-return-statements  # one return per verdict and bound
def rotation_check(*, kms_versions=(), age: KeyAge | None = None, unknown_why: str = '',
                   rotation_days: int = defaults.ROTATION_DAYS, grace_days: int = GRACE_DAYS,
                   now: datetime | None = None, fail_on_stale: bool = False) -> dict:
    """The ``KmsKeyRotation`` check.

    ``kms_versions``: the KMS versions in use ('v1', 'v2'); ``age``: the current key's :class:`KeyAge`, or None with
    ``unknown_why``. Warning (Failed with ``fail_on_stale``) when the key is at least ``rotation_days +
    grace_days`` old; Passed when it is known to be younger; Skipped when that cannot be told."""
    now = _utc(now) if now is not None else datetime.now(timezone.utc)
    limit = rotation_days + grace_days
    versions = set(kms_versions)
    if 'v2' not in versions:
        if 'v1' in versions:
            return check(KMS_KEY_ROTATION, SKIPPED, 'KMS v1 stores no key id and the API server publishes none: the '
                                                    "key's age cannot be told (KmsV1WrittenBeforeRotation reports the "
                                                    'secrets written before the rotation period)')
        return check(KMS_KEY_ROTATION, SKIPPED, unknown_why or 'no KMS v2 key in use')
    if age is None:
        return check(KMS_KEY_ROTATION, SKIPPED, f"the current KMS v2 key's age cannot be told: "
                                                f"{unknown_why or 'no evidence'}")
    if age.since is not None:
        days = _days(now - _utc(age.since))
        if days > limit:
            return check(KMS_KEY_ROTATION, FAILED if fail_on_stale else WARNING,
                         f'the current KMS v2 key {age.key} has been in use for at least {days} days, more than the '
                         f'rotation period of {rotation_days} days plus {grace_days} days of grace: the key rotation '
                         f'may have stopped ({age.evidence})', target=age.key)
        if age.at_most_since is None:
            return check(KMS_KEY_ROTATION, PASSED if age.source == SOURCE_ETCD else SKIPPED,
                         _young_detail(age, days, rotation_days, limit), target=age.key)
    if age.at_most_since is not None:
        days = _days(now - _utc(age.at_most_since))
        if days <= limit:
            return check(KMS_KEY_ROTATION, PASSED, f'the current KMS v2 key {age.key} became current at most '
                                                   f'{days} days ago ({age.evidence})', target=age.key)
        return check(KMS_KEY_ROTATION, SKIPPED, f'the current KMS v2 key {age.key} became current at most {days} '
                                                f'days ago, which does not tell whether it is older than {limit} days '
                                                f'({age.evidence})', target=age.key)
    return check(KMS_KEY_ROTATION, SKIPPED, 'no bound on the key age', target=age.key)


def _young_detail(age: KeyAge, days: float, rotation_days: int, limit: int) -> str:
    if age.source == SOURCE_ETCD:
        return (f'no evidence that the key rotation stopped: the current KMS v2 key {age.key} has been in use for at '
                f'least {days} days, within {limit} days ({rotation_days} plus grace), and no secret stored under it '
                f'unchanged since its creation is older ({age.evidence})')
    return (f'the current KMS v2 key {age.key} has been in use for at least {days} days; that is all /metrics can '
            f'tell (a key is only known to be older than the API server, which may have restarted since the '
            f'rotation) ({age.evidence})')
