# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""``az aksarc kms verify`` on one cluster, step by step, along the data's path, in the run frame (``run.py``):

session (sign-in, API client, etcd reader) -> kube (KMS health, probe) -> etcd (etcdctl pages)
-> verdict (classification, checks, scan) -> the result; the frame writes the reports and sets the exit code.
A fleet (``--ids``, ``--all-clusters``) runs :func:`verify_cluster` per cluster (``fleet.py``; chosen in
``custom.py``).
"""

from __future__ import annotations

from contextlib import ExitStack
from datetime import datetime, timezone

from azure.cli.core.azclierror import AzCLIError, AzureResponseError, ResourceNotFoundError, UnauthorizedError
from knack.log import get_logger

from azext_kmsverify import defaults
from azext_kmsverify.errors import make
from azext_kmsverify.kube.access import CHECKING_ACCESS, require
from azext_kmsverify.kube.health import read_health
from azext_kmsverify.kube.keyage import key_age
from azext_kmsverify.kube.metrics import current_key_hash, key_evidence
from azext_kmsverify.kube.probe import ProbeSecret
from azext_kmsverify.kube.resources import SECRETS, resolve
from azext_kmsverify.kube.secrets import old_writes, secret_exists
from azext_kmsverify.operations.run import Run
from azext_kmsverify.options import VerifyOptions
from azext_kmsverify.text import printable
from azext_kmsverify.verdict import access
from azext_kmsverify.verdict import checks as rules
from azext_kmsverify.verdict.classify import classify
from azext_kmsverify.verdict.keys import SOURCE_METRICS, SOURCE_PROBE, current_key_note, hash_only_current_key
from azext_kmsverify.verdict.posture import with_posture
from azext_kmsverify.verdict.rotation import EarliestWrites, rotation_check
from azext_kmsverify.verdict.scan import ScanSummary

logger = get_logger(__name__)


def main(cli_ctx, options: VerifyOptions) -> dict:
    """The command on one cluster: the result for az to print, the reports, and the exit code."""
    return Run(cli_ctx, options).execute(lambda run: verify_cluster(run, run.session(options.cluster, options.etcd)))


def verify_cluster(run: Run, session) -> dict:
    """Verify the cluster of ``session`` (a :class:`~azext_kmsverify.operations.session.ClusterSession`, signed
    in or not) with ``run.options``; returns the result, or raises an azclierror when it could not verify."""
    options = run.options
    with session:
        with run.step('checking KMS health'):
            check_list = [kms_health(session.client)]
        client = session.client
        with run.step(CHECKING_ACCESS):
            require(client, _commands(options), probe_namespace=options.probe_namespace,
                    secret_namespaces=[ns for ns, _ in options.secrets], etcd_pod=options.etcd.pod)
        session.open_etcd()
        entries = []
        with run.step('reading secrets from etcd'):
            if options.probe:
                probe = ProbeSecret(client, options.probe_namespace)
                with ExitStack() as stack:
                    try:
                        stack.enter_context(probe)  # deleted on the way out once created
                    except AzCLIError as error:
                        # KMS down: the create fails (a 500, "failed to encrypt DEK"); the result says so, exit 4
                        check_list.append(probe_not_written(check_list[0], error, run.deadline,
                                                            f'{options.probe_namespace}/{probe.name}'))
                    else:
                        entries.append(read_secret(session, options.probe_namespace, probe.name, probe=True))
                if probe.deleted is False:
                    target = f'{options.probe_namespace}/{probe.name}'
                    check_list.append(rules.check(
                        rules.PROBE_CLEANUP, rules.WARNING, 'could not delete the probe secret; delete it with '
                        f'kubectl delete secret -n {options.probe_namespace} {probe.name}', target=target))
            missing = []
            for namespace, name in options.secrets:
                try:
                    entries.append(read_secret(session, namespace, name))
                except ResourceNotFoundError as error:
                    if len(options.secrets) == 1 and not options.probe and not options.all_secrets:
                        raise  # the one thing asked: the error line (exit 3)
                    # one of several: its own entry beside the verified ones; the run exits 3 (outcome_of)
                    missing.append(rules.check(rules.SECRET_FOUND, rules.FAILED, error.error_msg,
                                               target=f'{namespace}/{name}'))
        unhealthy = check_list[0]['status'] == rules.FAILED
        check_list.extend(rules.secret_check(e, kms_unhealthy=unhealthy) for e in entries)
        check_list.extend(missing)
        scan = None
        resources = []
        if options.all_secrets:
            scan, resources = scan_kinds(run, session, entries, check_list)
        warning = rules.kms_v1_warning(entries, (scan or {}).get('byKmsVersion'))
        if warning:
            check_list.append(warning)
        result = rules.build_result(session.info, check_list, entries, etcd_pod=session.etcd_pod, scan=scan)
        if options.resources:
            result['resources'] = resources
    # --fail-on-kms-v1: KMS v1 in use is a failure (the result then also names the KMS version; a fleet's rows always
    # do, fleet.py).
    return with_posture(result, True) if options.fail_on_kms_v1 else result


def _commands(options) -> list[str]:
    """The commands of ``verdict.access`` this run does (their permissions are checked first)."""
    commands = [access.VERIFY_PROBE] if options.probe else []
    if options.secrets:
        commands.append(access.VERIFY_SECRETS)
    if options.all_secrets:
        commands.append(access.VERIFY_ALL_SECRETS)
    return commands or [access.VERIFY_PROBE]


def probe_not_written(health: dict, error: AzCLIError, deadline, target: str) -> dict:
    """The probe's check when the probe could not be created while the KMS health check failed: a failed check
    with the API's reason (the run then has a result, exit 4). Any other failure to create it is raised."""
    if health.get('status') != rules.FAILED or deadline.expired() or isinstance(error, UnauthorizedError):
        raise error
    return rules.check(rules.SECRET_ENCRYPTED, rules.FAILED, 'the probe secret could not be written while the KMS '
                       f'provider is unhealthy: {error.error_msg}', target=target)


