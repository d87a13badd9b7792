# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""What etcdctl returns, as plain records, and the two ways reading it fails. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field

from azext_kmsverify.etcd.stderr import explain_etcdctl_error


@dataclass(repr=False)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0

    def __repr__(self) -> str:  # the value may be a plaintext secret: show its length only
        return (f'KeyValue(key={self.key!r}, value=<{len(self.value)} bytes>, '
                f'create_revision={self.create_revision}, mod_revision={self.mod_revision}, '
                f'version={self.version}, lease={self.lease})')

    __str__ = __repr__


@dataclass
class RangeResult:
    revision: int
    kvs: list[KeyValue] = field(default_factory=list)
    more: bool = False
    count: int = 0


class EtcdOutputError(ValueError):
    """etcdctl output that does not parse or is inconsistent (message never holds value bytes)."""


class EtcdctlError(Exception):
    """etcdctl exited non-zero. ``stderr_summary`` is etcdctl's own error line, never stdout."""

    def __init__(self, message: str, stderr_summary: str, returncode: int, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.stderr_summary = stderr_summary
        self.returncode = returncode
        self.hint = hint if hint is not None else explain_etcdctl_error(stderr_summary)

    def __str__(self) -> str:
        return self.message
