# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Argument validation. Pure and light: imported when the command table loads."""

from __future__ import annotations

import argparse
import os
import re

from azext_kmsverify.errors import BadArguments, argument_error, exit_with
from azext_kmsverify.names import is_namespace, is_secret_name
from azext_kmsverify.text import printable, truncate

_CONTROL = re.compile('[\x00-\x1f\x7f]')


class AppendValues(argparse.Action):  # pylint: disable=too-few-public-methods
    """``--secret a/b c/d --secret e/f`` (and ``--namespace``, ``--ids``, ...): every value of every occurrence,
    in order."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest, None) or [])
        items.extend(values if isinstance(values, list) else [values])
        setattr(namespace, self.dest, items)


def parse_secret_ref(value):
    """Return (namespace, name) for 'NAMESPACE/NAME' or raise an argument error (exit 2)."""
    from azure.cli.core.azclierror import InvalidArgumentValueError
    parts = value.split('/')
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise argument_error(InvalidArgumentValueError(
            f"--secret '{_shorten(value)}' is not NAMESPACE/NAME.",
            'Give the secret as NAMESPACE/NAME, for example --secret default/db-user-pass.'))
    namespace, name = parts
    if not is_namespace(namespace):
        raise argument_error(InvalidArgumentValueError(
            f"--secret '{_shorten(value)}': '{_shorten(namespace)}' is not a valid namespace name.",
            'Namespace names are lower-case letters, digits and "-", at most 63 characters.'))
    if not is_secret_name(name):
        raise argument_error(InvalidArgumentValueError(
            f"--secret '{_shorten(value)}': '{_shorten(name)}' is not a valid secret name.",
            'Secret names are lower-case letters, digits, "-" and ".", at most 253 characters.'))
    return namespace, name


def _shorten(text, limit=80):
    """An argument value as it may be echoed in an error: one line, no control characters."""
    return printable(truncate(text, limit)) if '\n' not in str(text) else printable(str(text)[:limit])


def validate_verify(namespace):
    """Command-level validation of ``az aksarc kms verify``; argument errors exit with code 2."""
    _exit_2_on(_validate, namespace)
    _exit_2_on(_validate_resources, namespace)


def validate_status(namespace):
    """Command-level validation of ``az aksarc kms status``; argument errors exit with code 2."""
    _exit_2_on(_validate, namespace)


def validate_reencrypt(namespace):
    """Command-level validation of ``az aksarc kms reencrypt``; argument errors exit with code 2."""
    _exit_2_on(_validate, namespace)
    _exit_2_on(_validate_reencrypt, namespace)
    _exit_2_on(_validate_resources, namespace)


def _exit_2_on(check, namespace):
    from azure.cli.core.azclierror import AzCLIError
    try:
        check(namespace)
    except AzCLIError as error:
        if not isinstance(error, BadArguments):
            raise
        exit_with(error)


def _validate_reencrypt(ns):
    from azure.cli.core.azclierror import InvalidArgumentValueError, MutuallyExclusiveArgumentError
    names = []
    for value in ns.namespaces or []:
        if not is_namespace(value):
            raise argument_error(InvalidArgumentValueError(
                f"--namespace '{_shorten(value)}' is not a valid namespace name.",
                'Namespace names are lower-case letters, digits and "-", at most 63 characters.'))
        if value not in names:
            names.append(value)
    ns.namespaces = names
    for option, value, low, high in (('--parallel', ns.parallel, 1, 64),
                                     ('--max-per-second', ns.max_per_second, 0, 100000)):
        if value is not None and not low <= value <= high:
            raise argument_error(InvalidArgumentValueError(f'{option} must be between {low} and {high}, not '
                                                           f'{value}.', f'Give {option} a value in that range.'))
    if ns.dry_run and ns.yes:
        raise argument_error(MutuallyExclusiveArgumentError('--dry-run writes nothing, so --yes has nothing to '
                                                            'confirm.', 'Drop one of --dry-run and --yes.'))


def _validate_resources(ns):
    """``--resource``: RESOURCE or RESOURCE.GROUP, kubectl's spelling; only with a scan (``--all-secrets``, or
    ``reencrypt``); ``--secret`` names secrets, so it needs secrets among them."""
    from azure.cli.core.azclierror import (
        InvalidArgumentValueError,
        MutuallyExclusiveArgumentError,
        RequiredArgumentMissingError,
    )
    values = getattr(ns, 'resources', None)
    if not values:
        return
    from azext_kmsverify.verdict.resources import prefixes  # only when --resource is given: start-up stays light
    if hasattr(ns, 'all_secrets') and not ns.all_secrets:
        raise argument_error(RequiredArgumentMissingError(
            '--resource applies to the scan of --all-secrets.',
            'Add --all-secrets to scan every object of the resources named by --resource.'))
    try:
        chosen = [ref.name for ref, _ in prefixes(values)]
    except ValueError as why:
        raise argument_error(InvalidArgumentValueError(
            f'--resource: {_shorten(str(why), 200)}',
            'Give a resource as kubectl names it: RESOURCE or RESOURCE.GROUP, e.g. configmaps or '
            'widgets.example.com (see kubectl api-resources).')) from None
    if getattr(ns, 'secrets', None) and 'secrets' not in chosen:
        raise argument_error(MutuallyExclusiveArgumentError(
            '--secret names secrets, but --resource does not include secrets.',
            'Add --resource secrets, or drop --secret.'))
    ns.resources = chosen


def _validate(namespace):
    from azure.cli.core.azclierror import (
        FileOperationError,
        MutuallyExclusiveArgumentError,
        RequiredArgumentMissingError,
    )
    ns = namespace
    _validate_fleet(ns)
    # ARM mode is decided by --name: a configured default group (az config set defaults.group=RG, or
    # AZURE_DEFAULTS_GROUP) reaches every command as a DefaultStr and must not turn --kubeconfig into an ARM call.
    group_given = bool(ns.resource_group_name) and not _is_default(ns.resource_group_name)
    if ns.kubeconfig and not ns.cluster_name and not group_given:
        ns.resource_group_name = None
    arm = bool(ns.cluster_name or group_given)
    if ns.kubeconfig and arm:
        raise argument_error(MutuallyExclusiveArgumentError(
            '--kubeconfig cannot be used with --resource-group/--name.',
            'Either fetch credentials from Azure with -g/-n, or use an existing kubeconfig with --kubeconfig.'))
    if _is_fleet(ns):
        if ns.kubeconfig or ns.cluster_name or ns.context:
            raise argument_error(MutuallyExclusiveArgumentError(
                '--ids and --all-clusters cannot be used with --kubeconfig, --context or --name.',
                'Verify one cluster with -g/-n or --kubeconfig, or several with --ids or --all-clusters.'))
        if getattr(ns, 'ids', None) and group_given:
            raise argument_error(MutuallyExclusiveArgumentError(
                '--resource-group narrows --all-clusters; --ids already names each cluster.',
                'Drop --resource-group, or use --all-clusters -g RG.'))
        if not group_given:
            ns.resource_group_name = None
        arm = False
    elif not ns.kubeconfig and not arm:
        raise argument_error(RequiredArgumentMissingError(
            'No cluster given.',
            'Give the AKS Arc cluster with --resource-group and --name, or an existing kubeconfig with '
            '--kubeconfig.'))
    if arm and not (ns.resource_group_name and ns.cluster_name):
        missing = '--name' if ns.resource_group_name else '--resource-group'
        given = '--resource-group' if missing == '--name' else '--name'
        raise argument_error(RequiredArgumentMissingError(
            f'{missing} is required with {given}.',
            'Give both --resource-group and --name of the AKS Arc cluster (or set a default group with '
            "'az config set defaults.group=RG')."))
    if ns.admin and not arm and not _is_fleet(ns):
        raise argument_error(MutuallyExclusiveArgumentError(
            '--admin applies only to credentials fetched with --resource-group/--name.',
            'Drop --admin; the user of --kubeconfig is chosen by --context.'))
    if ns.context and not ns.kubeconfig:
        raise argument_error(MutuallyExclusiveArgumentError(
            '--context applies only to --kubeconfig.',
            'Drop --context, or give the kubeconfig with --kubeconfig.'))
    if ns.kubeconfig:
        path = os.path.expanduser(ns.kubeconfig)
        if not os.path.exists(path):
            raise argument_error(FileOperationError(
                f"--kubeconfig file '{_shorten(ns.kubeconfig, 200)}' does not exist.",
                'Check the path, or fetch credentials from Azure with --resource-group and --name.'))
        if not os.path.isfile(path):
            kind = 'a folder' if os.path.isdir(path) else 'not a regular file'
            raise argument_error(FileOperationError(
                f"--kubeconfig '{_shorten(ns.kubeconfig, 200)}' is {kind}, not a kubeconfig file.",
                'Give the path of a kubeconfig file.'))
        if not os.access(path, os.R_OK):
            raise argument_error(FileOperationError(
                f"--kubeconfig file '{_shorten(ns.kubeconfig, 200)}' is not readable.",
                'Check the permissions of the file.'))
        ns.kubeconfig = path
    _validate_values(ns)


def _validate_values(ns):
    """What names the secrets, the probe's namespace, the ranges, the etcd options and --junit-xml."""
    from azure.cli.core.azclierror import InvalidArgumentValueError
    if hasattr(ns, 'secrets'):  # not on status
        refs = []
        for value in ns.secrets or []:
            ref = parse_secret_ref(value)
            if ref not in refs:
                refs.append(ref)
        ns.secrets = refs
    if getattr(ns, 'probe_namespace', None) is not None and not is_namespace(ns.probe_namespace or ''):
        raise argument_error(InvalidArgumentValueError(
            f"--probe-namespace '{_shorten(ns.probe_namespace or '')}' is not a valid namespace name.",
            'Give an existing namespace, for example --probe-namespace default.'))

    for option, value, low, high in (('--timeout', ns.timeout, 1, 86400),
                                     ('--rotation-days', ns.rotation_days, 1, 3650),
                                     ('--page-size', getattr(ns, 'page_size', None), 1, 100000)):
        if value is not None and not low <= value <= high:
            raise argument_error(InvalidArgumentValueError(
                f'{option} must be between {low} and {high}, not {value}.',
                f'Give {option} a value in that range.'))
    for option in ('etcd_container', 'etcd_endpoint'):
        if not hasattr(ns, option):  # status reads no etcd
            continue
        value = getattr(ns, option)
        if not value or _CONTROL.search(value) or (
                option == 'etcd_endpoint' and not re.fullmatch(r'(https?|unix|unixs)://[^\s]+', value)):
            raise argument_error(InvalidArgumentValueError(
                f"--{option.replace('_', '-')} '{_shorten(value or '')}' is not valid.",
                'Give a container name (kubeadm: etcd).' if option == 'etcd_container' else
                'Give the etcd client URL as seen inside the etcd pod, for example https://127.0.0.1:2379.'))
    for option in ('etcd_cacert', 'etcd_cert', 'etcd_key'):
        if not hasattr(ns, option):
            continue
        value = getattr(ns, option)
        if not value or not value.startswith('/') or _CONTROL.search(value):
            raise argument_error(InvalidArgumentValueError(
                f"--{option.replace('_', '-')} must be an absolute path inside the etcd pod.",
                'For kubeadm-style clusters the files are under /etc/kubernetes/pki/etcd/.'))
    for option in ('junit_xml', 'sarif'):
        if getattr(ns, option, None):
            setattr(ns, option, _check_report_path(getattr(ns, option), '--' + option.replace('_', '-')))
    if getattr(ns, 'junit_xml', None) and ns.junit_xml == getattr(ns, 'sarif', None):
        from azure.cli.core.azclierror import MutuallyExclusiveArgumentError
        raise argument_error(MutuallyExclusiveArgumentError('--junit-xml and --sarif name the same file.',
                                                            'Give each report a file of its own.'))


