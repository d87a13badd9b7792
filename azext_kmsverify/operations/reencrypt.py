# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""``az aksarc kms reencrypt``: plan from etcd, know the current key without writing, rewrite each target
through the API losing nothing, then prove from etcd that each is stored with KMS under the current key.

sign in -> scan etcd (verdict.scan) -> targets (verdict.plan) -> confirm -> rewrite in parallel (kube.rewrite)
-> read etcd again -> result (report.table, report.junit).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from azure.cli.core.azclierror import AzCLIError, AzureResponseError, ManualInterrupt, ValidationError
from knack.log import get_logger
from knack.prompting import prompt_y_n

from azext_kmsverify import defaults
from azext_kmsverify.deadline import Deadline
from azext_kmsverify.errors import EXIT_BAD_ARGUMENTS, argument_error, make
from azext_kmsverify.etcd.reader import EtcdReader
from azext_kmsverify.etcd.records import EtcdctlError, EtcdOutputError
from azext_kmsverify.kube import rewrite as rewriting
from azext_kmsverify.kube.client import KubeClient
from azext_kmsverify.kube.metrics import current_key_hash
from azext_kmsverify.kube.pods import EtcdExec, etcd_pods
from azext_kmsverify.kube.secrets import old_writes
from azext_kmsverify.operations.verify import etcdctl_error, guarded, progress_bar, report, sign_in
from azext_kmsverify.options import ReencryptOptions
from azext_kmsverify.text import printable
from azext_kmsverify.verdict.checks import FAILED, PASSED, SKIPPED, check
from azext_kmsverify.verdict.classify import classify
from azext_kmsverify.verdict.plan import HASH_PREFIX, addressable, force_write, is_current_key, verdict_after
from azext_kmsverify.verdict.plan import targets as select
from azext_kmsverify.verdict.scan import SOURCE_METRICS, ScanSummary

logger = get_logger(__name__)


def main(cli_ctx, options: ReencryptOptions) -> dict:
    step = ['starting']
    result = guarded(lambda: reencrypt(cli_ctx, options, step), step, options.junit_xml)
    return report(cli_ctx, options.junit_xml, result)


def reencrypt(cli_ctx, options: ReencryptOptions, step: list) -> dict:
    started = time.monotonic()
    deadline = Deadline(options.timeout)
    runner = None
    try:
        step[0] = 'signing in'
        kubeconfig, cluster_info = sign_in(cli_ctx, options.cluster, deadline)
        with KubeClient(kubeconfig, deadline, cluster_info['credential']['type']) as client:
            cluster_info['server'] = client.server
            step[0] = 'finding the etcd pods'
            etcd = options.etcd
            runner = EtcdExec(client, etcd_pods(client, etcd.pod), etcd.container)
            reader = EtcdReader(runner, endpoint=etcd.endpoint, cacert=etcd.cacert, cert=etcd.cert,
                                key_file=etcd.key, page_size=etcd.page_size, page_bytes=defaults.PAGE_BYTES)
            step[0] = 'planning from etcd'
            plan = _plan(cli_ctx, client, reader, options)
            targets = plan['targets']
            result = {'passed': False, 'dryRun': options.dry_run, 'interrupted': False, 'cluster': cluster_info,
                      'etcdPod': runner.pod, 'currentKeyId': plan['currentKeyId'],
                      'currentKeyIdSource': plan['currentKeyIdSource'],
                      'plan': {'scanned': plan['scanned'], 'revision': plan['revision'], 'targets': len(targets),
                               'byKind': _count(targets, 'kind')}}
            if options.dry_run or not targets:
                for target in targets:
                    target['outcome'] = 'planned'
                result.update(passed=not targets, targets=[_public(t) for t in targets],
                              summary=_count(targets, 'outcome'), durationSeconds=round(time.monotonic() - started, 3))
                result['checks'] = _checks(result, targets)
                return result
            _confirm(options, targets)
            step[0] = 'rewriting secrets'
            written, interrupted = _Rewriter(client, reader, plan, options, deadline).run(cli_ctx, targets)
            step[0] = 'verifying from etcd'
            _verify_from_etcd(reader, targets, plan['currentKeyId'])
            result['currentKeyId'] = _named_key(plan['currentKeyId'], targets)
            elapsed = time.monotonic() - started
            result.update(passed=all(t['outcome'] in _DONE for t in targets),
                          interrupted=interrupted, targets=[_public(t) for t in targets],
                          summary=_count(targets, 'outcome'), durationSeconds=round(elapsed, 3),
                          writesPerSecond=round(written / elapsed, 1) if elapsed else None)
            if interrupted:
                result['passed'] = False
            result['checks'] = _checks(result, targets)
            return result
    except EtcdctlError as error:
        raise etcdctl_error(error, runner) from None
    except EtcdOutputError as error:
        raise make(AzureResponseError, f'etcdctl output could not be read: {error}',
                   'Check the etcdctl version in the etcd pod (3.4 and 3.5 are supported).') from None


