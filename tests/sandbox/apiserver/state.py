"""The Kubernetes API server emulator: what ``az aksarc kms verify`` (and kubectl) talk to.

aiohttp over HTTPS with the Kubernetes CA's serving cert. It implements only what the product and a person
following the documented procedure use, but implements that the way kube-apiserver does, because the product
must not be able to tell the difference:

- authentication by client certificate (CN = user, O = groups) or an Entra-like bearer JWT; RBAC with a
  ``restricted-user`` that may read but not exec into kube-system nor create secrets (real 403 Status bodies);
- ``/readyz`` and ``/healthz`` with the real check lines, and ``/readyz/<check>`` with the real KMS error;
- pods (kubeadm-like etcd mirror pods) and ``pods/exec`` over WebSocket (v5/v4 channel protocols) or SPDY/3.1
  (kubectl before 1.29) running the real ``etcdctl`` with the pod's paths mapped onto the sandbox, distroless
  (no shell);
- secrets stored in the real etcd exactly as kube-apiserver stores them (protobuf, then the first provider of
  the EncryptionConfiguration), read back through every provider; an unreadable value fails get and list with
  the apiserver's ``unable to transform key`` error.

This module is the entry point: :class:`APIServer` holds one emulated apiserver's state and hands out its
aiohttp application; the work is done by :mod:`.auth`, :mod:`.emulator.health`, :mod:`.pods` (with :mod:`.execws` and
:mod:`.execspdy`), :mod:`.store`, :mod:`.objects`, :mod:`.emulator.handlers` (the routes) and :mod:`.seed` (control-port
writes). Started by :mod:`tests.sandbox.serve` from the configuration that :mod:`tests.sandbox.control` writes.
"""

from __future__ import annotations

import base64
import logging
import time
from pathlib import Path

from aiohttp import web

from .. import auth, pods
from ..emulator import handlers
from ..processes.etcdproc import find_etcd, find_etcdctl
from ..pods import build_node, build_pods, etcd_pod_names
from ..processes.proc import kill_quietly
from ..seed import seed_bulk, write_secret_as
from ..store import EtcdDown, SecretStore
from ..transformers import EncryptionConfig

__all__ = ["APIServer", "etcd_pod_names"]

log = logging.getLogger("sandbox.apiserver")


class APIServer:
    """State of one emulated kube-apiserver (one sandbox): configuration, the secret store, namespaces, the
    static nodes and pods, and the faults the control port sets (``exec_faults``, ``readyz_fault``,
    ``exec_key_prefix``)."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.dir = Path(cfg["dir"])
        self.provider = cfg["provider"]
        self.nodes = list(cfg["nodes"])
        self.readyz_style = cfg.get("readyz_style", "aggregate")
        self.version = cfg.get("kubernetes_version", "v1.30.4")
        self.started = cfg.get("started", time.time())
        self.kms_client = None
        if cfg.get("kms"):
            from ..processes.kms_client import KMSClient
            self.kms_client = KMSClient(cfg["kms"]["socket"], cfg["kms"]["api"])
        key = base64.b64decode(cfg["local_key"]) if cfg.get("local_key") else None
        encryption = EncryptionConfig.for_provider(self.provider, kms_client=self.kms_client, key=key)
        self.store = SecretStore(encryption, cfg["etcd"], cfg.get("read_keys"))
        self.etcd_endpoint = cfg["etcd"]["endpoint"]
        self.etcd_port = int(self.etcd_endpoint.rsplit(":", 1)[1])
        self.etcdctl = find_etcdctl(cfg.get("etcdctl_version", "3.5"))
        self.etcd_bin = find_etcd()
        self.etcdutl_bin = str(Path(self.etcd_bin).with_name("etcdutl"))
        self.exec_faults: dict[str, str] = dict(cfg.get("exec_faults") or {})
        self.readyz_fault: str | None = None
        # ctl exec_key_prefix: etcdctl run through exec sees /registry/ keys under this prefix instead (as if the
        # etcd pod served another etcd than the API server's, or the API server used another --etcd-prefix).
        self.exec_key_prefix: str | None = None
        self.namespaces = {ns: self.started - 3600 for ns in ("default", "kube-system", "kube-public",
                                                               "kube-node-lease")}
        self.pods = build_pods(self.nodes, cfg.get("etcdctl_version", "3.5"), self.started)
        self.node_objs = [build_node(n, i, self.version, self.started) for i, n in enumerate(self.nodes)]
        self.port = 0
        self.exec_procs: set = set()

    async def start(self) -> None:
        await self.store.start()
        # A real apiserver keeps namespaces in etcd; this one keeps them in memory, so after a restart (a resumed
        # sandbox) the namespaces that hold secrets are known again.
        try:
            for ns in await self.store.namespaces():
                self.namespaces.setdefault(ns, self.started)
        except EtcdDown as e:
            log.warning("could not list the namespaces in etcd: %s", e)

    async def close(self) -> None:
        for proc in list(self.exec_procs):
            kill_quietly(proc)
        await self.store.close()
        if self.kms_client:
            self.kms_client.close()

    def app(self) -> web.Application:
        return handlers.build_app(self)

    # -- for the exec sessions (execws, execspdy) -----------------------------------------------------------------

    def _deny(self, request, verb, resource, namespace, name=None, subresource=None):
        return auth.deny(request, verb, resource, namespace, name, subresource)

    def _find_pod(self, ns: str, name: str) -> dict | None:
        return pods.find_pod(self.pods, ns, name)

    def map_exec(self, pod: dict, argv: list[str]) -> tuple[list[str] | None, dict]:
        return pods.map_exec(self, pod, argv)

    # -- sandbox-only writes (the control port, serve.Control) ----------------------------------------------------

    async def seed(self, ns: str, count: int, prefix: str = "bulk-", size: int = 64, with_: str = "current",
                   labels: dict | None = None, start: int = 0) -> dict:
        return await seed_bulk(self, ns, count, prefix, size, with_, labels, start)

    async def write_secret_as(self, ns: str, name: str, data: dict, with_: str = "current",
                              labels: dict | None = None, written_at: str | None = None,
                              prefix: str | None = None) -> dict:
        return await write_secret_as(self, ns, name, data, with_, labels, written_at, prefix)
