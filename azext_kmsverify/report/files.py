# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Writing a report file (``--junit-xml``, ``--sarif``) so that a reader never sees half a report and nothing
there is harmed or waited on.

A regular file (or none) is replaced atomically. A character device or a symlink to one (/dev/null, /dev/stdout)
is written through, never replaced: as root, a rename over /dev/null would remove the device. A folder, FIFO or
socket is refused, checked again at write time (the argument was checked before the run, but the path may have
changed since): opening a FIFO for writing would block until a reader comes, for ever.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile


def write_report(path, data: bytes) -> str:
    """Write ``data`` to ``path`` as above; raise OSError when the path cannot take it."""
    path = os.path.abspath(os.fspath(path))
    try:
        mode = os.stat(path).st_mode  # what a write would reach, through a symlink
    except FileNotFoundError:
        mode = None
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
        raise OSError(errno.EINVAL, 'not a regular file', path)
    if mode is not None and (stat.S_ISCHR(mode) or os.path.islink(path)):
        # O_NONBLOCK: should a FIFO have been put there since the check above, open fails instead of waiting.
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            kind = os.fstat(fd).st_mode
            if not (stat.S_ISCHR(kind) or stat.S_ISREG(kind)):
                raise OSError(errno.EINVAL, 'not a regular file', path)
            os.set_blocking(fd, True)  # a terminal may take the report slowly: wait for it, not fail
            if stat.S_ISREG(kind):
                os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        return path
    folder, base = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f'.{base}.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the report holds nothing secret and CI must read it
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