def _plan(cli_ctx, client, reader, options: ReencryptOptions) -> dict:
    """The scan of ``verify --all-secrets`` (etcd is the source of truth), with the targets' ModRevisions."""

    key_hash, how = current_key_hash(client)
    summary = ScanSummary(current_key_hash=key_hash)
    revisions = {}
    prefix = len(defaults.ETCD_SECRETS_PREFIX)
    progress = progress_bar(cli_ctx, 'Planning from etcd')
    count = 0
    try:
        for kv in reader.iter_prefix(defaults.ETCD_SECRETS_PREFIX):
            namespace, _, name = kv.key[prefix:].decode('utf-8', 'replace').partition('/')
            classification = classify(kv.value)
            summary.add(namespace, name, classification, kv.mod_revision)
            # Keep ModRevisions only of what can become a target (not KMS, KMS v1, KMS v2 not known current).
            if classification.get('storage') != 'kms' or classification.get('kmsVersion') != 'v2' or \
                    classification.get('keyId') != summary.current_key_id:
                revisions[(namespace, name)] = kv.mod_revision
            count += 1
            if progress is not None and count % 500 == 0:
                progress.add(message=f'Planning: read {count} of {reader.total} secrets', value=count,
                             total_val=max(reader.total or count, count))
    finally:
        if progress is not None:
            progress.end()
    write_times, skip = old_writes(client, options.rotation_days) if summary.needs_write_times() else (None, None)
    current_id = None
    if key_hash and summary.current_key_id is None:
        # /metrics names the current key, but no stored value carries a key id with that hash: nothing has been
        # written since the rotation, so every KMS v2 value is under an older key. Falling back to the latest
        # write would take the old key for the current one and plan nothing. The hash stands for the key id.
        current_id = key_hash
        logger.info('No secret is stored under the current KMS v2 key yet (%s): every KMS v2 secret is a target',
                    how)
    scan, _ = summary.finish(current_key_id=current_id, current_key_source=SOURCE_METRICS if current_id else None,
                             write_times=write_times, age_skip_reason=skip, rotation_days=options.rotation_days,
                             revision=reader.revision)
    if skip:
        logger.warning('KMS v1 secrets written before the last rotation cannot be found: %s', skip)
    chosen = select(scan, options.only, options.namespaces, options.secrets)
    for target in chosen:
        target['modRevisionBefore'] = revisions.get((target['namespace'], target['name']))
    if options.secrets:
        _named_but_current(options, chosen)
    logger.info('Plan: %s of %s secrets to rewrite (current KMS v2 key: %s, %s)', len(chosen), scan['total'],
                scan.get('currentKeyId'), how)
    return {'targets': chosen, 'scanned': scan['total'], 'revision': reader.revision,
            'currentKeyId': scan.get('currentKeyId'), 'currentKeyIdSource': scan.get('currentKeyIdSource')}


def _named_but_current(options, chosen):
    """``--secret`` names that are not targets are reported: current already, or not in etcd."""
    planned = {(t['namespace'], t['name']) for t in chosen}
    for namespace, name in options.secrets:
        if (namespace, name) not in planned:
            logger.warning('Secret %s/%s needs no rewrite (already stored with KMS under the current key, or not in '
                           'etcd).', printable(namespace), printable(name))


def _confirm(options: ReencryptOptions, targets: list) -> None:
    if options.yes:
        return
    counts = ', '.join(f'{n} {kind}' for kind, n in sorted(_count(targets, 'kind').items()))
    if not sys.stdin.isatty():
        error = argument_error(make(ValidationError, f'reencrypt would rewrite {len(targets)} secrets ({counts}) and '
                                                     'there is no terminal to confirm it.',
                                    'Pass --yes to rewrite them (or --dry-run to see the plan).'))
        error.kmsverify_exit_code = EXIT_BAD_ARGUMENTS
        raise error
    if not prompt_y_n(f'Rewrite {len(targets)} secrets through the API ({counts}) so they are stored with KMS '
                      'under the current key?', default='n'):
        raise make(ManualInterrupt, 'Nothing was rewritten.', 'Run with --dry-run to review the plan.')


# Share of --timeout kept for reading etcd again after the rewrites (at least 2 s, at most a minute).
_VERIFY_RESERVE_SHARE, _VERIFY_RESERVE_MIN, _VERIFY_RESERVE_MAX = 0.1, 2.0, 60.0
_DONE = ('reencrypted', 'alreadyCurrent', 'deleted')  # outcomes that leave nothing under an old key


