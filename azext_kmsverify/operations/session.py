# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""One signed-in cluster: the sign-in, the API client, the etcd exec and the etcd reader, each built once, and
the one secret iterator that scan, plan and the proof after a rewrite share. A context manager::

    with ClusterSession(cli_ctx, options.cluster, options.etcd, deadline, step=run.step) as session:
        session.client            # kube.client.KubeClient (cluster_info['server'] set)
        session.reader            # etcd.reader.EtcdReader, built on first use ('finding the etcd pods')
        for secret in session.secrets():  # StoredSecret(namespace, name, value, mod_revision), key order
            ...

etcdctl failures leave the session as one-line azclierrors (the one place they are translated).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

from azure.cli.core.azclierror import AzureResponseError

from azext_kmsverify import defaults
from azext_kmsverify.auth import kubeconfig as kc
from azext_kmsverify.auth.arm import cluster_resource_id, fetch_kubeconfig
from azext_kmsverify.auth.armclient import current_subscription
from azext_kmsverify.auth.entra import sign_in as entra_sign_in
from azext_kmsverify.errors import make
from azext_kmsverify.etcd.reader import EtcdReader
from azext_kmsverify.etcd.records import EtcdctlError, EtcdOutputError
from azext_kmsverify.kube.client import KubeClient
from azext_kmsverify.kube.pods import EtcdExec, etcd_pods
from azext_kmsverify.options import ClusterOptions
from azext_kmsverify.text import printable


@dataclass(frozen=True)
class StoredSecret:
    """One secret as etcd stores it. ``namespace`` and ``name`` come from the etcd key, raw (anyone with etcd
    access can set them to anything: escape them with ``text.printable`` for any output)."""

    namespace: str
    name: str
    value: bytes
    mod_revision: int
    create_revision: int = 0
    version: int = 0  # etcd's count of writes to the key since its creation (1: written once)


def sign_in(cli_ctx, cluster: ClusterOptions, deadline):
    """(resolved kubeconfig, cluster info for the result): from Azure with ``-n``, else ``--kubeconfig``."""
    if cluster.from_azure:
        config = fetch_kubeconfig(cli_ctx, cluster.resource_group, cluster.name, cluster.admin, deadline,
                                  subscription=cluster.subscription)
        resolved = kc.resolve(config, None, source=kc.AZURE_SOURCE, from_azure=True)
        credential = 'admin' if cluster.admin else 'user'
        info = {'source': 'azure', 'name': cluster.name, 'resourceGroup': cluster.resource_group}
        if cluster.subscription:
            info['subscriptionId'] = cluster.subscription
        info['id'] = cluster_resource_id(cluster.subscription or current_subscription(cli_ctx),
                                         cluster.resource_group, cluster.name)
    else:
        config = kc.load_kubeconfig_file(cluster.kubeconfig)
        resolved = kc.resolve(config, cluster.context, source=f"--kubeconfig '{printable(cluster.kubeconfig)}'",
                              base_dir=os.path.dirname(cluster.kubeconfig))
        credential = 'kubeconfig'
        info = {'source': 'kubeconfig', 'name': None, 'resourceGroup': None}
    resolved, how = entra_sign_in(cli_ctx, resolved, deadline)
    info.update(context=resolved.context_name, credential={'type': credential, **how})
    return resolved, info


