"""Bring a sandbox cluster up and down, and poke it: the one entry point for tests, the bench and the CLI.

    box = Sandbox(dir)
    box.up(provider="kms-v2")          # etcd + KMS plugin + API server/ARM/control process, seeded secrets
    box.kubeconfig, box.info           # DIR/kubeconfig, the parsed DIR/sandbox.json
    box.kms("stop"); box.kms("start"); box.kms("rotate")
    box.ctl({"exec_fault": {"pod": box.info["etcd_pods"][0], "mode": "drop"}})
    box.down()                         # idempotent; stops every process recorded in sandbox.json

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
import shutil
import signal
import ssl
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
PROVIDERS = ("kms-v1", "kms-v2", "aescbc", "aesgcm", "secretbox", "identity")
READYZ_STYLES = ("aggregate", "per-provider")
SUBSCRIPTION = "00000000-0000-0000-0000-00000000c0de"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
RESOURCE_GROUP = "sandbox-rg"
CLUSTER = "sandbox-cluster"
KUBERNETES_VERSION = "v1.30.4"
UNIX_PATH_MAX = 100  # sun_path is 108 bytes; keep a margin


class SandboxError(RuntimeError):
    """The sandbox could not do what was asked; the message says what and where the logs are."""


# --- sandbox.json and process helpers (also used by the server process for ctl etcd) ----------------------------


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


def _alive(pid: int | None) -> bool:
    """Running (a zombie counts as gone: it no longer runs, only waits for a parent that may never reap it)."""
    if not pid:
        return False
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _owned(pid: int, marker: str) -> bool:
    """The pid is still our process (its command line names our sandbox), not a recycled pid."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return marker.encode() in f.read()
    except OSError:
        return False


def stop_pid(pid: int | None, marker: str, timeout: float = 10.0) -> bool:
    """SIGTERM, wait, SIGKILL. True if a process was stopped."""
    if not pid or not _alive(pid) or not _owned(pid, marker):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.02)
    return True


def _pki_from_info(info: dict) -> dict:
    pki = {k: Path(v) for k, v in info["pki"].items() if k != "nodes"}
    pki["nodes"] = {n: {k: Path(v) for k, v in files.items()} for n, files in info["pki"]["nodes"].items()}
    return pki


