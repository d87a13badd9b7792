# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""``az aksarc kms reencrypt``: plan from etcd, know the current key without writing, rewrite each target
through the API losing nothing, then prove from etcd that each is stored with KMS under the current key.

In the run frame (``run.py``): session (sign-in, API client, etcd reader) -> scan etcd (verdict.scan) -> targets
(``verdict.plan.Target``) -> confirm -> rewrite in parallel (kube.rewrite) -> read etcd again (the session's
secret iterator) -> result; the frame writes the reports and sets the exit code.
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

from azure.cli.core.azclierror import AzCLIError, ManualInterrupt, ValidationError
from knack.log import get_logger
from knack.prompting import prompt_y_n

from azext_kmsverify import defaults
from azext_kmsverify.errors import argument_error, make
from azext_kmsverify.kube import rewrite as rewriting
from azext_kmsverify.kube.access import CHECKING_ACCESS, require
from azext_kmsverify.kube.metrics import key_evidence
from azext_kmsverify.kube.resources import SECRETS, Resource, resolve
from azext_kmsverify.kube.secrets import old_writes
from azext_kmsverify.operations.run import Run
from azext_kmsverify.options import ReencryptOptions
from azext_kmsverify.text import printable
from azext_kmsverify.verdict.access import REENCRYPT, REENCRYPT_DRY_RUN
from azext_kmsverify.verdict.checks import FAILED, PASSED, SKIPPED, check
from azext_kmsverify.verdict.classify import classify
from azext_kmsverify.verdict.keys import HASH_PREFIX, SOURCE_METRICS, current_key_note, hash_only_current_key
from azext_kmsverify.verdict.plan import DONE, Outcome, Target, addressable, force_write, is_current_key, verdict_after
from azext_kmsverify.verdict.plan import targets as select
from azext_kmsverify.verdict.resources import api_path
from azext_kmsverify.verdict.scan import ScanSummary

logger = get_logger(__name__)


def main(cli_ctx, options: ReencryptOptions) -> dict:
    return Run(cli_ctx, options).execute(reencrypt)


def reencrypt(run: Run) -> dict:
    options = run.options
    started = time.monotonic()
    with run.session(options.cluster, options.etcd) as session:
        with run.step(CHECKING_ACCESS):
            require(session.client, [REENCRYPT_DRY_RUN if options.dry_run else REENCRYPT], etcd_pod=options.etcd.pod)
        with run.step('reading the resources to rewrite'):
            kinds = resolve(session.client, options.resources)
        with run.step('planning from etcd'):
            plan = _plan(run, session, kinds)
        targets = plan.targets
        result = {'passed': False, 'dryRun': options.dry_run, 'interrupted': False, 'cluster': session.info,
                  'etcdPod': session.etcd_pod, 'currentKeyId': plan.current_key_id,
                  'currentKeyIdSource': plan.current_key_source,
                  **({'currentKeyIdNote': plan.note} if plan.note else {}),
                  'plan': {'scanned': plan.scanned, 'revision': plan.revision, 'targets': len(targets),
                           'byKind': _count(t.kind for t in targets)}}
        if options.resources:
            result['plan']['byResource'] = {k.name: {'scanned': plan.scanned_by.get(k.name, 0),
                                                     'targets': sum(1 for t in targets if _of(t) == k.name)}
                                            for k in kinds}
        if plan.newer_key_ids:
            return _keys_disagree(run, result, plan, targets, started)
        if options.dry_run or not targets:
            for target in targets:
                target.outcome = Outcome.PLANNED
            return _finish(result, targets, started)
        _confirm(options, targets)
        rewriter = _Rewriter(run, session, plan)
        with run.step('rewriting ' + _noun(kinds)):
            written, interrupted = rewriter.run(targets)
        if rewriter.fatal:  # a server failure: the result still says what was rewritten, what not, what is unknown
            _ended_by(run, rewriter.fatal[0], session, targets, plan)
        else:
            with run.step('verifying from etcd'):
                _verify_from_etcd(session, targets, plan)
        result['currentKeyId'] = _named_key(plan.current_key_id, targets)
        return _finish(result, targets, started, written, interrupted)


