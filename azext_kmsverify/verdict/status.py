# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""``az aksarc kms status``: what the API server says of its encryption, fact by fact, with where each fact came
from or why it is unknown. Pure: it is handed the ``/readyz`` bodies, the ``/metrics`` page and the access answers.

Why: ``status`` must work for an identity that can read only ``/readyz``, so every fact is optional and says its
source; and the API server's metrics are alpha and may change (kubernetes PR #136354 may remove
``apiserver_envelope_encryption_key_id_hash_total``), so nothing here depends on a metric that may go, and the
record says which metrics its evidence came from.

What the sources can tell (read in the kube-apiserver sources, staging/src/k8s.io/apiserver/pkg/server/options/
encryptionconfig/config.go and .../server/options/etcd.go, and .../storage/value/encrypt/envelope/metrics/
metrics.go):

* **Health checks.** ``LoadEncryptionConfig`` folds the KMS checks into one ``kms-providers`` check when automatic
  reload (``--encryption-provider-config-automatic-reload``) is on, *or* when only KMS v2 providers are configured;
  otherwise each KMS provider gets its own ``kms-provider-N`` check. So ``kms-provider-N`` means reload is off and a
  KMS v1 provider is configured; ``kms-providers`` alone does not tell reload.
* **Automatic reload.** With reload on, the API server adds the post-start hook
  ``start-encryption-provider-config-automatic-reload``, which ``/readyz?verbose`` lists; its reload counters
  ``apiserver_encryption_config_controller_automatic_reload*`` appear on ``/metrics`` once it reloaded.
* **KMS versions and providers.** ``apiserver_storage_transformation_operations_total{transformer_prefix=
  "k8s:enc:kms:v<N>:<provider>:"}`` names each provider that encrypted or decrypted since the process started;
  the KMS v2 key id series carry ``provider_name``; a failing check's reason names "KMS Provider <name>" and says
  "status section" (KMS v2's Status call) or "encrypt/decrypt section" (KMS v1's probe).
* **Current key.** The newest ``..._key_id_hash_status_last_timestamp_seconds`` series is the key the plugin reports
  now; ``..._key_id_hash_last_timestamp_seconds{transformation_type="to_storage"}`` says when a key id hash was
  last used to encrypt. Both say when a key was *last* used, never when it was first (see ``verdict.rotation``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from azext_kmsverify import defaults
from azext_kmsverify.verdict import checks as rules
from azext_kmsverify.verdict import rotation
from azext_kmsverify.verdict.access import grant
from azext_kmsverify.verdict.readyz import kms_checks, parse_readyz

RELOAD_HOOK = 'poststarthook/start-encryption-provider-config-automatic-reload'
STATUS_LAST = 'apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds'
LAST_USED = 'apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds'
HASH_TOTAL = 'apiserver_envelope_encryption_key_id_hash_total'
TRANSFORMATIONS = 'apiserver_storage_transformation_operations_total'
PROCESS_START = 'process_start_time_seconds'
RELOAD_PREFIX = 'apiserver_encryption_config_controller_automatic_reload'

_SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)(?:[ \t]+\S+)?')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_KMS_PREFIX = re.compile(r'k8s:enc:kms:(v[12]):(.*):')
_REASON_PROVIDER = re.compile(r'(status|encrypt|decrypt) section of the healthz check for KMS Provider (\S+?),? error')
_WANTED = (STATUS_LAST, LAST_USED, HASH_TOTAL, TRANSFORMATIONS, PROCESS_START, RELOAD_PREFIX)


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, tz=timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


@dataclass
class MetricFacts:  # pylint: disable=too-many-instance-attributes  # one field per fact of the page
    """What one ``/metrics`` page says of encryption. Timestamps are Unix seconds."""

    status_last: dict = field(default_factory=dict)       # key id hash -> newest Status report
    to_storage_last: dict = field(default_factory=dict)   # key id hash -> newest encryption
    from_storage_last: dict = field(default_factory=dict)  # key id hash -> newest decryption
    providers: dict = field(default_factory=dict)         # provider name -> KMS version ('v1' | 'v2')
    process_start: float | None = None
    reload_seen: bool = False
    hash_total_present: bool = False
    used: set = field(default_factory=set)                # metric names the facts came from

    @property
    def status_hashes(self) -> list:
        return sorted(self.status_last)

    @property
    def current_hash(self) -> str | None:
        """The key the plugin reports now (newest Status), else the newest encryption's."""
        for series in (self.status_last, self.to_storage_last):
            if series:
                return max(series.items(), key=lambda kv: kv[1])[0]
        return None

    @property
    def current_source(self) -> str | None:
        if self.status_last:
            return STATUS_LAST
        return LAST_USED if self.to_storage_last else None


