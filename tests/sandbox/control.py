"""Bring a sandbox cluster up and down, and poke it: the one entry point for tests, the bench and the CLI.

    box = Sandbox(dir)
    box.up(provider="kms-v2")          # etcd + KMS plugin + API server/ARM/control process, seeded secrets
    box.kubeconfig, box.info           # DIR/kubeconfig, the parsed DIR/sandbox.json
    box.kms("stop"); box.kms("start"); box.kms("rotate")
    box.ctl({"exec_fault": {"pod": box.info["etcd_pods"][0], "mode": "drop"}})
    box.down()                         # idempotent; stops every process recorded in sandbox.json
    box.up()                           # on a stopped sandbox: resumes it (same data, certificates and keys)

A fleet (many clusters behind one ARM, Resource Graph and Entra emulator) is :class:`tests.sandbox.fleet.Fleet`,
which holds one Sandbox per cluster; this module does not import it.

Every process runs in its own session and is recorded by pid in ``sandbox.json``, so ``down`` works from
another process (``python -m tests.sandbox down --dir DIR``) and leaves nothing behind. Every port is a free
127.0.0.1 port, so several sandboxes can run at once.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import random
import re
import shutil
import signal
import ssl
import string
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from .processes.proc import (StartError, free_port, is_alive, is_ours, kill_process, spawn_python, stop_pid, terminate,
                             wait_ready)

PROVIDERS = ("kms-v1", "kms-v2", "aescbc", "aesgcm", "secretbox", "identity")
APISERVERS = ("real", "emulator")
READYZ_STYLES = ("aggregate", "per-provider")
SUBSCRIPTION = "00000000-0000-0000-0000-00000000c0de"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
RESOURCE_GROUP = "sandbox-rg"
CLUSTER = "sandbox-cluster"
KUBERNETES_VERSION = "v1.30.4"
UNIX_PATH_MAX = 100  # sun_path is 108 bytes; keep a margin
DEFAULTS = {"provider": "kms-v2", "etcdctl": "3.5", "nodes": 1, "broken_node": False, "readyz_style": "aggregate",
            "history": False, "entra": True, "enforce_pop": True, "apiserver": "real", "disabled_metrics": [],
            "without_metrics": [], "apiservers": 1}
MAX_APISERVERS = 5
_FLAGS = {"apiserver": "--apiserver", "apiservers": "--apiservers",
          "provider": "--provider", "etcdctl": "--etcdctl", "nodes": "--nodes", "broken_node": "--broken-node",
          "readyz_style": "--readyz-style", "history": "--history", "entra": "--entra", "enforce_pop": "--enforce-pop",
          "disabled_metrics": "--disabled-metrics", "without_metrics": "--without-metrics"}
# kube-apiserver's KMS v2 key-id metrics (staging/src/k8s.io/apiserver/pkg/storage/value/encrypt/envelope/metrics/
# metrics.go), for ``up(without_metrics=...)``: the one upstream PR #136354 would remove, and all three.
KEY_ID_HASH_TOTAL = "apiserver_envelope_encryption_key_id_hash_total"
KEY_ID_METRICS = (KEY_ID_HASH_TOTAL, "apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds",
                  "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds")
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_NO_FLAGS = {"entra": "--no-entra", "enforce_pop": "--no-enforce-pop"}
ENCRYPTED_RESOURCES = "encrypted-resources.json"  # resources encrypted besides secrets (encrypt_resources)
THROTTLED_CERT, THROTTLED_KEY = "pki/throttled.crt", "pki/throttled.key"  # Sandbox.throttle's identity
READ_KEYS = "read-keys.json"  # local keys the API server added for reading (write_secret "with"), kept for a resume


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def _port_free(port: int) -> bool:
    import socket
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def key_id_hash(key_id: str) -> str:
    """The hash kube-apiserver's /metrics shows for a KMS v2 key id (``sha256:<hex>``)."""
    import hashlib
    return "sha256:" + hashlib.sha256(key_id.encode()).hexdigest()


def _binary_version(folder: str) -> str:
    """The gitVersion of the kube-apiserver in ``folder`` (``kube-apiserver --version``: ``Kubernetes v1.29.6``)."""
    out = subprocess.run([str(Path(folder) / "kube-apiserver"), "--version"], capture_output=True, text=True,
                         timeout=30).stdout.split()
    return out[-1] if out else "unknown"


class SandboxError(RuntimeError):
    """The sandbox could not do what was asked; the message says what and where the logs are."""


# --- sandbox.json and etcd stop/start (also used by the server process for ctl etcd) ----------------------------


@contextlib.contextmanager
def _locked(directory: Path):
    with open(directory / ".sandbox.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_info(directory) -> dict:
    path = Path(directory) / "sandbox.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SandboxError(f"no sandbox at {directory} (no sandbox.json): run `python -m tests.sandbox up --dir "
                           f"{directory}` first") from None
    except ValueError as e:
        raise SandboxError(f"{path} is not JSON ({e}): not a sandbox this code wrote") from None


def update_info(directory, **changes) -> dict:
    """Read-modify-write sandbox.json under a lock; dict values are merged one level deep."""
    directory = Path(directory)
    with _locked(directory):
        info = read_info(directory)
        for k, v in changes.items():
            if isinstance(v, dict) and isinstance(info.get(k), dict):
                info[k].update(v)
            else:
                info[k] = v
        _write_json(directory / "sandbox.json", info)
    return info


# tests/sandbox/tests/test_sandbox_servers.py checks for processes left behind with this name.
_alive = is_alive


def _pki_from_info(info: dict) -> dict:
    pki = {k: Path(v) for k, v in info["pki"].items() if k != "nodes"}
    pki["nodes"] = {n: {k: Path(v) for k, v in files.items()} for n, files in info["pki"]["nodes"].items()}
    return pki


def _etcd_process(directory: Path, info: dict):
    from .processes.etcdproc import EtcdProcess
    e = info["etcd"]
    return EtcdProcess(directory, _pki_from_info(info), node=info["nodes"][0], client_port=e["port"],
                       peer_port=e["peer_port"])


def etcd_action(directory, action: str) -> dict:
    """Stop or start the sandbox's etcd (keeping its ports and data); records the new pid."""
    directory = Path(directory)
    info = read_info(directory)
    if action == "stop":
        stopped = stop_pid(info["pids"].get("etcd"), str(directory))
        update_info(directory, pids={"etcd": None})
        return {"stopped": stopped}
    if action == "start":
        if is_alive(info["pids"].get("etcd")):
            return {"started": False, "pid": info["pids"]["etcd"]}
        proc = _etcd_process(directory, info).start()
        update_info(directory, pids={"etcd": proc.pid})
        return {"started": True, "pid": proc.pid}
    raise ValueError(f"etcd action must be stop or start, not {action!r}")


def _json_safe(paths: dict) -> dict:
    out = {}
    for k, v in paths.items():
        out[k] = _json_safe(v) if isinstance(v, dict) else str(v)
    return out


def parse_metric_names(value) -> list[str] | None:
    """``up``'s ``disabled_metrics``/``without_metrics`` (``"a,b"`` or a list of fully qualified metric names;
    None: not given) as a sorted list; SandboxError for a name that is not a Prometheus metric name."""
    if value is None:
        return None
    names = value.split(",") if isinstance(value, str) else list(value)
    names = sorted({str(n).strip() for n in names if str(n).strip()})
    bad = [n for n in names if not _METRIC_NAME.fullmatch(n)]
    if bad:
        raise SandboxError(f"disabled_metrics and without_metrics take fully qualified metric names, not {bad[0]!r}")
    return names


def _check_options(asked: dict) -> None:
    """SandboxError for an option ``up`` cannot honour (None: not given)."""
    provider, etcdctl, nodes, readyz_style = (asked[k] for k in ("provider", "etcdctl", "nodes", "readyz_style"))
    if asked.get("apiserver") is not None and asked["apiserver"] not in APISERVERS:
        raise SandboxError(f"apiserver must be one of {', '.join(APISERVERS)}, not {asked['apiserver']!r}")
    for k in ("disabled_metrics", "without_metrics"):
        if asked.get(k) and asked.get("apiserver") == "emulator":
            raise SandboxError(f"{k} ({_FLAGS[k]}) needs the real kube-apiserver (--apiserver real)")
    if provider is not None and provider not in PROVIDERS:
        raise SandboxError(f"unknown provider {provider!r} (expected one of {', '.join(PROVIDERS)})")
    if etcdctl is not None and etcdctl not in ("3.5", "3.4"):
        raise SandboxError(f"etcdctl must be 3.5 or 3.4, not {etcdctl!r}")
    if nodes is not None and nodes not in (1, 3):
        raise SandboxError(f"nodes must be 1 or 3, not {nodes!r}")
    if readyz_style is not None and readyz_style not in READYZ_STYLES:
        raise SandboxError(f"readyz_style must be one of {', '.join(READYZ_STYLES)}, not {readyz_style!r}")
    n = asked.get("apiservers")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_APISERVERS):
        raise SandboxError(f"apiservers must be a number from 1 to {MAX_APISERVERS}, not {n!r}")
    if (n or 1) > 1 and asked.get("apiserver") == "emulator":
        raise SandboxError("--apiservers N needs the real kube-apiserver (not --apiserver emulator)")


