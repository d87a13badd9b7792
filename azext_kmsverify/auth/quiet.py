# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""The process-wide quiet section: no log record while any thread fetches a token or loads a kubeconfig (their
libraries log request parameters and tracebacks). Used by the token sources and the kubernetes loader."""

from __future__ import annotations

import contextlib
import threading


@contextlib.contextmanager
def quiet():
    """No log record while a token is fetched: azure-identity logs failures with their traceback at WARNING (az
    prints them), and MSAL's, azure-core's and az's own debug records describe the request. The failure itself
    is reported in one line. Counted, so that the clusters of a fleet fetching tokens at once (threads) keep
    logging off until the last of them is done."""
    import logging
    with _QUIET_LOCK:
        if _QUIET['depth'] == 0:
            _QUIET['previous'] = logging.root.manager.disable
            logging.disable(logging.CRITICAL)
        _QUIET['depth'] += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _QUIET['depth'] -= 1
            if _QUIET['depth'] == 0:
                logging.disable(_QUIET['previous'])


_QUIET_LOCK = threading.Lock()
_QUIET = {'depth': 0, 'previous': 0}