def _keys_disagree(run: Run, result: dict, plan, targets: list[Target], started: float) -> dict:
    """Nothing is rewritten: etcd holds objects under a KMS v2 key newer than the one the answering API server calls
    current (``verdict.keys.newer_key_ids``), so a rewrite through it could store them under the older key. The
    result says so; the run exits 1 (it could not rewrite safely), to be run again once the servers agree."""
    why = (f"not rewritten: etcd holds objects under KMS v2 key id {', '.join(plan.newer_key_ids)}, newer than "
           f'{plan.current_key_id} that the API server which answered calls current; another API server already '
           'encrypts with the newer key')
    logger.error('The API servers do not agree on the current KMS v2 key: %s. Nothing was rewritten (a rewrite '
                 'could store secrets under the older key). Run again in a minute, once every API server has taken '
                 'the new key (each asks its KMS plugin about once a minute).', why[len('not rewritten: '):])
    run.incomplete()
    result['newerKeyIds'] = list(plan.newer_key_ids)
    for target in targets:
        target.end(Outcome.SKIPPED, why)
    result = _finish(result, targets, started)
    result['passed'] = False
    result['checks'].insert(1, check('KmsV2CurrentKey', FAILED, why[len('not rewritten: '):]))
    return result


def _ended_by(run: Run, error: AzCLIError, session, targets: list[Target], plan) -> None:
    """Rewriting stopped on ``error`` (the API server failed): one error line, then etcd is read again if it
    can be; what was written but cannot be proved stays ``written`` with why. The run exits 1 with its result."""
    logger.error('Rewriting stopped: %s The result says what was rewritten, what was not, and what is unknown.',
                 error.error_msg)
    run.incomplete()
    try:
        _verify_from_etcd(session, targets, plan)
    except AzCLIError as why:
        for target in targets:
            if target.outcome == Outcome.WRITTEN:
                target.reason = f'rewritten (the API answered), not verified from etcd: {why.error_msg}'


def _finish(result: dict, targets: list[Target], started: float, written: int | None = None,
            interrupted: bool = False) -> dict:
    """The result with its targets, counts and checks (``written`` None: nothing was rewritten, a dry run)."""
    elapsed = time.monotonic() - started
    result.update(passed=all(t.outcome in DONE for t in targets) and not interrupted if written is not None
                  else not targets, targets=[t.to_dict() for t in targets],
                  summary=_count(t.outcome.value for t in targets), durationSeconds=round(elapsed, 3))
    if written is not None:
        result.update(interrupted=interrupted, writesPerSecond=round(written / elapsed, 1) if elapsed else None)
    result['checks'] = _checks(result, targets)
    return result


@dataclass
class _Plan:  # pylint: disable=too-many-instance-attributes  # one field per figure of the plan
    targets: list[Target]
    scanned: int
    revision: int | None
    current_key_id: str | None
    current_key_source: str | None
    kinds: dict  # resource name -> kube.resources.Resource
    scanned_by: dict  # resource name -> objects scanned
    newer_key_ids: list  # KMS v2 key ids newer than the current one (verdict.keys.newer_key_ids): nothing is rewritten
    note: str | None = None  # why the current key came from where it did (verdict.keys.current_key_note)


def _of(target: Target) -> str:
    return target.resource or SECRETS.name


def _noun(kinds) -> str:
    return 'secrets' if [k.name for k in kinds] == [SECRETS.name] else 'objects'


def _plan(run: Run, session, kinds: list[Resource]) -> _Plan:
    """The scan of ``verify --all-secrets`` (etcd is the source of truth), with the targets' ModRevisions: secrets
    first (their scan decides the current key), then each other ``--resource`` under the same key."""
    options = run.options
    key_hash, how, known = key_evidence(session.client)
    namespaces = set()  # seen in etcd: a --namespace that matches none is said so, not a silent green
    chosen, scanned_by, current, v2_seen, newer = [], {}, (None, None), False, set()
    for kind in sorted(kinds, key=lambda k: k is not SECRETS):
        found, scan = _plan_one(run, session, kind, (key_hash, how, known), current, namespaces=namespaces)
        if current[0] is None and scan.get('currentKeyId'):
            current = (scan.get('currentKeyId'), scan.get('currentKeyIdSource'))
        v2_seen = v2_seen or bool(scan['byKmsVersion'].get('v2'))
        newer.update(scan.get('newerKeyIds') or ())
        chosen.extend(found)
        scanned_by[kind.name] = scan['total']
    _namespaces_matched(options.namespaces, namespaces)
    if options.secrets:
        _named_but_current(options, chosen)
    logger.info('Plan: %s of %s objects to rewrite (current KMS v2 key: %s, %s)', len(chosen),
                sum(scanned_by.values()), current[0], how)
    hash_only = bool(current[0] and current[0].startswith(HASH_PREFIX))
    note = current_key_note(current[1], how, hash_only=hash_only)
    return _Plan(chosen, sum(scanned_by.values()), session.reader.revision, current[0], current[1],
                 {k.name: k for k in kinds}, scanned_by, sorted(newer), note if hash_only or v2_seen else None)


