"""The sandbox's server process: API server (HTTPS), ARM emulator (HTTPS) and control site (HTTP) in one loop;
with ``entra`` in serve.json also the Entra ID emulator (HTTPS) and its managed-identity endpoint (HTTP). For a
fleet (``fleet`` in serve.json) an API server and a control site per connected cluster, one ARM (with Resource
Graph) and Entra emulator for all, and a refusing port per disconnected cluster; each connected cluster of a fleet
is a sandbox of its own (``member_of`` in its serve.json), whose server process serves no ARM or Entra: the fleet's
do (``fleet_ports``), and its token webhook checks the fleet's Entra tokens.

    python -m tests.sandbox.serve --dir DIR

Reads ``DIR/serve.json`` (written by :mod:`tests.sandbox.control`), binds each site on 127.0.0.1 (port 0 =
any free port, so sandboxes never collide; a resumed sandbox asks for its former ports, taken when free), then
writes ``DIR/serve-ready.json`` with the ports: the control side waits for that file instead of guessing ports.
SIGTERM/SIGINT stop it cleanly (exec'd processes killed).

The control site (``POST /ctl`` with JSON) injects faults at run time: ``exec_fault``, ``readyz``, ``etcd``
(stop/start the etcd process), ``write_secret`` (store a Secret as identity or the current provider would),
``seed`` (write many Secrets fast, for benchmarks), ``managed_identity`` (up/down/error, with entra), ``sign_ins``
(expired/valid, with entra).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import ssl
import sys
from pathlib import Path

from aiohttp import web

from .apiserver.state import APIServer, etcd_pod_names
from .azure.arm import ARM
from .execws import FAULT_MODES


def _bound(port: int = 0, reuse: bool = False) -> socket.socket:
    """A socket bound to 127.0.0.1:``port``; on any free port when ``port`` is 0 or taken."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if reuse:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        if not port:
            s.close()
            raise
        s.bind(("127.0.0.1", 0))
    return s


def _listen(port: int = 0) -> socket.socket:
    """A listening socket on 127.0.0.1:``port`` (see :func:`_bound`)."""
    s = _bound(port, reuse=True)
    s.listen(128)
    s.setblocking(False)
    return s