def parse_metrics(text: str) -> MetricFacts:
    """The encryption facts of a Prometheus text page. Linear in the page; unknown and odd lines are skipped."""
    facts = MetricFacts()
    for line in text.splitlines():
        if not line.startswith(_WANTED):
            continue
        match = _SAMPLE.fullmatch(line.strip())
        if not match:
            continue
        name, labels_text, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        labels = dict(_LABEL.findall(labels_text or ''))
        _add(facts, name, labels, number)
    return facts


def _add(facts: MetricFacts, name: str, labels: dict, number: float) -> None:
    key_hash = labels.get('key_id_hash')
    if name == HASH_TOTAL:
        facts.hash_total_present = True  # noted, never relied on (it may be removed upstream)
    elif name == STATUS_LAST and key_hash:
        facts.status_last[key_hash] = max(number, facts.status_last.get(key_hash, number))
        facts.used.add(name)
        _provider(facts, labels.get('provider_name'), 'v2')
    elif name == LAST_USED and key_hash:
        series = {'to_storage': facts.to_storage_last, 'from_storage': facts.from_storage_last}.get(
            labels.get('transformation_type'))
        if series is not None:
            series[key_hash] = max(number, series.get(key_hash, number))
            facts.used.add(name)
            _provider(facts, labels.get('provider_name'), 'v2')
    elif name == TRANSFORMATIONS:
        kms = _KMS_PREFIX.fullmatch(labels.get('transformer_prefix') or '')
        if kms and number > 0:
            _provider(facts, kms.group(2), kms.group(1))
            facts.used.add(name)
    elif name == PROCESS_START:
        facts.process_start = number
        facts.used.add(name)
    elif name.startswith(RELOAD_PREFIX):
        facts.reload_seen = True
        facts.used.add(name)


def _provider(facts: MetricFacts, name: str | None, version: str) -> None:
    if name:
        facts.providers.setdefault(name, version)


@dataclass
class Fact:
    """One fact of the status: its value and source, or None and why it is unknown."""

    value: object = None
    source: str | None = None
    unknown: str | None = None

    def to_dict(self) -> dict:
        return {'value': self.value, 'source': self.source, 'unknownReason': self.unknown}


@dataclass
class Provider:
    name: str | None
    kms_version: str | None
    source: str

    def to_dict(self) -> dict:
        return {'name': self.name, 'kmsVersion': self.kms_version, 'source': self.source}


@dataclass
class KmsStatus:  # pylint: disable=too-many-instance-attributes  # one field per reported fact
    """The ``status`` record. snake_case here; camelCase only in :meth:`to_dict`."""

    health: Fact
    health_checks: list
    automatic_reload: Fact
    kms_versions: Fact
    providers: list
    current_key_hash: Fact
    current_key_last_used: Fact
    current_key_last_reported: Fact
    key_age: rotation.KeyAge | None
    metrics_evidence: dict
    checks: list
    access: list = field(default_factory=list)
    now: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    identity: Fact = field(default_factory=lambda: Fact(None, None, 'not asked'))
    grant: str = ''  # least-privilege RBAC YAML for what ``access`` lacks ('' when nothing or nobody known)

    @property
    def passed(self) -> bool:
        return not any(c['status'] == rules.FAILED for c in self.checks)

    def to_dict(self) -> dict:
        return {
            'passed': self.passed,
            'health': self.health.to_dict(),
            'healthChecks': self.health_checks,
            'automaticReload': self.automatic_reload.to_dict(),
            'kmsVersions': self.kms_versions.to_dict(),
            'providers': [p.to_dict() for p in self.providers],
            'currentKeyIdHash': self.current_key_hash.to_dict(),
            'currentKeyLastUsed': self.current_key_last_used.to_dict(),
            'currentKeyLastReported': self.current_key_last_reported.to_dict(),
            'keyAge': self.key_age.to_dict(self.now) if self.key_age else None,
            'metricsEvidence': self.metrics_evidence,
            'identity': self.identity.to_dict(),
            'access': [a.to_dict() for a in self.access],
            # Lines, not one string: the result's sanitiser escapes line breaks in strings, and a list prints as
            # lines with -o tsv (--query leastPrivilegeGrant -o tsv | kubectl apply -f -).
            'leastPrivilegeGrant': self.grant.splitlines() if self.grant else None,
            'checks': self.checks,
        }


