# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""The probe secret: created with a random name and value, deleted on every way out.

The name is chosen before the POST and the secret is deleted once the POST was sent, whatever happens after
(an answer lost to Ctrl-C, SIGTERM from a pipeline cancel, an error): the API may have committed it even when
no answer arrived. A 404 on delete is fine. Only SIGKILL can leave one behind; it carries the label
``app.kubernetes.io/managed-by=kmsverify`` so it can be found (README, "Leftovers").
"""

from __future__ import annotations

import base64
import secrets as _random

from knack.log import get_logger

from azext_kmsverify import defaults
from azext_kmsverify.kube.secrets import create_secret, delete_secret

logger = get_logger(__name__)


def probe_body(ns: str, name: str) -> dict:
    value = base64.b64encode(_random.token_bytes(32)).decode('ascii')
    return {'apiVersion': 'v1', 'kind': 'Secret', 'type': 'Opaque',
            'metadata': {'name': name, 'namespace': ns, 'labels': {defaults.PROBE_LABEL: defaults.PROBE_LABEL_VALUE},
                         'annotations': {'kmsverify/purpose': 'temporary probe of KMS encryption at rest'}},
            'data': {'probe': value}}


class ProbeSecret:
    """A probe secret that is deleted on every way out: return, error, Ctrl-C and SIGTERM (pipeline cancel)."""

    def __init__(self, client, namespace: str):
        self.client = client
        self.namespace = namespace
        self.name = defaults.PROBE_PREFIX + _random.token_hex(5)
        self.deleted: bool | None = None
        self._sent = False
        self._previous_handler = None

    def __enter__(self) -> ProbeSecret:
        import signal
        import threading
        if threading.current_thread() is threading.main_thread():
            def _terminate(signum, _frame):
                raise SystemExit(128 + signum)
            self._previous_handler = signal.signal(signal.SIGTERM, _terminate)
        ns = self.namespace
        try:
            self._sent = True  # from here on the API may hold it, answer or not
            create_secret(self.client, ns, probe_body(ns, self.name), f'creating a probe secret in namespace {ns}',
                          permission=f'create secrets in namespace {ns} (or verify existing secrets with '
                                     '--secret NAMESPACE/NAME or --all-secrets)',
                          not_found=(f"Namespace '{ns}' for the probe secret was not found.",
                                     'Choose an existing namespace with --probe-namespace.'))
        except BaseException:
            self._cleanup()
            raise
        logger.info('Created probe secret %s/%s', ns, self.name)
        return self

    def __exit__(self, *exc) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        blocked = _block_interrupts()  # a second Ctrl-C or SIGTERM waits until the delete is done
        try:
            if self._sent and self.deleted is None:
                self.deleted = delete_secret(self.client, self.namespace, self.name, defaults.PROBE_DELETE_GRACE)
                if self.deleted:
                    logger.info('Deleted probe secret %s/%s', self.namespace, self.name)
                else:
                    logger.warning('Could not delete probe secret %s/%s; delete it with: kubectl delete secret -n %s '
                                   '%s', self.namespace, self.name, self.namespace, self.name)
        finally:
            self._restore()
            _unblock(blocked)

    def _restore(self) -> None:
        import signal
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None


def _block_interrupts():
    """Defer SIGINT and SIGTERM (main thread, POSIX) while the probe is deleted; they are delivered after."""
    import signal
    import threading
    if not hasattr(signal, 'pthread_sigmask') or threading.current_thread() is not threading.main_thread():
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


def _unblock(previous) -> None:
    import signal
    if previous is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
