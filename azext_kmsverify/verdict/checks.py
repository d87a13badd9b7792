# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""The checks of a verification: pass/fail rules and the result dict. Pure: no I/O.

A check is ``{"name", "target", "status": Passed|Failed|Warning|Skipped, "detail"}``. The result passes
when no check failed; warnings do not fail it.
"""

from __future__ import annotations

from dataclasses import dataclass

from azext_kmsverify.verdict.readyz import kms_checks, parse_readyz

PASSED, FAILED, WARNING, SKIPPED = 'Passed', 'Failed', 'Warning', 'Skipped'

KMS_HEALTH = 'KmsProviderHealth'
SECRET_ENCRYPTED = 'SecretEncryptedWithKms'
KMS_V1_DEPRECATED = 'KmsV1Deprecated'
PROBE_CLEANUP = 'ProbeSecretDeleted'
SECRET_FOUND = 'SecretFound'  # a --secret that is not there (Failed: the run exits 3, not found)


def check(name, status, detail, target=None):
    return {'name': name, 'target': target, 'status': status, 'detail': detail}


def kms_health(readyz_status, readyz_body, check_reasons, unreachable=None):
    """The KMS health check from ``/readyz?verbose`` and the per-check reasons of failing KMS checks.

    ``check_reasons`` maps a failing check name to the text of ``/readyz/<name>``; ``unreachable`` is why
    readyz could not be read at all (then the check fails, and the etcd checks still run).
    """
    if unreachable:
        return check(KMS_HEALTH, FAILED, f'could not read /readyz: {unreachable}')
    if readyz_status not in (200, 500):
        return check(KMS_HEALTH, FAILED, f'/readyz answered HTTP {readyz_status}')
    lines = kms_checks(parse_readyz(readyz_body))
    if not lines:
        return check(KMS_HEALTH, FAILED, 'no KMS provider configured: /readyz has no kms-providers or '
                                         'kms-provider-N check')
    failing = [c for c in lines if c['status'] == 'failed']
    if failing:
        reasons = [f"{c['name']}: {check_reasons.get(c['name']) or 'failed (reason withheld)'}" for c in failing]
        return check(KMS_HEALTH, FAILED, '; '.join(reasons))
    return check(KMS_HEALTH, PASSED, ', '.join(f"{c['name']} {c['status']}" for c in lines))


def failing_kms_check_names(readyz_body):
    return [c['name'] for c in kms_checks(parse_readyz(readyz_body)) if c['status'] == 'failed']


@dataclass(frozen=True)
class SecretEntry:  # pylint: disable=too-many-instance-attributes  # one field per reported column
    """One secret read by name (``--secret``, the probe): the classification of its etcd value, never the value."""

    namespace: str
    name: str
    etcd_key: str
    storage: str | None
    kms_version: str | None = None
    provider: str | None = None
    key_id: str | None = None
    encrypted: bool | None = None
    malformed: str | None = None  # used by the verdict; not part of the result
    probe: bool = False
    mod_revision: int | None = None

    def to_dict(self) -> dict:
        """The row of ``secrets`` as ``-o json`` shows it."""
        return {'namespace': self.namespace, 'name': self.name, 'etcdKey': self.etcd_key, 'storage': self.storage,
                'kmsVersion': self.kms_version, 'provider': self.provider, 'keyId': self.key_id,
                'encrypted': self.encrypted}


def secret_entry(namespace, name, etcd_key, classification, *, probe=False, mod_revision=None) -> SecretEntry:
    """One row of ``secrets``, from the classification of its etcd value (``verdict.classify``)."""
    return SecretEntry(namespace, name, etcd_key, classification.get('storage'), classification.get('kmsVersion'),
                       classification.get('provider'), classification.get('keyId'), classification.get('encrypted'),
                       classification.get('malformed'), probe, mod_revision)


def encryption_verdict(storage, *, kms_version=None, provider=None, key_id=None, malformed=None):
    """(status, detail) of one stored secret: passes only when stored with KMS."""
    if storage == 'kms' and malformed:
        # The prefix says KMS but the payload does not have the shape the API server writes: it cannot be
        # decrypted, so it does not count as encrypted.
        return FAILED, f'KMS {kms_version} prefix but a malformed payload ({malformed})'
    if storage == 'kms':
        detail = f'stored with KMS {kms_version} provider {provider}'
        if key_id:
            detail += f', key id {key_id}'
        return PASSED, detail
    if storage in ('aescbc', 'aesgcm', 'secretbox'):
        return FAILED, f'encrypted with a local key, not KMS ({storage} key {provider})'
    if storage == 'identity':
        return FAILED, 'stored in plaintext (identity)'
    return FAILED, 'stored in an unrecognised format, not KMS'


# A KMS v2 API server keeps encrypting with the DEK it holds for up to 3 minutes after the plugin last answered
# (kmsv2PluginWriteDEKSourceMaxTTL in k8s.io/apiserver), then refuses writes: a probe written while KMS health
# fails proves the cached key, not a working plugin. The sandbox's real kube-apiserver showed it.
V2_COASTING = ('; written while the KMS provider is unhealthy: a KMS v2 API server keeps encrypting with its cached '
               'key for up to 3 minutes after the plugin last answered, then refuses to write Secrets')


def secret_check(entry: SecretEntry, kms_unhealthy: bool = False):
    """The check of one stored secret; ``kms_unhealthy`` (the health check failed) qualifies a probe that was
    still written under KMS v2."""
    status, detail = encryption_verdict(entry.storage, kms_version=entry.kms_version, provider=entry.provider,
                                        key_id=entry.key_id, malformed=entry.malformed)
    if entry.probe:
        detail = 'probe secret ' + detail
        if kms_unhealthy and status == PASSED and entry.kms_version == 'v2':
            detail += V2_COASTING
    return check(SECRET_ENCRYPTED, status, detail, target=f'{entry.namespace}/{entry.name}')


def kms_v1_warning(entries, scanned_by_version=None):
    """KMS v1 is deprecated (1.28) and off by default (1.29): warn, do not fail."""
    v1 = [e for e in entries if e.storage == 'kms' and e.kms_version == 'v1']
    scanned = (scanned_by_version or {}).get('v1', 0)
    if not v1 and not scanned:
        return None
    where = f"provider {', '.join(sorted({e.provider or '?' for e in v1}))}" if v1 else f'{scanned} secrets'
    return check(KMS_V1_DEPRECATED, WARNING, f'KMS v1 in use ({where}): deprecated since Kubernetes 1.28 and off by '
                                             'default since 1.29; KMS v2 is recommended')


def build_result(cluster, checks, entries, etcd_pod=None, scan=None):
    """The command's result (what ``-o json`` prints)."""
    result = {
        'passed': not any(c['status'] == FAILED for c in checks),
        'cluster': cluster,
        'etcdPod': etcd_pod,
        'checks': checks,
        'secrets': [e.to_dict() for e in entries],
    }
    if scan is not None:
        result['scan'] = scan
    return result