def build_status(*, readyz_status: int | None, readyz_body: str | None, check_reasons: dict | None = None,
                 readyz_unreachable: str | None = None, metrics_text: str | None = None, metrics_why: str = '',
                 access=(), identity: tuple = (None, 'not asked'), rotation_days: int = defaults.ROTATION_DAYS,
                 grace_days: int = rotation.GRACE_DAYS,
                 fail_on_stale: bool = False, now: datetime | None = None) -> KmsStatus:
    """The status from what could be read. ``readyz_body`` None with ``readyz_unreachable`` when /readyz could not
    be read; ``check_reasons`` maps a failing check to its ``/readyz/<check>`` text; ``metrics_text`` None with
    ``metrics_why`` when /metrics could not be read (forbidden, absent); ``access``: ``CommandAccess`` records;
    ``identity``: what ``kube.access.whoami`` returned, ``(user, '')`` or ``(None, why)``."""
    now = now or datetime.now(timezone.utc)
    check_reasons = check_reasons or {}
    health_check = rules.kms_health(readyz_status, readyz_body, check_reasons, unreachable=readyz_unreachable)
    parsed = parse_readyz(readyz_body) if readyz_body is not None and not readyz_unreachable else []
    lines = kms_checks(parsed)
    facts = parse_metrics(metrics_text) if metrics_text is not None else None
    metrics_unknown = metrics_why or '/metrics was not read'

    reload = _reload(parsed, lines, facts, readyz_unreachable or (readyz_body is None and 'not read'))
    providers, kms_versions = _versions(lines, reload, check_reasons, facts, metrics_unknown)

    key = _current_key(facts, metrics_unknown)  # hash, last used, last reported, age
    # no key id series: the reason why (absent metrics), not a missing bound
    unknown_why = metrics_unknown if facts is None else (key[0].unknown or 'the /metrics page gives no bound on the '
                                                                           'key age')
    checks = [health_check,
              rotation.rotation_check(kms_versions=kms_versions.value or [], age=key[3], unknown_why=unknown_why,
                                      rotation_days=rotation_days, grace_days=grace_days, now=now,
                                      fail_on_stale=fail_on_stale)]
    if 'v1' in (kms_versions.value or []):
        checks.append(rules.check(rules.KMS_V1_DEPRECATED, rules.WARNING,
                                  f'KMS v1 in use ({kms_versions.source}): deprecated since Kubernetes 1.28 and off by '
                                  'default since 1.29; KMS v2 is recommended'))
    user = identity[0]
    return KmsStatus(*_health(health_check, lines, check_reasons), reload, kms_versions, providers, *key,
                     _evidence(facts, metrics_unknown), checks, list(access), now,
                     Fact(user, 'SelfSubjectReview') if user else Fact(None, None, identity[1] or 'not asked'),
                     grant(access, user))


def _evidence(facts: MetricFacts | None, metrics_unknown: str) -> dict:
    """Where the metric evidence came from. ``keyIdHashTotalUsed`` is always False: that family may be removed
    upstream (kubernetes PR #136354), so it is only reported as present or not."""
    return {'metricsRead': facts is not None,
            'metricsUnknownReason': None if facts is not None else metrics_unknown,
            'metricsUsed': sorted(facts.used) if facts else [],
            'keyIdHashTotalPresent': facts.hash_total_present if facts else None,
            'keyIdHashTotalUsed': False}


def _versions(lines, reload: Fact, check_reasons: dict, facts: MetricFacts | None, metrics_unknown: str):
    """``([Provider], Fact(sorted KMS versions))``."""
    providers, versions = _providers(lines, reload, check_reasons, facts)
    if versions:
        return providers, Fact(sorted(versions), ', '.join(sorted({s for v in versions.values() for s in v})))
    why = 'no KMS provider has been used since the API server started' if facts is not None else metrics_unknown
    return providers, Fact(None, None, 'neither /readyz nor /metrics names a KMS version: '
                                       f"{why}{'' if lines else '; /readyz has no KMS check'}")