class _Pacer:  # pylint: disable=too-few-public-methods  # one shared clock is all it is
    """At most ``rate`` writes a second across all workers (``--max-per-second``; 0: no limit)."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate if rate else 0.0
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def wait(self, stop) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            at = max(self.next, now)
            self.next = at + self.interval
        if at > now:
            stop.wait(at - now)


class _Rewriter:  # pylint: disable=too-many-instance-attributes  # the shared state of one run's workers
    """Rewrites targets with ``--parallel`` workers. Ctrl-C or SIGTERM stops taking new targets; the writes in
    flight finish (each is one PUT, so nothing is half-written)."""

    def __init__(self, client, reader, plan, options, deadline):
        self.client, self.reader, self.plan, self.options, self.deadline = client, reader, plan, options, deadline
        self.stop = threading.Event()
        self.timed_out = threading.Event()
        self.pacer = _Pacer(options.max_per_second)
        self.counter = {'written': 0, 'done': 0}
        self.lock = threading.Lock()
        self.fatal = []

    def not_rewritten(self) -> str:
        return 'not rewritten: ' + (f'the --timeout of {self.deadline.seconds} s was reached'
                                    if self.timed_out.is_set() or self.deadline.expired() else 'interrupted')

    def current_in_etcd(self, target) -> bool:
        kv = self.reader.get(f"{defaults.ETCD_SECRETS_PREFIX}{target['namespace']}/{target['name']}")
        return verdict_after(target, classify(kv.value) if kv else None, kv.mod_revision if kv else None,
                             self.plan['currentKeyId'], target.get('modRevisionBefore'))[0]

    def work(self, target) -> None:
        if self.stop.is_set() or self.deadline.expired():
            target.update(outcome='failed', reason=self.not_rewritten())
            return
        if not addressable(target['namespace'], target['name']):
            target.update(outcome='skipped', reason='its etcd key is not a name the API can address')
            return
        self.pacer.wait(self.stop)
        try:
            outcome, rounds = self._rewrite(target)
        except AzCLIError:
            if not self.deadline.expired():
                raise
            target.update(outcome='failed', reason=self.not_rewritten())
            return
        if outcome is None:
            return  # already current (a conflict with someone who rewrote it)
        if outcome.status == rewriting.WRITTEN:
            target['outcome'] = 'written'
            with self.lock:
                self.counter['written'] += 1
        elif outcome.status == rewriting.DELETED:
            target.update(outcome='deleted', reason=outcome.reason)  # nothing left under the old key
        elif outcome.stopped:
            target.update(outcome='failed', reason=self.not_rewritten())
        elif outcome.status == rewriting.CONFLICT:
            target.update(outcome='failed', reason=f'{outcome.reason}, {rounds} times')
        else:
            target.update(outcome='skipped' if outcome.status == rewriting.SKIPPED else 'failed', reason=outcome.reason)

    def _rewrite(self, target):
        """(outcome, rounds); outcome None when a conflict turned out to be someone else's rewrite."""
        force = force_write(target, self.plan['currentKeyId'])
        outcome = rewriting.rewrite(self.client, target['namespace'], target['name'], force, self.stop)
        target['throttled'] = outcome.throttled
        rounds = 1
        # Someone else wrote it meanwhile: current already if etcd says so, else read and write it again.
        while outcome.status == rewriting.CONFLICT:
            if self.current_in_etcd(target):
                target.update(outcome='alreadyCurrent', reason='rewritten by someone else meanwhile')
                return None, rounds
            if rounds >= defaults.REWRITE_ATTEMPTS or self.stop.is_set():
                break
            outcome = rewriting.rewrite(self.client, target['namespace'], target['name'], force, self.stop)
            target['throttled'] += outcome.throttled
            rounds += 1
        return outcome, rounds

    def run(self, cli_ctx, targets) -> tuple[int, bool]:
        """(writes, interrupted)."""
        # Rewrites stop taking targets (and throttled ones stop waiting) early enough to leave time for the proof
        # from etcd: the result then reports what was not rewritten instead of ending in a timeout error.
        reserve = min(_VERIFY_RESERVE_MAX, max(_VERIFY_RESERVE_MIN, self.deadline.seconds * _VERIFY_RESERVE_SHARE))
        timer = threading.Timer(max(0.0, self.deadline.remaining() - reserve),
                                lambda: (self.timed_out.set(), self.stop.set()))
        timer.daemon = True
        timer.start()
        previous = None
        if threading.current_thread() is threading.main_thread():
            def _terminate(_signum, _frame):
                raise KeyboardInterrupt
            previous = signal.signal(signal.SIGTERM, _terminate)
        progress = progress_bar(cli_ctx, 'Rewriting secrets')
        interrupted = False
        pool = ThreadPoolExecutor(max_workers=self.options.parallel, thread_name_prefix='kmsverify-rewrite')
        try:
            interrupted = self._drive(pool, targets, progress)
        finally:
            timer.cancel()
            self.stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            if progress is not None:
                progress.end()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        for target in targets:
            if 'outcome' not in target:
                target.update(outcome='failed', reason=self.not_rewritten() if interrupted or self.timed_out.is_set()
                              else 'not rewritten: stopped by an earlier error')
        if self.fatal:
            raise self.fatal[0]
        return self.counter['written'], interrupted

    def _drive(self, pool, targets, progress) -> bool:
        """Feed the pool a bounded window of targets; True when interrupted."""
        try:
            pending = set()
            for target in targets:
                pending.add(pool.submit(self.work, target))
                if len(pending) >= self.options.parallel * 4:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    _collect(done, self.fatal, progress, self.counter, len(targets))
                    if self.fatal:
                        self.stop.set()
                        break
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                _collect(done, self.fatal, progress, self.counter, len(targets))
        except KeyboardInterrupt:
            self.stop.set()
            logger.warning('Interrupted: finishing the rewrites in flight, then verifying what was written.')
            pool.shutdown(wait=True, cancel_futures=True)
            return True
        return False