def _is_fleet(ns):
    return bool(getattr(ns, 'ids', None) or getattr(ns, 'all_clusters', None))


def _validate_fleet(ns):
    """--ids, --all-clusters and what narrows or paces them."""
    from azure.cli.core.azclierror import InvalidArgumentValueError, MutuallyExclusiveArgumentError
    if not hasattr(ns, 'ids'):
        return
    if ns.ids and ns.all_clusters:
        raise argument_error(MutuallyExclusiveArgumentError('--ids and --all-clusters cannot be used together.',
                                                            'Name the clusters with --ids, or find them all with '
                                                            '--all-clusters.'))
    if (ns.subscriptions or ns.tags) and not ns.all_clusters:
        raise argument_error(MutuallyExclusiveArgumentError('--subscriptions and --tag apply only to --all-clusters.',
                                                            'Add --all-clusters, or drop them.'))
    if ns.ids:
        from azext_kmsverify.discovery.select import parse_cluster_id
        values = [part for value in ns.ids for part in str(value).split()]
        for value in values:
            if parse_cluster_id(value) is None:
                raise argument_error(InvalidArgumentValueError(
                    f"--ids '{_shorten(value, 200)}' is not the ARM id of a connected cluster.",
                    'Give ids like /subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Kubernetes/'
                    "connectedClusters/NAME (e.g. from 'az resource list --resource-type "
                    "Microsoft.Kubernetes/connectedClusters --query [].id -o tsv')."))
        ns.ids = values
    tags = []
    for value in ns.tags or []:
        key, _, tag_value = value.partition('=')
        if not key or _CONTROL.search(value) or len(key) > 512:
            raise argument_error(InvalidArgumentValueError(f"--tag '{_shorten(value)}' is not KEY or KEY=VALUE.",
                                                           'Give a tag like --tag env=prod, or --tag site.'))
        tags.append((key, tag_value if '=' in value else None))
    ns.tags = tags
    for value in ns.subscriptions or []:
        if not re.fullmatch(r'[0-9a-fA-F-]{36}', value):
            raise argument_error(InvalidArgumentValueError(f"--subscriptions '{_shorten(value)}' is not a "
                                                           'subscription id.', 'Give subscription ids (GUIDs).'))
    if ns.shard:
        match = re.fullmatch(r'([0-9]{1,4})/([0-9]{1,4})', str(ns.shard))  # ASCII digits only: not '١/٢'
        if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
            raise argument_error(InvalidArgumentValueError(f"--shard '{_shorten(str(ns.shard))}' is not I/N with "
                                                           '1 <= I <= N.', 'Give the slice as I/N, e.g. --shard '
                                                                           '$(System.JobPositionInPhase)/'
                                                                           '$(System.TotalJobsInPhase).'))
        if not (ns.ids or ns.all_clusters):
            raise argument_error(MutuallyExclusiveArgumentError('--shard applies only to --ids or --all-clusters.',
                                                                'Add --all-clusters, or drop --shard.'))
        ns.shard = (int(match.group(1)), int(match.group(2)))
    if ns.max_parallel is not None and not 1 <= ns.max_parallel <= 64:
        raise argument_error(InvalidArgumentValueError(f'--max-parallel must be between 1 and 64, not '
                                                       f'{ns.max_parallel}.', 'Give --max-parallel a value in that '
                                                                              'range.'))


