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
