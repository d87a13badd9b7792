# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""``az aksarc kms status`` on one cluster, in the run frame (``run.py``): what the API server says of its
encryption (``verdict.status``), read from ``/readyz``, ``/metrics``, SelfSubjectReview and SelfSubjectAccessReview.

It never execs and never writes: no etcd pod is found, no secret is read or created. Every source may be refused or
absent (an identity that can read only ``/readyz``, a server without SelfSubjectAccessReview): each fact then says
why it is unknown and the command goes on. A fleet (``--ids``, ``--all-clusters``) runs :func:`status_cluster` per
cluster (``fleet.py``; chosen in ``custom.py``).
"""

from __future__ import annotations

from knack.log import get_logger

from azext_kmsverify.kube.access import preflight_all, whoami
from azext_kmsverify.kube.health import read_health
from azext_kmsverify.kube.metrics import metrics_page
from azext_kmsverify.operations.run import Run
from azext_kmsverify.options import StatusOptions
from azext_kmsverify.verdict.posture import with_posture
from azext_kmsverify.verdict.status import build_status

logger = get_logger(__name__)


def main(cli_ctx, options: StatusOptions) -> dict:
    """The command on one cluster: the result for az to print, the reports, and the exit code."""
    return Run(cli_ctx, options).execute(lambda run: status_cluster(run, run.session(options.cluster, options.etcd)))


def status_cluster(run: Run, session) -> dict:
    """The status of the cluster of ``session`` (signed in or not) with ``run.options``: reads only."""
    options = run.options
    with session:
        client = session.client
        with run.step('reading /readyz'):
            readyz_status, readyz_body, reasons, unreachable = read_health(client)
        with run.step('reading /metrics'):
            metrics_text, metrics_why = metrics_page(client)
        if metrics_text is None:
            logger.info('Status without /metrics: %s', metrics_why)
        with run.step('asking the API server who this identity is'):
            user, who_why = whoami(client)
        with run.step('asking the API server for the permissions'):
            access = preflight_all(client, options.probe_namespace)
        status = build_status(readyz_status=readyz_status, readyz_body=readyz_body, check_reasons=reasons,
                              readyz_unreachable=unreachable, metrics_text=metrics_text, metrics_why=metrics_why,
                              access=access, identity=(user, who_why), rotation_days=options.rotation_days,
                              fail_on_stale=options.fail_on_stale)
        result = {'cluster': session.info, **status.to_dict()}
    return with_posture(result, options.fail_on_kms_v1)