def _collect(done, fatal, progress, counter, total):
    for future in done:
        error = future.exception()
        if isinstance(error, AzCLIError):
            fatal.append(error)
        elif error is not None:
            raise error
        counter['done'] += 1
    if progress is not None:
        progress.add(message=f"Rewrote {counter['done']} of {total} secrets", value=counter['done'], total_val=total)


def _verify_from_etcd(reader, targets, current_key_id):
    """Read every target again from etcd (one paged scan) and require KMS under the current key."""
    by_key = {(t['namespace'], t['name']): t for t in targets if t.get('outcome') in ('written', 'alreadyCurrent')}
    prefix = len(defaults.ETCD_SECRETS_PREFIX)
    seen = set()
    for kv in reader.iter_prefix(defaults.ETCD_SECRETS_PREFIX):
        namespace, _, name = kv.key[prefix:].decode('utf-8', 'replace').partition('/')
        target = by_key.get((namespace, name))
        if target is None:
            continue
        seen.add((namespace, name))
        classification = classify(kv.value)
        target['modRevisionAfter'] = kv.mod_revision
        target['storageAfter'] = classification.get('storage')
        target['keyIdAfter'] = classification.get('keyId')
        ok, why = verdict_after(target, classification, kv.mod_revision, current_key_id,
                                target.get('modRevisionBefore'))
        if target['outcome'] == 'written':
            target.update(outcome='reencrypted' if ok else 'failed', reason='' if ok else why)
        elif not ok:
            target.update(outcome='failed', reason=why)
    for key, target in by_key.items():
        if key not in seen:
            target.update(outcome='failed', reason='the key is gone from etcd')


def _named_key(current_key_id, targets):
    """The current key's id once a rewrite stored a value under it, when the plan knew only its hash."""
    if not current_key_id or not current_key_id.startswith(HASH_PREFIX):
        return current_key_id
    return next((t['keyIdAfter'] for t in targets if t.get('keyIdAfter') and
                 is_current_key(t['keyIdAfter'], current_key_id)), current_key_id)


def _checks(result, targets) -> list:
    """Checks for the JUnit report and the table: the run, then each target that did not end current."""
    summary = ', '.join(f'{n} {k}' for k, n in result['summary'].items()) or 'nothing to rewrite'
    status = PASSED if result['passed'] else FAILED
    checks = [check('Reencrypt', status, ('dry run: ' if result['dryRun'] else '') + summary)]
    for target in targets:
        if target.get('outcome') in _DONE:
            continue
        detail = target.get('reason') or target.get('planReason') or target.get('outcome')
        checks.append(check('SecretReencrypted', SKIPPED if target.get('outcome') in ('skipped', 'planned') else FAILED,
                            detail, target=f"{printable(target['namespace'])}/{printable(target['name'])}"))
    return checks


_PUBLIC = ('namespace', 'name', 'kind', 'storage', 'kmsVersion', 'keyId', 'outcome', 'reason', 'modRevisionBefore',
           'modRevisionAfter', 'storageAfter', 'keyIdAfter', 'throttled')


def _public(target: dict) -> dict:
    entry = {k: target.get(k) for k in _PUBLIC}
    entry['namespace'], entry['name'] = printable(entry['namespace']), printable(entry['name'])
    return entry


def _count(items, key) -> dict:
    counts = {}
    for item in items:
        counts[item.get(key)] = counts.get(item.get(key), 0) + 1
    return dict(sorted(counts.items()))