def kms_health(client):
    """The KMS health check; readyz trouble is reported as a failed check and the etcd checks still run."""
    status, body, reasons, unreachable = read_health(client)
    if unreachable:
        return rules.kms_health(None, None, {}, unreachable=unreachable)
    return rules.kms_health(status, body, reasons)


def scan_all(run: Run, session, current_key_id):
    """Classify every secret in etcd as the pages stream in; then the KMS v1 age check from API metadata."""

    options, client, reader = run.options, session.client, session.reader
    # Knowing the current key up front (from /metrics, else the probe's) keeps only the names of secrets under
    # older keys.
    key_hash, how, known = key_evidence(client)
    logger.info('Current KMS v2 key from /metrics: %s', how)
    summary = ScanSummary(current_key_id=current_key_id, current_key_hash=key_hash, known_key_hashes=known)
    writes = EarliestWrites()  # per KMS v2 key id, the oldest and newest value written once: dates the current key
    count = 0
    with run.progress('Reading secrets from etcd') as progress:
        for secret in session.secrets():
            # Names come from etcd keys, which anyone with etcd access can set to anything: escaped for every
            # output (a terminal, a tsv row), as JSON and JUnit would escape them anyway.
            classification = classify(secret.value)
            summary.add(printable(secret.namespace), printable(secret.name), classification, secret.mod_revision)
            if classification.get('storage') == 'kms' and classification.get('kmsVersion') == 'v2':
                # raw names: the API is asked for the object's creationTimestamp by them (kube.keyage)
                writes.add(classification.get('keyId'), secret.namespace, secret.name, secret.create_revision,
                           secret.version)
            count += 1
            if count % 500 == 0:
                progress(count, max(reader.total or count, count), f'Reading secrets {count} of {reader.total}')
        progress(count, count or 1, f'Read {count} secrets')  # end on a full bar, not on the last multiple of 500
    logger.info('Scanned %s secrets at etcd revision %s', count, reader.revision)

    write_times, skip_reason = (old_writes(client, options.rotation_days) if summary.needs_write_times()
                                else (None, None))
    hash_only = hash_only_current_key(key_hash, summary.current_key_id, current_key_id)
    scan, checks = summary.finish(current_key_id=hash_only, current_key_source=SOURCE_METRICS if hash_only else None,
                                  write_times=write_times, age_skip_reason=skip_reason,
                                  rotation_days=options.rotation_days, fail_on_stale=options.fail_on_stale,
                                  revision=reader.revision)
    checks.append(_rotation(run, client, writes, scan))
    note = current_key_note(scan.get('currentKeyIdSource'), how, hash_only=bool(hash_only))
    if note and (hash_only or scan['byKmsVersion'].get('v2')):
        scan['currentKeyIdNote'] = note
    return scan, checks