def _plan_one(run: Run, session, kind: Resource, metrics, current, *, namespaces: set):
    """(targets, scan) of one resource. ``metrics``: (hash, how, known key hashes) from /metrics; ``current``:
    (key id, source) decided by an earlier resource's scan, or (None, None)."""
    options, reader = run.options, session.reader
    key_hash, how, known = metrics
    if kind is SECRETS:
        summary = ScanSummary(current_key_hash=key_hash, known_key_hashes=known)
    else:
        summary = ScanSummary(current_key_id=current[0], current_key_source=current[1],
                              current_key_hash=None if current[0] else key_hash, resource=kind.name,
                              prefix=kind.prefix, known_key_hashes=known)
    revisions = {}
    count = 0
    with run.progress(f'Planning from etcd: {kind.name}') as progress:
        for stored in session.objects(kind.prefix, kind.namespaced):
            namespaces.add(stored.namespace)
            classification = classify(stored.value)
            summary.add(stored.namespace, stored.name, classification, stored.mod_revision)
            # Keep ModRevisions only of what can become a target (not KMS, KMS v1, KMS v2 not known current).
            if classification.get('storage') != 'kms' or classification.get('kmsVersion') != 'v2' or \
                    classification.get('keyId') != summary.current_key_id:
                revisions[(stored.namespace, stored.name)] = stored.mod_revision
            count += 1
            if count % 500 == 0:
                progress(count, max(reader.total or count, count),
                         f'Planning: read {count} of {reader.total} {kind.name}')
    write_times, skip = (None, None)
    if summary.needs_write_times():
        if kind is SECRETS:
            write_times, skip = old_writes(session.client, options.rotation_days)
            if skip:
                logger.warning('KMS v1 secrets written before the last rotation cannot be found: %s', skip)
        else:
            skip = 'the last write times of KMS v1 objects are read for secrets only: every one is a target'
    current_id = hash_only_current_key(key_hash, summary.current_key_id, current[0])
    if current_id:
        logger.info('No %s object is stored under the current KMS v2 key yet (%s): every KMS v2 one is a target',
                    kind.name, how)
    scan, _ = summary.finish(current_key_id=current_id, current_key_source=SOURCE_METRICS if current_id else None,
                             write_times=write_times, age_skip_reason=skip, rotation_days=options.rotation_days,
                             revision=reader.revision)
    found = select(scan, options.only, options.namespaces, options.secrets if kind is SECRETS else ())
    if kind is not SECRETS and scan['byKmsVersion'].get('v1'):
        found += _v1_objects(summary, options)  # no write times outside secrets: every KMS v1 object
    for target in found:
        target.mod_revision_before = revisions.get((target.namespace, target.name))
        if kind is not SECRETS:
            target.resource = kind.name
            target.etcd_key = kind.prefix + (f'{target.namespace}/' if kind.namespaced else '') + target.name
    return found, scan


def _v1_objects(summary: ScanSummary, options) -> list[Target]:
    """Every KMS v1 object of a resource other than secrets, as a stale target: whether one was written before the
    last rotation is known only from write times, which are read for secrets only."""
    wanted = set(options.namespaces)
    return [Target(namespace, name, 'stale', 'kms', kms_version='v1',
                   plan_reason='KMS v1: written before or after the last key rotation is not known for this resource')
            for namespace, name in summary.kms_v1_secrets()
            if options.only in ('all', 'stale') and (not wanted or namespace in wanted)]


def _namespaces_matched(asked, seen: set) -> None:
    """``--namespace`` values with no secret in etcd: none matched is a not-found error (exit 3); some is a
    warning naming them."""
    missing = [ns for ns in asked or () if ns not in seen]
    if not missing:
        return
    names = ', '.join(printable(ns) for ns in missing)
    if len(missing) == len(asked):
        from azure.cli.core.azclierror import ResourceNotFoundError
        raise make(ResourceNotFoundError, f'No secret in etcd is in namespace {names}: nothing matched --namespace.',
                   "Check the namespace with 'kubectl get secrets -n NAMESPACE'.")
    logger.warning('No secret in etcd is in namespace %s: nothing there to rewrite.', names)


def _named_but_current(options, chosen):
    """``--secret`` names that are not targets are reported: current already, or not in etcd."""
    planned = {(t.namespace, t.name) for t in chosen}
    for namespace, name in options.secrets:
        if (namespace, name) not in planned:
            logger.warning('Secret %s/%s needs no rewrite (already stored with KMS under the current key, or not in '
                           'etcd).', printable(namespace), printable(name))


