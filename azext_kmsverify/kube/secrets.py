# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Secrets through the API: existence and metadata only (never data), and the probe's create and delete."""

from __future__ import annotations

import json
from collections.abc import Iterator

from azext_kmsverify import defaults
from azext_kmsverify.errors import make

METADATA_ONLY = 'application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json'
METADATA_LIST = 'application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json'


def secret_exists(client, ns: str, name: str) -> bool:
    """Whether the API knows the secret. Asks for metadata only: the value never crosses the wire."""
    doing = f'reading secret {ns}/{name}'
    status, body = client.request('GET', f'/api/v1/namespaces/{ns}/secrets/{name}', accept=METADATA_ONLY,
                                  timeout=20, doing=doing)
    if status == 200:
        return True
    if status == 404:
        return False
    raise client.errors.api(status, body, doing, permission='get secrets in namespace ' + ns)


def create_secret(client, ns: str, body: dict, doing: str, *, permission: str, not_found: tuple[str, str],
                  refused=None) -> None:
    """POST a secret; the answer is asked as metadata only, so the value does not come back. ``refused()`` is
    called when the API answered 4xx (forbidden, invalid, namespace not found, conflict): nothing was created."""
    status, answer = client.request('POST', f'/api/v1/namespaces/{ns}/secrets', body=body, accept=METADATA_ONLY,
                                    timeout=30, doing=doing)
    if status not in (200, 201):
        if refused is not None and 400 <= status < 500:
            refused()
        raise client.errors.api(status, answer, doing, permission=permission, not_found=not_found)


def delete_secret(client, ns: str, name: str, timeout: float) -> bool:
    """Delete a secret; True when gone (404 included). Never raises: it runs on the way out of errors too, so
    it is bounded by its own ``timeout`` (the --timeout may be spent), not by the deadline."""
    try:
        status, _ = client.request('DELETE', f'/api/v1/namespaces/{ns}/secrets/{name}', timeout=timeout,
                                   bounded=False, doing=f'deleting secret {ns}/{name}')
    except Exception:  # pylint: disable=broad-except  # never raises: see above
        return False
    return status in (200, 202, 404)


def list_secret_metadata(client, page_size: int = defaults.METADATA_PAGE_SIZE) -> Iterator[dict]:
    """Yield the metadata of every secret, page by page (metadata only, never data)."""
    from azure.cli.core.azclierror import AzureResponseError
    token = None
    while True:
        query = [('limit', str(page_size))] + ([('continue', token)] if token else [])
        status, body = client.request('GET', '/api/v1/secrets', query=query, accept=METADATA_LIST, timeout=60,
                                      doing='listing secret metadata')
        if status != 200:
            raise client.errors.api(status, body, 'listing secret metadata',
                                    permission='list secrets in all namespaces')
        try:
            page = json.loads(body)
            items = page.get('items') or []
            token = (page.get('metadata') or {}).get('continue')
        except (ValueError, AttributeError, RecursionError):
            items = None
        if not isinstance(items, list):
            raise make(AzureResponseError, 'The API server answered the secret metadata list with something that '
                                           'is not a list.', 'Retry; if it persists, check the API server.')
        for item in items:
            if isinstance(item, dict):
                yield item.get('metadata') or {}
        if not token:
            return


def old_writes(client, rotation_days: int) -> tuple[dict | None, str | None]:
    """``(write times, None)`` of the secrets last written more than ``rotation_days`` ago (from metadata only),
    or ``(None, why)`` when the API cannot list them: the KMS v1 age check is then skipped with that reason."""
    from azure.cli.core.azclierror import AzCLIError

    from azext_kmsverify.verdict.scan import written_before
    try:
        return written_before(list_secret_metadata(client), rotation_days), None
    except AzCLIError as error:
        if client.deadline.expired():
            raise
        return None, f'the API could not list secret metadata: {error.error_msg}'
