# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""The ``-o table`` view. Light (loaded with the command table) and pure.

Every cell goes through ``printable``: names come from etcd keys, which anyone with etcd access can set to
anything, and a table goes to a terminal.
"""

from __future__ import annotations

from collections import OrderedDict

from azext_kmsverify import defaults
from azext_kmsverify.text import printable


def _row(check, target, status, detail):
    return OrderedDict([('Check', printable(check)), ('Target', printable(target or '')),
                        ('Status', printable(status)), ('Detail', printable(detail or ''))])


def verify_table_format(result):
    """One row per check; with a scan, a summary row, the first failing secrets and how to fix them. For a
    fleet, one row per cluster."""
    if isinstance(result.get('clusters'), list):
        return fleet_table_format(result)
    rows = [_row(c.get('name'), c.get('target'), c.get('status'), c.get('detail')) for c in result.get('checks') or []]
    scan = result.get('scan')
    if scan:
        rows.append(_row('Scan', defaults.ETCD_SECRETS_PREFIX, 'Info', scan_summary(scan)))
        findings = [(f, 'Failed') for f in scan.get('failing') or []] + [(s, 'Stale') for s in scan.get('stale') or []]
        for finding, status in findings[:defaults.FAILING_SHOWN]:
            rows.append(_row('Secret', f"{finding.get('namespace')}/{finding.get('name')}", status,
                             finding.get('reason')))
        if len(findings) > defaults.FAILING_SHOWN:
            rows.append(_row('Secret', '', 'Info', f'and {len(findings) - defaults.FAILING_SHOWN} more '
                                                   '(all of them: -o json, scan.failing and scan.stale)'))
        if findings and scan.get('remediation'):
            rows.append(_row('Remediation', '', 'Info', REMEDIATION_LINE))
    return rows


# The table's remediation: one short line with the exact command; the full text stays in -o json
# (scan.remediation), where a pipeline reads it.
REMEDIATION_LINE = ('az aksarc kms reencrypt <same cluster options> --dry-run, then --yes (why: -o json, '
                    'scan.remediation)')


def scan_summary(scan):
    parts = [f"{scan.get('total', 0)} secrets"]
    for label, counts in (('storage', scan.get('byStorage')), ('KMS', scan.get('byKmsVersion'))):
        if counts:
            parts.append(f"{label}: {', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}")
    parts.append(f"{len(scan.get('failing') or [])} not KMS-encrypted")
    if scan.get('stale'):
        parts.append(f"{len(scan['stale'])} under an older key")
    return '; '.join(parts)


def reencrypt_table_format(result):
    """The run, then each target that did not end current (the first ones), then what happened to all. In a dry
    run nothing was attempted, so the rows say Planned (the JSON's outcome), not Failed or Skipped."""
    dry = bool(result.get('dryRun'))
    rows = [_row(c.get('name'), c.get('target'), 'Planned' if dry and c.get('status') != 'Passed' else c.get('status'),
                 c.get('detail'))
            for c in (result.get('checks') or [])[:defaults.FAILING_SHOWN + 1]]
    rest = len(result.get('checks') or []) - defaults.FAILING_SHOWN - 1
    if rest > 0:
        rows.append(_row('SecretReencrypted', '', 'Info', f'and {rest} more (all of them: -o json, targets)'))
    plan = result.get('plan') or {}
    rows.append(_row('Plan', defaults.ETCD_SECRETS_PREFIX, 'Info',
                     f"{plan.get('targets', 0)} of {plan.get('scanned', 0)} secrets to rewrite; current key "
                     f"{result.get('currentKeyId') or '-'} ({result.get('currentKeyIdSource') or 'unknown'})"))
    return rows


def fleet_table_format(result):
    """One row per cluster (its KMS version and warnings too, so a KMS v1 cluster is not a plain "passed"), then a
    summary row: the outcomes counted, the secrets failing and the KMS versions in all, the run's duration."""
    rows = []
    for entry in result.get('clusters') or []:
        cluster = entry.get('cluster') or {}
        checks = entry.get('checks') or []
        failing = [c.get('name') for c in checks if c.get('status') == 'Failed']
        warnings = [c.get('name') for c in checks if c.get('status') == 'Warning']
        scan = entry.get('scan') or {}
        secrets = len(scan.get('failing') or []) + len(scan.get('stale') or []) + sum(
            1 for s in entry.get('secrets') or [] if not s.get('encrypted') or s.get('storage') != 'kms')
        rows.append(OrderedDict([
            ('Name', printable(cluster.get('name') or '')),
            ('ResourceGroup', printable(cluster.get('resourceGroup') or '')),
            ('Outcome', entry.get('outcome')),
            ('FailingChecks', printable(', '.join(sorted(set(failing)))) or printable(entry.get('error') or '')),
            ('Warnings', printable(', '.join(sorted(set(warnings)))) or '-'),
            ('SecretsFailing', secrets), ('KmsVersion', printable(entry.get('kmsVersion') or '-')),
            ('KeyMinAgeDays', _or_dash(entry.get('keyMinAgeDays'))),
            ('MissingPermissions', _or_dash(entry.get('missingPermissions'))),
            ('Duration', f"{entry.get('durationSeconds') or 0:.1f}s")]))
    if rows:
        rows.append(_fleet_summary(result, rows))
    return rows


def _fleet_summary(result, rows):
    counts = result.get('summary') or {}
    versions = {}
    for row in rows:
        if row['KmsVersion'] != '-':
            versions[row['KmsVersion']] = versions.get(row['KmsVersion'], 0) + 1
    missing = [r['MissingPermissions'] for r in rows if isinstance(r['MissingPermissions'], int)]
    return OrderedDict([
        ('Name', 'Total'), ('ResourceGroup', f'{len(rows)} clusters'),
        ('Outcome', ', '.join(f'{n} {outcome}' for outcome, n in sorted(counts.items()))),
        ('FailingChecks', ''), ('Warnings', ''),
        ('SecretsFailing', sum(r['SecretsFailing'] for r in rows)),
        ('KmsVersion', ', '.join(f'{n} {v}' for v, n in sorted(versions.items())) or '-'),
        ('KeyMinAgeDays', '-'), ('MissingPermissions', sum(missing) if missing else '-'),
        ('Duration', f"{result.get('durationSeconds') or 0:.1f}s")])


def _or_dash(value):
    return '-' if value is None else value


def status_table_format(result):
    """``status``: one row per check, then one per fact (its value and source, or why it is unknown), then one per
    command that cannot run or may not. For a fleet, one row per cluster."""
    if isinstance(result.get('clusters'), list):
        return fleet_table_format(result)
    rows = [_row(c.get('name'), c.get('target'), c.get('status'), c.get('detail')) for c in result.get('checks') or []]
    for label, key in (('Health', 'health'), ('KmsVersions', 'kmsVersions'), ('AutomaticReload', 'automaticReload'),
                       ('CurrentKeyIdHash', 'currentKeyIdHash'), ('CurrentKeyLastUsed', 'currentKeyLastUsed'),
                       ('Identity', 'identity')):
        fact = result.get(key) or {}
        value = fact.get('value')
        if isinstance(value, list):
            value = ', '.join(str(v) for v in value)
        elif isinstance(value, dict):
            value = value.get('username')
        known = value is not None
        rows.append(_row(label, str(value) if known else '', 'Info' if known else 'Unknown',
                         fact.get('source') if known else fact.get('unknownReason')))
    for access in result.get('access') or []:
        if access.get('missing'):
            detail = 'missing: ' + '; '.join(a.get('description') or a.get('verb', '') for a in access['missing'])
            rows.append(_row('Access', access.get('command'), 'Missing', detail))
        elif access.get('canRun') is None:
            reasons = sorted({a.get('reason') or '' for a in access.get('unknown') or []})
            rows.append(_row('Access', access.get('command'), 'Unknown', '; '.join(reasons)))
        else:
            rows.append(_row('Access', access.get('command'), 'Allowed', ''))
    return rows