def _urls(ports: dict, api_url: str, arm: dict | None = None) -> dict:
    """sandbox.json's entries for the server process's sites (from serve-ready.json's ports); ``arm``: serve.json's
    ARM record of the cluster (a fleet's cluster has its own name, resource group and subscription)."""
    arm = arm or {"subscription": SUBSCRIPTION, "resource_group": RESOURCE_GROUP, "cluster": CLUSTER,
                  "tenant": TENANT}
    return {"apiserver": {"url": api_url, "port": ports["apiserver_port"]},
            "arm": {"url": f"https://127.0.0.1:{ports['arm_port']}", "port": ports["arm_port"],
                    "subscription": arm["subscription"], "resource_group": arm["resource_group"],
                    "cluster": arm["cluster"], "tenant": arm["tenant"]},
            "control": {"url": f"http://127.0.0.1:{ports['control_port']}"}}


def _entra_info(serve_cfg: dict, ports: dict, ca_bundle) -> dict | None:
    """sandbox.json ``entra`` (None without the Entra emulator)."""
    if not serve_cfg.get("entra"):
        return None
    from .azure.entra.tenant import info
    out = info(serve_cfg["entra"], ports["entra_port"], ports["msi_port"], str(ca_bundle))
    if serve_cfg.get("arm_id"):  # a fleet's cluster: PoP tokens are bound to its own ARM id
        out["cluster_id"] = serve_cfg["arm_id"]
    return out


def _token_id() -> str:
    return "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(6))


def _base_seeds(token_id: str) -> list[tuple]:
    """(namespace, name, string data, type, field manager) of the secrets every ``up`` seeds."""
    return [
        ("kube-system", f"bootstrap-token-{token_id}", {
            "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token",
            "expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400)),
            "token-id": token_id, "token-secret": os.urandom(8).hex(),
            "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true"},
         "bootstrap.kubernetes.io/token", "kubeadm"),
        ("default", "db-user-pass", {"username": "admin", "password": "S!B\\*d$zDsb="}, "Opaque", "kubectl-create"),
        ("default", "registry-credentials", {".dockerconfigjson": json.dumps(
            {"auths": {"contoso.azurecr.io": {"username": "puller", "password": os.urandom(6).hex()}}})},
         "kubernetes.io/dockerconfigjson", "kubectl-create"),
    ]


def _node_names(n: int) -> list[str]:
    alphabet = string.ascii_lowercase + string.digits
    return [f"moc-{random.choice(string.ascii_lowercase)}{''.join(random.choice(alphabet) for _ in range(10))}"
            for _ in range(n)]


# --- the sandbox ----------------------------------------------------------------------------------------------------