class ClusterSession:  # pylint: disable=too-many-instance-attributes  # one per part of the connection
    """The connection stack of one cluster, built once. ``signed_in`` (what :meth:`sign_in` returned earlier,
    e.g. in a fleet's first phase) skips signing in again; ``step`` is the run's step context manager."""

    def __init__(self, cli_ctx, cluster: ClusterOptions, etcd, deadline, *, step=None, signed_in=None):
        self.cli_ctx, self.cluster, self.etcd, self.deadline = cli_ctx, cluster, etcd, deadline
        self._step = step or (lambda _name: nullcontext())
        self.signed_in = signed_in
        self.client = None
        self.info = None
        self._runner = None
        self._reader = None

    def sign_in(self):
        """(resolved kubeconfig, cluster info): signs in once."""
        if self.signed_in is None:
            with self._step('signing in'):
                self.signed_in = sign_in(self.cli_ctx, self.cluster, self.deadline)
        return self.signed_in

    def __enter__(self) -> ClusterSession:
        kubeconfig, self.info = self.sign_in()
        with self._step('loading the kubeconfig'):
            self.client = KubeClient(kubeconfig, self.deadline, self.info['credential']['type']).__enter__()
        self.info['server'] = self.client.server
        return self

    def __exit__(self, exc_type, exc, _tb) -> None:
        try:
            if self.client is not None:
                self.client.__exit__(exc_type, exc, _tb)
        finally:
            if isinstance(exc, EtcdctlError):
                pod = (self._runner.last_pod if self._runner else None) or 'the etcd pod'
                raise make(AzureResponseError, f'etcdctl failed in {printable(pod)}: '
                                               f'{printable(exc.stderr_summary or exc)}',
                           exc.hint or 'Check --etcd-cacert, --etcd-cert, --etcd-key and --etcd-endpoint.') from None
            if isinstance(exc, EtcdOutputError):
                raise make(AzureResponseError, f'etcdctl output could not be read: {exc}',
                           'Check the etcdctl version in the etcd pod (3.4 and 3.5 are supported).') from None

    @property
    def reader(self) -> EtcdReader:
        """The etcd reader (etcdctl exec'd in the etcd pod, failing over to the next one), built on first use."""
        return self.open_etcd()

    def open_etcd(self) -> EtcdReader:
        """Find the etcd pods and build the etcd reader, once (step 'finding the etcd pods')."""
        if self._reader is None:
            with self._step('finding the etcd pods'):
                etcd = self.etcd
                self._runner = EtcdExec(self.client, etcd_pods(self.client, etcd.pod), etcd.container)
                self._reader = EtcdReader(self._runner, endpoint=etcd.endpoint, cacert=etcd.cacert, cert=etcd.cert,
                                          key_file=etcd.key, page_size=etcd.page_size,
                                          page_bytes=defaults.PAGE_BYTES)
        return self._reader

    @property
    def etcd_pod(self) -> str:
        """The etcd pod the reader runs etcdctl in."""
        self.open_etcd()
        return self._runner.pod

    def secrets(self):
        """Every secret in etcd, in key order, as the pages stream in (one paged scan pinned to one revision)."""
        return self.objects(defaults.ETCD_SECRETS_PREFIX)

    def objects(self, prefix: str, namespaced: bool = True):
        """Every object under the etcd ``prefix`` (a ``kube.resources.Resource``'s), in key order, as
        :class:`StoredSecret` records (``namespace`` '' for a cluster-scoped resource)."""
        skip = len(prefix)
        for kv in self.reader.iter_prefix(prefix):
            rest = kv.key[skip:].decode('utf-8', 'replace')
            namespace, name = rest.partition('/')[::2] if namespaced else ('', rest)
            yield StoredSecret(namespace, name, kv.value, kv.mod_revision, kv.create_revision, kv.version)

    def secret(self, namespace: str, name: str) -> StoredSecret | None:
        """One secret as etcd stores it, or None when etcd has no such key."""
        return self.object(defaults.ETCD_SECRETS_PREFIX, namespace, name)

    def object(self, prefix: str, namespace: str, name: str) -> StoredSecret | None:
        """One object under ``prefix`` as etcd stores it ('' namespace: cluster-scoped), or None."""
        kv = self.reader.get(f'{prefix}{namespace}/{name}' if namespace else f'{prefix}{name}')
        return None if kv is None else StoredSecret(namespace, name, kv.value, kv.mod_revision, kv.create_revision,
                                                    kv.version)
