# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""The quiet section: no log record from a thread while it fetches a token or loads a kubeconfig (their
libraries log request parameters and tracebacks). Used by the token sources and the kubernetes loader."""

from __future__ import annotations

import contextlib
import threading


@contextlib.contextmanager
def quiet():
    """No log record from this thread while a token is fetched: azure-identity logs failures with their traceback
    at WARNING (az prints them), and MSAL's, azure-core's and az's own debug records describe the request. The
    failure itself is reported in one line.

    Per thread, not process-wide: a token request the run's deadline stopped waiting for (``Deadline.call``
    abandons its worker) stays quiet for as long as it lives, and the run's own error line is still printed."""
    ident = threading.get_ident()
    with _QUIET_LOCK:
        _install_filter()
        _QUIET_THREADS[ident] = _QUIET_THREADS.get(ident, 0) + 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _QUIET_THREADS[ident] -= 1
            if not _QUIET_THREADS[ident]:
                del _QUIET_THREADS[ident]


class _QuietFilter:  # pylint: disable=too-few-public-methods  # a logging filter: one method
    def filter(self, record) -> bool:
        return record.thread not in _QUIET_THREADS


def _install_filter() -> None:
    """The filter on every handler there is (root's: knack's stderr and az's command log; any logger's)."""
    import logging
    loggers = [logging.root] + [lg for lg in list(logging.root.manager.loggerDict.values())
                                if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in list(logger.handlers):
            if not any(isinstance(f, _QuietFilter) for f in handler.filters):
                handler.addFilter(_QuietFilter())


_QUIET_LOCK = threading.Lock()
_QUIET_THREADS: dict[int, int] = {}
