# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""The KMS v2 key the API server encrypts with now, known without writing: from ``/metrics``. Pure.

kube-apiserver publishes the hash of every KMS v2 key id it uses (``staging/src/k8s.io/apiserver/pkg/storage/
value/encrypt/envelope/metrics/metrics.go``): ``apiserver_envelope_encryption_key_id_hash_total`` and
``..._key_id_hash_last_timestamp_seconds`` with ``transformation_type="to_storage"`` for encryptions, and
``..._key_id_hash_status_last_timestamp_seconds`` for the key id its plugin's Status call returns. The hash is
``sha256:`` + the hex SHA-256 of the key id. The newest Status key is the one the next write uses; without it,
the newest ``to_storage`` one.

These metrics are alpha and may go (kubernetes PR #136354 removes ``..._key_id_hash_total``, which is not read
here). A page without any key id series while ``apiserver_storage_transformation_operations_total`` counts KMS v2
transformations means this API server does not publish them (removed, renamed, or built without them): every
KMS v2 encryption and decryption, and the Status call at start, would have recorded one. The caller then falls
back to the probe or the latest write and says so (:func:`current_key_note`).
"""

from __future__ import annotations

import hashlib
import re

STATUS = 'apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds'
LAST_USED = 'apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds'
TRANSFORMATIONS = 'apiserver_storage_transformation_operations_total'
NO_KEY_ID_SERIES = (f'the API server publishes no KMS v2 key id series ({STATUS}, {LAST_USED}) although it '
                    f'encrypts or decrypts with KMS v2 ({TRANSFORMATIONS}): this release removed or renamed them, or '
                    'they are turned off')
NO_KMS_V2 = ('the API server publishes no KMS v2 key id hash (KMS v1, no KMS v2 encryption since it started, or '
             'this release removed or renamed the key id metrics)')
# name{labels} value: label values are quoted with \\ \" \n escapes (the Prometheus text format).
_SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def key_id_hash(key_id: str) -> str:
    return 'sha256:' + hashlib.sha256(key_id.encode('utf-8')).hexdigest()


def current_key_hash(metrics_text: str) -> tuple[str | None, str]:
    """``(key id hash, how it was found)`` of the key the API server encrypts with now; ``(None, why)`` when
    the page has no KMS v2 key id metric. Linear in the page."""
    best = {STATUS: (None, -1.0), LAST_USED: (None, -1.0)}
    kms_v2_used = False
    for line in metrics_text.splitlines():
        if line.startswith(TRANSFORMATIONS + '{'):
            kms_v2_used = kms_v2_used or 'transformer_prefix="k8s:enc:kms:v2:' in line
            continue
        if not line.startswith(('apiserver_envelope_encryption_key_id_hash_status_last',
                                'apiserver_envelope_encryption_key_id_hash_last')):
            continue
        match = _SAMPLE.fullmatch(line.strip())
        if not match or match.group(1) not in best:
            continue
        labels = dict(_LABEL.findall(match.group(2) or ''))
        if match.group(1) == LAST_USED and labels.get('transformation_type') != 'to_storage':
            continue
        try:
            stamp = float(match.group(3))
        except ValueError:
            continue
        if labels.get('key_id_hash') and stamp > best[match.group(1)][1]:
            best[match.group(1)] = (labels['key_id_hash'], stamp)
    if best[STATUS][0]:
        return best[STATUS][0], 'the key id its KMS v2 plugin reports (Status)'
    if best[LAST_USED][0]:
        return best[LAST_USED][0], 'the key id of its latest encryption'
    return None, NO_KEY_ID_SERIES if kms_v2_used else NO_KMS_V2


HASH_PREFIX = 'sha256:'  # a current key known only by its /metrics hash (key_id_hash)


def hash_only_current_key(key_hash: str | None, found_key_id: str | None, known_key_id: str | None = None):
    """The /metrics hash, standing for the current key id, when /metrics names the current key but no stored value
    carries a key id with that hash (``found_key_id`` None: nothing was written since the rotation) and nothing
    else (``known_key_id``, e.g. the probe's) names it: every KMS v2 value is then under an older key. Falling back
    to the latest write would take the old key for the current one. None otherwise."""
    if key_hash and found_key_id is None and known_key_id is None:
        return key_hash
    return None


def known_key_hashes(metrics_text: str) -> set[str]:
    """Every key id hash on the page's ``apiserver_envelope_encryption_key_id_hash_*`` samples: keys this API server
    got from its plugin's Status, encrypted with, or decrypted a value of (``from_storage`` is recorded only after
    the plugin decrypted the DEK: a value under a key the plugin never had does not show)."""
    found = set()
    for line in metrics_text.splitlines():
        if line.startswith('apiserver_envelope_encryption_key_id_hash_'):
            match = _SAMPLE.fullmatch(line.strip())
            if match:
                key_hash = dict(_LABEL.findall(match.group(2) or '')).get('key_id_hash')
                if key_hash:
                    found.add(key_hash)
    return found


def newer_key_ids(current_key_id: str | None, first_revisions: dict, known_hashes=None) -> list[str]:
    """KMS v2 key ids whose oldest value in etcd (``first_revisions``: key id -> lowest ModRevision) was written after
    the oldest value under ``current_key_id``: keys newer than the one called current. One API server writes under
    one key at a time, so the values of a key it rotated away from are all older than the first value under the
    next. A key that began after the current one means another API server already writes under a newer key: in an
    HA control plane each server takes a rotated key at its next KMS plugin Status call (about once a minute), and
    the one that answered has not yet. Only keys in ``known_hashes`` (:func:`known_key_hashes` of the answering
    server's /metrics: it decrypted values under them, so its plugin has them) count: a value planted or restored
    under a key the plugin never had is not a newer key. [] when the current key has no value in etcd, or
    without /metrics (``known_hashes`` None)."""
    first = first_revisions.get(current_key_id) if current_key_id else None
    if first is None or not known_hashes:
        return []
    return sorted(k for k, rev in first_revisions.items()
                  if k is not None and k != current_key_id and rev is not None and rev > first
                  and key_id_hash(k) in known_hashes)


# Where the current key comes from, as ``scan.currentKeyIdSource`` and ``reencrypt``'s ``currentKeyIdSource`` say.
SOURCE_METRICS = 'metrics'
SOURCE_PROBE = 'probe'
SOURCE_LATEST_WRITE = 'latestWrite'


def current_key_note(source: str | None, metrics_why: str, *, hash_only: bool = False) -> str | None:
    """``scan.currentKeyIdNote``: why the current KMS v2 key came from where it came from, when not plainly from
    /metrics (None then). ``metrics_why``: why /metrics gave no key (forbidden, unreadable, no key id series)."""
    if hash_only:
        return 'the current key is known by the hash /metrics publishes: no secret in etcd is stored under it yet'
    if source in (SOURCE_METRICS, None):
        return None
    note = f'/metrics not used: {metrics_why}'
    if source == SOURCE_LATEST_WRITE:
        note += ('; the current key is taken to be the key id of the most recently written secret, which misses a '
                 'key rotation that no write has followed yet (--probe writes a secret under the current key)')
    elif source == SOURCE_PROBE:
        note += '; the probe secret, written during this run, names the current key'
    return note


def decide_current_key(*, given=None, given_source=None, found=None, found_source=None, probe=None,
                       probe_source=SOURCE_PROBE, latest_write=None):
    """``(current key id, its source)``, from the strongest evidence there is: the key id the caller gives
    (``given``: the /metrics hash standing for a key nothing is stored under yet, see :func:`hash_only_current_key`),
    else the key the scan found (``found``: the stored key id whose hash /metrics publishes, or the probe's
    known up front), else the probe secret's key id (``probe``, kept when /metrics was asked first), else the key
    id of the most recent write (``latest_write``); ``(None, None)`` when there is none."""
    if given is not None:
        return given, given_source or SOURCE_PROBE
    if found is not None:
        return found, found_source or SOURCE_PROBE
    if probe is not None:
        return probe, probe_source or SOURCE_PROBE
    if latest_write is not None:
        return latest_write, SOURCE_LATEST_WRITE
    return None, None
