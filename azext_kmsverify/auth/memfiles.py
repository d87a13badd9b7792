# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Credential material as files, for APIs that load certificates and keys from paths only (``ssl``).

On Linux each file is a ``memfd`` reached through ``/proc/self/fd``: it lives in memory and vanishes with the
process, even on SIGKILL. Elsewhere (macOS, Windows) the files go to a private temporary folder (mode 0700,
files 0600) that is removed on close; a failed removal is reported, since the folder holds a client key.
"""

from __future__ import annotations

import os

from knack.log import get_logger

logger = get_logger(__name__)


class MemoryFiles:
    """Files holding credential bytes for as long as the run needs them. Use as a context manager."""

    def __init__(self) -> None:
        self._fds: list[int] = []
        self._dir: str | None = None

    def __enter__(self) -> MemoryFiles:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, name: str, content: bytes) -> str:
        """A path whose content is ``content``; readable by this process only."""
        if hasattr(os, 'memfd_create') and os.path.isdir('/proc/self/fd'):
            fd = os.memfd_create(f'kmsverify-{name}', getattr(os, 'MFD_CLOEXEC', 0))
            os.write(fd, content)
            self._fds.append(fd)
            return f'/proc/self/fd/{fd}'
        import tempfile
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix='kmsverify-')
        path = os.path.join(self._dir, name)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), 'wb') as handle:
            handle.write(content)
        return path

    def close(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []
        if self._dir:
            import shutil
            folder, self._dir = self._dir, None
            shutil.rmtree(folder, ignore_errors=True)
            if os.path.exists(folder):
                logger.warning('Could not remove the temporary folder %s, which holds the client key of this run; '
                               'delete it.', folder)
