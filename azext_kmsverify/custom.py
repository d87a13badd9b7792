# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Command functions: each builds the frozen options of its run and hands them to its module in ``operations``
(which runs in the frame of ``operations/run.py``); a fleet is dispatched here, so no command module imports
another.

The parameters are listed because az reads a command's arguments from its function's signature; their
defaults and help live in ``_params.py`` and ``defaults.py``.
"""

from __future__ import annotations

from azext_kmsverify import defaults


def verify_kms(cmd, *, resource_group_name=None, cluster_name=None, admin=False, kubeconfig=None, context=None,
               secrets=None, all_secrets=False, probe=None, probe_namespace=defaults.PROBE_NAMESPACE,
               fail_on_stale=False, rotation_days=defaults.ROTATION_DAYS, etcd_pod=None,
               etcd_container=defaults.ETCD_CONTAINER, etcd_endpoint=defaults.ETCD_ENDPOINT,
               etcd_cacert=defaults.ETCD_CACERT, etcd_cert=defaults.ETCD_CERT, etcd_key=defaults.ETCD_KEY,
               page_size=defaults.PAGE_SIZE, timeout=defaults.TIMEOUT_SECONDS, junit_xml=None, sarif=None, ids=None,
               all_clusters=False, subscriptions=None, tags=None, max_parallel=defaults.MAX_PARALLEL, shard=None):
    # pylint: disable=unused-argument,too-many-locals  # one local per argument, each read through locals()
    from azext_kmsverify.operations import verify
    from azext_kmsverify.options import VerifyOptions
    args = dict(locals())
    args.pop('cmd')
    options = VerifyOptions.from_args(args)
    if options.fleet:  # many clusters: the fleet runs verify's per-cluster body on each
        from azext_kmsverify.operations import fleet
        return fleet.main(cmd.cli_ctx, options, verify.verify_cluster)
    return verify.main(cmd.cli_ctx, options)


def reencrypt_kms(cmd, *, resource_group_name=None, cluster_name=None, admin=False, kubeconfig=None, context=None,
                  secrets=None, namespaces=None, only='all', dry_run=False, yes=False,
                  parallel=defaults.REENCRYPT_PARALLEL, max_per_second=0, rotation_days=defaults.ROTATION_DAYS,
                  etcd_pod=None, etcd_container=defaults.ETCD_CONTAINER, etcd_endpoint=defaults.ETCD_ENDPOINT,
                  etcd_cacert=defaults.ETCD_CACERT, etcd_cert=defaults.ETCD_CERT, etcd_key=defaults.ETCD_KEY,
                  page_size=defaults.PAGE_SIZE, timeout=defaults.REENCRYPT_TIMEOUT_SECONDS, junit_xml=None,
                  sarif=None):
    # pylint: disable=unused-argument,too-many-locals  # one local per argument, each read through locals()
    from azext_kmsverify.operations.reencrypt import main
    from azext_kmsverify.options import ReencryptOptions
    args = dict(locals())
    args.pop('cmd')
    return main(cmd.cli_ctx, ReencryptOptions.from_args(args))