class Sandbox:
    """A local AKS-Arc-like control plane rooted at ``directory`` (see tests/sandbox/README.md)."""

    def __init__(self, directory):
        self.dir = Path(directory).resolve()
        self._procs: dict[str, subprocess.Popen] = {}
        self.resumed = False  # the last up() resumed a stopped sandbox
        self.member: dict | None = None  # one cluster of a fleet: what tests.sandbox.fleet.Fleet chose for it

    # -- properties ------------------------------------------------------------------------------------------------

    @property
    def info(self) -> dict:
        return read_info(self.dir)

    @property
    def kubeconfig(self) -> str:
        return str(self.dir / "kubeconfig")

    @property
    def kubeconfig_restricted(self) -> str:
        return str(self.dir / "kubeconfig-restricted")

    # -- up ----------------------------------------------------------------------------------------------------------

    def up(self, provider: str | None = None, etcdctl: str | None = None, nodes: int | None = None,
           broken_node: bool | None = None, readyz_style: str | None = None, history: bool | None = None,
           entra: bool | None = None, enforce_pop: bool | None = None, timeout: float = 60.0,
           apiserver: str | None = None, disabled_metrics=None, without_metrics=None,
           apiservers: int | None = None) -> dict:
        """Start everything, wait until ``/readyz`` passes, seed secrets; return sandbox.json's content.

        Options left as None take their defaults (kms-v2, etcdctl 3.5, 1 node, no broken node, aggregate readyz,
        no history, the Entra ID emulator with PoP enforced). The Entra ID emulator (tests/sandbox/azure/entra/; off
        with ``entra=False``): ARM and the API server accept only tokens it signed, the API server only PoP tokens
        unless ``enforce_pop=False``; sandbox.json ``entra`` says how to sign in. A directory that holds a stopped
        sandbox is resumed: its processes restart on its data
        (certificates, etcd data and ports, KMS keys, local key), and only seeded secrets that are missing are
        written again; an option that differs from the stopped sandbox's is an error. A running sandbox in the
        directory is an error. On failure everything started is stopped again and SandboxError says why.

        A fleet of clusters is :class:`tests.sandbox.fleet.Fleet` (``Fleet(dir).up(clusters=N)``): a Sandbox
        per cluster, set up by this same code.

        The real kube-apiserver only, one cluster (``"a,b"`` or a list of metric names): ``disabled_metrics`` is
        passed as kube-apiserver's ``--disabled-metrics`` (which does NOT remove the KMS envelope metrics: 1.29
        applies it after loading the encryption configuration, which registered them); ``without_metrics`` runs a
        kube-apiserver of the same release built with those KMS envelope metrics never registered
        (:func:`.kubeapiserver.binaries`), so ``/metrics`` has no line of them (``KEY_ID_HASH_TOTAL``,
        ``KEY_ID_METRICS``: the KMS v2 key-id metrics). :meth:`restart_apiserver` changes either on a running
        sandbox.

        ``apiservers=N`` (real kube-apiserver only) runs N kube-apiservers on the one etcd, KMS plugin and files,
        each on its own port (sandbox.json ``kube_apiservers``), behind a TCP load balancer (:mod:`.lb`, round robin
        per connection) on the port the kubeconfigs name."""
        asked = {"provider": provider, "etcdctl": etcdctl, "nodes": nodes, "broken_node": broken_node,
                 "readyz_style": readyz_style, "history": history, "entra": entra, "enforce_pop": enforce_pop,
                 "apiserver": apiserver, "disabled_metrics": parse_metric_names(disabled_metrics),
                 "without_metrics": parse_metric_names(without_metrics), "apiservers": apiservers}
        _check_options(asked)
        self.resumed = False
        if (self.dir / "sandbox.json").exists():
            info = read_info(self.dir)
            if info.get("member_of"):
                raise SandboxError(f"{self.dir} is a cluster of the fleet in {info['member_of']}: run up and down on "
                                   "the fleet's directory")
            if info.get("fleet"):
                raise SandboxError(f"{self.dir} holds a fleet: bring it up with tests.sandbox.fleet.Fleet (python -m "
                                   f"tests.sandbox up --dir {self.dir})")
            if any(is_alive(p) and is_ours(p, str(self.dir)) for p in (info.get("pids") or {}).values()):
                raise SandboxError(f"a sandbox is already running in {self.dir}: run 'python -m tests.sandbox down "
                                   f"--dir {self.dir}' first, or use another --dir")
            return self._resume(info, asked, timeout)
        options = {k: DEFAULTS[k] if v is None else v for k, v in asked.items()}
        if enforce_pop is not None and not options["entra"]:
            raise SandboxError("enforce_pop (--enforce-pop/--no-enforce-pop) needs the Entra emulator (entra=True, "
                               "--entra)")
        for k in ("disabled_metrics", "without_metrics"):
            if options[k] and options["apiserver"] != "real":
                raise SandboxError(f"{k} ({_FLAGS[k]}) needs the real kube-apiserver (--apiserver real)")
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in ("sandbox.json", "serve-ready.json", "serve.json", READ_KEYS, ENCRYPTED_RESOURCES):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / stale).unlink()
        self._partial: dict = {"pids": {}, "kms_dir": None}
        try:
            return self._up(options["provider"], options["etcdctl"], options["nodes"], options["broken_node"],
                            options["readyz_style"], options["history"], timeout,
                            entra=options["enforce_pop"] if options["entra"] else None,
                            apiserver=options["apiserver"], disabled_metrics=options["disabled_metrics"],
                            without_metrics=options["without_metrics"], apiservers=options["apiservers"])
        except BaseException as e:
            self._teardown(self._partial)
            if isinstance(e, SandboxError):
                raise
            if isinstance(e, KeyboardInterrupt):
                raise
            raise SandboxError(f"sandbox did not come up: {type(e).__name__}: {e}\n(logs in {self.dir / 'logs'})") \
                from e

    def _up(self, provider, etcdctl, n_nodes, broken_node, readyz_style, history, timeout, entra=None,
            apiserver="emulator", disabled_metrics=(), without_metrics=(), apiservers=1) -> dict:
        """``entra``: None for no Entra emulator, else its enforce_pop. ``apiserver``: ``real`` (the built
        kube-apiserver, tests/sandbox/apiserver/kubeapiserver.py) or ``emulator``.

        One cluster of a fleet (``self.member``, set by :class:`tests.sandbox.fleet.Fleet`) is set up by this same
        code, with what the fleet chose for it: its nodes and certificates, its API server port (ARM already names
        it), its ARM record, and the fleet's Entra emulator (whose tokens its webhook checks); its server process
        then serves no ARM or Entra of its own."""
        from .processes.etcdproc import EtcdProcess, etcdctl_env, find_etcdctl
        from .pki import make_pki

        member = self.member

        find_etcdctl(etcdctl)  # fail early, with the install hint
        real = None
        if apiserver == "real":
            from .apiserver import kubeapiserver
            try:
                real = {"binaries": str(kubeapiserver.binaries(without_metrics)),
                        "port": member["port"] if member else free_port()}
            except kubeapiserver.BinaryMissing as e:
                raise SandboxError(str(e)) from None
            real["version"] = _binary_version(real["binaries"])
            # up --apiservers N: real["port"] is the load balancer's (in the server process), each server has its own
            real["server_ports"] = ([real["port"]] if apiservers == 1
                                   else [free_port() for _ in range(apiservers)])
        logs = self.dir / "logs"
        logs.mkdir(exist_ok=True)
        if member:
            nodes, pki = member["nodes"], member["pki"]
        else:
            nodes = _node_names(n_nodes)
            pki = make_pki(self.dir, nodes)
        entra_cfg = None
        if member:
            from concurrent.futures import Future
            entra_cfg = Future()
            entra_cfg.set_result(member["entra"])
        elif entra is not None:  # the tenant's RSA keys are made while etcd starts
            from concurrent.futures import ThreadPoolExecutor
            from .azure.entra.tenant import create
            pool = ThreadPoolExecutor(1)
            entra_cfg = pool.submit(create, self.dir, tenant=TENANT, subscription=SUBSCRIPTION,
                                    resource_group=RESOURCE_GROUP, cluster=CLUSTER, enforce_pop=entra)
            pool.shutdown(wait=False)
        etcd = EtcdProcess(self.dir, pki, node=nodes[0], log_path=logs / "etcd.log")
        self._partial["pids"]["etcd"] = None
        etcd.start()
        self._procs["etcd"] = etcd.proc
        self._partial["pids"]["etcd"] = etcd.pid

        kms_socket = kms_state = None
        if provider.startswith("kms-"):
            kms_state = self.dir / "kms-state.json"
            kms_socket = self._start_kms(provider, kms_state)

        etcd_pods = sorted(f"etcd-{n}" for n in nodes)
        broken = [etcd_pods[0]] if broken_node else []
        serve_cfg = {
            "dir": str(self.dir), "provider": provider, "etcdctl_version": etcdctl, "readyz_style": readyz_style,
            "nodes": nodes, "kubernetes_version": KUBERNETES_VERSION, "started": time.time(),
            "etcd": {"endpoint": etcd.endpoint, "ca": str(pki["etcd_ca_cert"]), "cert": str(pki["etcd_client_cert"]),
                     "key": str(pki["etcd_client_key"])},
            "kms": {"socket": str(kms_socket), "api": provider.split("-")[1]} if kms_socket else None,
            "local_key": base64.b64encode(os.urandom(32)).decode() if provider in ("aescbc", "aesgcm", "secretbox")
            else None,
            "pki": _json_safe(pki),
            "arm": {"cluster": CLUSTER, "resource_group": RESOURCE_GROUP, "tenant": TENANT,
                    "subscription": SUBSCRIPTION},
            "exec_faults": {p: "broken" for p in broken},
            "read_keys": str(self.dir / READ_KEYS),
            "entra": entra_cfg.result() if entra_cfg is not None else None,
            "real_apiserver": real,
            "disabled_metrics": list(disabled_metrics or []),
            "without_metrics": list(without_metrics or []),
        }
        if member:  # the fleet's ARM and Entra emulators serve this cluster (serve.py serves neither)
            serve_cfg.update(member_of=member["member_of"], arm_id=member["arm_id"], fleet_ports=member["fleet_ports"],
                             arm={"cluster": member["name"], "resource_group": member["resource_group"],
                                  "tenant": TENANT, "subscription": member["subscription"]})
        if real:
            # Local keys for reading, configured from the start: kube-apiserver reads its configuration once, and
            # ctl write_secret "with" a local kind writes with these (store.local_reader finds them).
            _write_json(self.dir / READ_KEYS, {k: base64.b64encode(os.urandom(32)).decode()
                                               for k in ("aescbc", "aesgcm", "secretbox") if k != provider})
            serve_cfg["kubernetes_version"] = real["version"]
            serve_cfg["broken_nodes"] = [p[len("etcd-"):] for p in broken]
        _write_json(self.dir / "serve.json", serve_cfg)
        ports = self._start_server(timeout)
        if real:
            self._start_kube_apiserver(serve_cfg, ports, timeout)

        api_url = self._write_kubeconfigs(ports, pki)
        etcd_env = etcdctl_env(pki, etcd.endpoint)
        (self.dir / "etcd.env").write_text("".join(f"{k}={v}\n" for k, v in etcd_env.items()))
        info = {
            "dir": str(self.dir), "provider": provider, "etcdctl_version": etcdctl, "readyz_style": readyz_style,
            "kubernetes_version": serve_cfg["kubernetes_version"], "apiserver_mode": apiserver,
            "disabled_metrics": list(disabled_metrics or []), "without_metrics": list(without_metrics or []),
            **_urls(ports, api_url, serve_cfg["arm"]),
            "etcd": {"endpoint": etcd.endpoint, "port": etcd.client_port, "peer_port": etcd.peer_port},
            "ca_bundle": str(pki["ca_bundle"]),
            "kubeconfig": str(self.dir / "kubeconfig"),
            "kubeconfig_restricted": str(self.dir / "kubeconfig-restricted"),
            "etcd_env": str(self.dir / "etcd.env"),
            "kms_socket": str(kms_socket) if kms_socket else None,
            "kms_state": str(kms_state) if kms_state else None,
            "kms_dir": self._partial["kms_dir"],
            "pids": dict(self._partial["pids"]),
            "kube_apiservers": self._servers_info(serve_cfg),
            "nodes": nodes,
            "etcd_pods": etcd_pods,
            "broken_pods": broken,
            "pki": _json_safe(pki),
            "seeded": [],
            "history": None,
            "entra": _entra_info(serve_cfg, ports, pki["ca_bundle"]),
        }
        if member:
            info.update(member_of=member["member_of"], cluster=member["cluster"])
        _write_json(self.dir / "sandbox.json", info)
        self._wait_ready(timeout)
        if real:
            self._bootstrap(serve_cfg, ports)
        seeded, hist = self._seed(provider, history)
        return update_info(self.dir, seeded=seeded, history=hist)

    def _resume(self, info: dict, asked: dict, timeout: float) -> dict:
        """Restart a stopped sandbox's processes on its data (see :meth:`up`)."""
        from .processes.etcdproc import find_etcdctl

        missing = [name for name in ("serve.json", "etcd/etcd/member") if not (self.dir / name).exists()]
        if missing or not {"provider", "etcdctl_version", "apiserver", "arm", "control", "etcd", "pki", "nodes",
                            "seeded"} <= set(info):
            raise SandboxError(f"{self.dir} holds a stopped sandbox that cannot be resumed (no "
                               f"{', '.join(missing) or 'complete sandbox.json'}): run 'python -m tests.sandbox down "
                               f"--dir {self.dir}' and remove it, or use another --dir")
        stored = {"provider": info["provider"], "etcdctl": info["etcdctl_version"], "nodes": len(info["nodes"]),
                  "broken_node": bool(info.get("broken_pods")), "readyz_style": info.get("readyz_style", "aggregate"),
                  "history": info.get("history") is not None, "entra": bool(info.get("entra")),
                  "enforce_pop": (info.get("entra") or {}).get("enforce_pop", True),
                  "apiserver": info.get("apiserver_mode", "emulator"),
                  "disabled_metrics": list(info.get("disabled_metrics") or []),
                  "without_metrics": list(info.get("without_metrics") or []),
                  "apiservers": len(info.get("kube_apiservers") or ()) or 1}
        differ = []
        for k, v in asked.items():
            if v is None or v == stored[k] or (k == "history" and v is False):  # no history asked: none seeded
                continue
            if isinstance(v, bool):
                differ.append(_FLAGS[k] if stored[k] else _NO_FLAGS.get(k, f"no {_FLAGS[k]}"))
            elif isinstance(v, list):
                differ.append(f"{_FLAGS[k]} {','.join(stored[k]) or '(none)'} (not {','.join(v) or '(none)'})")
            else:
                differ.append(f"{_FLAGS[k]} {stored[k]} (not {v})")
        if differ:
            raise SandboxError(f"{self.dir} holds a stopped sandbox with {', '.join(differ)}: resume it without "
                               f"{'that option' if len(differ) == 1 else 'those options'}, or run 'python -m "
                               f"tests.sandbox down --dir {self.dir}' and remove it, or use another --dir")
        find_etcdctl(info["etcdctl_version"])  # fail early, with the install hint
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "serve-ready.json").unlink()
        self.resumed = True
        self._partial = {"pids": {}, "kms_dir": None}
        try:
            return self._restart(info, timeout)
        except BaseException as e:
            self._teardown(self._partial)
            with contextlib.suppress(Exception):
                update_info(self.dir, pids={k: None for k in (info.get("pids") or {})})
            if isinstance(e, KeyboardInterrupt):
                raise
            text = str(e) if isinstance(e, SandboxError) else f"{type(e).__name__}: {e}"
            raise SandboxError(f"the stopped sandbox in {self.dir} did not resume: {text}\n(logs in "
                               f"{self.dir / 'logs'})") from e

    def _restart(self, info: dict, timeout: float) -> dict:
        etcd = _etcd_process(self.dir, info)  # same ports and data
        self._partial["pids"]["etcd"] = None
        etcd.start()
        self._procs["etcd"] = etcd.proc
        self._partial["pids"]["etcd"] = etcd.pid
        update_info(self.dir, pids={"etcd": etcd.pid})

        serve_cfg = json.loads((self.dir / "serve.json").read_text())
        kms_socket = None
        if info.get("kms_state"):
            kms_socket = self._start_kms(info["provider"], Path(info["kms_state"]))  # same keys
            serve_cfg["kms"]["socket"] = str(kms_socket)
            update_info(self.dir, kms_socket=str(kms_socket), kms_dir=self._partial["kms_dir"],
                        pids={"kms_plugin": self._partial["pids"]["kms_plugin"]})
        serve_cfg["ports"] = {"apiserver": info["apiserver"]["port"], "arm": info["arm"]["port"],
                              "control": int(info["control"]["url"].rsplit(":", 1)[1])}
        if info.get("entra"):
            serve_cfg["ports"].update(entra=info["entra"]["port"], msi=info["entra"]["msi_port"])
        real = serve_cfg.get("real_apiserver")
        if real:
            from .apiserver import kubeapiserver
            try:
                real["binaries"] = str(kubeapiserver.binaries(serve_cfg.get("without_metrics") or ()))
            except kubeapiserver.BinaryMissing as e:
                raise SandboxError(str(e)) from None
            if not _port_free(real["port"]):
                real["port"] = free_port()
            serve_cfg["ports"]["apiserver"] = real["port"]
            servers = real.get("server_ports") or [real["port"]]
            real["server_ports"] = [real["port"]] if len(servers) == 1 else [
                p if _port_free(p) else free_port() for p in servers]
        _write_json(self.dir / "serve.json", serve_cfg)
        ports = self._start_server(timeout)
        if real:
            self._start_kube_apiserver(serve_cfg, ports, timeout)
        api_url = self._write_kubeconfigs(ports, _pki_from_info(info))
        update_info(self.dir, **_urls(ports, api_url, serve_cfg["arm"]), pids=dict(self._partial["pids"]),
                    kube_apiservers=self._servers_info(serve_cfg),
                    entra=_entra_info(serve_cfg, ports, info["ca_bundle"]))
        self._wait_ready(timeout)
        if real:
            self._bootstrap(serve_cfg, ports)
        seeded = self._seed_missing(list(info.get("seeded") or []))
        return update_info(self.dir, seeded=seeded)

    def _start_kms(self, provider: str, state: Path) -> Path:
        """Start the KMS plugin on a fresh socket (in DIR/kms, or a short temporary directory when DIR's path
        is too long for a unix socket) with the key state ``state``; returns the socket path."""
        from .processes.kms_plugin import KMSPluginProcess

        kms_dir = self.dir / "kms"
        if len(str(kms_dir / "kms.sock")) > UNIX_PATH_MAX:
            kms_dir = Path(tempfile.mkdtemp(prefix="sbx-kms-"))
            self._partial["kms_dir"] = str(kms_dir)
        kms_dir.mkdir(parents=True, exist_ok=True)
        kms_socket = kms_dir / "kms.sock"
        self._partial["kms_socket"] = str(kms_socket)
        kms = KMSPluginProcess(kms_socket, provider.split("-")[1], state, log_path=self.dir / "logs" / "kms-plugin.log")
        kms.start()
        self._procs["kms_plugin"] = kms.proc
        self._partial["pids"]["kms_plugin"] = kms.pid
        return kms_socket

    @staticmethod
    def _pid_key(i: int) -> str:
        """sandbox.json ``pids`` key of kube-apiserver ``i`` (0-based): the first keeps ``kube_apiserver``."""
        return "kube_apiserver" if i == 0 else f"kube_apiserver_{i + 1}"

    @staticmethod
    def _server_ports(serve_cfg: dict) -> list[int]:
        real = serve_cfg.get("real_apiserver") or {}
        return list(real.get("server_ports") or ([real["port"]] if real.get("port") else []))

    def _servers_info(self, serve_cfg: dict) -> list[dict]:
        """sandbox.json ``kube_apiservers``: each real kube-apiserver's port, pid and log ([] on the emulator)."""
        pids = self._partial.get("pids") or {}
        return [{"port": port, "url": f"https://127.0.0.1:{port}", "pid": pids.get(self._pid_key(i)),
                 "log": str(self.dir / "logs" / ("kube-apiserver.log" if i == 0 else f"kube-apiserver-{i + 1}.log"))}
                for i, port in enumerate(self._server_ports(serve_cfg))]

    def apiserver_ports(self) -> list[int]:
        """Each real kube-apiserver's own port (``up --apiservers N``: N of them, behind the load balancer)."""
        return [s["port"] for s in self.info.get("kube_apiservers") or []]

    def _start_kube_apiserver(self, serve_cfg: dict, ports: dict, timeout: float, which=None) -> None:
        """Write the real kube-apiserver's files and start it (every one, or those numbered ``which``, 0-based;
        its token webhook and kubelet endpoint are already served by the server process, at ``ports``); its /readyz
        is awaited by :meth:`_wait_ready`."""
        for i, port in enumerate(self._server_ports(serve_cfg)):
            if which is None or i in which:
                self._start_one_kube_apiserver(serve_cfg, ports, i, port)

    def _start_one_kube_apiserver(self, serve_cfg: dict, ports: dict, i: int, port: int) -> None:
        from .apiserver import kubeapiserver
        from .processes.proc import spawn
        real = serve_cfg["real_apiserver"]
        kms = serve_cfg.get("kms") or {}
        files = kubeapiserver.write_files(self.dir, serve_cfg["pki"], serve_cfg["provider"], serve_cfg["local_key"],
                                          kms.get("socket"),
                                          f"https://127.0.0.1:{ports['webhook_port']}/tokenreview",
                                          _read_json(self.dir / READ_KEYS),
                                          _read_json(self.dir / ENCRYPTED_RESOURCES) or ())
        cmd = kubeapiserver.command(Path(real["binaries"]) / "kube-apiserver", real["version"], port,
                                    serve_cfg["etcd"], serve_cfg["pki"], files, serve_cfg["provider"],
                                    serve_cfg.get("readyz_style", "aggregate"),
                                    disabled_metrics=serve_cfg.get("disabled_metrics") or ())
        log = "kube-apiserver.log" if i == 0 else f"kube-apiserver-{i + 1}.log"
        proc = spawn(cmd, self.dir / "logs" / log, cwd=self.dir,
                     banner=f"--- kube-apiserver {real['version']} {time.strftime('%Y-%m-%dT%H:%M:%SZ')}")
        self._procs[self._pid_key(i)] = proc
        self._partial["pids"][self._pid_key(i)] = proc.pid

    def _restart_kube_apiserver(self, timeout: float = 60.0, which=None) -> None:
        """Stop the real kube-apiserver(s) and start them again on the same ports (each reads its plugin's key id
        anew): every one, or those numbered ``which`` (0-based, ``up --apiservers N``)."""
        info = self.info
        serve_cfg = json.loads((self.dir / "serve.json").read_text())
        which = range(len(self._server_ports(serve_cfg))) if which is None else list(which)
        for i in which:
            key = self._pid_key(i)
            pid, own = info["pids"].get(key), self._procs.get(key)
            if own is not None and own.pid == pid:
                terminate(own, 10)
            else:
                stop_pid(pid, str(self.dir))
        ports = json.loads((self.dir / "serve-ready.json").read_text())
        if not getattr(self, "_partial", None):
            self._partial = {"pids": dict(info["pids"]), "kms_dir": info.get("kms_dir")}
        self._start_kube_apiserver(serve_cfg, ports, timeout, which=which)
        update_info(self.dir, pids={self._pid_key(i): self._partial["pids"][self._pid_key(i)] for i in which},
                    kube_apiservers=self._servers_info(serve_cfg))
        self._wait_ready(timeout, which=None if len(which) == len(self._server_ports(serve_cfg)) else which)

    def restart_apiservers(self, which=None, timeout: float = 60.0) -> None:
        """Restart the real kube-apiservers numbered ``which`` (0-based; all when None): a restarted server takes
        its KMS v2 plugin's current key id at once, the others at their next Status poll (README: HA)."""
        if self.info.get("apiserver_mode") != "real":
            raise SandboxError("restart_apiservers needs the real kube-apiserver (up --apiserver real)")
        self._restart_kube_apiserver(timeout, which=which)

    def encrypt_resources(self, resources, timeout: float = 90.0) -> None:
        """Encrypt ``resources`` (e.g. ``["configmaps", "widgets.example.com"]``) as secrets are: they join the
        secrets' entry of the EncryptionConfiguration, and the real kube-apiserver restarts on it (kept for a
        resume). Objects written before stay as they were stored, as on a real cluster."""
        info = self.info
        if info.get("apiserver_mode") != "real":
            raise SandboxError("encrypt_resources needs the real kube-apiserver (up --apiserver real)")
        _write_json(self.dir / ENCRYPTED_RESOURCES, list(resources))
        self._restart_kube_apiserver(timeout)

    def restart_apiserver(self, disabled_metrics=None, without_metrics=None, timeout: float = 60.0) -> dict:
        """Restart the real kube-apiserver on the same etcd, port and files, with ``disabled_metrics`` and
        ``without_metrics`` as :meth:`up` takes them (None: unchanged; empty: none), and wait for /readyz; returns
        sandbox.json. The server's in-memory metrics start anew (its first KMS v2 Status call comes at start)."""
        from .apiserver import kubeapiserver
        info = self.info
        self._not_a_fleet(info, "restart the API server of")
        if info.get("apiserver_mode") != "real":
            raise SandboxError("restart_apiserver needs the real kube-apiserver (up --apiserver real)")
        serve_cfg = json.loads((self.dir / "serve.json").read_text())
        changes = {k: parse_metric_names(v) for k, v in (("disabled_metrics", disabled_metrics),
                                                          ("without_metrics", without_metrics)) if v is not None}
        serve_cfg.update(changes)
        try:
            serve_cfg["real_apiserver"]["binaries"] = str(kubeapiserver.binaries(serve_cfg.get("without_metrics")))
        except kubeapiserver.BinaryMissing as e:
            raise SandboxError(str(e)) from None
        _write_json(self.dir / "serve.json", serve_cfg)
        update_info(self.dir, **changes)
        self._restart_kube_apiserver(timeout)
        return self.info

    def _bootstrap(self, serve_cfg: dict, ports: dict) -> None:
        """RBAC, Nodes and mirror pods in the real server (idempotent)."""
        from .apiserver import kubeapiserver
        from .pods import build_node, build_pods
        started = serve_cfg.get("started", time.time())
        nodes = [build_node(n, i, serve_cfg["kubernetes_version"], started) for i, n in enumerate(serve_cfg["nodes"])]
        pods = build_pods(serve_cfg["nodes"], serve_cfg.get("etcdctl_version", "3.5"), started)
        broken = set(serve_cfg.get("broken_nodes") or [])
        kubelet_ports = {n: (ports["refused_port"] if n in broken else ports["kubelet_port"])
                         for n in serve_cfg["nodes"]}
        try:
            kubeapiserver.bootstrap(self.api, nodes, pods, kubelet_ports)
        except RuntimeError as e:
            raise SandboxError(f"could not set up the cluster's objects in kube-apiserver: {e}") from None

    def _start_server(self, timeout: float) -> dict:
        """Start the server process (API server, ARM, control) on serve.json; returns its ports once it listens."""
        log = self.dir / "logs" / "server.log"
        server = spawn_python("tests.sandbox.serve", ["--dir", str(self.dir)], log)
        self._procs["server"] = server
        self._partial["pids"]["server"] = server.pid
        ready_file = self.dir / "serve-ready.json"
        try:
            wait_ready(server, ready_file.exists, timeout, "the sandbox server", log, not_ready="did not listen")
        except StartError as e:
            raise SandboxError(str(e)) from None
        return json.loads(ready_file.read_text())

    def _write_kubeconfigs(self, ports: dict, pki: dict) -> str:
        api_url = f"https://127.0.0.1:{ports['apiserver_port']}"
        self._write_kubeconfig(self.dir / "kubeconfig", api_url, pki["ca_cert"], "kubernetes-admin",
                               pki["admin_cert"], pki["admin_key"])
        self._write_kubeconfig(self.dir / "kubeconfig-restricted", api_url, pki["ca_cert"], "restricted-user",
                               pki["restricted_cert"], pki["restricted_key"])
        return api_url

    @staticmethod
    def _write_kubeconfig(path: Path, server: str, ca: Path, user: str, cert: Path, key: Path) -> None:
        b64 = lambda p: base64.b64encode(Path(p).read_bytes()).decode()  # noqa: E731
        cfg = {"apiVersion": "v1", "kind": "Config", "preferences": {},
               "clusters": [{"name": "sandbox", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
               "contexts": [{"name": f"{user}@sandbox", "context": {"cluster": "sandbox", "user": user}}],
               "current-context": f"{user}@sandbox",
               "users": [{"name": user, "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}]}
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        os.chmod(path, 0o600)

    # -- talking to the API server as the admin ------------------------------------------------------------------------

    def _ssl(self, identity: str = "admin") -> ssl.SSLContext:
        """TLS with the client certificate of ``identity``: ``admin`` (system:masters), ``restricted`` or
        ``throttled`` (:meth:`throttle`)."""
        pki = self.info["pki"]
        ctx = ssl.create_default_context(cafile=pki["ca_cert"])
        if identity == "throttled":
            ctx.load_cert_chain(str(self.dir / THROTTLED_CERT), str(self.dir / THROTTLED_KEY))
        else:
            ctx.load_cert_chain(pki[f"{identity}_cert"], pki[f"{identity}_key"])
        return ctx

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 30.0,
                identity: str = "admin", port: int | None = None) -> tuple[int, dict, bytes]:
        """One request to the API server as ``identity`` (see :meth:`_ssl`), at the kubeconfig's address or the
        kube-apiserver on ``port``: (status, headers (lower-case names), body bytes)."""
        url = (f"https://127.0.0.1:{port}" if port else self.info["apiserver"]["url"]) + path
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers={
            "Content-Type": "application/json", "Accept": "application/json",
            "User-Agent": f"kubectl/{KUBERNETES_VERSION} (linux/amd64) kubernetes/2bd1a5e"})
        try:
            with urllib.request.urlopen(req, context=self._ssl(identity), timeout=timeout) as resp:
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()

    def api(self, method: str, path: str, body: dict | None = None, timeout: float = 30.0,
            port: int | None = None) -> tuple[int, object]:
        """One admin request to the API server (the kubeconfig's address, or the kube-apiserver on ``port``):
        (status, parsed JSON or text)."""
        status, _, raw = self.request(method, path, body, timeout, port=port)
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    # -- API Priority and Fairness: an identity the real server throttles ---------------------------------------------

    @property
    def kubeconfig_throttled(self) -> str:
        return str(self.dir / "kubeconfig-throttled")

    def throttle(self, shares: int = 1, queue: int = 0, timeout: float = 60.0) -> dict:
        """Make the real kube-apiserver throttle one identity of its own: ``kubeconfig-throttled`` (client
        certificate CN=throttled-admin, cluster-admin by a ClusterRoleBinding, not in system:masters, which APF
        exempts). Every request of that identity (and nothing else: the admin and the sandbox's own traffic are
        not touched) goes to PriorityLevelConfiguration ``sandbox-throttled``: ``shares`` nominal concurrency
        shares, nothing lent or borrowed, and what exceeds its limit answered 429 at once (``queue=0``,
        ``Reject``) or after ``queue`` requests wait in one queue. Idempotent (a second call replaces the
        priority level's spec). Returns (and records in sandbox.json ``throttle``) the kubeconfig, the user, the
        FlowSchema's and priority level's uids (a 429 of APF names them in ``X-Kubernetes-PF-*-UID``) and the
        priority level's nominal concurrency limit as the server computed it (/metrics), once a request of the
        identity is classified into it."""
        from .apiserver import kubeapiserver
        info = self.info
        if info.get("apiserver_mode") != "real":
            raise SandboxError("throttle needs the real kube-apiserver (up --apiserver real); the emulator has "
                               "ctl writes.throttle")
        pki = info["pki"]
        user = kubeapiserver.THROTTLED_USER
        kubeapiserver.issue_client(pki, user, self.dir / THROTTLED_CERT, self.dir / THROTTLED_KEY)
        self._write_kubeconfig(Path(self.kubeconfig_throttled), info["apiserver"]["url"], Path(pki["ca_cert"]), user,
                               self.dir / THROTTLED_CERT, self.dir / THROTTLED_KEY)
        uids = {}
        for path, obj in kubeapiserver.throttle_objects(user, shares, queue):
            name = obj["metadata"]["name"]
            status, out = self.api("POST", path, obj)
            if status == 409:
                status, current = self.api("GET", f"{path}/{name}")
                if status == 200:
                    obj = {**obj, "metadata": {**obj["metadata"],
                                               "resourceVersion": current["metadata"]["resourceVersion"]}}
                    status, out = self.api("PUT", f"{path}/{name}", obj)
            if status not in (200, 201):
                raise SandboxError(f"throttle: {path}/{name}: HTTP {status} {out}")
            uids[obj.get("kind") or "ClusterRoleBinding"] = out["metadata"]["uid"]
        fs_uid, pl_uid = uids["FlowSchema"], uids["PriorityLevelConfiguration"]
        deadline = time.monotonic() + timeout
        while True:  # the server's APF controller takes the objects in a moment after they are stored
            status, headers, _ = self.request("GET", "/api", identity="throttled")
            if status == 200 and headers.get("x-kubernetes-pf-flowschema-uid") == fs_uid and \
                    headers.get("x-kubernetes-pf-prioritylevel-uid") == pl_uid:
                break
            if time.monotonic() > deadline:
                raise SandboxError(f"throttle: requests of {user} were not classified as "
                                   f"{kubeapiserver.THROTTLE_NAME} within {timeout:.0f}s (last: HTTP {status}, "
                                   f"FlowSchema {headers.get('x-kubernetes-pf-flowschema-uid')})")
            time.sleep(0.2)
        limit = None
        while limit is None and time.monotonic() < deadline:
            status, page = self.api("GET", "/metrics", timeout=30)
            limit = kubeapiserver.nominal_limit(str(page), kubeapiserver.THROTTLE_NAME) if status == 200 else None
            if limit is None:
                time.sleep(0.2)
        throttle = {"user": user, "kubeconfig": self.kubeconfig_throttled, "flow_schema": kubeapiserver.THROTTLE_NAME,
                    "flow_schema_uid": fs_uid, "priority_level": kubeapiserver.THROTTLE_NAME,
                    "priority_level_uid": pl_uid, "shares": shares, "queue": queue, "nominal_limit": limit}
        update_info(self.dir, throttle=throttle)
        return throttle

    def flow_counts(self) -> dict:
        """``{"dispatched": n, "rejected": n}`` of the throttled identity's FlowSchema, from the server's /metrics
        (counters since the server started: compare two readings)."""
        from .apiserver import kubeapiserver
        status, page = self.api("GET", "/metrics", timeout=30)
        if status != 200:
            raise SandboxError(f"/metrics: HTTP {status}")
        return kubeapiserver.flow_counts(str(page))

    def unthrottle(self) -> None:
        """Remove the FlowSchema and priority level of :meth:`throttle` (the identity keeps cluster-admin; its
        requests fall back to the suggested FlowSchemas)."""
        from .apiserver import kubeapiserver
        for path, obj in reversed(kubeapiserver.throttle_objects(kubeapiserver.THROTTLED_USER)):
            if obj.get("kind") is None:
                continue  # the ClusterRoleBinding stays
            status, out = self.api("DELETE", f"{path}/{obj['metadata']['name']}")
            if status not in (200, 202, 404):
                raise SandboxError(f"unthrottle: {path}: HTTP {status} {out}")
        update_info(self.dir, throttle=None)

    def _wait_ready(self, timeout: float, which=None) -> None:
        """Until /readyz passes: on each real kube-apiserver's own port (``up --apiservers N``), then through the
        kubeconfig's address; ``which``: only on those servers' own ports (a /readyz through the load balancer
        could land on another server and make it poll its KMS plugin's Status: README, HA)."""
        deadline = time.monotonic() + timeout
        servers = self.info.get("kube_apiservers") or []
        for i, port in enumerate([s["port"] for s in servers] if len(servers) > 1 else []):
            if which is None or i in which:
                self._wait_ready_at(deadline, timeout, port)
        if which is None or len(servers) <= 1:
            self._wait_ready_at(deadline, timeout, None)

    def _wait_ready_at(self, deadline: float, timeout: float, port: int | None) -> None:
        last = None
        while time.monotonic() < deadline:
            for key, real in self._procs.items():
                if key.startswith("kube_apiserver") and real.poll() is not None:
                    from .processes.proc import tail
                    log = "kube-apiserver" + ("" if key == "kube_apiserver" else f"-{key.rsplit('_', 1)[1]}") + ".log"
                    raise SandboxError(f"kube-apiserver exited with code {real.returncode}:\n"
                                       f"{tail(self.dir / 'logs' / log)}")
            try:
                last = self.api("GET", "/readyz?verbose", timeout=5, port=port)
                if last[0] == 200:
                    return
            except OSError as e:
                last = (None, str(e))
            time.sleep(0.1)
        raise SandboxError(f"/readyz{f' of the kube-apiserver on port {port}' if port else ''} did not pass within "
                           f"{timeout}s: {last}")

    def create_secret(self, namespace: str, name: str, data: dict, type_: str = "Opaque", labels=None,
                      field_manager: str = "kubectl-create") -> dict:
        """Create a Secret through the API (stored exactly as the API server stores it); string values."""
        body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
                "type": type_, "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
        if labels:
            body["metadata"]["labels"] = labels
        status, obj = self.api("POST", f"/api/v1/namespaces/{namespace}/secrets?fieldManager={field_manager}", body)
        if status != 201:
            raise SandboxError(f"creating secret {namespace}/{name} failed: HTTP {status} {obj}")
        return obj

    def admission_webhook(self, install: bool = True, timeout: float = 30.0) -> str:
        """Install (or with ``install=False`` remove) the ValidatingWebhookConfiguration of :mod:`.admission`
        through the real API server: UPDATE of a secret labelled ``kmsverify.test/deny-update: "true"`` is then
        refused by a webhook the API server really calls (the server process's). Idempotent; call it again after a
        resume (the webhook's port may have changed). Returns once the API server enforces it, or no longer does (a
        dry-run update of a labelled probe secret in ``default`` is refused, or allowed; the probe is deleted
        again). Returns the webhook's name."""
        from .apiserver import admission
        if self.info.get("apiserver_mode") != "real":
            raise SandboxError("the admission webhook needs the real kube-apiserver (up --apiserver real)")
        path = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
        if not install:
            status, answer = self.api("DELETE", f"{path}/{admission.NAME}")
            if status not in (200, 404):
                raise SandboxError(f"deleting {admission.NAME}: HTTP {status} {answer}")
            self._await_webhook(admission, False, timeout)
            return admission.NAME
        port = json.loads((self.dir / "serve-ready.json").read_text())["webhook_port"]
        body = admission.configuration(f"https://127.0.0.1:{port}{admission.PATH}",
                                       Path(self.info["pki"]["ca_cert"]).read_bytes())
        status, answer = self.api("POST", path, body)
        if status == 409:
            current = self.api("GET", f"{path}/{admission.NAME}")[1]
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            status, answer = self.api("PUT", f"{path}/{admission.NAME}", body)
        if status not in (200, 201):
            raise SandboxError(f"creating {admission.NAME}: HTTP {status} {answer}")
        self._await_webhook(admission, True, timeout)
        return admission.NAME

    def _await_webhook(self, admission, enforced: bool, timeout: float) -> None:
        """The API server picks webhook configurations up from its informer: wait until it refuses (or, not
        ``enforced``, allows) a dry-run update of a labelled probe secret."""
        name = f"admission-probe-{os.urandom(4).hex()}"
        probe = self.create_secret("default", name, {"probe": "x"}, labels={admission.LABEL: "true"})
        url = f"/api/v1/namespaces/default/secrets/{name}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                status, answer = self.api("PUT", f"{url}?dryRun=All", probe)
                denied = status >= 400 and f'admission webhook "{admission.NAME}" denied' in str(answer)
                if denied == enforced and (denied or status == 200):
                    return
                if time.monotonic() > deadline:
                    raise SandboxError(f"the API server did not {'enforce' if enforced else 'drop'} "
                                       f"{admission.NAME} within {timeout}s: HTTP {status} {answer}")
                time.sleep(0.2)
        finally:
            self.api("DELETE", url)

    def _seed(self, provider: str, history: bool):
        seeded, hist = [], None
        if history:
            self.api("POST", "/api/v1/namespaces", {"metadata": {"name": "legacy"}})
            self.ctl({"write_secret": {"namespace": "legacy", "name": "app-credentials-2023", "with": "identity",
                                       "data": {"username": "app", "password": "Summer2023!"},
                                       "written_at": "2023-06-01T09:00:00Z"}})
            hist = {"plaintext": ["legacy/app-credentials-2023"], "old_key": [], "rotated_to": None}
            seeded.append("legacy/app-credentials-2023")
            if provider.startswith("kms-"):
                # Last written 45 days ago, before the rotation: KMS v2 shows it by key id, KMS v1 only by age
                # (AKS Arc rotates every 30 days).
                self.ctl({"write_secret": {"namespace": "legacy", "name": "api-token-before-rotation",
                                           "data": {"token": "tkn-" + os.urandom(8).hex()},
                                           "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                       time.gmtime(time.time() - 45 * 86400))}})
                hist["old_key"].append("legacy/api-token-before-rotation")
                seeded.append("legacy/api-token-before-rotation")
                hist["rotated_to"] = self.kms("rotate", wait=False)
                if self.info.get("apiserver_mode") == "real":
                    self._restart_kube_apiserver()  # takes the new key id at once (else at its next Status poll)
        for ns, name, data, type_, manager in _base_seeds(_token_id()):
            self.create_secret(ns, name, data, type_=type_, field_manager=manager)
            seeded.append(f"{ns}/{name}")
        return seeded, hist

    def _seed_missing(self, seeded: list[str]) -> list[str]:
        """On a resume: write again only the basic seeded secrets that are gone (the history is not redone);
        returns the new ``seeded`` list."""
        status, tokens = self.api("GET", "/api/v1/namespaces/kube-system/secrets?fieldSelector="
                                  "type%3Dbootstrap.kubernetes.io%2Ftoken")
        names = sorted(t["metadata"]["name"] for t in tokens.get("items", [])) if status == 200 else []
        token_id = names[0][len("bootstrap-token-"):] if names else _token_id()
        seeded = list(seeded)
        for ns, name, data, type_, manager in _base_seeds(token_id):
            status, _ = self.api("GET", f"/api/v1/namespaces/{ns}/secrets/{name}")
            if status == 404:  # anything else (200, or a value it cannot read) stays as it is
                self.create_secret(ns, name, data, type_=type_, field_manager=manager)
            if f"{ns}/{name}" not in seeded:
                seeded.append(f"{ns}/{name}")
        return seeded

    # -- down --------------------------------------------------------------------------------------------------------

    def down(self) -> None:
        """Stop every process of this sandbox (idempotent); keeps the directory (logs, certificates, data)."""
        if not (self.dir / "sandbox.json").exists():
            if getattr(self, "_partial", None):
                self._teardown(self._partial)
            return
        info = read_info(self.dir)
        if info.get("member_of"):
            raise SandboxError(f"{self.dir} is a cluster of the fleet in {info['member_of']}: run 'python -m "
                               f"tests.sandbox down --dir {info['member_of']}'")
        if info.get("fleet"):
            raise SandboxError(f"{self.dir} holds a fleet: stop it with tests.sandbox.fleet.Fleet (python -m "
                               f"tests.sandbox down --dir {self.dir})")
        self._teardown(info)
        update_info(self.dir, pids={k: None for k in (info.get("pids") or {})})

    def _teardown(self, state: dict) -> None:
        pids = state.get("pids") or {}
        for name in [*sorted(k for k in pids if k.startswith("kube_apiserver")), "server", "kms_plugin", "etcd"]:
            pid = pids.get(name)
            own = self._procs.get(name)
            if own is not None and own.pid == pid:
                terminate(own, 10)
            else:
                stop_pid(pid, str(self.dir) if name != "kms_plugin" else state.get("kms_socket") or str(self.dir))
                if own is not None:
                    with contextlib.suppress(Exception):
                        own.wait(0.1)
        if state.get("kms_dir"):
            shutil.rmtree(state["kms_dir"], ignore_errors=True)

    # -- KMS, faults, etcd --------------------------------------------------------------------------------------------

    def _not_a_fleet(self, info: dict, what: str) -> None:
        if info.get("fleet"):
            raise SandboxError(f"{self.dir} holds a fleet: {what} one of its clusters (--cluster NAME, "
                               f"Fleet.cluster(name)): {', '.join(c['name'] for c in info['clusters'])}")
        if info.get("member_of") and not info.get("control"):
            raise SandboxError(f"cluster {info['cluster']['name']} is not connected "
                               f"({info['cluster']['connectivity']}): it has no processes to control")

    def _kms_process(self, info: dict):
        from .processes.kms_plugin import KMSPluginProcess
        self._not_a_fleet(info, "control the KMS plugin of")
        if not info.get("kms_socket"):
            raise SandboxError(f"this sandbox has no KMS plugin (provider {info['provider']})")
        return KMSPluginProcess(info["kms_socket"], info["provider"].split("-")[1], info["kms_state"],
                                log_path=self.dir / "logs" / "kms-plugin.log")

    def kms(self, action: str, wait: bool = True):
        """``stop`` (clean shutdown: the socket disappears), ``kill`` (crash: the socket stays), ``start``,
        ``rotate`` (new current key; returns its id), ``unhealthy``/``healthy`` (v2 Status healthz).

        On the real kube-apiserver with KMS v2, ``rotate`` waits (unless ``wait=False``) until the server has
        taken the new key id: it polls its plugin's Status about once a minute and writes under the old key id
        until then (:meth:`wait_key_id`)."""
        from .processes.kms_plugin import rotate_running, rotate_state, set_healthz
        info = self.info
        plugin = self._kms_process(info)
        pid = info["pids"].get("kms_plugin")
        if action in ("stop", "kill"):
            own = self._procs.get("kms_plugin")
            if own is not None and own.pid == pid and own.poll() is None:
                (terminate if action == "stop" else kill_process)(own)
            else:
                stop_pid(pid, info["kms_socket"], sig=signal.SIGTERM if action == "stop" else signal.SIGKILL)
            update_info(self.dir, pids={"kms_plugin": None})
            return None
        if action == "start":
            if is_alive(pid):
                return pid
            plugin.start()
            self._procs["kms_plugin"] = plugin.proc
            update_info(self.dir, pids={"kms_plugin": plugin.pid})
            return plugin.pid
        if action == "rotate":
            if pid and is_alive(pid):
                try:
                    key_id = rotate_running(pid, Path(info["kms_state"]), timeout=10)
                except TimeoutError:
                    raise SandboxError("the KMS plugin did not rotate its key within 10s") from None
                if wait and info.get("apiserver_mode") == "real" and info["provider"] == "kms-v2":
                    self.wait_key_id(key_id, ports=self.apiserver_ports())
                return key_id
            return rotate_state(Path(info["kms_state"]))
        if action in ("unhealthy", "healthy"):
            set_healthz(Path(info["kms_state"]), "ok" if action == "healthy" else "unhealthy: key vault unreachable")
            return None
        raise SandboxError(f"unknown kms action {action!r} (stop, kill, start, rotate, unhealthy, healthy)")

    def wait_key_id(self, key_id: str, timeout: float = 90.0, ports=None) -> float:
        """Wait until the real kube-apiserver's /metrics shows ``key_id`` from its KMS v2 plugin's Status (the key
        id its next write uses): the kubeconfig's server, or each kube-apiserver on ``ports``; returns the seconds
        waited."""
        started = time.monotonic()
        def taken(port):
            try:
                return self.status_key_ids(port)[-1:] == [key_id_hash(key_id)]
            except (SandboxError, OSError):  # not answering yet (restarting)
                return False

        for port in list(ports or [None]):
            while not taken(port):
                if time.monotonic() - started > timeout:
                    raise SandboxError(f"kube-apiserver{f' on port {port}' if port else ''} did not take the KMS key "
                                       f"id {key_id} within {timeout:.0f}s")
                time.sleep(1)
        return time.monotonic() - started

    def rotate_with_lag(self, lagging=(0,), timeout: float = 90.0) -> str:
        """A KMS v2 key rotation that ``up --apiservers N`` servers take at different times, as an HA control
        plane does: wait for a KMS plugin Status poll of the servers numbered ``lagging`` (0-based), rotate at once,
        then restart the others (a restarted server takes the new key id at once). The lagging ones write under
        the old key id until their next Status call: their next poll, a minute after the one awaited, or a
        /readyz (or /healthz) that reaches them 20 s or more after it. Returns the new key id."""
        ports = self.apiserver_ports()
        if len(ports) < 2 or self.info["provider"] != "kms-v2":
            raise SandboxError("rotate_with_lag needs a KMS v2 sandbox with several kube-apiservers (--apiservers N)")
        lagging = sorted(set(lagging))
        before = {i: self._last_status_call(ports[i]) for i in lagging}
        deadline = time.monotonic() + timeout
        while any(self._last_status_call(ports[i]) == before[i] for i in lagging):
            if time.monotonic() > deadline:
                raise SandboxError(f"no KMS plugin Status poll of kube-apiservers {lagging} within {timeout:.0f}s")
            time.sleep(0.25)
        key_id = self.kms("rotate", wait=False)
        self.restart_apiservers([i for i in range(len(ports)) if i not in lagging])
        return key_id

    def _last_status_call(self, port: int) -> float:
        """When the kube-apiserver on ``port`` last called its KMS v2 plugin's Status (its /metrics)."""
        status, page = self.api("GET", "/metrics", timeout=30, port=port)
        return max((float(line.rsplit(" ", 1)[1]) for line in str(page).splitlines() if line.startswith(
            "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds{")), default=0.0)

    def status_key_ids(self, port: int | None = None) -> list[str]:
        """The KMS v2 key id hashes the kube-apiserver (on ``port``, else the kubeconfig's) got from its plugin's
        Status calls, oldest first by the time of the last call that returned each (its /metrics)."""
        status, page = self.api("GET", "/metrics", timeout=30, port=port)
        if status != 200:
            raise SandboxError(f"/metrics: HTTP {status}")
        seen = {}
        for line in str(page).splitlines():
            if line.startswith("apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds{"):
                labels, _, value = line.rpartition(" ")
                for part in labels.split(","):
                    if "key_id_hash=" in part:
                        seen[part.split("=", 1)[1].strip('"}')] = float(value)
        return sorted(seen, key=seen.get)

    def ctl(self, body: dict, timeout: float = 60.0) -> dict:
        """POST fault-injection JSON to the control port (see the README); returns the server's answer."""
        info = self.info
        self._not_a_fleet(info, "send ctl to")
        url = info["control"]["url"] + "/ctl"
        req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise SandboxError(f"ctl {json.dumps(body)} failed: {e.read().decode(errors='replace')}") from None

    def etcdctl(self, *args: str, version: str | None = None, input: bytes | None = None,
                timeout: float = 30) -> subprocess.CompletedProcess:
        """Host-side etcdctl with the etcd.env credentials (bytes output)."""
        from .processes.etcdproc import find_etcdctl
        info = self.info
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
        for line in Path(info["etcd_env"]).read_text().splitlines():
            k, _, v = line.partition("=")
            env[k] = v
        return subprocess.run([find_etcdctl(version or info["etcdctl_version"]), *args], input=input,
                              capture_output=True, env=env, timeout=timeout)

    def etcdctl_get(self, key: str) -> bytes | None:
        """The raw stored value of ``key`` (None if absent), read with the host etcdctl (``-w json``)."""
        r = self.etcdctl("get", key, "-w", "json", version="3.5")
        if r.returncode != 0:
            raise SandboxError(f"etcdctl get {key} failed: {r.stderr.decode(errors='replace')}")
        kvs = json.loads(r.stdout).get("kvs") or []
        return base64.b64decode(kvs[0]["value"]) if kvs else None