def apiserver_ssl(pki: dict) -> ssl.SSLContext:
    """Serving cert of the Kubernetes CA; client certs optional (bearer tokens also authenticate) but, when
    sent, verified against the Kubernetes CA, as kube-apiserver's ``--client-ca-file`` does."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(pki["apiserver_cert"], pki["apiserver_key"])
    ctx.load_verify_locations(pki["ca_cert"])
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def arm_ssl(pki: dict, site: str = "arm") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(pki[f"{site}_cert"], pki[f"{site}_key"])
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class Control:
    """``POST /ctl``: fault injection and sandbox-only operations; ``GET /state``: current faults."""

    def __init__(self, api: APIServer, directory: Path, entra=None):
        self.api = api
        self.dir = directory
        self.entra = entra
        self.hidden_pods: list = []
        self.real: dict | None = None  # with the real kube-apiserver: its admin api and the kubelet ports

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/ctl", self.h_ctl)
        app.router.add_get("/state", self.h_state)
        return app

    def state(self) -> dict:
        return {"exec_faults": dict(self.api.exec_faults), "readyz": self.api.readyz_fault,
                "etcd_pods": etcd_pod_names(self.api.pods)}

    async def _real_namespace(self, ns: str) -> None:
        """With the real kube-apiserver, a namespace the sandbox writes secrets into straight in etcd exists there
        too (as the API server's namespace, created through it as the admin)."""
        import aiohttp
        pki = self.api.cfg["pki"]
        ctx = ssl.create_default_context(cafile=pki["ca_cert"])
        ctx.load_cert_chain(pki["admin_cert"], pki["admin_key"])
        url = f"https://127.0.0.1:{self.api.port}/api/v1/namespaces"
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
                                    ssl=ctx) as resp:
                if resp.status not in (201, 409):
                    raise ValueError(f"could not create namespace {ns}: HTTP {resp.status} {await resp.text()}")

    async def h_state(self, request):
        return web.json_response(self.state())

    async def h_ctl(self, request):
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            result = await self.apply(body)
        except (ValueError, KeyError, TypeError) as e:
            return web.json_response({"ok": False, "error": str(e)}, status=400)
        except Exception as e:  # report, do not kill the server
            logging.exception("ctl failed")
            return web.json_response({"ok": False, "error": f"{type(e).__name__}: {e}"}, status=500)
        return web.json_response({"ok": True, "result": result, "state": self.state()})

    async def apply(self, body: dict) -> dict:
        # secret-write faults ("writes": throttle, concurrent writer, undecryptable secrets): seed.write_faults
        has_writes, writes = "writes" in body, body.pop("writes", None)
        unknown = set(body) - {"exec_fault", "readyz", "etcd", "write_secret", "seed", "etcd_pods", "exec_key_prefix",
                               "managed_identity", "sign_ins"}
        if unknown:
            raise ValueError(f"unknown ctl keys: {', '.join(sorted(unknown))} (expected exec_fault, readyz, etcd, "
                             "write_secret, seed, etcd_pods, exec_key_prefix, managed_identity, sign_ins)")
        result: dict = {}
        if has_writes:
            from .seed import write_faults
            result["writes"] = await write_faults(self.api, writes)
        if "managed_identity" in body:
            if self.entra is None:
                raise ValueError("managed_identity needs the Entra emulator (up --entra)")
            result["managed_identity"] = await self.entra.set_msi_mode(body["managed_identity"])
        if "sign_ins" in body:
            if self.entra is None:
                raise ValueError("sign_ins needs the Entra emulator (up --entra)")
            result["sign_ins"] = self.entra.set_sign_ins(body["sign_ins"])
        if "exec_fault" in body:
            spec = body["exec_fault"]
            mode = spec.get("mode")
            if mode not in FAULT_MODES + (None,):
                raise ValueError(f"exec_fault.mode must be one of {', '.join(FAULT_MODES)} or null, not {mode!r}")
            pods = etcd_pod_names(self.api.pods)
            targets = pods if spec.get("pod") in (None, "*") else [spec["pod"]]
            for pod in targets:
                if pod not in pods:
                    raise ValueError(f"no etcd pod {pod!r} (pods: {', '.join(pods)})")
                if self.real is not None and "broken" in (mode, self.api.exec_faults.get(pod)):
                    # the real server dials the pod's node's kubelet: a broken node's kubelet port refuses
                    from .apiserver.kubeapiserver import set_kubelet_port
                    node = pod[len("etcd-"):]
                    port = self.real["refused_port"] if mode == "broken" else self.real["kubelet_port"]
                    await asyncio.to_thread(set_kubelet_port, self.real["api"], node, port)
                if mode is None:
                    self.api.exec_faults.pop(pod, None)
                else:
                    self.api.exec_faults[pod] = mode
        if "readyz" in body:
            if body["readyz"] not in ("unreachable", "unavailable", None):
                raise ValueError("readyz must be 'unreachable' (connection reset), 'unavailable' (503) or null")
            self.api.readyz_fault = body["readyz"]
        if "etcd_pods" in body:
            # "hidden": kube-system lists no etcd pod (external or managed etcd); "visible" brings them back.
            if body["etcd_pods"] not in ("hidden", "visible"):
                raise ValueError("etcd_pods must be 'hidden' or 'visible'")
            if body["etcd_pods"] == "hidden":
                names = set(etcd_pod_names(self.api.pods))
                hiding = [p for p in self.api.pods if p["metadata"]["name"] in names]
                if self.real is not None:
                    from .apiserver.kubeapiserver import delete_pods
                    await asyncio.to_thread(delete_pods, self.real["api"], hiding)
                self.hidden_pods += hiding
                self.api.pods = [p for p in self.api.pods if p["metadata"]["name"] not in names]
            else:
                if self.real is not None and self.hidden_pods:
                    from .apiserver.kubeapiserver import bootstrap_pods
                    await asyncio.to_thread(bootstrap_pods, self.real["api"], self.hidden_pods)
                self.api.pods = sorted(self.api.pods + self.hidden_pods,
                                       key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"]))
                self.hidden_pods = []
        if "exec_key_prefix" in body:
            prefix = body["exec_key_prefix"]
            if prefix is not None and not (isinstance(prefix, str) and prefix.startswith("/") and prefix.endswith("/")):
                raise ValueError("exec_key_prefix must be a key prefix like '/other/' or null")
            self.api.exec_key_prefix = prefix
        if "etcd" in body:
            from . import control
            if body["etcd"] not in ("stop", "start"):
                raise ValueError("etcd must be 'stop' or 'start'")
            result["etcd"] = await asyncio.to_thread(control.etcd_action, self.dir, body["etcd"])
        for key in ("write_secret", "seed"):
            if key in body and self.api.cfg.get("real_apiserver"):
                await self._real_namespace(body[key].get("namespace", "bench"))
        if "write_secret" in body:
            spec = body["write_secret"]
            result["write_secret"] = await self.api.write_secret_as(
                spec["namespace"], spec["name"], spec.get("data") or {}, spec.get("with", "current"),
                spec.get("labels"), spec.get("written_at"), spec.get("prefix"))
        if "seed" in body:
            spec = body["seed"]
            result["seed"] = await self.api.seed(
                spec.get("namespace", "bench"), int(spec["count"]), spec.get("prefix", "bulk-"),
                int(spec.get("size", 64)), spec.get("with", "current"), spec.get("labels"), int(spec.get("start", 0)))
        return result


async def serve(directory: Path) -> None:
    cfg = json.loads((directory / "serve.json").read_text())
    if cfg.get("fleet"):
        return await serve_fleet(directory, cfg)
    pki = cfg["pki"]
    api = APIServer(cfg)
    await api.start()
    ports = cfg.get("ports") or {}  # a resumed sandbox asks for its former ports again
    real = cfg.get("real_apiserver")
    member = cfg.get("fleet_ports")  # one cluster of a fleet: ARM and Entra are the fleet's
    if member and not real:
        raise SystemExit("a fleet's cluster runs the real kube-apiserver (serve.json has no real_apiserver)")
    lb = None
    if real:  # the real kube-apiserver listens there (control.py starts it once this process serves)
        api_sock = None
        arm_sock = None if member else _listen(ports.get("arm", 0))
        ctl_sock = _listen(ports.get("control", 0))
        api.port = real["port"]
        if len(real.get("server_ports") or ()) > 1:  # up --apiservers N: the kubeconfig names the load balancer
            from .apiserver.lb import LoadBalancer
            lb = LoadBalancer(_listen(real["port"]), real["server_ports"])
            await lb.start()
            api.port = lb.sock.getsockname()[1]
    else:
        api_sock, arm_sock, ctl_sock = (_listen(ports.get(site, 0)) for site in ("apiserver", "arm", "control"))
        api.port = api_sock.getsockname()[1]
    api_url = f"https://127.0.0.1:{api.port}"
    if member:
        entra, entra_socks = _fleet_entra(cfg), None
        control = Control(api, directory, None)  # managed_identity and sign_ins: the fleet's Entra, not here
        sites = [(control.app(), ctl_sock, None)]
        ready = {"pid": os.getpid(), "apiserver_port": api.port, "arm_port": member["arm_port"],
                 "control_port": ctl_sock.getsockname()[1]}
        if entra is not None:
            ready.update(entra_port=member["entra_port"], msi_port=member["msi_port"])
        arm_url = f"https://127.0.0.1:{member['arm_port']}"
    else:
        entra, entra_socks = _entra(cfg, ports)
        arm = ARM(cfg["arm"], api_url, Path(pki["ca_cert"]).read_bytes(), Path(pki["admin_cert"]).read_bytes(),
                  Path(pki["admin_key"]).read_bytes(), entra=entra)
        arm.url = arm_url = f"https://127.0.0.1:{arm_sock.getsockname()[1]}"
        control = Control(api, directory, entra)
        sites = [(arm.app(), arm_sock, arm_ssl(pki)), (control.app(), ctl_sock, None)]
        ready = {"pid": os.getpid(), "apiserver_port": api.port, "arm_port": arm_sock.getsockname()[1],
                 "control_port": ctl_sock.getsockname()[1]}
    authn = None
    if entra is not None:
        from .auth import EntraAuthn
        authn = EntraAuthn(entra.verifier(), cfg["arm_id"] if member else entra.cluster_id, entra.enforce_pop)
    if real:
        # The token webhook (guard), the admission webhook and the nodes' kubelet endpoint; a broken node's
        # kubelet port refuses.
        from .apiserver.guard import Guard
        from .apiserver.kubelet import Kubelet
        hook_sock, kubelet_sock = _listen(ports.get("webhook", 0)), _listen(ports.get("kubelet", 0))
        refused = _refusing(ports.get("refused", 0))
        from .apiserver import admission
        hooks = Guard(authn).app()
        admission.install(hooks)  # the validating admission webhook, on the same site (Sandbox.admission_webhook)
        sites += [(hooks, hook_sock, apiserver_ssl(pki)),
                  (Kubelet(api).app(), kubelet_sock, apiserver_ssl(pki))]
        ready.update(webhook_port=hook_sock.getsockname()[1], kubelet_port=kubelet_sock.getsockname()[1],
                     refused_port=refused.getsockname()[1])
        from .apiserver.kubeapiserver import admin_api
        control.real = {"api": admin_api(pki, api.port), "kubelet_port": ready["kubelet_port"],
                        "refused_port": ready["refused_port"]}
    else:
        api_app = api.app()
        sites.insert(0, (api_app, api_sock, apiserver_ssl(pki)))
        if authn is not None:
            from .auth import install_entra
            install_entra(api_app, authn)
    logging.info("serving: apiserver %s, arm %s, control http://127.0.0.1:%s", api_url, arm_url,
                 ready["control_port"])
    await _run(directory, sites, ready, None if member else entra, entra_socks, pki, [api])


def _fleet_entra(cfg: dict):
    """A fleet's cluster: the fleet's Entra emulator (its keys, at the fleet's address) to check tokens with; not
    served here. None without Entra."""
    if not cfg.get("entra"):
        return None
    from .azure.entra.server import Entra
    entra = Entra(cfg["entra"])
    entra.url = f"https://127.0.0.1:{cfg['fleet_ports']['entra_port']}"
    return entra


def _entra(cfg: dict, ports: dict):
    """The Entra emulator and its (Entra, managed identity) sockets, or (None, None) without ``entra``."""
    if not cfg.get("entra"):
        return None, None
    from .azure.entra.server import Entra
    entra = Entra(cfg["entra"])
    entra_sock, msi_sock = _listen(ports.get("entra", 0)), _listen(ports.get("msi", 0))
    entra.url = f"https://127.0.0.1:{entra_sock.getsockname()[1]}"
    entra.msi_port = msi_sock.getsockname()[1]
    entra.write_workload_token()
    return entra, (entra_sock, msi_sock)


async def _run(directory: Path, sites: list, ready: dict, entra, entra_socks, pki: dict, apis: list) -> None:
    """Serve ``sites`` (app, socket, TLS context) and the Entra sites, write serve-ready.json, run until SIGTERM."""
    if entra is not None:
        entra_sock, msi_sock = entra_socks
        sites = sites + [(entra.app(), entra_sock, arm_ssl(pki, "entra")), (entra.msi_app(), msi_sock, None)]
        ready.update(entra_port=entra_sock.getsockname()[1], msi_port=entra.msi_port)

    async def no_server_header(request, response):
        response.headers.pop("Server", None)  # kube-apiserver and ARM send none; nothing should key on it

    runners = []
    for app, sock, ctx in sites:
        app.on_response_prepare.append(no_server_header)
        runner = web.AppRunner(app, access_log=logging.getLogger("sandbox.access"), handle_signals=False,
                               shutdown_timeout=1.0)
        await runner.setup()
        site = web.SockSite(runner, sock, ssl_context=ctx, shutdown_timeout=1.0)
        await site.start()
        runners.append(runner)
        if entra is not None and sock is entra_socks[1]:
            entra.msi_runner, entra.msi_site = runner, site

    tmp = directory / "serve-ready.json.tmp"
    tmp.write_text(json.dumps(ready))
    os.replace(tmp, directory / "serve-ready.json")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.info("stopping")
    for runner in reversed(runners):
        await runner.cleanup()
    for api in apis:
        await api.close()


def _refusing(port: int = 0) -> socket.socket:
    """A socket bound to 127.0.0.1:``port`` that never listens: it keeps the port, and connections to it are
    refused (a disconnected cluster's API server)."""
    return _bound(port)


async def serve_fleet(directory: Path, cfg: dict) -> None:
    """A fleet (tests/sandbox/fleet.py): one ARM (with Resource Graph) and Entra emulator for every cluster, each
    connected cluster's record naming the port of its own kube-apiserver (a sandbox of its own, started after this
    process listens); a disconnected cluster's API server port refuses connections (held here)."""
    ports = cfg.get("ports") or {}
    entra, entra_socks = _entra(cfg, ports)
    arm_sock = _listen(ports.get("arm", 0))
    records, held, ready_clusters = [], [], {}
    for c in cfg["clusters"]:
        cpki = c["pki"]
        if c["connectivity"] == "Connected":
            port = c["apiserver_port"]
        else:
            sock = _refusing(c.get("apiserver_port") or 0)
            held.append(sock)
            port = sock.getsockname()[1]
        ready_clusters[c["name"]] = {"apiserver_port": port}
        records.append({"name": c["name"], "resource_group": c["resource_group"], "subscription": c["subscription"],
                        "apiserver_url": f"https://127.0.0.1:{port}", "connectivity": c["connectivity"],
                        "tags": c["tags"], "ca_pem": Path(cpki["ca_cert"]).read_bytes(),
                        "admin_cert_pem": Path(cpki["admin_cert"]).read_bytes(),
                        "admin_key_pem": Path(cpki["admin_key"]).read_bytes()})
    arm = ARM(cfg["arm"], entra=entra, clusters=records)
    arm.url = f"https://127.0.0.1:{arm_sock.getsockname()[1]}"
    pki = cfg["pki"]
    sites = [(arm.app(), arm_sock, arm_ssl(pki))]
    ready = {"pid": os.getpid(), "arm_port": arm_sock.getsockname()[1], "clusters": ready_clusters}
    logging.info("serving a fleet of %d clusters, arm %s", len(cfg["clusters"]), arm.url)
    try:
        await _run(directory, sites, ready, entra, entra_socks, pki, [])
    finally:
        for sock in held:
            sock.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.sandbox.serve", description=__doc__.split("\n")[0])
    p.add_argument("--dir", required=True, help="sandbox directory (with serve.json)")
    a = p.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if os.environ.get("SANDBOX_DEBUG") else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(Path(a.dir).resolve()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
