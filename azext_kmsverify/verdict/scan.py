# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""``--all-secrets``: summarise a streaming scan of every stored Secret. Pure: no I/O.

A cluster can hold hundreds of thousands of secrets, read from etcd page by page. The summary
therefore keeps counters, and names only of secrets that may end up in the report: see
:class:`ScanSummary` for the exact memory bound. No value byte is ever kept.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from azext_kmsverify import defaults
from azext_kmsverify.verdict.checks import FAILED, PASSED, SKIPPED, WARNING, check, encryption_verdict
from azext_kmsverify.verdict.keys import (
    SOURCE_LATEST_WRITE,
    SOURCE_METRICS,
    SOURCE_PROBE,
    decide_current_key,
    key_id_hash,
    newer_key_ids,
)

ALL_SECRETS_ENCRYPTED = 'AllSecretsEncrypted'
ALL_OBJECTS_ENCRYPTED = 'AllObjectsEncrypted'  # another --resource's (the check's target names the resource)
KMS_V2_CURRENT_KEY = 'KmsV2CurrentKey'
KMS_V1_ROTATION = 'KmsV1WrittenBeforeRotation'

_SOURCE_TEXT = {SOURCE_METRICS: "from the API server's /metrics", SOURCE_PROBE: 'from the probe secret',
                SOURCE_LATEST_WRITE: 'from the most recently written secret'}

REWRITE_ONE = 'kubectl get secret -n <namespace> <name> -o json | kubectl replace -f -'
REWRITE_ALL = 'kubectl get secrets --all-namespaces -o json | kubectl replace -f -'


def _plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def _all(n, noun):
    """'the 1 secret is' / 'all 3 secrets are'."""
    return f'the 1 {noun} is' if n == 1 else f'all {n} {noun}s are'


def _iso(moment):
    """ISO 8601 UTC with a Z; naive datetimes are taken as UTC (the API's metadata times are UTC)."""
    if moment is None:
        return None
    return _utc(moment).strftime('%Y-%m-%dT%H:%M:%SZ')


def _utc(moment):
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _sorted_counts(counts):
    return {k: counts[k] for k in sorted(counts)}


