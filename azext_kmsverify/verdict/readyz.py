# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Parse kube-apiserver ``/readyz`` (and ``/healthz``) bodies, focusing on the KMS checks.

Pure and standard-library only. Body shapes: the fixtures in tests/fixtures/readyz, as kube-apiserver's
healthz package writes them.
"""

from __future__ import annotations

import re

# "[+]name ok", "[-]name failed: reason withheld", "[+]name excluded: ok"
_CHECK_LINE = re.compile(r'\[([+-])\](\S+) (ok|failed|excluded)\b.*')
# "readyz check passed" / "healthz check failed"
_OVERALL_LINE = re.compile(r'(\w+) check (passed|failed)')
_KMS_CHECK = re.compile(r'kms-providers|kms-provider-\d+')
_SERVER_ERROR_PREFIX = 'internal server error: '
_REASON_MAX = 4096


def parse_readyz(body: str) -> list[dict]:
    """One ``{"name", "status", "line", "overall"}`` per check line, then one for the overall result.

    ``status`` is "ok", "failed" or "excluded" for checks. The overall entry (``overall`` True)
    is named after the endpoint ("readyz", "healthz") with status "ok" or "failed"; a bare ``ok``
    body (no ``?verbose``) yields only an overall "readyz" entry. Unrecognized lines are skipped.
    """
    if isinstance(body, (bytes, bytearray)):
        body = bytes(body).decode('utf-8', errors='replace')
    entries = []
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    if lines == ['ok']:
        return [{'name': 'readyz', 'status': 'ok', 'line': 'ok', 'overall': True}]
    for line in lines:
        m = _CHECK_LINE.fullmatch(line)
        if m:
            sign, name, word = m.groups()
            # "[-]x ok" does not occur; trust the sign for pass/fail, the word for "excluded".
            status = 'failed' if sign == '-' else ('excluded' if word == 'excluded' else 'ok')
            entries.append({'name': name, 'status': status, 'line': line, 'overall': False})
            continue
        m = _OVERALL_LINE.fullmatch(line)
        if m:
            entries.append({'name': m.group(1), 'status': 'ok' if m.group(2) == 'passed' else 'failed',
                            'line': line, 'overall': True})
    return entries


def overall_status(parsed: list[dict]) -> str | None:
    """"ok" or "failed" from the body's overall line, or None if the body had none."""
    for entry in parsed:
        if entry.get('overall'):
            return entry['status']
    return None


def kms_checks(parsed: list[dict]) -> list[dict]:
    """The KMS checks: the aggregate ``kms-providers`` and/or per-provider ``kms-provider-N``."""
    return [e for e in parsed if not e.get('overall') and _KMS_CHECK.fullmatch(e['name'])]


def parse_check_error(body: str) -> str:
    """The reason text of a failing ``GET /readyz/<name>`` (HTTP 500) body.

    The raw body is ``internal server error: <reason>``. Returns "" for an ``ok`` body; other text is
    returned stripped, as the best available reason. Linear in the body.
    """
    if isinstance(body, (bytes, bytearray)):
        body = bytes(body).decode('utf-8', errors='replace')
    text = body.strip()
    if text == 'ok':
        return ''
    if text.startswith(_SERVER_ERROR_PREFIX):
        text = text[len(_SERVER_ERROR_PREFIX):].strip()
    return text[:_REASON_MAX]
