# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""``az aksarc kms verify --ids ... | --all-clusters``: many clusters, one verdict.

clusters (--ids, or Resource Graph) -> shard -> each connected cluster verified exactly as one ``-g/-n`` run,
``--max-parallel`` at a time, from one az sign-in (each with its own kubeconfig and PoP key) -> one result.
One cluster's failure is its own outcome and never hides another's.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import replace

from azure.cli.core.azclierror import AzCLIError
from knack.log import get_logger

from azext_kmsverify.deadline import Deadline
from azext_kmsverify.discovery.graph import find_clusters, login_subscriptions
from azext_kmsverify.discovery.select import in_shard, parse_cluster_id
from azext_kmsverify.errors import EXIT_COULD_NOT_VERIFY, EXIT_VERIFICATION_FAILED
from azext_kmsverify.operations.verify import fail, report, sign_in, verify
from azext_kmsverify.options import ClusterOptions, VerifyOptions
from azext_kmsverify.text import printable

logger = get_logger(__name__)

PASSED, FAILED, COULD_NOT_VERIFY, NOT_VERIFIABLE = 'passed', 'failed', 'couldNotVerify', 'notVerifiable'


def main(cli_ctx, options: VerifyOptions) -> dict:

    try:
        clusters = _clusters(cli_ctx, options)
    except AzCLIError as error:
        fail(error, options.junit_xml)
    return report(cli_ctx, options.junit_xml, run(cli_ctx, options, clusters), fleet_exit_code)


def fleet_exit_code(result: dict, could_not_report: bool = False) -> int:
    """The worst outcome wins: 1 if any cluster could not be verified, else 4 if any found a problem, else 0."""
    outcomes = {c.get('outcome') for c in result['clusters']}
    if outcomes & {COULD_NOT_VERIFY, NOT_VERIFIABLE} or could_not_report:
        return EXIT_COULD_NOT_VERIFY
    if FAILED in outcomes:
        return EXIT_VERIFICATION_FAILED
    return 0


def _clusters(cli_ctx, options: VerifyOptions) -> list[dict]:
    if options.ids:
        clusters = [parse_cluster_id(value) for value in options.ids]
        for cluster in clusters:
            cluster['connectivityStatus'] = None  # not asked: the cluster itself will tell
    else:
        subscriptions = list(options.subscriptions) or login_subscriptions(cli_ctx)
        clusters = find_clusters(cli_ctx, subscriptions, options.cluster.resource_group, options.tags,
                                 Deadline(options.timeout))
    unique = {}
    for cluster in clusters:
        unique.setdefault(cluster['id'].lower(), cluster)
    chosen = [c for c in sorted(unique.values(), key=lambda c: c['id'].lower()) if in_shard(c['id'], options.shard)]
    if options.shard:
        logger.info('Shard %s/%s: %s of %s clusters', options.shard[0], options.shard[1], len(chosen), len(unique))
    return chosen


