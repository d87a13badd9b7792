# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Arguments of ``az aksarc kms verify``. Kept free of heavy imports."""

from __future__ import annotations

from knack.arguments import CLIArgumentType

from azext_kmsverify import defaults
from azext_kmsverify._validators import AppendValues


def load_arguments(self, _):
    from azure.cli.core.commands.parameters import get_enum_type, get_three_state_flag

    # Defaults live in defaults.py so help, validation and code agree. What both commands share (the cluster,
    # the sign-in, etcd inside the pod, the scan) is declared once, on the group.
    with self.argument_context('aksarc kms') as c:
        # az applies a configured default group (defaults.group) whatever this says; _validators decides ARM
        # mode from --name, so the default never turns a --kubeconfig run into an ARM call.
        c.argument('resource_group_name', CLIArgumentType(options_list=['--resource-group', '-g']),
                   arg_group='Cluster', help='Resource group of the AKS Arc cluster (Arc connected cluster).')
        c.argument('cluster_name', options_list=['--name', '-n'], arg_group='Cluster',
                   help='Name of the AKS Arc cluster (Arc connected cluster).')
        c.argument('admin', arg_type=get_three_state_flag(), arg_group='Cluster',
                   help='Use the certificate-based admin kubeconfig (listAdminKubeconfig) instead of Entra ID.')
        c.argument('kubeconfig', options_list=['--kubeconfig'], arg_group='Cluster',
                   help='Use this existing kubeconfig instead of fetching credentials from Azure.')
        c.argument('context', options_list=['--context'], arg_group='Cluster',
                   help='Context of --kubeconfig to use. Default: its current context.')

        c.argument('rotation_days',
                   default=defaults.ROTATION_DAYS, options_list=['--rotation-days'], type=int, arg_group='Scan',
                   help='Key rotation period in days (AKS Arc: 30). KMS v1: secrets last written longer ago are '
                        'reported as written before the last rotation. KMS v2: a current key in use for longer '
                        '(plus 7 days of grace) is reported by the KmsKeyRotation check.')
        c.argument('page_size',
                   default=defaults.PAGE_SIZE, options_list=['--page-size'], type=int, arg_group='Scan',
                   help='At most this many keys per etcdctl call when scanning (pages are also kept near '
                        '4 MiB of values).')

        c.argument('etcd_pod', options_list=['--etcd-pod'], arg_group='etcd',
                   help='Name of the etcd pod in kube-system to exec into. Default: found by label component=etcd.')
        c.argument('etcd_container',
                   default=defaults.ETCD_CONTAINER, options_list=['--etcd-container'], arg_group='etcd',
                   help='Container of the etcd pod that has etcdctl.')
        c.argument('etcd_endpoint',
                   default=defaults.ETCD_ENDPOINT, options_list=['--etcd-endpoint'], arg_group='etcd',
                   help='etcd client URL as seen from inside the etcd pod.')
        c.argument('etcd_cacert',
                   default=defaults.ETCD_CACERT, options_list=['--etcd-cacert'], arg_group='etcd',
                   help='Path of the etcd CA certificate inside the etcd pod.')
        c.argument('etcd_cert',
                   default=defaults.ETCD_CERT, options_list=['--etcd-cert'], arg_group='etcd',
                   help='Path of the etcd client certificate inside the etcd pod.')
        c.argument('etcd_key',
                   default=defaults.ETCD_KEY, options_list=['--etcd-key'], arg_group='etcd',
                   help='Path of the etcd client key inside the etcd pod.')
        c.argument('junit_xml', options_list=['--junit-xml'],
                   help='Also write the result as a JUnit XML report to this file (for PublishTestResults).')
        c.argument('sarif', options_list=['--sarif'],
                   help='Also write the result as a SARIF 2.1.0 file (for GitHub code scanning upload-sarif or Azure '
                        'DevOps AdvancedSecurity-Publish): a rule per check, a result per failing check and secret.')

    with self.argument_context('aksarc kms verify') as c:
        c.argument('secrets', options_list=['--secret'], nargs='+', action=AppendValues, arg_group='Secrets',
                   help='Secret to verify, as NAMESPACE/NAME. Repeat or give several. Without --secret and '
                        '--all-secrets, a probe secret is created, verified and deleted.')
        c.argument('all_secrets', options_list=['--all-secrets'], arg_type=get_three_state_flag(),
                   arg_group='Scan', help='Scan every secret stored in etcd (read-only).')
        c.argument('resources', options_list=['--resource'], nargs='+', action=AppendValues, arg_group='Scan',
                   help='With --all-secrets: scan this resource instead of secrets, as RESOURCE or RESOURCE.GROUP '
                        '(configmaps, widgets.example.com: any resource the API server encrypts, custom resources '
                        'included). Repeat or give several; name secrets too to keep scanning them.')
        c.argument('probe', options_list=['--probe'], arg_type=get_three_state_flag(), arg_group='Secrets',
                   help='Create, verify and delete a probe secret. Default: only when neither --secret nor '
                        '--all-secrets is given.')
    for scope in ('aksarc kms verify', 'aksarc kms status'):
        with self.argument_context(scope) as c:
            c.argument('probe_namespace',
                       default=defaults.PROBE_NAMESPACE, options_list=['--probe-namespace'], arg_group='Secrets',
                       help='Namespace of the probe secret (status: the namespace whose access it checks for the '
                            'probe).')
            c.argument('fail_on_stale', options_list=['--fail-on-stale'], arg_type=get_three_state_flag(),
                       arg_group='Scan', help='Fail (instead of warn) when secrets were written under an older key, '
                                              'or the current KMS v2 key is older than --rotation-days plus 7 days '
                                              '(KmsKeyRotation).')
            c.argument('timeout',
                       default=defaults.TIMEOUT_SECONDS, options_list=['--timeout'], type=int,
                       help="Seconds the whole verification may take (with several clusters: each cluster's).")
            c.argument('ids', options_list=['--ids'], nargs='+', action=AppendValues, arg_group='Fleet',
                       help='Full ARM ids of AKS Arc clusters (connected clusters), verified in parallel with one '
                            'verdict.')
            c.argument('all_clusters', options_list=['--all-clusters'], arg_type=get_three_state_flag(),
                       arg_group='Fleet', help='Every AKS Arc cluster the sign-in can see, found with Azure Resource '
                                               'Graph (narrow it with --subscriptions, -g and --tag).')
            c.argument('subscriptions', options_list=['--subscriptions'], nargs='+', action=AppendValues,
                       arg_group='Fleet', help='With --all-clusters: these subscriptions only. Default: every '
                                               'subscription of the az login (in its tenant).')
            c.argument('tags', options_list=['--tag'], nargs='+', action=AppendValues, arg_group='Fleet',
                       help='With --all-clusters: only clusters with this tag, as KEY or KEY=VALUE. Repeat to require '
                            'several.')
            c.argument('max_parallel', options_list=['--max-parallel'], type=int, default=defaults.MAX_PARALLEL,
                       arg_group='Fleet', help='Clusters verified at once.')
            c.argument('shard', options_list=['--shard'], arg_group='Fleet',
                       help='I/N: verify only the I-th of N deterministic slices of the clusters (by ARM id), for N '
                            'parallel pipeline jobs.')
            c.argument('fail_on_kms_v1', options_list=['--fail-on-kms-v1'], arg_type=get_three_state_flag(),
                       arg_group='Posture', help='Fail (instead of warn) when the cluster uses KMS v1 (deprecated '
                                                 'since Kubernetes 1.28, off by default since 1.29).')

    with self.argument_context('aksarc kms reencrypt') as c:
        c.argument('secrets', options_list=['--secret'], nargs='+', action=AppendValues, arg_group='Targets',
                   help='Only this secret, as NAMESPACE/NAME (if it needs a rewrite). Repeat or give several.')
        c.argument('namespaces', options_list=['--namespace'], nargs='+', action=AppendValues, arg_group='Targets',
                   help='Only secrets in this namespace. Repeat or give several.')
        c.argument('resources', options_list=['--resource'], nargs='+', action=AppendValues, arg_group='Targets',
                   help='Rewrite objects of this resource instead of secrets, as RESOURCE or RESOURCE.GROUP '
                        '(configmaps, widgets.example.com; a custom resource is written in its storage version). '
                        'Repeat or give several; name secrets too to keep rewriting them.')
        c.argument('only', options_list=['--only'], arg_type=get_enum_type(defaults.REENCRYPT_ONLY), default='all',
                   arg_group='Targets',
                   help='Which findings to fix: plaintext, local-key, stale (under an older key), or all (everything '
                        'verify --all-secrets flags).')
        c.argument('dry_run', options_list=['--dry-run'], arg_type=get_three_state_flag(),
                   help='Show the plan; write nothing.')
        c.argument('yes', options_list=['--yes', '-y'], arg_type=get_three_state_flag(),
                   help='Do not ask for confirmation (needed without a terminal).')
        c.argument('parallel', options_list=['--parallel'], type=int, default=defaults.REENCRYPT_PARALLEL,
                   arg_group='Pace', help='Rewrites in flight at once.')
        c.argument('max_per_second', options_list=['--max-per-second'], type=float, default=0, arg_group='Pace',
                   help='At most this many rewrites per second (0: no limit; 429 answers are honoured anyway).')
        c.argument('timeout',
                   default=defaults.REENCRYPT_TIMEOUT_SECONDS, options_list=['--timeout'], type=int,
                   help='Seconds the whole run may take; what is not rewritten by then is reported.')