def scan_kinds(run: Run, session, entries, check_list: list):
    """``--all-secrets``: the scan of secrets (``scan``) and of each other ``--resource`` (``resources``); their
    checks are added to ``check_list``."""
    with run.step('reading the resources to scan'):
        kinds = resolve(session.client, run.options.resources)
    current = next((e.key_id for e in entries if e.probe and e.key_id), None)
    scan, resources = None, []
    if SECRETS in kinds:
        with run.step('scanning every secret'):
            scan, scan_checks = scan_all(run, session, current)
        check_list.extend(scan_checks)
    others = [kind for kind in kinds if kind is not SECRETS]
    key_hash = None
    if others and (scan or {}).get('currentKeyId') is None:
        with run.step('reading the current key from /metrics'):
            key_hash, _ = current_key_hash(session.client)  # once for every resource
    for kind in others:
        with run.step(f'scanning {kind.name}'):
            found, found_checks = scan_resource(run, session, kind, scan, current, key_hash=key_hash)
            resources.append(found)
            check_list.extend(found_checks)
    return scan, resources


def scan_resource(run: Run, session, kind, secrets_scan: dict | None, probe_key_id: str | None, *,
                  key_hash: str | None):
    """Classify every object of one more ``--resource`` (``kube.resources.Resource``) as the scan of secrets
    does; the current KMS v2 key is the one the secrets' scan decided (else ``key_hash`` from /metrics, the probe,
    the latest write). Returns (the resource's entry of ``resources``, its checks: their target names the
    resource)."""
    known = (secrets_scan or {}).get('currentKeyId')
    source = (secrets_scan or {}).get('currentKeyIdSource')
    if known is None:
        known, source = probe_key_id, (SOURCE_PROBE if probe_key_id else None)
    else:
        key_hash = None
    summary = ScanSummary(current_key_id=known, current_key_source=source, current_key_hash=key_hash,
                          resource=kind.name, prefix=kind.prefix)
    count = 0
    with run.progress(f'Reading {kind.name} from etcd') as progress:
        for stored in session.objects(kind.prefix, kind.namespaced):
            summary.add(printable(stored.namespace), printable(stored.name), classify(stored.value),
                        stored.mod_revision)
            count += 1
            if count % 500 == 0:
                progress(count, max(session.reader.total or count, count), f'Reading {kind.name} {count}')
        progress(count, count or 1, f'Read {count} {kind.name}')
    hash_only = hash_only_current_key(key_hash, summary.current_key_id, known)
    found, found_checks = summary.finish(
        current_key_id=hash_only, current_key_source=SOURCE_METRICS if hash_only else None,
        age_skip_reason='the last write times of KMS v1 objects are read for secrets only',
        rotation_days=run.options.rotation_days, fail_on_stale=run.options.fail_on_stale,
        revision=session.reader.revision)
    return {'resource': kind.name, 'etcdPrefix': kind.prefix, 'namespaced': kind.namespaced, **found}, found_checks


def _rotation(run: Run, client, writes: EarliestWrites, scan: dict) -> dict:
    """``KmsKeyRotation`` from etcd: the current KMS v2 key has been in use at least since the earliest secret
    written once under it was created (``kube.keyage``); KMS v1 stores no key id (Skipped, with why)."""
    options = run.options
    versions = [v for v, n in (scan.get('byKmsVersion') or {}).items() if n]
    age, why = None, ''
    if scan.get('newerKeyIds'):  # the current key is in doubt: dating it would call the newer keys older
        why = (f"etcd holds secrets under {', '.join(scan['newerKeyIds'])}, newer than the key id the API server "
               'that answered calls current: the API servers do not agree on the current key yet')
    elif 'v2' in versions:
        with run.step('dating the current KMS v2 key'):
            age, why = key_age(client, writes, scan.get('currentKeyId'))
    found = rotation_check(kms_versions=versions, age=age, unknown_why=why or 'no secret is stored with KMS v2',
                           rotation_days=options.rotation_days, fail_on_stale=options.fail_on_stale)
    if age is not None:
        scan['keyAge'] = age.to_dict(datetime.now(timezone.utc))
    return found


def read_secret(session, namespace, name, probe=False):
    """Classify the etcd value of one secret. etcd is the source of truth; the API only explains a miss."""

    key = f'{defaults.ETCD_SECRETS_PREFIX}{namespace}/{name}'
    stored = session.secret(namespace, name)
    if stored is None:
        if probe or secret_exists(session.client, namespace, name):
            raise make(AzureResponseError, f'The API has secret {namespace}/{name} but etcd has no key {key}.',
                       'The API server stores secrets in another etcd or under another key prefix (kube-apiserver '
                       '--etcd-servers/--etcd-prefix) than the etcd pod serves; this cluster cannot be verified '
                       'through that etcd pod (check --etcd-pod and --etcd-endpoint).')
        raise make(ResourceNotFoundError, f'Secret {namespace}/{name} was not found.',
                   f"Check the name with 'kubectl get secret -n {namespace} {name}'.")
    return rules.secret_entry(namespace, name, key, classify(stored.value), probe=probe,
                              mod_revision=stored.mod_revision)
