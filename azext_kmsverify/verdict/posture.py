# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""A cluster's KMS posture for a fleet row: which KMS version it uses, and the ``KmsV1Deprecated`` verdict. Pure.

Why: in a fleet the question is not only "is every secret encrypted" but "which clusters are still on KMS v1". KMS v1
is deprecated since Kubernetes 1.28 and off by default since 1.29, and AKS Arc gives new clusters KMS v2 (release
2510), so the older clusters are the ones to move. A v1 cluster gets a warning; ``--fail-on-kms-v1`` makes it a
failure, for fleets that must be on v2.

The version is read from what a single-cluster result already holds, best evidence first: the etcd scan's counts
(every stored secret), then the secrets the run classified (the probe, ``--secret``), then what ``status`` read from
``/readyz`` and ``/metrics``.
"""

from __future__ import annotations

from azext_kmsverify.verdict.checks import FAILED, KMS_V1_DEPRECATED, WARNING, check

V1, V2, MIXED = 'v1', 'v2', 'v1+v2'


def kms_version(result: dict) -> tuple[str | None, str]:
    """``(version, source)``: 'v1', 'v2', 'v1+v2' (some secrets still under KMS v1) or None, and where it came from
    (or why it is unknown)."""
    scan = result.get('scan') or {}
    counts = scan.get('byKmsVersion') or {}
    found = {v for v in (V1, V2) if counts.get(v)}
    if found:
        return _name(found), 'the etcd scan (every secret)'
    found = {e.get('kmsVersion') for e in result.get('secrets') or [] if e.get('storage') == 'kms'} & {V1, V2}
    if found:
        return _name(found), 'the secrets read from etcd (probe or --secret)'
    versions = ((result.get('kmsVersions') or {}).get('value')) or []
    found = set(versions) & {V1, V2}
    if found:
        return _name(found), f"the API server ({(result.get('kmsVersions') or {}).get('source')})"
    return None, 'no KMS-encrypted value was read and the API server did not say'


def _name(found: set) -> str:
    return MIXED if found == {V1, V2} else found.pop()


def kms_v1_check(version: str | None, source: str, fail_on_kms_v1: bool = False) -> dict | None:
    """``KmsV1Deprecated`` for a cluster using KMS v1 (a warning, a failure with ``--fail-on-kms-v1``), else None."""
    if version not in (V1, MIXED):
        return None
    what = 'KMS v1 in use' if version == V1 else 'some secrets are still stored with KMS v1'
    return check(KMS_V1_DEPRECATED, FAILED if fail_on_kms_v1 else WARNING,
                 f'{what} ({source}): deprecated since Kubernetes 1.28 and off by default since 1.29; AKS Arc gives '
                 'new clusters KMS v2 (move the cluster to KMS v2, then re-encrypt)')


def fleet_columns(result: dict) -> dict:
    """The posture columns of a fleet row: KMS version, the current key's minimum age, and how many required
    permissions are missing (from a ``status`` result's ``keyAge`` and ``access``, or ``verify --all-secrets``'s
    ``scan.keyAge``; None when not known)."""
    version, _ = kms_version(result)
    age = (result.get('keyAge') or (result.get('scan') or {}).get('keyAge') or {}).get('minAgeDays')
    access = result.get('access')
    missing = sum(len(a.get('missing') or []) for a in access) if isinstance(access, list) else None
    return {'kmsVersion': version, 'keyMinAgeDays': age, 'missingPermissions': missing}


def with_posture(result: dict, fail_on_kms_v1: bool = False) -> dict:
    """``result`` (a single cluster's, ``verify`` or ``status``) with its ``kmsVersion`` and ``kmsVersionSource``,
    and its ``KmsV1Deprecated`` check: a warning the result already has is kept (a failure with
    ``fail_on_kms_v1``); one is added when the posture shows KMS v1 and the result has none."""
    version, source = kms_version(result)
    checks = list(result.get('checks') or [])
    found = next((i for i, c in enumerate(checks) if c.get('name') == KMS_V1_DEPRECATED), None)
    if found is None:
        added = kms_v1_check(version, source, fail_on_kms_v1)
        if added is not None:
            checks.append(added)
    elif fail_on_kms_v1:
        checks[found] = dict(checks[found], status=FAILED)
    posture = dict(result, kmsVersion=version, kmsVersionSource=source, checks=checks)
    if any(c.get('status') == FAILED for c in checks if c.get('name') == KMS_V1_DEPRECATED):
        posture['passed'] = False
    return posture