def _confirm(options: ReencryptOptions, targets: list) -> None:
    if options.yes:
        return
    counts = ', '.join(f'{n} {kind}' for kind, n in sorted(_count(t.kind for t in targets).items()))
    noun = 'secrets' if all(t.resource is None for t in targets) else 'objects'
    if not sys.stdin.isatty():
        raise argument_error(make(ValidationError, f'reencrypt would rewrite {len(targets)} {noun} ({counts}) and '
                                                   'there is no terminal to confirm it.',
                                  'Pass --yes to rewrite them (or --dry-run to see the plan).'))
    if not prompt_y_n(f'Rewrite {len(targets)} {noun} through the API ({counts}) so they are stored with KMS '
                      'under the current key?', default='n'):
        raise make(ManualInterrupt, 'Nothing was rewritten.', 'Run with --dry-run to review the plan.')


# Share of --timeout kept for reading etcd again after the rewrites (at least 2 s, at most a minute).
_VERIFY_RESERVE_SHARE, _VERIFY_RESERVE_MIN, _VERIFY_RESERVE_MAX = 0.1, 2.0, 60.0


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

    def __init__(self, run, session, plan):
        self.frame, self.session, self.plan, self.options = run, session, plan, run.options
        self.client, self.deadline = session.client, run.deadline
        self.stop = threading.Event()
        self.timed_out = threading.Event()
        self.pacer = _Pacer(self.options.max_per_second)
        self.counter = {'written': 0, 'done': 0}
        self.lock = threading.Lock()
        self.fatal = []

    def not_rewritten(self) -> str:
        return 'not rewritten: ' + (f'the --timeout of {self.deadline.seconds} s was reached'
                                    if self.timed_out.is_set() or self.deadline.expired() else 'interrupted')

    def current_in_etcd(self, target) -> bool:
        stored = self.session.object(self.plan.kinds[_of(target)].prefix, target.namespace, target.name)
        return verdict_after(classify(stored.value) if stored else None, stored.mod_revision if stored else None,
                             self.plan.current_key_id, target.mod_revision_before)[0]

    def work(self, target) -> None:
        if self.stop.is_set() or self.deadline.expired():
            target.end(Outcome.FAILED, self.not_rewritten())
            return
        if not addressable(target.namespace, target.name, self.plan.kinds[_of(target)].namespaced):
            target.end(Outcome.SKIPPED, 'its etcd key is not a name the API can address')
            return
        self.pacer.wait(self.stop)
        try:
            outcome, rounds = self._rewrite(target)
        except AzCLIError as error:
            if not self.deadline.expired():
                target.end(Outcome.FAILED, f'unknown whether rewritten: {error.error_msg}')
                raise
            target.end(Outcome.FAILED, self.not_rewritten())
            return
        if outcome is None:
            return  # already current (a conflict with someone who rewrote it)
        if outcome.status == rewriting.WRITTEN:
            target.outcome = Outcome.WRITTEN
            with self.lock:
                self.counter['written'] += 1
        elif outcome.status == rewriting.DELETED:
            target.end(Outcome.DELETED, outcome.reason)  # nothing left under the old key
        elif outcome.stopped:
            target.end(Outcome.FAILED, self.not_rewritten())
        elif outcome.status == rewriting.CONFLICT:
            target.end(Outcome.FAILED, f'{outcome.reason}, {rounds} times')
        elif outcome.status == rewriting.REFUSED:
            target.end(Outcome.REFUSED_BY_ADMISSION, outcome.reason)
            target.admission = outcome.admission.to_dict()
        else:
            target.end(Outcome.SKIPPED if outcome.status == rewriting.SKIPPED else Outcome.FAILED, outcome.reason)

    def _rewrite(self, target):
        """(outcome, rounds); outcome None when a conflict turned out to be someone else's rewrite."""
        force = force_write(target, self.plan.current_key_id)
        outcome = self._once(target, force)
        target.throttled = outcome.throttled
        rounds = 1
        # Someone else wrote it meanwhile: current already if etcd says so, else read and write it again.
        while outcome.status == rewriting.CONFLICT:
            if self.current_in_etcd(target):
                target.end(Outcome.ALREADY_CURRENT, 'rewritten by someone else meanwhile')
                return None, rounds
            if rounds >= defaults.REWRITE_ATTEMPTS or self.stop.is_set():
                break
            outcome = self._once(target, force)
            target.throttled += outcome.throttled
            rounds += 1
        return outcome, rounds

    def _once(self, target, force):
        """One GET + PUT of ``target`` at its API path (a secret's, or its resource's in the version to write)."""
        if target.resource is None:
            return rewriting.rewrite(self.client, target.namespace, target.name, force, self.stop)
        kind = self.plan.kinds[target.resource]
        path = api_path(kind.ref, kind.version, target.name, target.namespace if kind.namespaced else None)
        return rewriting.rewrite(self.client, target.namespace, target.name, force, self.stop, path=path,
                                 what=kind.singular, resource=kind.name)

    def run(self, targets) -> tuple[int, bool]:
        """(writes, interrupted)."""
        # Rewrites stop taking targets (and throttled ones stop waiting) early enough to leave time for the proof
        # from etcd: the result then reports what was not rewritten instead of ending in a timeout error.
        reserve = min(_VERIFY_RESERVE_MAX, max(_VERIFY_RESERVE_MIN, self.deadline.seconds * _VERIFY_RESERVE_SHARE))
        timer = threading.Timer(max(0.0, self.deadline.remaining() - reserve),
                                lambda: (self.timed_out.set(), self.stop.set()))
        timer.daemon = True
        timer.start()
        interrupted = False
        pool = ThreadPoolExecutor(max_workers=self.options.parallel, thread_name_prefix='kmsverify-rewrite')
        with self.frame.interrupts(cancel=False), self.frame.progress('Rewriting secrets') as progress:
            try:
                interrupted = self._drive(pool, targets, progress)
            finally:
                timer.cancel()
                self.stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
        for target in targets:
            if target.outcome is None:
                target.end(Outcome.FAILED, self.not_rewritten() if interrupted or self.timed_out.is_set()
                           else 'not rewritten: stopped by an earlier error')
        return self.counter['written'], interrupted  # self.fatal: the caller reports what was done

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
    progress(counter['done'], total, f"Rewrote {counter['done']} of {total} secrets")