def _etcd_process(directory: Path, info: dict):
    from .etcdproc import EtcdProcess
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
        if _alive(info["pids"].get("etcd")):
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


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return "(no log)"


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

    def up(self, provider: str = "kms-v2", etcdctl: str = "3.5", nodes: int = 1, broken_node: bool = False,
           readyz_style: str = "aggregate", history: bool = False, timeout: float = 60.0) -> dict:
        """Start everything, wait until ``/readyz`` passes, seed secrets; return sandbox.json's content.
        On failure everything started is stopped again and SandboxError says why."""
        if provider not in PROVIDERS:
            raise SandboxError(f"unknown provider {provider!r} (expected one of {', '.join(PROVIDERS)})")
        if etcdctl not in ("3.5", "3.4"):
            raise SandboxError(f"etcdctl must be 3.5 or 3.4, not {etcdctl!r}")
        if nodes not in (1, 3):
            raise SandboxError(f"nodes must be 1 or 3, not {nodes!r}")
        if readyz_style not in READYZ_STYLES:
            raise SandboxError(f"readyz_style must be one of {', '.join(READYZ_STYLES)}, not {readyz_style!r}")
        if (self.dir / "sandbox.json").exists():
            info = read_info(self.dir)
            if any(_alive(p) and _owned(p, str(self.dir)) for p in (info.get("pids") or {}).values()):
                raise SandboxError(f"a sandbox is already running in {self.dir}: run down first")
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in ("sandbox.json", "serve-ready.json", "serve.json"):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / stale).unlink()
        self._partial: dict = {"pids": {}, "kms_dir": None}
        try:
            return self._up(provider, etcdctl, nodes, broken_node, readyz_style, history, timeout)
        except BaseException as e:
            self._teardown(self._partial)
            if isinstance(e, SandboxError):
                raise
            if isinstance(e, KeyboardInterrupt):
                raise
            raise SandboxError(f"sandbox did not come up: {type(e).__name__}: {e}\n(logs in {self.dir / 'logs'})") \
                from e

    def _up(self, provider, etcdctl, n_nodes, broken_node, readyz_style, history, timeout) -> dict:
        from .etcdproc import EtcdProcess, etcdctl_env, find_etcdctl
        from .kms_plugin import KMSPluginProcess
        from .pki import make_pki

        find_etcdctl(etcdctl)  # fail early, with the install hint
        logs = self.dir / "logs"
        logs.mkdir(exist_ok=True)
        nodes = _node_names(n_nodes)
        pki = make_pki(self.dir, nodes)
        etcd = EtcdProcess(self.dir, pki, node=nodes[0], log_path=logs / "etcd.log")
        self._partial["pids"]["etcd"] = None
        etcd.start()
        self._procs["etcd"] = etcd.proc
        self._partial["pids"]["etcd"] = etcd.pid

        kms = None
        kms_socket = kms_state = None
        if provider.startswith("kms-"):
            kms_dir = self.dir / "kms"
            if len(str(kms_dir / "kms.sock")) > UNIX_PATH_MAX:
                kms_dir = Path(tempfile.mkdtemp(prefix="sbx-kms-"))
                self._partial["kms_dir"] = str(kms_dir)
            kms_dir.mkdir(parents=True, exist_ok=True)
            kms_socket = kms_dir / "kms.sock"
            self._partial["kms_socket"] = str(kms_socket)
            kms_state = self.dir / "kms-state.json"
            kms = KMSPluginProcess(kms_socket, provider.split("-")[1], kms_state, log_path=logs / "kms-plugin.log")
            kms.start()
            self._procs["kms_plugin"] = kms.proc
            self._partial["pids"]["kms_plugin"] = kms.pid

        etcd_pods = sorted(f"etcd-{n}" for n in nodes)
        broken = [etcd_pods[0]] if broken_node else []
        serve_cfg = {
            "dir": str(self.dir), "provider": provider, "etcdctl_version": etcdctl, "readyz_style": readyz_style,
            "nodes": nodes, "kubernetes_version": KUBERNETES_VERSION, "started": time.time(),
            "etcd": {"endpoint": etcd.endpoint, "ca": str(pki["etcd_ca_cert"]), "cert": str(pki["etcd_client_cert"]),
                     "key": str(pki["etcd_client_key"])},
            "kms": {"socket": str(kms_socket), "api": provider.split("-")[1]} if kms else None,
            "local_key": base64.b64encode(os.urandom(32)).decode() if provider in ("aescbc", "aesgcm", "secretbox")
            else None,
            "pki": _json_safe(pki),
            "arm": {"cluster": CLUSTER, "resource_group": RESOURCE_GROUP, "tenant": TENANT},
            "exec_faults": {p: "broken" for p in broken},
        }
        _write_json(self.dir / "serve.json", serve_cfg)

        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        with open(logs / "server.log", "ab") as log:
            server = subprocess.Popen([sys.executable, "-m", "tests.sandbox.serve", "--dir", str(self.dir)],
                                      cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                      start_new_session=True)
        self._procs["server"] = server
        self._partial["pids"]["server"] = server.pid
        ready_file = self.dir / "serve-ready.json"
        deadline = time.monotonic() + timeout
        while not ready_file.exists():
            if server.poll() is not None:
                raise SandboxError(f"the sandbox server exited with {server.returncode}; log "
                                   f"{logs / 'server.log'}:\n{_tail(logs / 'server.log')}")
            if time.monotonic() > deadline:
                raise SandboxError(f"the sandbox server did not listen within {timeout}s; log:\n"
                                   + _tail(logs / "server.log"))
            time.sleep(0.02)
        ports = json.loads(ready_file.read_text())

        api_url = f"https://127.0.0.1:{ports['apiserver_port']}"
        arm_url = f"https://127.0.0.1:{ports['arm_port']}"
        self._write_kubeconfig(self.dir / "kubeconfig", api_url, pki["ca_cert"], "kubernetes-admin",
                               pki["admin_cert"], pki["admin_key"])
        self._write_kubeconfig(self.dir / "kubeconfig-restricted", api_url, pki["ca_cert"], "restricted-user",
                               pki["restricted_cert"], pki["restricted_key"])
        etcd_env = etcdctl_env(pki, etcd.endpoint)
        (self.dir / "etcd.env").write_text("".join(f"{k}={v}\n" for k, v in etcd_env.items()))
        info = {
            "dir": str(self.dir), "provider": provider, "etcdctl_version": etcdctl, "readyz_style": readyz_style,
            "kubernetes_version": KUBERNETES_VERSION,
            "apiserver": {"url": api_url, "port": ports["apiserver_port"]},
            "arm": {"url": arm_url, "port": ports["arm_port"], "subscription": SUBSCRIPTION,
                    "resource_group": RESOURCE_GROUP, "cluster": CLUSTER, "tenant": TENANT},
            "control": {"url": f"http://127.0.0.1:{ports['control_port']}"},
            "etcd": {"endpoint": etcd.endpoint, "port": etcd.client_port, "peer_port": etcd.peer_port},
            "ca_bundle": str(pki["ca_bundle"]),
            "kubeconfig": str(self.dir / "kubeconfig"),
            "kubeconfig_restricted": str(self.dir / "kubeconfig-restricted"),
            "etcd_env": str(self.dir / "etcd.env"),
            "kms_socket": str(kms_socket) if kms_socket else None,
            "kms_state": str(kms_state) if kms_state else None,
            "kms_dir": self._partial["kms_dir"],
            "pids": dict(self._partial["pids"]),
            "nodes": nodes,
            "etcd_pods": etcd_pods,
            "broken_pods": broken,
            "pki": _json_safe(pki),
            "seeded": [],
            "history": None,
        }
        _write_json(self.dir / "sandbox.json", info)
        self._wait_ready(timeout)
        seeded, hist = self._seed(provider, history)
        return update_info(self.dir, seeded=seeded, history=hist)

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

    def _ssl(self) -> ssl.SSLContext:
        pki = self.info["pki"]
        ctx = ssl.create_default_context(cafile=pki["ca_cert"])
        ctx.load_cert_chain(pki["admin_cert"], pki["admin_key"])
        return ctx

    def api(self, method: str, path: str, body: dict | None = None, timeout: float = 30.0) -> tuple[int, object]:
        """One admin request to the API server: (status, parsed JSON or text)."""
        url = self.info["apiserver"]["url"] + path
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers={
            "Content-Type": "application/json", "Accept": "application/json",
            "User-Agent": f"kubectl/{KUBERNETES_VERSION} (linux/amd64) kubernetes/2bd1a5e"})
        try:
            with urllib.request.urlopen(req, context=self._ssl(), timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.api("GET", "/readyz?verbose", timeout=5)
                if last[0] == 200:
                    return
            except OSError as e:
                last = (None, str(e))
            time.sleep(0.1)
        raise SandboxError(f"/readyz did not pass within {timeout}s: {last}")

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
                hist["rotated_to"] = self.kms("rotate")
        token_id = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(6))
        self.create_secret("kube-system", f"bootstrap-token-{token_id}", {
            "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token",
            "expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400)),
            "token-id": token_id, "token-secret": os.urandom(8).hex(),
            "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true"},
            type_="bootstrap.kubernetes.io/token", field_manager="kubeadm")
        seeded.append(f"kube-system/bootstrap-token-{token_id}")
        self.create_secret("default", "db-user-pass", {"username": "admin", "password": "S!B\\*d$zDsb="})
        seeded.append("default/db-user-pass")
        self.create_secret("default", "registry-credentials", {".dockerconfigjson": json.dumps(
            {"auths": {"contoso.azurecr.io": {"username": "puller", "password": os.urandom(6).hex()}}})},
            type_="kubernetes.io/dockerconfigjson")
        seeded.append("default/registry-credentials")
        return seeded, hist

    # -- down --------------------------------------------------------------------------------------------------------

    def down(self) -> None:
        """Stop every process of this sandbox (idempotent); keeps the directory (logs, certificates, data)."""
        if not (self.dir / "sandbox.json").exists():
            if getattr(self, "_partial", None):
                self._teardown(self._partial)
            return
        info = read_info(self.dir)
        self._teardown(info)
        update_info(self.dir, pids={k: None for k in (info.get("pids") or {})})

    def _teardown(self, state: dict) -> None:
        pids = state.get("pids") or {}
        for name in ("server", "kms_plugin", "etcd"):
            pid = pids.get(name)
            proc = self._procs.get(name)
            if proc is not None and proc.pid == pid and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            elif pid:
                stop_pid(pid, str(self.dir) if name != "kms_plugin" else state.get("kms_socket") or str(self.dir))
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.wait(0.1)
        if state.get("kms_dir"):
            shutil.rmtree(state["kms_dir"], ignore_errors=True)

    # -- KMS, faults, etcd --------------------------------------------------------------------------------------------

    def _kms_process(self, info: dict):
        from .kms_plugin import KMSPluginProcess
        if not info.get("kms_socket"):
            raise SandboxError(f"this sandbox has no KMS plugin (provider {info['provider']})")
        return KMSPluginProcess(info["kms_socket"], info["provider"].split("-")[1], info["kms_state"],
                                log_path=self.dir / "logs" / "kms-plugin.log")

    def kms(self, action: str):
        """``stop`` (clean shutdown: the socket disappears), ``kill`` (crash: the socket stays), ``start``,
        ``rotate`` (new current key; returns its id), ``unhealthy``/``healthy`` (v2 Status healthz)."""
        from .kms_plugin import current_key_id, rotate_state, set_healthz
        info = self.info
        proc = self._kms_process(info)
        pid = info["pids"].get("kms_plugin")
        if action in ("stop", "kill"):
            own = self._procs.get("kms_plugin")
            if own is not None and own.pid == pid and own.poll() is None:
                (own.terminate if action == "stop" else own.kill)()
                own.wait(10)
            elif pid and _alive(pid) and _owned(pid, info["kms_socket"]):
                if action == "kill":
                    os.kill(pid, signal.SIGKILL)
                stop_pid(pid, info["kms_socket"])
            update_info(self.dir, pids={"kms_plugin": None})
            return None
        if action == "start":
            if _alive(pid):
                return pid
            proc.start()
            self._procs["kms_plugin"] = proc.proc
            update_info(self.dir, pids={"kms_plugin": proc.pid})
            return proc.pid
        if action == "rotate":
            before = current_key_id(Path(info["kms_state"]))
            if pid and _alive(pid):
                os.kill(pid, signal.SIGHUP)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    now = current_key_id(Path(info["kms_state"]))
                    if now != before:
                        return now
                    time.sleep(0.02)
                raise SandboxError("the KMS plugin did not rotate its key within 10s")
            return rotate_state(Path(info["kms_state"]))
        if action in ("unhealthy", "healthy"):
            set_healthz(Path(info["kms_state"]), "ok" if action == "healthy" else "unhealthy: key vault unreachable")
            return None
        raise SandboxError(f"unknown kms action {action!r} (stop, kill, start, rotate, unhealthy, healthy)")

    def ctl(self, body: dict, timeout: float = 60.0) -> dict:
        """POST fault-injection JSON to the control port (see the README); returns the server's answer."""
        url = self.info["control"]["url"] + "/ctl"
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
        from .etcdproc import find_etcdctl
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
