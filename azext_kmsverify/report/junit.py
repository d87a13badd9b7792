# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""JUnit XML of a verify result, for CI test tabs (Azure DevOps ``PublishTestResults@2``, Jenkins, GitLab).

Shape, and why (Azure DevOps reads it with the agent's JUnit reader; see its result formats mapping):

* ``<testsuites>`` with one ``<testsuite>``: the suite's ``name`` becomes the run title, ``timestamp`` the
  start (no offset; read as UTC), ``time`` the duration, ``hostname`` the agent name.
* one ``<testcase>`` per check, ``name`` non-empty (cases without one are dropped), ``classname``
  ``kmsverify.<check>``; ``<failure>`` -> Failed (``message`` is the error message, the text the stack
  trace), ``<skipped>`` -> Not Executed, anything else -> Passed. ``time`` is never negative.
* warnings pass, with their detail in the case's ``<system-out>`` and, gathered, the suite's (Jenkins and
  GitLab show these; Azure DevOps imports console output only for failed cases, and attaches the file).

Built with ElementTree so every name and detail is escaped; characters XML 1.0 cannot carry at all are
written as ``\\xNN``/``\\uNNNN``. Nothing here sees a secret value: the result never holds one.
"""

from __future__ import annotations

import re
import shlex
import socket
import xml.etree.ElementTree as ET
from datetime import datetime, timezone

from azext_kmsverify.verdict.checks import FAILED, PASSED, SKIPPED, WARNING
from azext_kmsverify.verdict.scan import ALL_SECRETS_ENCRYPTED, KMS_V1_ROTATION, KMS_V2_CURRENT_KEY

SUITE_NAME = 'az aksarc kms verify'
_CLASS_PREFIX = 'kmsverify.'
_COULD_NOT_VERIFY = _CLASS_PREFIX + 'Verification'  # the check of a run (or a fleet's cluster) that verified nothing
_SCAN_CHECK_OF_VERSION = {'v2': KMS_V2_CURRENT_KEY, 'v1': KMS_V1_ROTATION}
# Everything outside the XML 1.0 Char production (control characters, lone surrogates, U+FFFE/U+FFFF).
_NOT_XML_CHAR = re.compile('[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]')


def _xml_text(value):
    if value is None:
        return ''
    text = str(value).replace('\r\n', '\n').replace('\r', '\n')  # a parser would turn a raw CR into LF anyway
    return _NOT_XML_CHAR.sub(lambda m: f'\\x{ord(m.group()):02x}' if ord(m.group()) < 0x100
                             else f'\\u{ord(m.group()):04x}', text)


def _sub(parent, tag, text=None, **attrs):
    element = ET.SubElement(parent, tag, {k: _xml_text(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        element.text = _xml_text(text)
    return element


def _seconds(value):
    return f'{max(0.0, float(value or 0)):.3f}'


def suite_name(result):
    """The command line that produced the result (what Azure DevOps shows as the run title)."""
    cluster = result.get('cluster') or {}
    parts = [SUITE_NAME]
    if cluster.get('resourceGroup') and cluster.get('name'):
        parts.append(f"-g {cluster['resourceGroup']} -n {cluster['name']}")
    elif cluster.get('context'):
        parts.append(f"--context {cluster['context']}")
    if result.get('scan') is not None:
        parts.append('--all-secrets')
    return ' '.join(parts)


def _testcases(result):
    """(classname, name, status, message, text, stdout) for every check and every reported secret."""
    checks = result.get('checks') or []
    scan = result.get('scan') or {}
    remediation = scan.get('remediation')
    scan_checks = {ALL_SECRETS_ENCRYPTED} | set(_SCAN_CHECK_OF_VERSION.values())
    cases = []
    for item in checks:
        name = item.get('name') or 'Check'
        detail = item.get('detail') or ''
        text = detail
        if remediation and name in scan_checks and item.get('status') == FAILED:
            text += '\n' + remediation  # once here, not in every secret's case: there may be thousands
        cases.append((_CLASS_PREFIX + name, item.get('target') or name, item.get('status'), detail, text, detail))
    for entry in scan.get('failing') or []:
        cases.append(_secret_case(ALL_SECRETS_ENCRYPTED, entry))
    failed_checks = {c.get('name') for c in checks if c.get('status') == FAILED}
    for entry in scan.get('stale') or []:
        check_name = _SCAN_CHECK_OF_VERSION.get(entry.get('kmsVersion'))
        if check_name in failed_checks:
            cases.append(_secret_case(check_name, entry))
    return cases


def _secret_case(check_name, entry):
    namespace, name = entry.get('namespace') or '', entry.get('name') or ''
    reason = entry.get('reason') or ''
    text = (f'{namespace}/{name}: {reason}\nRewrite it to re-encrypt: az aksarc kms reencrypt ... --secret '
            f'{shlex.quote(namespace + "/" + name)} --yes')
    return (_CLASS_PREFIX + check_name, f'{namespace}/{name}', FAILED, reason, text, None)


def to_junit_xml(result, *, timestamp=None, hostname=None, duration=None):
    """UTF-8 JUnit XML (with declaration) of the command's result dict: one ``<testsuite>``, or one per cluster
    for a fleet result (``clusters``).

    ``timestamp`` is when the run started (default: now), ``hostname`` where it ran (default: this host),
    ``duration`` how long it took in seconds (default 0).
    """
    moment = timestamp or datetime.now(timezone.utc)
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    host = hostname or socket.gethostname() or 'localhost'
    results = result['clusters'] if isinstance(result.get('clusters'), list) else [result]
    root = ET.Element('testsuites')
    totals = {'tests': 0, FAILED: 0, 'error': 0}
    for index, item in enumerate(results):
        seconds = item.get('durationSeconds') if len(results) > 1 or 'clusters' in result else duration
        tests, counts = _suite(root, _as_result(item), index, moment=moment, host=host, duration=seconds)
        totals['tests'] += tests
        totals[FAILED] += counts[FAILED]
        totals['error'] += counts['error']
    name = SUITE_NAME + (f' ({len(results)} clusters)' if 'clusters' in result else '')
    if 'clusters' not in result:
        name = suite_name(result)
    root.attrib.clear()
    _sub_attrs(root, name=name, tests=totals['tests'], failures=totals[FAILED], errors=totals['error'],
               time=_seconds(duration))
    ET.indent(root)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding='unicode').encode('utf-8') + b'\n'


def _as_result(item):
    """A fleet entry without a single-cluster result (not verifiable, could not verify) as one failed check."""
    if item.get('checks') is not None:
        return item
    from azext_kmsverify.verdict.checks import check
    return dict(item, checks=[check('Verification', FAILED, f"could not verify: {item.get('error') or 'unknown'}")])


def _suite(root, result, index, *, moment, host, duration):
    cases = _testcases(result)
    counts = {FAILED: 0, SKIPPED: 0, 'error': 0}
    for case in cases:
        status = case[2]
        if case[0] == _COULD_NOT_VERIFY and status == FAILED:
            status = 'error'  # nothing was verified: an error of the run, not a failed check
        key = status if status in (FAILED, SKIPPED) else ('error' if status not in (PASSED, WARNING) else None)
        if key:
            counts[key] += 1
    total_time = _seconds(duration)
    name = suite_name(result)
    suite = _sub(root, 'testsuite')
    _sub_attrs(suite, name=name, tests=len(cases), failures=counts[FAILED], errors=counts['error'],
               skipped=counts[SKIPPED], time=total_time, timestamp=moment.strftime('%Y-%m-%dT%H:%M:%S'),
               hostname=host, id=index, package='kmsverify')
    _properties(suite, result)
    warnings = []
    for classname, case_name, status, message, text, stdout in cases:
        case = _sub(suite, 'testcase', classname=classname, name=case_name, time=_seconds(0))
        if status == FAILED and classname == _COULD_NOT_VERIFY:
            _sub(case, 'error', text, message=message, type='CouldNotVerify')
        elif status == FAILED:
            _sub(case, 'failure', text, message=message, type=classname[len(_CLASS_PREFIX):])
        elif status == SKIPPED:
            _sub(case, 'skipped', message=message)
        elif status not in (PASSED, WARNING):
            _sub(case, 'error', text, message=f'unknown check status {status!r}: {message}',
                 type='UnknownStatus')
        if status == WARNING:
            check_name = classname[len(_CLASS_PREFIX):]
            about = check_name if case_name == check_name else f'{check_name} {case_name}'
            warnings.append(f'Warning: {about}: {stdout}')
            _sub(case, 'system-out', 'Warning: ' + stdout)
        elif stdout and status == PASSED:
            _sub(case, 'system-out', stdout)
    if warnings:
        _sub(suite, 'system-out', '\n'.join(warnings))
    return len(cases), counts


def _sub_attrs(element, **attrs):
    for key, value in attrs.items():
        element.set(key, _xml_text(value))


def _properties(suite, result):
    """Context for the run: the cluster, never its credentials (the result holds none)."""
    cluster = result.get('cluster') or {}
    scan = result.get('scan') or {}
    props = [('cluster.' + k, cluster.get(k)) for k in ('source', 'name', 'resourceGroup', 'context')]
    credential = cluster.get('credential')
    if isinstance(credential, dict):
        props += [('cluster.credential.' + k, credential.get(k)) for k in ('type', 'login', 'pop')]
    props += [('etcdPod', result.get('etcdPod')), ('passed', result.get('passed'))]
    props += [('scan.' + k, scan.get(k))
              for k in ('total', 'revision', 'currentKeyId', 'currentKeyIdSource', 'currentKeyIdNote')]
    props = [(k, v) for k, v in props if v is not None]
    if props:
        element = _sub(suite, 'properties')
        for key, value in props:
            _sub(element, 'property', name=key, value=str(value).lower() if isinstance(value, bool) else value)


def write_junit_xml(path, result, **kwargs):
    """Write :func:`to_junit_xml` to ``path`` (``report.files.write_report``: atomic, never through a FIFO)."""
    from azext_kmsverify.report.files import write_report
    if 'timestamp' not in kwargs and result.get('startedAt'):
        kwargs['timestamp'] = datetime.strptime(result['startedAt'], '%Y-%m-%dT%H:%M:%S.%fZ')
    kwargs.setdefault('duration', result.get('durationSeconds'))
    return write_report(path, to_junit_xml(result, **kwargs))
