# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Command functions: each builds the frozen options of its run and hands them to its module in ``operations``
(which runs in the frame of ``operations/run.py``); a fleet is dispatched here, so no command module imports
another.

az reads a command's arguments from its function's signature; defaults and help: ``_params.py``, ``defaults.py``.
``from_args`` reads only its fields from ``locals()`` (``cmd`` is not one).
"""

from __future__ import annotations

from azext_kmsverify import defaults


def verify_kms(cmd, *, resource_group_name=None, cluster_name=None, admin=False, kubeconfig=None, context=None,
               secrets=None, all_secrets=False, resources=None, probe=None, probe_namespace=defaults.PROBE_NAMESPACE,
               fail_on_stale=False, fail_on_kms_v1=False, rotation_days=defaults.ROTATION_DAYS, etcd_pod=None,
               etcd_container=defaults.ETCD_CONTAINER, etcd_endpoint=defaults.ETCD_ENDPOINT,
               etcd_cacert=defaults.ETCD_CACERT, etcd_cert=defaults.ETCD_CERT, etcd_key=defaults.ETCD_KEY,
               page_size=defaults.PAGE_SIZE, timeout=defaults.TIMEOUT_SECONDS, junit_xml=None, sarif=None, ids=None,
               all_clusters=False, subscriptions=None, tags=None, max_parallel=defaults.MAX_PARALLEL, shard=None):
    # pylint: disable=unused-argument,too-many-locals  # one local per argument, each read through locals()
    from azext_kmsverify.operations import verify
    from azext_kmsverify.options import VerifyOptions
    return _one_or_fleet(cmd, VerifyOptions.from_args(locals()), verify.main, verify.verify_cluster)


def status_kms(cmd, *, resource_group_name=None, cluster_name=None, admin=False, kubeconfig=None, context=None,
               probe_namespace=defaults.PROBE_NAMESPACE, fail_on_stale=False, fail_on_kms_v1=False,
               rotation_days=defaults.ROTATION_DAYS, timeout=defaults.TIMEOUT_SECONDS, junit_xml=None, sarif=None,
               ids=None, all_clusters=False, subscriptions=None, tags=None, max_parallel=defaults.MAX_PARALLEL,
               shard=None):
    # pylint: disable=unused-argument,too-many-locals  # one local per argument, each read through locals()
    from azext_kmsverify.operations import status
    from azext_kmsverify.options import StatusOptions
    return _one_or_fleet(cmd, StatusOptions.from_args(locals()), status.main, status.status_cluster)


def reencrypt_kms(cmd, *, resource_group_name=None, cluster_name=None, admin=False, kubeconfig=None, context=None,
                  secrets=None, namespaces=None, resources=None, only='all', dry_run=False, yes=False,
                  parallel=defaults.REENCRYPT_PARALLEL, max_per_second=0, rotation_days=defaults.ROTATION_DAYS,
                  etcd_pod=None, etcd_container=defaults.ETCD_CONTAINER, etcd_endpoint=defaults.ETCD_ENDPOINT,
                  etcd_cacert=defaults.ETCD_CACERT, etcd_cert=defaults.ETCD_CERT, etcd_key=defaults.ETCD_KEY,
                  page_size=defaults.PAGE_SIZE, timeout=defaults.REENCRYPT_TIMEOUT_SECONDS, junit_xml=None,
                  sarif=None):
    # pylint: disable=unused-argument,too-many-locals  # one local per argument, each read through locals()
    from azext_kmsverify.operations.reencrypt import main
    from azext_kmsverify.options import ReencryptOptions
    return main(cmd.cli_ctx, ReencryptOptions.from_args(locals()))


def _one_or_fleet(cmd, options, main, body):
    """Many clusters: the fleet runs the command's per-cluster ``body`` on each; else the command's ``main``."""
    if options.fleet:
        from azext_kmsverify.operations import fleet
        return fleet.main(cmd.cli_ctx, options, body)
    return main(cmd.cli_ctx, options)
