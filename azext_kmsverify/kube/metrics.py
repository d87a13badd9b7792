# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""The API server's ``/metrics`` page (parsed by ``verdict.keys``). Needs ``get`` on the non-resource URL
``/metrics``; without it the caller skips the source with the reason."""

from __future__ import annotations

from azext_kmsverify import defaults


def metrics_page(client) -> tuple[str | None, str]:
    """``(text, '')`` of the API server's ``/metrics`` page, or ``(None, why it could not be read)``."""
    from azure.cli.core.azclierror import AzCLIError
    try:
        status, body = client.request('GET', '/metrics', accept='text/plain', timeout=20,
                                      max_bytes=defaults.METRICS_MAX_BYTES, doing='reading /metrics')
    except AzCLIError as error:
        if client.deadline.expired():
            raise
        return None, f'/metrics could not be read: {error.error_msg}'
    if status == 403:
        return None, "/metrics is not allowed (it needs 'get' on the non-resource URL /metrics)"
    if status != 200:
        return None, f'/metrics answered HTTP {status}'
    return body.decode('utf-8', 'replace'), ''


def key_evidence(client) -> tuple[str | None, str, set | None]:
    """``(hash, how, known key hashes)`` from one read of /metrics: the current KMS v2 key's hash (or None, why
    not) and every key id hash the page shows (``verdict.keys.known_key_hashes``; None when it could not be read)."""
    from azext_kmsverify.verdict.keys import current_key_hash as parse
    from azext_kmsverify.verdict.keys import known_key_hashes
    text, why = metrics_page(client)
    if text is None:
        return None, why, None
    key_hash, how = parse(text)
    return key_hash, how, known_key_hashes(text)


def current_key_hash(client) -> tuple[str | None, str]:
    """``(hash, how)`` of the KMS v2 key the API server encrypts with now, or ``(None, why not)``."""
    from azext_kmsverify.verdict.keys import current_key_hash as parse
    text, why = metrics_page(client)
    if text is None:
        return None, why
    return parse(text)
