# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""The probe secret: created with a random name and value, deleted on every way out.

The name is chosen before the POST and the secret is deleted once the POST was sent, whatever happens after
(an answer lost to Ctrl-C, SIGTERM from a pipeline cancel, an error): the API may have committed it even when
no answer arrived. A 404 on delete is fine. The delete has a deadline of its own (``PROBE_DELETE_GRACE``, enforced
from outside like the run's). A first SIGINT or SIGTERM during it is honoured once it is done (within that grace);
a second ends the process at once, saying that the probe may be left and how to find it. Only that and SIGKILL can
leave one behind; it carries the label ``app.kubernetes.io/managed-by=kmsverify`` so it can be found (README,
"Leftovers").
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

    def __enter__(self) -> ProbeSecret:
        # SIGINT and SIGTERM outside the delete: the run frame's one hook (Run.interrupts) ends the run's waits
        # and raises KeyboardInterrupt here, so the way out below deletes the probe.
        ns = self.namespace
        try:
            self._sent = True  # from here on the API may hold it, answer or not
            create_secret(self.client, ns, probe_body(ns, self.name), f'creating a probe secret in namespace {ns}',
                          permission=f'create secrets in namespace {ns} (or verify existing secrets with '
                                     '--secret NAMESPACE/NAME or --all-secrets)',
                          not_found=(f"Namespace '{ns}' for the probe secret was not found.",
                                     'Choose an existing namespace with --probe-namespace.'),
                          refused=self._not_created)
        except BaseException:
            self._cleanup()
            raise
        logger.info('Created probe secret %s/%s', ns, self.name)
        return self

    def __exit__(self, *exc) -> None:
        self._cleanup()

    def _not_created(self) -> None:
        """The API refused the create (4xx): there is no probe to delete, nor to tell the user to delete."""
        self._sent = False

    def _cleanup(self) -> None:
        pending = _hold_interrupts(self.namespace, self.name)  # one signal waits for the delete; two end it now
        try:
            if self._sent and self.deleted is None:
                self.deleted = delete_secret(self.client, self.namespace, self.name, defaults.PROBE_DELETE_GRACE)
                if self.deleted:
                    logger.info('Deleted probe secret %s/%s', self.namespace, self.name)
                else:
                    logger.warning('Could not delete probe secret %s/%s; delete it with: kubectl delete secret -n %s '
                                   '%s', self.namespace, self.name, self.namespace, self.name)
        finally:
            _deliver(_release(pending))


def leftover_hint(namespace: str | None = None, name: str | None = None) -> str:
    """What a run stopped at once says (a second signal): a probe may be left, and how to find and delete it."""
    find = (f'a probe secret may be left. Find leftovers with: kubectl get secrets -A -l '
            f'{defaults.PROBE_LABEL}={defaults.PROBE_LABEL_VALUE}')
    if namespace and name:
        return (f'it may be left. Find leftovers with: kubectl get secrets -A -l {defaults.PROBE_LABEL}='
                f'{defaults.PROBE_LABEL_VALUE}; delete it with: kubectl delete secret -n {namespace} {name}')
    return find + '; delete each with: kubectl delete secret -n NAMESPACE NAME'


def _hold_interrupts(namespace: str, name: str):
    """While the probe is deleted (main thread): the first SIGINT or SIGTERM is held until the delete is done
    (bounded by its own deadline); a second ends the process at once, naming the probe that may be left.
    Returns what :func:`_release` needs, or None off the main thread."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return None
    held: list[int] = []

    def handler(signum, _frame):
        if not held:
            held.append(signum)
            logger.warning('Interrupted: deleting the probe secret %s/%s first (at most %s s); interrupt again to '
                           'stop now.', namespace, name, defaults.PROBE_DELETE_GRACE)
            return
        import os
        import sys
        sys.stderr.write(f'Stopped before the probe secret {namespace}/{name} was deleted: '
                         f'{leftover_hint(namespace, name)}\n')
        sys.stderr.flush()
        os._exit(128 + signum)  # at once: no cleanup may wait on the peer any more

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    return previous, held


def _release(pending) -> int | None:
    """Restore the handlers; the signal held meanwhile, if any."""
    import signal
    if pending is None:
        return None
    previous, held = pending
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    return held[0] if held else None


def _deliver(signum: int | None) -> None:
    """The held signal, as the interrupt or termination it was."""
    import signal
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    if signum is not None:
        raise SystemExit(128 + signum)