def _check_report_path(value, option='--junit-xml'):
    """A report path (``--junit-xml``, ``--sarif``) checked before anything runs: an existing folder, FIFO,
    socket or block device there is a bad argument; a character device (/dev/null, /dev/stdout) or a symlink is
    written through, never replaced."""
    import stat

    from azure.cli.core.azclierror import FileOperationError
    path = os.path.abspath(os.path.expanduser(value))
    shown = _shorten(value, 200)
    try:
        mode = os.stat(path).st_mode  # follows a symlink: what a write would reach
    except FileNotFoundError:
        mode = None
    except OSError as ex:
        raise argument_error(FileOperationError(f"{option} '{shown}' cannot be used: {ex.strerror}.",
                                                'Give a path in an existing, writable folder.')) from None
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
        kind = 'a folder' if stat.S_ISDIR(mode) else 'not a regular file'
        raise argument_error(FileOperationError(f"{option} '{shown}' is {kind}.",
                                                'Give the path of a file to write the report to.'))
    if mode is None:
        parent = os.path.dirname(path)
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise argument_error(FileOperationError(
                f"{option}: folder '{_shorten(parent, 200)}' does not exist or is not writable.",
                'Give a path in an existing, writable folder.'))
    elif not os.access(path, os.W_OK):
        raise argument_error(FileOperationError(f"{option} '{shown}' is not writable.",
                                                'Check the permissions of the file.'))
    return path


def _is_default(value):
    """az marks values from defaults (its own or configured) with ``is_default``."""
    return bool(getattr(value, 'is_default', False))
