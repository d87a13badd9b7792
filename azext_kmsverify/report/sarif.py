# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""SARIF 2.1.0 of a result, for GitHub code scanning (``upload-sarif``) and Azure DevOps Advanced Security.

A projection of the JSON contract (the result as ``-o json`` prints it), so the two never disagree. Shape, and why:

* one run, tool ``kmsverify``; one rule per check, with a stable ``ruleId`` (the check's name), help text and the
  remediation, and a ``security-severity`` GitHub ranks alerts by;
* one result per check that did not pass (``Failed`` -> error, ``Warning`` -> warning, ``Skipped`` -> note), and one
  per secret that is not stored with KMS, is under an older key, or that reencrypt could not rewrite;
* every result has a location, because GitHub rejects a result without one: the cluster (its ARM id, or its server
  and context) as a relative URI, and the etcd key for a secret; ``partialFingerprints`` hash the cluster, the etcd
  key and the rule, so the same finding is the same alert on every run;
* GitHub shows 5,000 results of a run (and accepts 25,000): past :data:`MAX_RESULTS`, the per-secret results of
  each cluster and rule are folded into one result naming the count and the first secrets.

Strings come from the result, which the run frame has already passed through the sanitiser; they are escaped again
here (``printable``) because a SARIF file is read by other tools' renderers. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

from azext_kmsverify.text import printable
from azext_kmsverify.verdict.checks import (
    FAILED,
    KMS_HEALTH,
    KMS_V1_DEPRECATED,
    PROBE_CLEANUP,
    SECRET_ENCRYPTED,
    SKIPPED,
    WARNING,
)
from azext_kmsverify.verdict.scan import (
    ALL_OBJECTS_ENCRYPTED,
    ALL_SECRETS_ENCRYPTED,
    KMS_V1_ROTATION,
    KMS_V2_CURRENT_KEY,
)

SCHEMA = 'https://json.schemastore.org/sarif-2.1.0.json'
INFORMATION_URI = 'https://github.com/Azure/azure-cli-extensions'
MAX_RESULTS = 5000
FINGERPRINT = 'kmsverifyFinding/v1'
_LEVEL = {FAILED: 'error', WARNING: 'warning', SKIPPED: 'note'}
_FOLDED_NAMES = 20
_REENCRYPT_HELP = ('Run `az aksarc kms reencrypt` with the same cluster options (`--dry-run` first): it rewrites '
                   'exactly these secrets through the API and proves from etcd that each is stored with KMS under '
                   'the current key. `kubectl replace` leaves KMS v1 secrets under the old key.')

# ruleId: (short description, full description, help, security-severity)
RULES = {
    KMS_HEALTH: ('The KMS plugin is healthy on the API server',
                 'Every kms-providers / kms-provider-N check of /readyz must pass; otherwise the API server '
                 'cannot encrypt new secrets (writes fail) or decrypt stored ones.',
                 'Read the reason in the result, then check the KMS plugin on the control plane nodes (AKS Arc: '
                 'the kms-plugin pod, and `az aksarc kms status`).', '8.0'),
    SECRET_ENCRYPTED: ('A secret is stored in etcd encrypted with KMS',
                       'The raw etcd value of the secret carries a KMS v1 or v2 envelope, not plaintext or a '
                       'local-key provider.',
                       'Make KMS the first provider of the EncryptionConfiguration, then ' + _REENCRYPT_HELP, '9.0'),
    ALL_SECRETS_ENCRYPTED: ('Every secret in etcd is encrypted with KMS',
                            'A secret stored in plaintext (identity) or with a local key (aescbc, aesgcm, '
                            'secretbox) is readable by anyone who can read etcd or its backups.',
                            _REENCRYPT_HELP, '9.0'),
    KMS_V2_CURRENT_KEY: ('Secrets are stored under the current KMS v2 key',
                         'A secret written before a key rotation stays under the old key until it is written '
                         'again; it depends on the old key staying available.', _REENCRYPT_HELP, '5.0'),
    KMS_V1_ROTATION: ('KMS v1 secrets were rewritten since the last key rotation',
                      'KMS v1 stores no key id: a secret last written more than the rotation period ago is under '
                      'an older key.', _REENCRYPT_HELP, '5.0'),
    KMS_V1_DEPRECATED: ('The cluster uses KMS v2',
                        'KMS v1 is deprecated since Kubernetes 1.28 and off by default since 1.29.',
                        'Move the cluster to KMS v2 (AKS Arc gives new clusters KMS v2).', '3.0'),
    'KmsKeyRotation': ('The KMS key is rotated on schedule',
                       'AKS Arc rotates the KMS key every 30 days; a current key older than that means the '
                       'rotation stopped.', "Repair the KMS plugin's key rotation, then " + _REENCRYPT_HELP, '6.0'),
    PROBE_CLEANUP: ('The probe secret was deleted',
                    'verify creates one random probe secret and deletes it; one was left behind.',
                    'Delete it: `kubectl delete secret -n <namespace> -l app.kubernetes.io/managed-by=kmsverify`.',
                    '2.0'),
    ALL_OBJECTS_ENCRYPTED: ('Every object of an encrypted resource is encrypted with KMS',
                            'verify --resource: an object of a resource the EncryptionConfiguration encrypts (e.g. '
                            'configmaps, a custom resource) stored in plaintext or with a local key is readable by '
                            'anyone who can read etcd or its backups.',
                            'Run `az aksarc kms reencrypt --resource <resource>` (--dry-run first).', '7.0'),
    'Reencrypt': ('Re-encryption completed', 'Every target secret was rewritten and proven from etcd.',
                  'Run `az aksarc kms reencrypt` again: it picks only what is still not current.', '5.0'),
    'SecretReencrypted': ('A secret was re-encrypted and proven from etcd',
                          'The rewrite of this secret failed, was refused, or was not proven from etcd.',
                          _REENCRYPT_HELP, '5.0'),
    'Verification': ('The cluster could be verified',
                     'Nothing about this cluster was verified: the reason says why (sign-in, network, RBAC).',
                     'Fix the reason given, then run the command again; `az aksarc kms status` lists missing '
                     'permissions.', '7.0'),
}


def _rule(rule_id):
    short, full, help_text, severity = RULES.get(rule_id) or (rule_id, rule_id, "See the result's detail.", '5.0')
    return {
        'id': rule_id,
        'name': rule_id,
        'shortDescription': {'text': short},
        'fullDescription': {'text': full},
        'help': {'text': help_text, 'markdown': help_text},
        'helpUri': INFORMATION_URI,
        'properties': {'tags': ['security', 'kubernetes', 'encryption-at-rest'], 'security-severity': severity},
    }


def cluster_key(result) -> str:
    """The cluster's stable identity: its ARM id, else its server and context (``--kubeconfig``)."""
    cluster = result.get('cluster') or {}
    if result.get('id') or cluster.get('id'):
        return str(result.get('id') or cluster.get('id'))
    if cluster.get('resourceGroup') and cluster.get('name'):
        return f"resourceGroups/{cluster['resourceGroup']}/connectedClusters/{cluster['name']}"
    return f"{cluster.get('server') or 'unknown-server'}#{cluster.get('context') or ''}"


def _uri(*parts) -> str:
    return '/'.join(quote(printable(p).strip('/'), safe='') for p in parts if p)


def _location(cluster, etcd_key=None):
    name = f'{cluster}{etcd_key or ""}'
    return {
        'physicalLocation': {'artifactLocation': {'uri': _uri('cluster', cluster, *(etcd_key or '').split('/'))}},
        'logicalLocations': [{'fullyQualifiedName': printable(name), 'kind': 'resource' if etcd_key else 'module'}],
    }


def _result(rule_id, level, message, cluster, etcd_key=None, *, properties=None):
    digest = hashlib.sha256(f'{cluster}\n{etcd_key or ""}\n{rule_id}'.encode('utf-8', 'surrogatepass')).hexdigest()
    item = {
        'ruleId': rule_id,
        'level': level,
        'message': {'text': printable(message)},
        'locations': [_location(cluster, etcd_key)],
        'partialFingerprints': {FINGERPRINT: digest},
    }
    if properties:
        item['properties'] = {k: printable(v) if isinstance(v, str) else v for k, v in properties.items()}
    return item


def _secret_key(entry, prefix='/registry/secrets/'):
    if entry.get('etcdKey'):
        return entry['etcdKey']
    where = f"{entry['namespace']}/" if entry.get('namespace') else ''
    return f"{prefix}{where}{entry.get('name') or ''}"


def _cluster_results(result):
    """(cluster-level results, per-secret results) of one single-cluster result."""
    cluster = cluster_key(result)
    checks = result.get('checks')
    if checks is None:  # a fleet entry that could not be verified (or was not verifiable)
        reason = result.get('error') or result.get('outcome') or 'unknown'
        return [_result('Verification', 'error', f'could not verify: {reason}', cluster)], []
    scan = result.get('scan') or {}
    by_status = {c.get('name'): c.get('status') for c in checks}
    overall, secrets = [], []
    for item in checks:
        level = _LEVEL.get(item.get('status'))
        if not level:
            continue
        target = item.get('target')
        key = f'/registry/secrets/{target}' if target and '/' in str(target) else None
        overall.append(_result(item.get('name') or 'Check', level, item.get('detail') or '', cluster, key))
    for entry in scan.get('failing') or []:
        secrets.append(_result(ALL_SECRETS_ENCRYPTED, 'error',
                               f"{entry.get('namespace')}/{entry.get('name')}: {entry.get('reason') or ''}",
                               cluster, _secret_key(entry), properties={'storage': entry.get('storage')}))
    for entry in scan.get('stale') or []:
        rule = KMS_V2_CURRENT_KEY if entry.get('kmsVersion') == 'v2' else KMS_V1_ROTATION
        level = 'error' if by_status.get(rule) == FAILED else 'warning'
        secrets.append(_result(rule, level, f"{entry.get('namespace')}/{entry.get('name')}: "
                                            f"{entry.get('reason') or 'under an older key'}",
                               cluster, _secret_key(entry), properties={'keyId': entry.get('keyId')}))
    for scanned in result.get('resources') or []:  # verify --resource: each other resource's findings
        prefix = scanned.get('etcdPrefix') or '/registry/'
        for entry in (scanned.get('failing') or []) + (scanned.get('stale') or []):
            secrets.append(_result(ALL_OBJECTS_ENCRYPTED if entry in (scanned.get('failing') or []) else
                                   KMS_V2_CURRENT_KEY if entry.get('kmsVersion') == 'v2' else KMS_V1_ROTATION,
                                   'error' if entry in (scanned.get('failing') or []) else 'warning',
                                   f"{scanned.get('resource')} {entry.get('namespace')}/{entry.get('name')}: "
                                   f"{entry.get('reason') or ''}", cluster, _secret_key(entry, prefix),
                                   properties={'resource': scanned.get('resource'), 'storage': entry.get('storage')}))
    for target in result.get('targets') or []:
        outcome = target.get('outcome')
        level = {'failed': 'error', 'refusedByAdmission': 'error', 'skipped': 'warning',
                 'planned': 'note'}.get(outcome)
        if level:
            reason = target.get('reason') or ('planned: would be rewritten' if outcome == 'planned' else outcome)
            what = f"{target['resource']} " if target.get('resource') else ''
            secrets.append(_result('SecretReencrypted', level,
                                   f"{what}{target.get('namespace')}/{target.get('name')}: {reason}", cluster,
                                   _secret_key(target), properties={'outcome': outcome}))
    # The per-secret checks of reencrypt duplicate its targets: keep the targets' results only.
    overall = [r for r in overall if not (r['ruleId'] == 'SecretReencrypted' and result.get('targets') is not None)]
    return overall, secrets


def _fold(secret_results):
    """One result per (cluster, rule) in place of its secrets: GitHub shows only 5,000 results of a run."""
    groups = {}
    for item in secret_results:
        cluster = item['locations'][0]['logicalLocations'][0]['fullyQualifiedName'].split('/registry/', 1)[0]
        groups.setdefault((cluster, item['ruleId'], item['level']), []).append(item)
    folded = []
    for (cluster, rule_id, level), items in groups.items():
        names = [i['message']['text'].split(':', 1)[0] for i in items[:_FOLDED_NAMES]]
        more = f' and {len(items) - len(names)} more' if len(items) > len(names) else ''
        folded.append(_result(rule_id, level, f'{len(items)} secrets: {", ".join(names)}{more}', cluster,
                              properties={'secrets': len(items)}))
    return folded


def to_sarif(result, *, version, exit_code=None, started=None, finished=None) -> dict:
    """The SARIF 2.1.0 log (a dict) of a command's result: a single cluster's, or a fleet's (``clusters``)."""
    results = result['clusters'] if isinstance(result.get('clusters'), list) else [result]
    overall, secrets = [], []
    for item in results:
        cluster_overall, cluster_secrets = _cluster_results(item)
        overall += cluster_overall
        secrets += cluster_secrets
    folded = len(overall) + len(secrets) > MAX_RESULTS
    if folded:
        secrets = _fold(secrets)
    sarif_results = overall + secrets
    rule_ids = sorted({r['ruleId'] for r in sarif_results} | set(RULES))
    invocation = {'executionSuccessful': exit_code in (None, 0, 4)}
    if exit_code is not None:
        invocation['exitCode'] = exit_code
    if started:
        invocation['startTimeUtc'] = started
    if finished:
        invocation['endTimeUtc'] = finished
    run = {
        'tool': {'driver': {'name': 'kmsverify', 'fullName': 'az aksarc kms (kmsverify Azure CLI extension)',
                            'version': version, 'semanticVersion': version, 'informationUri': INFORMATION_URI,
                            'rules': [_rule(r) for r in rule_ids]}},
        'invocations': [invocation],
        'results': sarif_results,
        'properties': {'clusters': len(results), 'secretResultsFolded': folded},
    }
    return {'$schema': SCHEMA, 'version': '2.1.0', 'runs': [run]}


def _exit_code(result) -> int:
    """The documented exit code the result stands for (the SARIF invocation's ``exitCode``)."""
    clusters = result.get('clusters')
    if isinstance(clusters, list):
        outcomes = {c.get('outcome') for c in clusters}
        if outcomes & {'couldNotVerify', 'notVerifiable'} or not clusters:
            return 1
        return 0 if result.get('passed') else 4
    if any(c.get('name') == 'Verification' and c.get('status') == FAILED for c in result.get('checks') or []):
        return 1
    return 0 if result.get('passed') else 4


def write_sarif(path, result) -> str:
    """Write the SARIF log of ``result`` (the dict az prints, with the contract's fields) to ``path``."""
    import json

    from azext_kmsverify.report.files import write_report
    log = to_sarif(result, version=result.get('extensionVersion') or 'unknown', exit_code=_exit_code(result),
                   started=result.get('startedAt'), finished=result.get('finishedAt'))
    return write_report(path, (json.dumps(log, indent=2, ensure_ascii=True) + '\n').encode('ascii'))
