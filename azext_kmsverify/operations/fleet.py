# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Many clusters, one verdict (``az aksarc kms verify --ids ... | --all-clusters``), for any command's per-cluster
body (``body(run, session) -> result``: ``verify.verify_cluster``, chosen in ``custom.py``; this module imports no
other command's).

clusters (--ids, or Resource Graph) -> shard -> each connected cluster run exactly as one ``-g/-n`` run (a child
:class:`~azext_kmsverify.operations.run.Run` with its own deadline), ``--max-parallel`` at a time, from one az
sign-in (each with its own kubeconfig and PoP key) -> one result. One cluster's failure is its own outcome and
never hides another's.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace

from knack.log import get_logger

from azext_kmsverify.discovery.graph import find_clusters, login_subscriptions
from azext_kmsverify.discovery.select import in_shard, parse_cluster_id
from azext_kmsverify.errors import COULD_NOT_VERIFY, FAILED, NOT_VERIFIABLE, PASSED
from azext_kmsverify.operations.run import Run
from azext_kmsverify.options import ClusterOptions, VerifyOptions
from azext_kmsverify.text import printable
from azext_kmsverify.verdict.posture import fleet_columns, with_posture

logger = get_logger(__name__)


def main(cli_ctx, options: VerifyOptions, body) -> dict:
    """The fleet: ``body(run, session)`` on every cluster found; the result, its reports and its exit code (the
    worst cluster outcome wins)."""
    return Run(cli_ctx, options).execute(lambda run: run_fleet(run, body))


def _clusters(run: Run) -> list[dict]:
    options, cli_ctx = run.options, run.cli_ctx
    with run.step('finding the clusters'):
        if options.ids:
            clusters = [parse_cluster_id(value) for value in options.ids]
            for cluster in clusters:
                cluster['connectivityStatus'] = None  # not asked: the cluster itself will tell
        else:
            subscriptions = list(options.subscriptions) or login_subscriptions(cli_ctx)
            clusters = find_clusters(cli_ctx, subscriptions, options.cluster.resource_group, options.tags,
                                     run.deadline)
    unique = {}
    for cluster in clusters:
        unique.setdefault(cluster['id'].lower(), cluster)
    chosen = [c for c in sorted(unique.values(), key=lambda c: c['id'].lower()) if in_shard(c['id'], options.shard)]
    if options.shard:
        logger.info('Shard %s/%s: %s of %s clusters', options.shard[0], options.shard[1], len(chosen), len(unique))
    if not chosen:  # a pipeline gating on the exit code must not go green with nothing verified (exit 3)
        logger.error('%s', _nothing_found(options, len(unique)))
    return chosen


def _nothing_found(options, found: int) -> str:
    """The one line of a fleet run that has no cluster to verify: why, and what to do."""
    if options.shard:
        return (f'No cluster verified: shard {options.shard[0]}/{options.shard[1]} holds none of the {found} '
                'clusters found. Use fewer shards than clusters (each shard of a pipeline then has work).')
    where = ', '.join(filter(None, [
        f"subscriptions {', '.join(options.subscriptions)}" if options.subscriptions else "the login's subscriptions",
        f'resource group {options.cluster.resource_group}' if options.cluster.resource_group else '',
        'tags ' + ', '.join(k if v is None else f'{k}={v}' for k, v in options.tags) if options.tags else '']))
    return (f'No cluster verified: Azure Resource Graph found no AKS Arc cluster in {printable(where)}. Check '
            '--tag and -g for typos, and that the login has Reader on the subscriptions (or name clusters with --ids).')


def run_fleet(run: Run, body) -> dict:
    """Run ``body`` on the clusters in parallel, in two overlapping phases of at most ``--max-parallel`` clusters
    each: signing in (the ARM credential operation, mostly waiting on ARM) and the body (health, etcd reads).
    Ctrl-C or SIGTERM ends every cluster's waits (``run.cancel``) and still deletes every probe secret already
    created (each cluster's own way out), then stops."""

    options = run.options
    clusters = _clusters(run)
    started = time.monotonic()
    results = {}
    workers = max(1, min(options.max_parallel, len(clusters) or 1))
    signing = ThreadPoolExecutor(max_workers=workers, thread_name_prefix='kmsverify-sign-in')
    verifying = ThreadPoolExecutor(max_workers=workers, thread_name_prefix='kmsverify-cluster')
    with run.interrupts(), run.progress(f'Verifying {len(clusters)} clusters') as progress:
        try:
            for cluster in clusters:
                if not _connected(cluster):
                    results[cluster['id']] = _entry(cluster, NOT_VERIFIABLE, error=(
                        f"its connectivity status is {cluster.get('connectivityStatus')}, not Connected: it was not "
                        'contacted'))
            pending = {signing.submit(_sign_in_one, run, cluster): ('sign', cluster)
                       for cluster in clusters if _connected(cluster)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    phase, cluster = pending.pop(future)
                    outcome = future.result()
                    if phase == 'sign' and 'session' in outcome:
                        pending[verifying.submit(_run_one, body, cluster, outcome)] = ('run', cluster)
                        continue
                    results[cluster['id']] = outcome
                    progress(len(results), len(clusters), f'Verified {len(results)} of {len(clusters)} clusters')
        except KeyboardInterrupt:
            logger.warning("Interrupted: ending every cluster's run (probe secrets already created are deleted).")
            run.cancel()
            raise
        finally:
            signing.shutdown(wait=True, cancel_futures=True)
            verifying.shutdown(wait=True, cancel_futures=True)
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
    return replace(options, cluster=target, ids=(), all_clusters=False, junit_xml=None,
                   sarif=None)


def _sign_in_one(run: Run, cluster: dict) -> dict:
    """Phase one: the cluster's child run and signed-in session, or its outcome when signing in fails."""

    started = time.monotonic()
    child = run.child(_single(run.options, cluster))
    session = child.session(child.options.cluster, child.options.etcd)
    try:
        session.sign_in()
    except Exception as ex:  # pylint: disable=broad-except  # one cluster's failure is its own outcome
        return _entry(cluster, COULD_NOT_VERIFY, error=child.one_line(ex), started=started)
    return {'run': child, 'session': session, 'started': started}


def _run_one(body, cluster: dict, signed: dict) -> dict:
    """Phase two: the body on the cluster, exactly as a single -g/-n run, with what phase one signed in."""

    started, child = signed['started'], signed['run']
    try:
        result = body(child, signed['session'])
    except Exception as ex:  # pylint: disable=broad-except  # one cluster's failure is its own outcome
        return _entry(cluster, COULD_NOT_VERIFY, error=child.one_line(ex), started=started)
    # The cluster's KMS posture: its KMS version (KmsV1Deprecated, a failure with --fail-on-kms-v1), key age and
    # missing permissions (status), as columns of its row.
    result = with_posture(result, getattr(child.options, 'fail_on_kms_v1', False))
    result.update(fleet_columns(result))
    return _entry(cluster, PASSED if result['passed'] else FAILED, started=started, result=result)


@dataclass
class ClusterOutcome:
    """One cluster of a fleet: its outcome, and its single-cluster result (``result``) or why there is none
    (``error``). ``cluster`` is the ARM row (``id``, ``name``, ``resourceGroup``, ``subscriptionId``,
    ``connectivityStatus``)."""

    cluster: dict
    outcome: str
    started: float | None = None
    error: str | None = None
    result: dict | None = None
    duration: float = field(init=False)

    def __post_init__(self):
        self.duration = round(time.monotonic() - self.started, 3) if self.started is not None else 0.0

    def to_dict(self) -> dict:
        """The cluster's entry in ``clusters`` (its single-cluster result, with ``id``, ``outcome``, ``error``,
        ``durationSeconds``)."""
        entry = {'id': self.cluster['id'], 'outcome': self.outcome, 'durationSeconds': self.duration}
        if self.error is not None:
            cluster = self.cluster
            entry.update(passed=False, error=printable(self.error),
                         cluster={'source': 'azure', 'id': cluster['id'], 'name': cluster['name'],
                                  'resourceGroup': cluster['resourceGroup'],
                                  'subscriptionId': cluster['subscriptionId'],
                                  'connectivityStatus': cluster.get('connectivityStatus')})
        return dict(self.result, **entry) if self.result is not None else entry


def _entry(cluster: dict, outcome: str, error: str | None = None, started: float | None = None,
           result: dict | None = None) -> dict:
    return ClusterOutcome(cluster, outcome, started, error, result).to_dict()
