# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""``az aksarc kms verify``, step by step, along the data's path:

auth (a resolved kubeconfig) -> kube (API client, KMS health, etcd pods, exec) -> etcd (etcdctl pages)
-> verdict (classification, checks, scan) -> report (JUnit; the table is az's transformer).
"""

from __future__ import annotations

import os
import sys

from azure.cli.core.azclierror import (
    AzCLIError,
    AzureResponseError,
    CLIInternalError,
    FileOperationError,
    ResourceNotFoundError,
    UnauthorizedError,
)
from knack.log import get_logger

from azext_kmsverify import defaults
from azext_kmsverify.auth import kubeconfig as kc
from azext_kmsverify.auth.arm import fetch_kubeconfig
from azext_kmsverify.auth.entra import sign_in as entra_sign_in
from azext_kmsverify.deadline import Deadline
from azext_kmsverify.errors import exit_with, make
from azext_kmsverify.etcd.reader import EtcdReader
from azext_kmsverify.etcd.records import EtcdctlError, EtcdOutputError
from azext_kmsverify.kube.client import KubeClient
from azext_kmsverify.kube.health import readyz, readyz_check
from azext_kmsverify.kube.metrics import current_key_hash
from azext_kmsverify.kube.pods import EtcdExec, etcd_pods
from azext_kmsverify.kube.probe import ProbeSecret
from azext_kmsverify.kube.secrets import old_writes, secret_exists
from azext_kmsverify.options import ClusterOptions, VerifyOptions
from azext_kmsverify.report.exitcode import exit_after_output, exit_code
from azext_kmsverify.report.junit import write_junit_xml
from azext_kmsverify.text import printable
from azext_kmsverify.verdict import checks as rules
from azext_kmsverify.verdict.classify import classify
from azext_kmsverify.verdict.readyz import parse_check_error
from azext_kmsverify.verdict.scan import ScanSummary

logger = get_logger(__name__)


def main(cli_ctx, options: VerifyOptions) -> dict:
    """The command: the result for az to print, the JUnit report, and the exit code (README "Exit codes")."""

    step = ['starting']
    if options.fleet:
        from azext_kmsverify.operations.fleet import main as fleet_main
        return fleet_main(cli_ctx, options)
    result = guarded(lambda: verify(cli_ctx, options, step), step, options.junit_xml)
    return report(cli_ctx, options.junit_xml, result)


def guarded(run, step, junit_xml):
    """``run()``, its failures as az reports them: an azclierror as it is, anything else as one line with the step
    and the type only (an unknown exception's text may carry what it was handed: a token, a file's content)."""
    try:
        return run()
    except AzCLIError as error:
        fail(error, junit_xml)
    except Exception as ex:  # pylint: disable=broad-except
        fail(make(CLIInternalError, f'kmsverify failed unexpectedly while {step[0]} ({type(ex).__name__}).',
                  'Retry with --debug for the step; please report it at '
                  'https://github.com/Azure/azure-cli-extensions/issues.'), junit_xml)
    raise AssertionError('unreachable')


def report(cli_ctx, junit_xml, result, code_of=None):
    """The JUnit report (a failure to write it still prints the result, and the run exits 1), then the exit
    code after az printed the result: ``code_of(result, could_not_report)``, default a single run's."""
    could_not_report = False
    if junit_xml:
        try:
            write_junit(junit_xml, result)
        except AzCLIError as error:
            logger.error('%s %s', error.error_msg, 'Give --junit-xml a path in a writable folder.')
            could_not_report = True
    exit_after_output(cli_ctx, (code_of or exit_code)(result, could_not_report))
    return result


def verify(cli_ctx, options: VerifyOptions, step: list | None = None, deadline=None, signed_in=None) -> dict:
    """Run the verification; returns the result, or raises an azclierror when it could not verify.
    ``step[0]`` names what is being done, for the message of an unexpected failure; ``deadline`` (default: a new
    one of ``--timeout``) lets a fleet end every cluster's waits at once; ``signed_in`` (what :func:`sign_in`
    returned) lets it sign in to the next clusters while earlier ones read etcd."""
    step = step if step is not None else ['starting']

    deadline = deadline or Deadline(options.timeout)
    runner = None
    try:
        step[0] = 'signing in'
        kubeconfig, cluster_info = signed_in or sign_in(cli_ctx, options.cluster, deadline)
        step[0] = 'loading the kubeconfig'
        with KubeClient(kubeconfig, deadline, cluster_info['credential']['type']) as client:
            cluster_info['server'] = client.server
            step[0] = 'checking KMS health'
            check_list = [kms_health(client)]
            etcd = options.etcd
            step[0] = 'finding the etcd pods'
            runner = EtcdExec(client, etcd_pods(client, etcd.pod), etcd.container)
            reader = EtcdReader(runner, endpoint=etcd.endpoint, cacert=etcd.cacert, cert=etcd.cert,
                                key_file=etcd.key, page_size=etcd.page_size, page_bytes=defaults.PAGE_BYTES)
            entries = []
            step[0] = 'reading secrets from etcd'
            if options.probe:
                with ProbeSecret(client, options.probe_namespace) as probe:
                    entries.append(read_secret(client, reader, options.probe_namespace, probe.name, probe=True))
                if not probe.deleted:
                    target = f'{options.probe_namespace}/{probe.name}'
                    check_list.append(rules.check(
                        rules.PROBE_CLEANUP, rules.WARNING, 'could not delete the probe secret; delete it with '
                        f'kubectl delete secret -n {options.probe_namespace} {probe.name}', target=target))
            for namespace, name in options.secrets:
                entries.append(read_secret(client, reader, namespace, name))
            check_list.extend(rules.secret_check(e) for e in entries)
            scan = None
            if options.all_secrets:
                step[0] = 'scanning every secret'
                current = next((e['keyId'] for e in entries if e.get('probe') and e.get('keyId')), None)
                scan, scan_checks = scan_all(cli_ctx, client, reader, current, options)
                check_list.extend(scan_checks)
            warning = rules.kms_v1_warning(entries, (scan or {}).get('byKmsVersion'))
            if warning:
                check_list.append(warning)
            return rules.build_result(cluster_info, check_list, entries, etcd_pod=runner.pod, scan=scan)
    except EtcdctlError as error:
        raise etcdctl_error(error, runner) from None
    except EtcdOutputError as error:
        raise make(AzureResponseError, f'etcdctl output could not be read: {error}',
                   'Check the etcdctl version in the etcd pod (3.4 and 3.5 are supported).') from None


def sign_in(cli_ctx, cluster: ClusterOptions, deadline):
    """(resolved kubeconfig, cluster info for the result): from Azure with ``-n``, else ``--kubeconfig``."""
    if cluster.from_azure:
        config = fetch_kubeconfig(cli_ctx, cluster.resource_group, cluster.name, cluster.admin, deadline,
                                  subscription=cluster.subscription)
        resolved = kc.resolve(config, None, source=kc.AZURE_SOURCE, from_azure=True)
        credential = 'admin' if cluster.admin else 'user'
        info = {'source': 'azure', 'name': cluster.name, 'resourceGroup': cluster.resource_group}
        if cluster.subscription:
            info['subscriptionId'] = cluster.subscription
    else:
        config = kc.load_kubeconfig_file(cluster.kubeconfig)
        resolved = kc.resolve(config, cluster.context, source=f"--kubeconfig '{printable(cluster.kubeconfig)}'",
                              base_dir=os.path.dirname(cluster.kubeconfig))
        credential = 'kubeconfig'
        info = {'source': 'kubeconfig', 'name': None, 'resourceGroup': None}
    resolved, how = entra_sign_in(cli_ctx, resolved)
    info.update(context=resolved.context_name, credential={'type': credential, **how})
    return resolved, info


def kms_health(client):
    """The KMS health check; readyz trouble is reported as a failed check and the etcd checks still run."""

    try:
        status, body = readyz(client)
    except AzCLIError as error:
        if client.deadline.expired():
            raise
        return rules.kms_health(None, None, {}, unreachable=error.error_msg)
    if status == 401:
        raise client.errors.api(status, body.encode(), 'reading /readyz')
    if status not in (200, 500):
        return rules.kms_health(None, None, {}, unreachable=f'HTTP {status}')
    reasons = {}
    for name in rules.failing_kms_check_names(body):
        try:
            check_status, check_body = readyz_check(client, name)
        except AzCLIError as error:
            if isinstance(error, UnauthorizedError) or client.deadline.expired():
                raise
            continue
        if check_status != 200:
            reasons[name] = printable(parse_check_error(check_body))
    return rules.kms_health(status, body, reasons)


def scan_all(cli_ctx, client, reader, current_key_id, options: VerifyOptions):
    """Classify every secret in etcd as the pages stream in; then the KMS v1 age check from API metadata."""

    # Knowing the current key up front (from /metrics, else the probe's) keeps only the names of secrets under
    # older keys.
    key_hash, how = current_key_hash(client)
    logger.info('Current KMS v2 key from /metrics: %s', how)
    summary = ScanSummary(current_key_id=current_key_id, current_key_hash=key_hash)
    progress = progress_bar(cli_ctx, 'Reading secrets from etcd') if options.progress else None
    prefix_length = len(defaults.ETCD_SECRETS_PREFIX)
    count = 0
    try:
        for kv in reader.iter_prefix(defaults.ETCD_SECRETS_PREFIX):
            # Names come from etcd keys, which anyone with etcd access can set to anything: escaped for every
            # output (a terminal, a tsv row), as JSON and JUnit would escape them anyway.
            namespace, _, name = kv.key[prefix_length:].decode('utf-8', 'replace').partition('/')
            summary.add(printable(namespace), printable(name), classify(kv.value), kv.mod_revision)
            count += 1
            if progress is not None and count % 500 == 0:
                progress.add(message=f'Reading secrets {count} of {reader.total}', value=count,
                             total_val=max(reader.total or count, count))
        if progress is not None:  # end on a full bar, not on the last multiple of 500
            progress.add(message=f'Read {count} secrets', value=count, total_val=count or 1)
    finally:
        if progress is not None:
            progress.end()
    logger.info('Scanned %s secrets at etcd revision %s', count, reader.revision)

    write_times, skip_reason = (old_writes(client, options.rotation_days) if summary.needs_write_times()
                                else (None, None))
    hash_only = None
    if key_hash and summary.current_key_id is None and current_key_id is None:
        # /metrics names the current key, but no stored value carries a key id with that hash (nothing was written
        # since the rotation): every KMS v2 value is under an older key. The latest write would name the old key.
        hash_only = key_hash
    scan, checks = summary.finish(current_key_id=hash_only, current_key_source='metrics' if hash_only else None,
                                  write_times=write_times, age_skip_reason=skip_reason,
                                  rotation_days=options.rotation_days, fail_on_stale=options.fail_on_stale,
                                  revision=reader.revision)
    if hash_only:
        scan['currentKeyIdNote'] = ('the current key is known by the hash /metrics publishes: no secret in etcd is '
                                    'stored under it yet')
    elif scan.get('currentKeyIdSource') != 'metrics' and scan['byKmsVersion'].get('v2'):
        scan['currentKeyIdNote'] = f'/metrics not used: {how}'
    return scan, checks


def progress_bar(cli_ctx, message):
    """az's progress bar, only for a person watching: not in pipelines (stderr not a terminal), not with
    --only-show-errors."""
    if not sys.stderr.isatty() or cli_ctx.only_show_errors:
        return None
    progress = cli_ctx.get_progress_controller(det=True)
    progress.begin(message=message)
    return progress


def read_secret(client, reader, namespace, name, probe=False):
    """Classify the etcd value of one secret. etcd is the source of truth; the API only explains a miss."""

    key = f'{defaults.ETCD_SECRETS_PREFIX}{namespace}/{name}'
    kv = reader.get(key)
    if kv is None:
        if probe or secret_exists(client, namespace, name):
            raise make(AzureResponseError, f'The API has secret {namespace}/{name} but etcd has no key {key}.',
                       'The API server stores secrets in another etcd or under another key prefix (kube-apiserver '
                       '--etcd-servers/--etcd-prefix) than the etcd pod serves; this cluster cannot be verified '
                       'through that etcd pod (check --etcd-pod and --etcd-endpoint).')
        raise make(ResourceNotFoundError, f'Secret {namespace}/{name} was not found.',
                   f"Check the name with 'kubectl get secret -n {namespace} {name}'.")
    return rules.secret_entry(namespace, name, key, classify(kv.value), probe=probe, mod_revision=kv.mod_revision)


def etcdctl_error(error, runner):
    pod = (runner.last_pod if runner else None) or 'the etcd pod'
    return make(AzureResponseError, f'etcdctl failed in {printable(pod)}: {printable(error.stderr_summary or error)}',
                error.hint or 'Check --etcd-cacert, --etcd-cert, --etcd-key and --etcd-endpoint.')


def fail(error, junit_xml):
    """Raise ``error`` as az reports it; a pipeline asking for JUnit still gets a report saying why."""
    if junit_xml:
        try:
            write_junit(junit_xml, rules.build_result(None, [rules.check(
                'Verification', rules.FAILED, 'could not verify: ' + error.error_msg)], []))
        except Exception:  # pylint: disable=broad-except
            logger.warning('Could not write the JUnit report to %s.', printable(junit_xml))
    if getattr(error, 'kmsverify_exit_code', None) is not None:
        exit_with(error)
    raise error from None


def write_junit(path, result):

    try:
        write_junit_xml(path, result)
    except OSError as ex:
        raise make(FileOperationError, f"Could not write the JUnit report '{printable(path)}': "
                                       f'{ex.strerror or type(ex).__name__}.',
                   'Give --junit-xml a path in a writable folder.') from None
