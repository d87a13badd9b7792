# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""The result contract: the fields every command's JSON carries, and the schema it keeps to.

``schemas/result-1.json`` (shipped in the package) is the schema of ``-o json``. A minor version (``1.x``) only
adds optional fields; removing or changing one makes ``2.0``, and HISTORY says so. Pure and light.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

SCHEMA_VERSION = '1.1'  # 1.1: verify's resources, reencrypt's plan.byResource and targets[].resource
SCHEMA_FILE = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'schemas', 'result-1.json')


def extension_version() -> str:
    """This extension's version, from its installed metadata (az puts the extension's folder on sys.path)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version('kmsverify')
    except PackageNotFoundError:  # imported from a source tree, not installed
        return 'unknown'


def timestamp(moment: datetime) -> str:
    """UTC, seconds and milliseconds, with a Z: what the schema's ``timestamp`` accepts."""
    return moment.astimezone(timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.') + f'{moment.microsecond // 1000:03d}Z'


def envelope(result: dict, *, command: str, started: datetime, finished: datetime, seconds: float) -> dict:
    """``result`` with the contract's fields: the schema and extension versions, the command, and when it ran."""
    return dict(result, schemaVersion=SCHEMA_VERSION, extensionVersion=extension_version(), command=command,
                startedAt=timestamp(started), finishedAt=timestamp(finished), durationSeconds=round(seconds, 3))
