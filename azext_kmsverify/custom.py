# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""``az aksarc kms verify``: wires the steps together; each step lives in its own module.

credentials -> cluster (health, etcd pods, exec) -> etcd (etcdctl, parsing, paging) -> storage (classify)
-> checks (rules, result) -> _format (table, exit code).
"""

import os

from knack.log import get_logger

from azext_kmsverify import defaults
from azext_kmsverify.errors import exit_with, make

logger = get_logger(__name__)


def verify_kms(cmd, resource_group_name=None, cluster_name=None, admin=False, kubeconfig=None, context=None,
               secrets=None, all_secrets=False, probe=None, probe_namespace=defaults.PROBE_NAMESPACE,
               fail_on_stale=False, rotation_days=defaults.ROTATION_DAYS, etcd_pod=None,
               etcd_container=defaults.ETCD_CONTAINER, etcd_endpoint=defaults.ETCD_ENDPOINT,
               etcd_cacert=defaults.ETCD_CACERT, etcd_cert=defaults.ETCD_CERT, etcd_key=defaults.ETCD_KEY,
               page_size=defaults.PAGE_SIZE, timeout=defaults.TIMEOUT_SECONDS, junit_xml=None):
    # pylint: disable=too-many-arguments,too-many-locals
    from azure.cli.core.azclierror import AzCLIError
    from azext_kmsverify import checks as rules
    from azext_kmsverify._format import exit_nonzero_after_output
    from azext_kmsverify.cluster import Cluster, EtcdExec, ProbeSecret
    from azext_kmsverify.deadline import Deadline
    from azext_kmsverify.etcd import EtcdctlError, EtcdOutputError, EtcdReader

    # az wraps argument defaults in str/int subclasses that serialise as {"isDefault": true}: unwrap them.
    probe_namespace, etcd_container, etcd_endpoint = str(probe_namespace), str(etcd_container), str(etcd_endpoint)
    etcd_cacert, etcd_cert, etcd_key = str(etcd_cacert), str(etcd_cert), str(etcd_key)
    page_size, timeout, rotation_days = int(page_size), int(timeout), int(rotation_days)
    secrets = list(secrets or [])
    if probe is None:  # read-only unless asked: the probe is the default only when nothing else is verified
        probe = not (secrets or all_secrets)
    deadline = Deadline(timeout)
    runner = None
    try:
        config, context_name, cluster_info, config_dir = _credentials(
            cmd.cli_ctx, resource_group_name, cluster_name, admin, kubeconfig, context, deadline)
        with Cluster(config, context_name, deadline, config_dir, cluster_info['credential']) as cluster:
            cluster_info['server'] = cluster.server
            check_list = [_kms_health(cluster)]
            runner = EtcdExec(cluster, cluster.etcd_pods(etcd_pod), etcd_container)
            reader = EtcdReader(runner, endpoint=etcd_endpoint, cacert=etcd_cacert, cert=etcd_cert,
                                key_file=etcd_key, page_size=page_size, page_bytes=defaults.PAGE_BYTES)
            entries = []
            if probe:
                with ProbeSecret(cluster, probe_namespace) as probe_secret:
                    entries.append(_read_secret(cluster, reader, probe_namespace, probe_secret.name, probe=True))
                if not probe_secret.deleted:
                    check_list.append(rules.check(
                        rules.PROBE_CLEANUP, rules.WARNING, 'could not delete the probe secret; delete it with '
                        'kubectl delete secret -n {} {}'.format(probe_namespace, probe_secret.name),
                        target='{}/{}'.format(probe_namespace, probe_secret.name)))
            for namespace, name in secrets:
                entries.append(_read_secret(cluster, reader, namespace, name))
            check_list.extend(rules.secret_check(e) for e in entries)
            scan = None
            if all_secrets:
                current = next((e['keyId'] for e in entries if e.get('probe') and e.get('keyId')), None)
                scan, scan_checks = _scan(cmd.cli_ctx, cluster, reader, current, fail_on_stale, rotation_days)
                check_list.extend(scan_checks)
            warning = rules.kms_v1_warning(entries, (scan or {}).get('byKmsVersion'))
            if warning:
                check_list.append(warning)
            result = rules.build_result(cluster_info, check_list, entries, etcd_pod=runner.pod, scan=scan)
    except EtcdctlError as error:
        _fail(_etcdctl_error(error, runner), junit_xml)
    except EtcdOutputError as error:
        from azure.cli.core.azclierror import AzureResponseError
        _fail(make(AzureResponseError, 'etcdctl output could not be read: {}'.format(error),
                   'Check the etcdctl version in the etcd pod (3.4 and 3.5 are supported).'), junit_xml)
    except AzCLIError as error:
        _fail(error, junit_xml)
    if junit_xml:
        _write_junit(junit_xml, result)
    exit_nonzero_after_output(cmd.cli_ctx, result)
    return result


def _fail(error, junit_xml):
    """Raise ``error`` as az reports it; a pipeline asking for JUnit still gets a report saying why."""
    if junit_xml:
        from azext_kmsverify import checks as rules
        try:
            _write_junit(junit_xml, rules.build_result(None, [rules.check(
                'Verification', rules.FAILED, 'could not verify: ' + error.error_msg)], []))
        except Exception:  # pylint: disable=broad-except
            logger.warning('Could not write the JUnit report to %s.', junit_xml)
    if getattr(error, 'kmsverify_exit_code', None) is not None:
        exit_with(error)
    raise error from None


def _write_junit(path, result):
    from azure.cli.core.azclierror import FileOperationError
    from azext_kmsverify.junit import write_junit_xml
    try:
        write_junit_xml(path, result)
    except OSError as ex:
        raise make(FileOperationError, "Could not write the JUnit report '{}': {}.".format(
            path, ex.strerror or type(ex).__name__), 'Give --junit-xml a path in a writable folder.') from None


def _etcdctl_error(error, runner):
    from azure.cli.core.azclierror import AzureResponseError
    pod = (runner.last_pod if runner else None) or 'the etcd pod'
    return make(AzureResponseError, 'etcdctl failed in {}: {}'.format(pod, error.stderr_summary or error),
                error.hint or 'Check --etcd-cacert, --etcd-cert, --etcd-key and --etcd-endpoint.')


def _credentials(cli_ctx, resource_group, cluster_name, admin, kubeconfig, context, deadline):
    """(kubeconfig dict, context name, cluster info for the result, folder for relative paths)."""
    from azext_kmsverify import credentials
    if kubeconfig:
        config = credentials.load_kubeconfig_file(kubeconfig)
        source = "--kubeconfig '{}'".format(kubeconfig)
        context_name, _, _ = credentials.select_context(config, context, source)
        credentials.resolve_entra_sign_in(cli_ctx, config, context_name, force=False)
        info = {'source': 'kubeconfig', 'name': None, 'resourceGroup': None, 'context': context_name,
                'credential': 'kubeconfig'}
        return config, context_name, info, os.path.dirname(kubeconfig)
    config = credentials.fetch_kubeconfig(cli_ctx, resource_group, cluster_name, admin, deadline)
    context_name, _, _ = credentials.select_context(config, None, 'the kubeconfig from Azure')
    if not admin:
        credentials.resolve_entra_sign_in(cli_ctx, config, context_name, force=True)
    info = {'source': 'azure', 'name': cluster_name, 'resourceGroup': resource_group, 'context': context_name,
            'credential': 'admin' if admin else 'user'}
    return config, context_name, info, ''


def _kms_health(cluster):
    """The KMS health check; readyz trouble is reported as a failed check and the etcd checks still run."""
    from azure.cli.core.azclierror import AzCLIError, UnauthorizedError
    from azext_kmsverify import checks as rules
    from azext_kmsverify.readyz import parse_check_error
    try:
        status, body = cluster.readyz()
    except AzCLIError as error:
        return rules.kms_health(None, None, {}, unreachable=error.error_msg)
    if status == 401:
        raise cluster.api_error(status, body.encode(), 'reading /readyz')
    if status not in (200, 500):
        return rules.kms_health(None, None, {}, unreachable='HTTP {}'.format(status))
    reasons = {}
    for name in rules.failing_kms_check_names(body):
        try:
            check_status, check_body = cluster.readyz_check(name)
        except AzCLIError as error:
            if isinstance(error, UnauthorizedError):
                raise
            continue
        if check_status != 200:
            reasons[name] = parse_check_error(check_body)
    return rules.kms_health(status, body, reasons)


def _scan(cli_ctx, cluster, reader, current_key_id, fail_on_stale, rotation_days):
    """Classify every secret in etcd as the pages stream in; then the KMS v1 age check from API metadata."""
    import sys
    from azure.cli.core.azclierror import AzCLIError
    from azext_kmsverify.scan import ScanSummary
    from azext_kmsverify.storage import classify
    # Knowing the current key (the probe's) up front keeps only the names of secrets under older keys.
    summary = ScanSummary(current_key_id=current_key_id)
    # Progress only for a person watching: not in pipelines (stderr not a terminal), not with --only-show-errors.
    progress = None
    if sys.stderr.isatty() and not cli_ctx.only_show_errors:
        progress = cli_ctx.get_progress_controller(det=True)
        progress.begin(message='Reading secrets from etcd')
    prefix_length = len(defaults.ETCD_SECRETS_PREFIX)
    count = 0
    try:
        for kv in reader.iter_prefix(defaults.ETCD_SECRETS_PREFIX):
            namespace, _, name = kv.key[prefix_length:].decode('utf-8', 'replace').partition('/')
            summary.add(namespace, name, classify(kv.value), kv.mod_revision)
            count += 1
            if progress is not None and count % 500 == 0:
                progress.add(message='Reading secrets {} of {}'.format(count, reader.total), value=count,
                             total_val=max(reader.total or count, count))
        if progress is not None:  # end on a full bar, not on the last multiple of 500
            progress.add(message='Read {} secrets'.format(count), value=count, total_val=count or 1)
    finally:
        if progress is not None:
            progress.end()
    logger.info('Scanned %s secrets at etcd revision %s', count, reader.revision)

    write_times, skip_reason = None, None
    if summary.needs_write_times():
        try:
            write_times = _write_times(cluster, rotation_days)
        except AzCLIError as error:
            skip_reason = 'the API could not list secret metadata: {}'.format(error.error_msg)
    return summary.finish(write_times=write_times, age_skip_reason=skip_reason, rotation_days=rotation_days,
                          fail_on_stale=fail_on_stale, revision=reader.revision)


def _write_times(cluster, rotation_days):
    """Last write time of secrets older than the rotation period, from metadata only (never data)."""
    from datetime import datetime, timedelta, timezone
    cutoff = datetime.now(timezone.utc) - timedelta(days=rotation_days)
    old = {}
    for meta in cluster.list_secret_metadata():
        written = _last_write(meta)
        if written is not None and written < cutoff:
            old[(meta.get('namespace'), meta.get('name'))] = written
    return old


def _last_write(meta):
    """Latest managedFields time, else creationTimestamp (RFC 3339, UTC)."""
    from datetime import datetime, timezone
    times = [f.get('time') for f in meta.get('managedFields') or [] if f.get('time')]
    stamp = max(times) if times else meta.get('creationTimestamp')
    if not stamp:
        return None
    try:
        return datetime.strptime(stamp, '%Y-%m-%dT%H:%M:%SZ').replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def _read_secret(cluster, reader, namespace, name, probe=False):
    """Classify the etcd value of one secret. etcd is the source of truth; the API only explains a miss."""
    from azure.cli.core.azclierror import AzureResponseError, ResourceNotFoundError
    from azext_kmsverify import checks as rules
    from azext_kmsverify.storage import classify
    key = '{}{}/{}'.format(defaults.ETCD_SECRETS_PREFIX, namespace, name)
    kv = reader.get(key)
    if kv is None:
        if probe or cluster.secret_exists(namespace, name):
            raise make(AzureResponseError, "The API has secret {}/{} but etcd has no key {}.".format(
                namespace, name, key),
                'The API server stores secrets in another etcd or under another key prefix (kube-apiserver '
                '--etcd-servers/--etcd-prefix) than the etcd pod serves; this cluster cannot be verified through '
                'that etcd pod (check --etcd-pod and --etcd-endpoint).')
        raise make(ResourceNotFoundError, "Secret {}/{} was not found.".format(namespace, name),
                   "Check the name with 'kubectl get secret -n {} {}'.".format(namespace, name))
    return rules.secret_entry(namespace, name, key, classify(kv.value), probe=probe, mod_revision=kv.mod_revision)