class ScanSummary:  # pylint: disable=too-many-instance-attributes  # one counter per reported figure
    """Accumulates ``add()`` calls for every key under ``/registry/secrets/``; ``finish()`` reports.

    Memory is proportional to the secrets that can become findings, never to the total:

    * counters per storage kind, KMS version, KMS provider name and KMS v2 key id;
    * ``(namespace, name, storage, provider)`` of each secret not stored with KMS (each is a finding);
    * names of KMS v1 secrets: whether one was written before the last key rotation is only known from
      the API's write times, which the caller reads after the scan (:meth:`needs_write_times`,
      :meth:`kms_v1_secrets`);
    * names of KMS v2 secrets not under the current key id. When the current key id is known before the
      scan (``current_key_id`` here, e.g. from the probe secret) that is only the stale ones. When it is
      learnt from the scan itself (the key of the most recent write, known only at the end) the names of
      *every* KMS v2 secret are kept, grouped by key id and namespace (one string object per secret,
      namespaces shared), at roughly 80 bytes per secret: pass the key id up front to avoid that.
    """

    def __init__(self, current_key_id=None, current_key_source=SOURCE_PROBE, current_key_hash=None, *,
                 resource=None, prefix=defaults.ETCD_SECRETS_PREFIX, known_key_hashes=None):
        # ``resource``: the --resource scanned when it is not secrets (its checks then name it as their target,
        # and their text says 'object'); ``prefix`` its etcd prefix.
        self._resource, self._prefix = resource, prefix
        self._noun = 'secret' if resource is None else 'object'
        # The current key is known up front from /metrics (its hash: the first key id with that hash), else from
        # the probe (``current_key_id``), else learnt at the end (the latest write).
        self._key_hash = current_key_hash
        self._fallback = (current_key_id, current_key_source) if current_key_hash else None
        self._hashes = {}
        if current_key_hash:
            current_key_id = None
        self._known_key = current_key_id
        self._known_source = current_key_source if current_key_id is not None else None
        self.total = 0
        self._by_storage = {}
        self._by_version = {}
        self._by_provider = {}
        self._by_key_id = {}
        self._failing = []      # (namespace, name, storage, provider, malformed, kmsVersion)
        self._v1 = {}           # namespace -> [name, ...]
        self._v2 = {}           # key id (or None when the value has none) -> namespace -> [name, ...]
        self._latest = None     # (mod_revision, key id) of the newest KMS v2 value with a key id
        self._first = {}        # KMS v2 key id -> the lowest ModRevision under it (keys.newer_key_ids)
        self._newer = []        # key ids newer than the current one (set by finish)
        self._known_hashes = known_key_hashes  # key id hashes on the answering server's /metrics (None: not read)
        self._strings = {}      # one shared object per distinct provider name

    @property
    def current_key_id(self):
        """The current KMS v2 key id when known up front (from /metrics or the probe), else None."""
        return self._known_key

    def add(self, namespace, name, classification, mod_revision):
        """Count one etcd key; keep its name only if it may be reported (see the class docstring)."""
        self.total += 1
        storage = classification.get('storage') or 'unknown'
        self._by_storage[storage] = self._by_storage.get(storage, 0) + 1
        provider = classification.get('provider')
        if provider is not None:
            provider = self._strings.setdefault(provider, provider)
        malformed = classification.get('malformed')
        if storage != 'kms' or malformed:
            self._failing.append((namespace, name, storage, provider, malformed, classification.get('kmsVersion')))
            return
        if provider is not None:
            self._by_provider[provider] = self._by_provider.get(provider, 0) + 1
        version = classification.get('kmsVersion')
        if version:
            self._by_version[version] = self._by_version.get(version, 0) + 1
        if version == 'v1':
            self._v1.setdefault(namespace, []).append(name)
        elif version == 'v2':
            key_id = classification.get('keyId')
            if key_id is not None:
                if self._known_key is None and self._key_hash and key_id not in self._hashes:
                    self._hashes[key_id] = key_id_hash(key_id)
                    if self._hashes[key_id] == self._key_hash:
                        self._known_key, self._known_source = key_id, SOURCE_METRICS
                self._by_key_id[key_id] = self._by_key_id.get(key_id, 0) + 1
                if self._latest is None or mod_revision > self._latest[0]:
                    self._latest = (mod_revision, key_id)
                if mod_revision is not None and mod_revision < self._first.get(key_id, mod_revision + 1):
                    self._first[key_id] = mod_revision
            if self._known_key is None or key_id != self._known_key:
                self._v2.setdefault(key_id, {}).setdefault(namespace, []).append(name)

    def needs_write_times(self):
        """True when ``finish`` needs the API's write times: the scan saw a KMS v1 secret."""
        return bool(self._by_version.get('v1'))

    def kms_v1_secrets(self):
        """``(namespace, name)`` of every KMS v1 secret seen: the ones whose write times ``finish`` needs."""
        for namespace, names in self._v1.items():
            for name in names:
                yield namespace, name

    def finish(self, *, current_key_id=None, current_key_source=None, write_times=None, age_skip_reason=None,
               rotation_days=30, now=None, fail_on_stale=False, revision=None):
        """Return ``(scan, checks)``: the ``scan`` dict of the result and its checks.

        ``write_times`` maps ``(namespace, name)`` to the secret's last write time (UTC datetime) from the
        API's metadata: for all secrets, for the KMS v1 ones, or only for those older than the rotation
        period, so a secret it does not name counts as recent. ``None`` means not read (the age check is
        skipped), and ``age_skip_reason`` says why.
        ``fail_on_stale`` turns the stale-key warnings into failures.
        """
        if current_key_id is not None and self._known_key is not None and current_key_id != self._known_key:
            raise ValueError('finish() got a different current key id than the one the scan started with')
        current_key_id, current_key_source = decide_current_key(
            given=current_key_id, given_source=current_key_source, found=self._known_key,
            found_source=current_key_source or self._known_source,
            probe=self._fallback[0] if self._fallback else None,
            probe_source=self._fallback[1] if self._fallback else None,
            latest_write=self._latest[1] if self._latest is not None else None)
        now = _utc(now) if now is not None else datetime.now(timezone.utc)
        stale_status = FAILED if fail_on_stale else WARNING

        checks = [self._encrypted_check()]
        stale = []
        v2_total = self._by_version.get('v2', 0)
        self._newer = newer_key_ids(current_key_id, self._first, self._known_hashes)
        if v2_total:
            found, key_check = self._v2_check(current_key_id, current_key_source, v2_total, write_times or {},
                                              stale_status, newer=self._newer)
            stale.extend(found)
            checks.append(key_check)
        if self._by_version.get('v1', 0):
            found, age_check = self._v1_check(write_times, age_skip_reason, rotation_days, now, stale_status)
            stale.extend(found)
            checks.append(age_check)

        failing = []
        for namespace, name, storage, provider, malformed, version in sorted(self._failing, key=lambda f: (f[0], f[1])):
            verdict = encryption_verdict(storage, provider=provider, malformed=malformed, kms_version=version)
            failing.append({'namespace': namespace, 'name': name, 'storage': storage, 'provider': provider,
                            'reason': verdict[1]})
        stale.sort(key=lambda s: (s['namespace'], s['name']))

        scan = {
            'total': self.total,
            'revision': revision,
            'byStorage': _sorted_counts(self._by_storage),
            'byKmsVersion': {'v1': self._by_version.get('v1', 0), 'v2': v2_total},
            'byProvider': _sorted_counts(self._by_provider),
            'byKeyId': _sorted_counts(self._by_key_id),
            'currentKeyId': current_key_id,
            'currentKeyIdSource': current_key_source,
            'failing': failing,
            'stale': stale,
            'remediation': remediation(bool(failing), bool(stale), self._resource),
        }
        if self._newer:
            scan['newerKeyIds'] = self._newer
        return scan, checks

    def _check(self, name, status, detail):
        if self._resource is None:
            return check(name, status, detail)
        return check(ALL_OBJECTS_ENCRYPTED if name == ALL_SECRETS_ENCRYPTED else name, status, detail,
                     target=self._resource)

    def _encrypted_check(self):
        noun = self._noun
        if not self.total:
            return self._check(ALL_SECRETS_ENCRYPTED, WARNING,
                               f'no {noun}s found under {self._prefix}: nothing to verify')
        if not self._failing:
            return self._check(ALL_SECRETS_ENCRYPTED, PASSED, f'{_all(self.total, noun)} encrypted with KMS')
        kinds = {}
        for _, _, storage, _, malformed, _ in self._failing:
            storage = storage + ' (malformed)' if malformed else storage
            kinds[storage] = kinds.get(storage, 0) + 1
        parts = ', '.join(f'{n} {s}' for s, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
        bad = len(self._failing)
        verb = 'is' if bad == 1 else 'are'
        return self._check(ALL_SECRETS_ENCRYPTED, FAILED,
                           f'{bad} of {_plural(self.total, noun)} {verb} not encrypted with KMS: {parts}')

    def _v2_check(self, current, source, v2_total, write_times, stale_status, *, newer=()):
        if current is None:
            return [], self._check(KMS_V2_CURRENT_KEY, WARNING,
                                   'cannot tell the current KMS v2 key id: no KMS v2 value carries one')
        if newer:  # not stale: under a key newer than the one called current (keys.newer_key_ids)
            count = sum(self._by_key_id.get(k, 0) for k in newer)
            return [], self._check(
                KMS_V2_CURRENT_KEY, WARNING,
                f"the API server that answered says the current KMS v2 key id is {current} "
                f"({_SOURCE_TEXT.get(source, source)}), but {_plural(count, 'KMS v2 ' + self._noun)} in etcd "
                f"{'is' if count == 1 else 'are'} under {', '.join(newer)}, first written after the oldest under "
                f'{current}: another API server already encrypts with a newer key, and this one has not taken it '
                'yet (each API server asks its KMS plugin about once a minute). Which key is current cannot be '
                'told until they agree: run again in a minute')
        stale, per_key = [], {}
        for key_id, namespaces in self._v2.items():
            if key_id == current:
                continue
            for namespace, names in namespaces.items():
                for name in names:
                    per_key[key_id] = per_key.get(key_id, 0) + 1
                    reason = (f'written under KMS v2 key id {key_id}, not the current key id {current}'
                              if key_id is not None else 'KMS v2 value without a key id')
                    stale.append({'namespace': namespace, 'name': name, 'kmsVersion': 'v2', 'keyId': key_id,
                                  'lastWrite': _iso(write_times.get((namespace, name))), 'reason': reason})
        where = f'current key id {current} ({_SOURCE_TEXT.get(source, source)})'
        if not stale:
            unseen = ('; a key rotation that no write has followed yet cannot be seen without /metrics or --probe'
                      if source == SOURCE_LATEST_WRITE else '')
            return stale, self._check(KMS_V2_CURRENT_KEY, PASSED,
                                      f"{_all(v2_total, 'KMS v2 ' + self._noun)} under the {where}{unseen}")
        keys = ', '.join(f"{k if k is not None else 'no key id'} ({n})"
                         for k, n in sorted(per_key.items(), key=lambda kv: (-kv[1], kv[0] or '')))
        verb = 'was' if len(stale) == 1 else 'were'
        return stale, self._check(KMS_V2_CURRENT_KEY, stale_status,
                                  f"{len(stale)} of {_plural(v2_total, 'KMS v2 ' + self._noun)} {verb} written under "
                                  f'an older key than the {where}: {keys}')

    def _v1_check(self, write_times, skip_reason, rotation_days, now, stale_status):
        v1_total = self._by_version['v1']
        if skip_reason:
            return [], self._check(KMS_V1_ROTATION, SKIPPED, skip_reason)
        if write_times is None:
            return [], self._check(KMS_V1_ROTATION, SKIPPED,
                                   f'the last write times of the KMS v1 {self._noun}s were not read')
        limit = now - timedelta(days=rotation_days)
        stale = []
        for namespace, name in self.kms_v1_secrets():
            written = write_times.get((namespace, name))
            if written is not None and _utc(written) < limit:
                stale.append({'namespace': namespace, 'name': name, 'kmsVersion': 'v1', 'keyId': None,
                              'lastWrite': _iso(written),
                              'reason': f'KMS v1, last written more than {rotation_days} days ago: before the last key '
                                        'rotation'})
        if not stale:
            return stale, self._check(KMS_V1_ROTATION, PASSED,
                                      f"none of {_plural(v1_total, 'KMS v1 ' + self._noun)} was last written more "
                                      f'than {rotation_days} days ago (the key rotation period)')
        verb = 'was' if len(stale) == 1 else 'were'
        return stale, self._check(KMS_V1_ROTATION, stale_status,
                                  f"{len(stale)} of {_plural(v1_total, 'KMS v1 ' + self._noun)} {verb} last written "
                                  f'more than {rotation_days} days ago, before the last key rotation')


def remediation(failing, stale, resource=None):
    """How to re-encrypt: rewriting a secret makes the API server store it again with its first provider."""
    if not failing and not stale:
        return None
    if resource is not None:
        return (f'Rewrite the listed {resource} objects so that the API server stores them again with its current '
                f'first provider: `az aksarc kms reencrypt --resource {resource}` with the same cluster options '
                '(--dry-run first) rewrites exactly these and proves the result from etcd. They become '
                'KMS-encrypted only if the EncryptionConfiguration lists the resource with KMS as its first '
                'provider.')
    text = ('Rewrite the listed secrets so that the API server stores them again with its current first provider '
            '(and, for KMS, the current key): `az aksarc kms reencrypt` with the same cluster options (--dry-run '
            f'first) rewrites exactly these and proves the result from etcd. `{REWRITE_ALL}` (the method the AKS on '
            'Azure Local documentation gives) leaves KMS v1 secrets under the old key: kube-apiserver skips an '
            'unchanged write unless the stored value is stale, and a KMS v1 value is not stale after a key rotation.')
    if failing:
        text += (' Plaintext (identity) and local-key (aescbc, aesgcm, secretbox) secrets become KMS-encrypted '
                 'only once KMS is the first provider in the EncryptionConfiguration: rewriting them before that '
                 'stores them the same way again.')
    return text


def written_before(metadata, rotation_days, now=None):
    """``{(namespace, name): last write}`` of the secrets last written more than ``rotation_days`` ago, from
    API metadata only (never data): the latest managedFields time, else the creationTimestamp."""
    now = _utc(now) if now is not None else datetime.now(timezone.utc)
    cutoff = now - timedelta(days=rotation_days)
    old = {}
    for meta in metadata:
        written = last_write(meta)
        if written is not None and written < cutoff:
            old[(meta.get('namespace'), meta.get('name'))] = written
    return old


def last_write(meta):
    """The latest of the managedFields times (else the creationTimestamp) and the time ``reencrypt`` wrote in its
    annotation (an object without managedFields never gets an entry on update); RFC 3339, UTC; None when none
    parses."""
    times = [f.get('time') for f in meta.get('managedFields') or [] if isinstance(f, dict) and f.get('time')]
    stamps = [max(times)] if times else [meta.get('creationTimestamp')]
    annotations = meta.get('annotations')
    if isinstance(annotations, dict):
        stamps.append(annotations.get(defaults.REENCRYPTED_ANNOTATION))
    parsed = []
    for stamp in stamps:
        if isinstance(stamp, str):
            try:
                parsed.append(datetime.strptime(stamp, '%Y-%m-%dT%H:%M:%SZ').replace(tzinfo=timezone.utc))
            except ValueError:
                pass
    return max(parsed) if parsed else None