def run(cli_ctx, options: VerifyOptions, clusters: list[dict]) -> dict:
    """Verify ``clusters`` in parallel, in two overlapping phases of at most ``--max-parallel`` clusters each:
    signing in (the ARM credential operation, mostly waiting on ARM) and verifying (health, etcd reads). Ctrl-C
    or SIGTERM ends every cluster's waits and still deletes every probe secret already created (each cluster's
    own way out), then stops."""

    started = time.monotonic()
    deadlines = []
    lock = threading.Lock()

    def sign(cluster):
        deadline = Deadline(options.timeout)
        with lock:
            deadlines.append(deadline)
        return _sign_in_one(cli_ctx, options, cluster, deadline)

    previous = None
    if threading.current_thread() is threading.main_thread():
        def _terminate(_signum, _frame):
            raise KeyboardInterrupt
        previous = signal.signal(signal.SIGTERM, _terminate)
    progress = None
    if sys.stderr.isatty() and not cli_ctx.only_show_errors:
        progress = cli_ctx.get_progress_controller(det=True)
        progress.begin(message=f'Verifying {len(clusters)} clusters')
    results = {}
    workers = max(1, min(options.max_parallel, len(clusters) or 1))
    signing = ThreadPoolExecutor(max_workers=workers, thread_name_prefix='kmsverify-sign-in')
    verifying = ThreadPoolExecutor(max_workers=workers, thread_name_prefix='kmsverify-cluster')
    try:
        for cluster in clusters:
            if not _connected(cluster):
                results[cluster['id']] = _entry(cluster, NOT_VERIFIABLE, error=(
                    f"its connectivity status is {cluster.get('connectivityStatus')}, not Connected: it was not "
                    'contacted'))
        pending = {signing.submit(sign, cluster): ('sign', cluster) for cluster in clusters if _connected(cluster)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                phase, cluster = pending.pop(future)
                outcome = future.result()
                if phase == 'sign' and 'signedIn' in outcome:
                    pending[verifying.submit(_verify_one, cli_ctx, options, cluster, outcome)] = ('verify', cluster)
                    continue
                results[cluster['id']] = outcome
                if progress is not None:
                    progress.add(message=f'Verified {len(results)} of {len(clusters)} clusters', value=len(results),
                                 total_val=len(clusters))
    except KeyboardInterrupt:
        logger.warning("Interrupted: ending every cluster's run (probe secrets already created are deleted).")
        with lock:
            for deadline in deadlines:
                deadline.cancel()
        signing.shutdown(wait=True, cancel_futures=True)
        verifying.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        signing.shutdown(wait=True, cancel_futures=True)
        verifying.shutdown(wait=True, cancel_futures=True)
        if progress is not None:
            progress.end()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    ordered = [results[c['id']] for c in clusters]
    summary = {}
    for entry in ordered:
        summary[entry['outcome']] = summary.get(entry['outcome'], 0) + 1
    return {'passed': bool(ordered) and all(e['outcome'] == PASSED for e in ordered), 'clusters': ordered,
            'summary': dict(sorted(summary.items())), 'durationSeconds': round(time.monotonic() - started, 3),
            **({'shard': f'{options.shard[0]}/{options.shard[1]}'} if options.shard else {})}


def _connected(cluster: dict) -> bool:
    status = cluster.get('connectivityStatus')
    return status is None or str(status).lower() == 'connected'


def _single(options: VerifyOptions, cluster: dict) -> VerifyOptions:
    target = ClusterOptions(resource_group=cluster['resourceGroup'], name=cluster['name'],
                            subscription=cluster['subscriptionId'], admin=options.cluster.admin)
    return replace(options, cluster=target, ids=(), all_clusters=False, progress=False, junit_xml=None)


def _sign_in_one(cli_ctx, options: VerifyOptions, cluster: dict, deadline) -> dict:
    """Phase one: the cluster's kubeconfig and token source, or its outcome when signing in fails."""

    started = time.monotonic()
    try:
        signed_in = sign_in(cli_ctx, _single(options, cluster).cluster, deadline)
    except AzCLIError as error:
        return _entry(cluster, COULD_NOT_VERIFY, error=error.error_msg, started=started)
    except Exception as ex:  # pylint: disable=broad-except  # one cluster's crash is its own outcome, never str(ex)
        return _entry(cluster, COULD_NOT_VERIFY, error=f'failed unexpectedly while signing in ({type(ex).__name__})',
                      started=started)
    return {'signedIn': signed_in, 'deadline': deadline, 'started': started}


def _verify_one(cli_ctx, options: VerifyOptions, cluster: dict, signed: dict) -> dict:
    """Phase two: the cluster verified exactly as a single -g/-n run, with what phase one signed in."""

    started = signed['started']
    step = ['starting']
    try:
        result = verify(cli_ctx, _single(options, cluster), step, deadline=signed['deadline'],
                        signed_in=signed['signedIn'])
    except AzCLIError as error:
        return _entry(cluster, COULD_NOT_VERIFY, error=error.error_msg, started=started)
    except Exception as ex:  # pylint: disable=broad-except  # one cluster's crash is its own outcome, never str(ex)
        return _entry(cluster, COULD_NOT_VERIFY, error=f'failed unexpectedly while {step[0]} ({type(ex).__name__})',
                      started=started)
    return dict(result, **_entry(cluster, PASSED if result['passed'] else FAILED, started=started))


def _entry(cluster: dict, outcome: str, error: str | None = None, started: float | None = None) -> dict:
    entry = {'id': cluster['id'], 'outcome': outcome,
             'durationSeconds': round(time.monotonic() - started, 3) if started is not None else 0.0}
    if error is not None:
        entry.update(passed=False, error=printable(error),
                     cluster={'source': 'azure', 'name': cluster['name'], 'resourceGroup': cluster['resourceGroup'],
                              'subscriptionId': cluster['subscriptionId'],
                              'connectivityStatus': cluster.get('connectivityStatus')})
    return entry