def _health(health_check: dict, lines: list, check_reasons: dict) -> tuple[Fact, list]:
    """The health fact and the KMS check lines (with the reason of each failing one)."""
    if not lines:
        health = Fact(None, None, health_check['detail'])
    elif health_check['status'] == rules.PASSED:
        health = Fact('healthy', '/readyz?verbose')
    else:
        health = Fact('unhealthy', '/readyz?verbose' + (' and /readyz/<check>' if check_reasons else ''))
    return health, [{'name': c['name'], 'status': c['status'], 'reason': check_reasons.get(c['name'])} for c in lines]


def _reload(parsed, lines, facts, readyz_missing) -> Fact:
    verbose = any(not e['overall'] for e in parsed)
    if any(e['name'] == RELOAD_HOOK for e in parsed):
        return Fact(True, f'/readyz?verbose ({RELOAD_HOOK})')
    if any(c['name'].startswith('kms-provider-') for c in lines):
        return Fact(False, '/readyz?verbose (one kms-provider-N check per provider: only without automatic reload)')
    if facts is not None and facts.reload_seen:
        return Fact(True, f'/metrics ({RELOAD_PREFIX}*)')
    if verbose and any(e['name'].startswith('poststarthook/') for e in parsed):
        return Fact(False, f'/readyz?verbose (its post-start hooks do not include {RELOAD_HOOK})')
    if readyz_missing:
        return Fact(None, None, f'/readyz could not be read: {readyz_missing}')
    return Fact(None, None, '/readyz does not list its checks (not verbose), and /metrics shows no reload')


def _providers(lines, reload: Fact, check_reasons: dict, facts: MetricFacts | None):
    """``([Provider], {version: {sources}})``."""
    providers, versions = {}, {}

    def note(name, version, source):
        key = name or f'#{len(providers)}'
        if key not in providers or providers[key].kms_version is None:
            providers[key] = Provider(name, version, source)
        if version:
            versions.setdefault(version, set()).add(source)

    for check_name, reason in check_reasons.items():
        for section, name in _REASON_PROVIDER.findall(reason or ''):
            note(name, 'v2' if section == 'status' else 'v1', f'/readyz/{check_name}')
    if facts is not None:
        for name, version in sorted(facts.providers.items()):
            note(name, version, '/metrics')
    per_provider = [c for c in lines if c['name'].startswith('kms-provider-')]
    if per_provider:
        # per-provider checks exist only when a KMS v1 provider is configured and reload is off
        versions.setdefault('v1', set()).add('/readyz?verbose (kms-provider-N checks)')
    if reload.value is False and any(c['name'] == 'kms-providers' for c in lines):
        # one aggregate check without automatic reload: only KMS v2 providers are configured
        versions.setdefault('v2', set()).add('/readyz?verbose (one kms-providers check without automatic reload)')
    return list(providers.values()), versions


def _current_key(facts: MetricFacts | None, metrics_unknown: str):
    if facts is None:
        unknown = Fact(None, None, metrics_unknown)
        return unknown, Fact(None, None, metrics_unknown), Fact(None, None, metrics_unknown), None
    current = facts.current_hash
    if current is None:
        if 'v2' in facts.providers.values():  # KMS v2 transformations counted, yet no key id recorded
            why = (f'/metrics has no KMS v2 key id series ({STATUS_LAST}, {LAST_USED}) although the API server '
                   f'encrypts or decrypts with KMS v2 ({TRANSFORMATIONS}): this release removed or renamed them, or '
                   'they are turned off')
        else:
            why = ('/metrics has no KMS v2 key id series (KMS v1, no KMS v2 write or Status since the API server '
                   'started, or the metric was removed or renamed)')
        return Fact(None, None, why), Fact(None, None, why), Fact(None, None, why), None
    key = Fact(current, f'/metrics ({facts.current_source})')
    used = facts.to_storage_last.get(current)
    last_used = (Fact(_iso(used), f'/metrics ({LAST_USED}, to_storage)') if used is not None else
                 Fact(None, None, 'no encryption under this key since the API server started'))
    reported = facts.status_last.get(current)
    last_reported = (Fact(_iso(reported), f'/metrics ({STATUS_LAST})') if reported is not None else
                     Fact(None, None, 'no Status series on /metrics'))
    return key, last_used, last_reported, rotation.age_from_metrics(facts)