def _verify_from_etcd(session, targets, plan):
    """Read every target again from etcd (one paged scan per resource) and require KMS under the current key."""
    current_key_id = plan.current_key_id
    by_key = {(_of(t), t.namespace, t.name): t for t in targets
              if t.outcome in (Outcome.WRITTEN, Outcome.ALREADY_CURRENT)}
    seen = set()
    for kind in plan.kinds.values():
        if not any(key[0] == kind.name for key in by_key):
            continue
        for stored in session.objects(kind.prefix, kind.namespaced):
            target = by_key.get((kind.name, stored.namespace, stored.name))
            if target is None:
                continue
            seen.add((kind.name, stored.namespace, stored.name))
            classification = classify(stored.value)
            target.mod_revision_after = stored.mod_revision
            target.storage_after = classification.get('storage')
            target.key_id_after = classification.get('keyId')
            ok, why = verdict_after(classification, stored.mod_revision, current_key_id, target.mod_revision_before)
            if target.outcome == Outcome.WRITTEN:
                target.end(Outcome.REENCRYPTED if ok else Outcome.FAILED, '' if ok else why)
            elif not ok:
                target.end(Outcome.FAILED, why)
    for key, target in by_key.items():
        if key not in seen:
            target.end(Outcome.FAILED, 'the key is gone from etcd')


def _named_key(current_key_id, targets):
    """The current key's id once a rewrite stored a value under it, when the plan knew only its hash."""
    if not current_key_id or not current_key_id.startswith(HASH_PREFIX):
        return current_key_id
    return next((t.key_id_after for t in targets if t.key_id_after and is_current_key(t.key_id_after, current_key_id)),
                current_key_id)


def _checks(result, targets) -> list:
    """Checks for the JUnit report and the table: the run, then each target that did not end current."""
    summary = ', '.join(f'{n} {k}' for k, n in result['summary'].items()) or 'nothing to rewrite'
    status = PASSED if result['passed'] else FAILED
    checks = [check('Reencrypt', status, ('dry run: ' if result['dryRun'] else '') + summary)]
    for target in targets:
        if target.outcome in DONE:
            continue
        detail = target.reason or target.plan_reason or target.outcome.value
        where = f'{printable(target.namespace)}/{printable(target.name)}'
        checks.append(check('SecretReencrypted', SKIPPED if target.outcome in (Outcome.SKIPPED, Outcome.PLANNED)
                            else FAILED, detail, target=f'{target.resource} {where}' if target.resource else where))
    return checks


def _count(values) -> dict:
    counts = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items()))
