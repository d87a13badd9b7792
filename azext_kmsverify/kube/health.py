# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""The API server's health endpoints, as text (parsed by ``verdict.readyz``)."""

from __future__ import annotations

from azext_kmsverify import defaults


def readyz(client) -> tuple[int, str]:
    """(HTTP status, body text) of ``/readyz?verbose``."""
    status, body = client.request('GET', '/readyz', query=[('verbose', 'true')], accept='text/plain', timeout=20,
                                  max_bytes=defaults.READYZ_MAX_BYTES, doing='reading /readyz')
    return status, body.decode('utf-8', 'replace')


def readyz_check(client, name: str) -> tuple[int, str]:
    """(HTTP status, body text) of ``/readyz/<name>``, which says why a check fails."""
    status, body = client.request('GET', f'/readyz/{name}', accept='text/plain', timeout=20,
                                  max_bytes=defaults.READYZ_MAX_BYTES, doing=f'reading /readyz/{name}')
    return status, body.decode('utf-8', 'replace')


def read_health(client) -> tuple[int | None, str | None, dict, str | None]:
    """``(status, body, reasons, unreachable)``: ``/readyz?verbose`` and, for each failing KMS check, the reason
    ``/readyz/<check>`` gives. ``unreachable`` (with ``status``/``body`` None) says why /readyz could not be read.
    A 401 and the deadline raise; anything else is an answer."""
    from azure.cli.core.azclierror import AzCLIError, UnauthorizedError

    from azext_kmsverify.text import printable
    from azext_kmsverify.verdict.checks import failing_kms_check_names
    from azext_kmsverify.verdict.readyz import parse_check_error
    try:
        status, body = readyz(client)
    except AzCLIError as error:
        if client.deadline.expired():
            raise
        return None, None, {}, error.error_msg
    if status == 401:
        raise client.errors.api(status, body.encode(), 'reading /readyz')
    if status not in (200, 500):
        return None, None, {}, f'HTTP {status}'
    reasons = {}
    for name in failing_kms_check_names(body):
        try:
            check_status, check_body = readyz_check(client, name)
        except AzCLIError as error:
            if isinstance(error, UnauthorizedError) or client.deadline.expired():
                raise
            continue
        if check_status != 200:
            reasons[name] = printable(parse_check_error(check_body))
    return status, body, reasons, None
