"""A fleet: many AKS-Arc-like clusters behind one ARM emulator (with Resource Graph) and Entra emulator.

    box = Sandbox(dir)
    box.up(clusters=3, providers=["kms-v2", "kms-v1", "identity"], disconnected={"sandbox-3": "Offline"})
    box.info["clusters"]               # name, resource group, subscription, ARM id, provider, kubeconfig, ...
    box.cluster("sandbox-2").api(...)  # a Sandbox bound to one cluster: api, ctl, kms, etcdctl as usual
    box.down()

Clusters ``sandbox-1`` ... ``sandbox-N`` in subscription ``SUBSCRIPTION`` (every 4th in resource group ``edge-rg``
with the tag ``edge=true``, the others in ``sandbox-rg``; ``env=prod`` for odd, ``env=dev`` for even numbers;
``site=<n>``), plus ``other-1`` in ``other-rg`` of ``OTHER_SUBSCRIPTION``, which restricted identities (upn
``restricted*``) cannot see. Providers are given to the clusters in turn from ``providers`` (``other-1`` gets the
first). A cluster that is not ``Connected`` (``disconnected``: ``Offline`` by default, or ``Connecting``,
``Expired``, ``AgentNotInstalled``) has that ``connectivityStatus`` in ARM and Resource Graph, no processes, and an
API server port that refuses connections (its kubeconfig points there).

Each connected cluster is what a single sandbox is, in ``DIR/clusters/<name>/`` (its own certificates, nodes and
etcd pods, kubeconfigs, ``etcd.env`` and ``sandbox.json``): its own etcd process, its own KMS plugin process when
its provider is KMS, its own API server and control site (ports) in the fleet's ONE server process. One etcd per
cluster (rather than key prefixes in one etcd) keeps the in-pod etcdctl seeing exactly ``/registry/...`` keys of
its own cluster, as on a real control plane; the cost is measured in tests/sandbox/tests/test_sandbox_fleet.py and
tests/sandbox/README.md.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .processes.proc import is_alive, is_ours

MAIN_RG = "sandbox-rg"
EDGE_RG = "edge-rg"
OTHER_SUBSCRIPTION = "00000000-0000-0000-0000-00000000beef"
OTHER_RG = "other-rg"
OTHER_CLUSTER = "other-1"
CONNECTIVITY = ("Connected", "Connecting", "Offline", "Expired", "AgentNotInstalled")
MAX_CLUSTERS = 50
WORKERS = 8  # threads starting processes and seeding: enough to overlap waits, few enough for 2 cores


def _control():
    from . import control
    return control


def arm_id(sub: str, rg: str, name: str) -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Kubernetes/connectedClusters/{name}"


def parse_providers(value) -> list[str] | None:
    """``"kms-v2,kms-v1"`` or a list; None stays None."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [p.strip() for p in items if p and p.strip()]
    if not items:
        raise _control().SandboxError("providers must name at least one provider")
    unknown = [p for p in items if p not in _control().PROVIDERS]
    if unknown:
        raise _control().SandboxError(f"unknown provider {unknown[0]!r} in providers (expected "
                                      f"{', '.join(_control().PROVIDERS)})")
    return items


def parse_disconnected(value) -> dict | None:
    """``"sandbox-2,sandbox-5:Expired"``, a list of such names or a dict name -> status; None stays None."""
    if value is None:
        return None
    if isinstance(value, dict):
        items = list(value.items())
    else:
        names = value.split(",") if isinstance(value, str) else list(value)
        items = [tuple(n.strip().split(":", 1)) if ":" in n else (n.strip(), "Offline") for n in names if n.strip()]
    out = {}
    for name, status in items:
        match = next((c for c in CONNECTIVITY[1:] if c.lower() == str(status).lower()), None)
        if match is None:
            raise _control().SandboxError(f"connectivity status {status!r} of {name} is not one ARM reports for a "
                                          f"disconnected cluster (expected {', '.join(CONNECTIVITY[1:])})")
        out[name] = match
    return out


def plan(n: int, providers: list[str], disconnected: dict) -> list[dict]:
    """The clusters of a fleet of ``n`` (and ``other-1``), in order."""
    from .control import SUBSCRIPTION
    specs = []
    for i in range(1, n + 1):
        edge = i % 4 == 0
        tags = {"env": "prod" if i % 2 else "dev", "site": str(i)}
        if edge:
            tags["edge"] = "true"
        specs.append({"name": f"sandbox-{i}", "resource_group": EDGE_RG if edge else MAIN_RG,
                      "subscription": SUBSCRIPTION, "provider": providers[(i - 1) % len(providers)], "tags": tags})
    specs.append({"name": OTHER_CLUSTER, "resource_group": OTHER_RG, "subscription": OTHER_SUBSCRIPTION,
                  "provider": providers[0], "tags": {"env": "prod", "site": "other"}})
    names = {s["name"] for s in specs}
    unknown = sorted(set(disconnected) - names)
    if unknown:
        raise _control().SandboxError(f"disconnected: no cluster {unknown[0]!r} in this fleet (clusters sandbox-1 ... "
                                      f"sandbox-{n} and {OTHER_CLUSTER})")
    for s in specs:
        s["connectivity"] = disconnected.get(s["name"], "Connected")
        s["id"] = arm_id(s["subscription"], s["resource_group"], s["name"])
    return specs


def subscriptions() -> list[dict]:
    from .control import SUBSCRIPTION
    return [{"id": SUBSCRIPTION, "display_name": "Sandbox Subscription", "restricted": True},
            {"id": OTHER_SUBSCRIPTION, "display_name": "Sandbox Other Subscription", "restricted": False}]


def check_options(asked: dict) -> None:
    """SandboxError for fleet options that do not go together (None: not given)."""
    SandboxError = _control().SandboxError
    n = asked.get("clusters")
    if n is None:
        given = [f for k, f in (("providers", "--providers"), ("disconnected", "--disconnected")) if asked.get(k)]
        if given:
            raise SandboxError(f"{given[0]} needs --clusters N (a fleet)")
        return
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CLUSTERS:
        raise SandboxError(f"clusters must be a number from 1 to {MAX_CLUSTERS}, not {n!r}")
    if asked.get("provider") is not None:
        raise SandboxError("--provider is for one cluster: give a fleet its providers with --providers "
                           "kms-v2,kms-v1,... (assigned to the clusters in turn)")
    if asked.get("apiserver") == "real":
        raise SandboxError("--apiserver real is for one cluster: a fleet's clusters run on the API server emulator "
                           "(tests/sandbox/README.md)")
    for k, flag in (("disabled_metrics", "--disabled-metrics"), ("without_metrics", "--without-metrics")):
        if asked.get(k):
            raise SandboxError(f"{flag} is for one cluster on the real kube-apiserver, not a fleet (its clusters run "
                               "on the API server emulator)")
    if (asked.get("apiservers") or 1) > 1:
        raise SandboxError("--apiservers is for one cluster (on the real kube-apiserver), not a fleet")
    if asked.get("broken_node"):
        raise SandboxError("--broken-node is for one cluster, not a fleet (break a node of one cluster with its ctl "
                           "exec_fault)")


def all_pids(directory: Path, info: dict) -> list[int]:
    """Every recorded pid of a fleet: the server's and each cluster's (their sandbox.json is kept current by kms
    start/stop and ctl etcd)."""
    pids = [p for p in (info.get("pids") or {}).values() if p]
    for c in info.get("clusters") or []:
        with contextlib.suppress(Exception):
            pids += [p for p in (_control().read_info(c["dir"]).get("pids") or {}).values() if p]
    return pids


def running(directory: Path, info: dict) -> bool:
    return any(is_alive(p) and is_ours(p, str(directory)) for p in all_pids(directory, info))


# --- up --------------------------------------------------------------------------------------------------------


class _Fleet:
    """One ``up`` (new or resumed) of a fleet rooted at ``box.dir``."""

    def __init__(self, box):
        self.box = box
        self.dir = box.dir
        self.members: dict = {}  # name -> Sandbox of that cluster's directory (holds its processes)

    def member(self, name: str):
        from .control import Sandbox
        m = self.members.get(name)
        if m is None:
            m = self.members[name] = Sandbox(self.dir / "clusters" / name)
            m._partial = {"pids": {}, "kms_dir": None}
        return m

    def teardown(self) -> None:
        self.box._teardown(self.box._partial)
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(lambda m: m._teardown(m._partial), list(self.members.values())))

    # -- processes ------------------------------------------------------------------------------------------

    def start_member(self, spec: dict, pki: dict, nodes: list[str], etcd_ports: dict | None = None,
                     kms_state: Path | None = None) -> dict:
        """Start one connected cluster's etcd (and KMS plugin); returns its serve.json entries."""
        from .processes.etcdproc import EtcdProcess
        m = self.member(spec["name"])
        logs = m.dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        etcd = EtcdProcess(m.dir, pki, node=nodes[0], log_path=logs / "etcd.log", **(etcd_ports or {}))
        m._partial["pids"]["etcd"] = None
        etcd.start()
        m._procs["etcd"] = etcd.proc
        m._partial["pids"]["etcd"] = etcd.pid
        kms_socket = None
        if spec["provider"].startswith("kms-"):
            kms_socket = m._start_kms(spec["provider"], kms_state or m.dir / "kms-state.json")
        return {"etcd": etcd, "kms_socket": kms_socket}

    # -- after the server listens ---------------------------------------------------------------------------

    def write_member(self, spec: dict, serve_cfg: dict, ready: dict, etcd, kms_socket, pki: dict, options: dict,
                     entra_info, previous: dict | None = None) -> dict:
        """Kubeconfigs, etcd.env and sandbox.json of one cluster; returns its entry in the fleet's ``clusters``."""
        from .control import KUBERNETES_VERSION, TENANT, _json_safe, _write_json
        from .processes.etcdproc import etcdctl_env
        m = self.member(spec["name"])
        ports = ready["clusters"][spec["name"]]
        api_url = m._write_kubeconfigs({"apiserver_port": ports["apiserver_port"]}, pki)
        connected = spec["connectivity"] == "Connected"
        etcd_env = None
        if connected:
            etcd_env = m.dir / "etcd.env"
            etcd_env.write_text("".join(f"{k}={v}\n" for k, v in etcdctl_env(pki, etcd.endpoint).items()))
        bundle = m.dir / "pki" / "ca-bundle.pem"
        bundle.write_bytes(Path(pki["ca_cert"]).read_bytes() + (self.dir / "pki" / "arm-ca.crt").read_bytes())
        arm_url = f"https://127.0.0.1:{ready['arm_port']}"
        control_url = f"http://127.0.0.1:{ports['control_port']}" if ports["control_port"] else None
        nodes = serve_cfg["nodes"]
        kms_state = m.dir / "kms-state.json" if spec["provider"].startswith("kms-") and connected else None
        minfo = {
            "dir": str(m.dir), "member_of": str(self.dir),
            "cluster": {k: spec[k] for k in ("name", "resource_group", "subscription", "id", "connectivity", "tags")},
            "provider": spec["provider"], "etcdctl_version": options["etcdctl"],
            "readyz_style": options["readyz_style"],
            "kubernetes_version": KUBERNETES_VERSION,
            "apiserver": {"url": api_url, "port": ports["apiserver_port"]},
            "arm": {"url": arm_url, "port": ready["arm_port"], "subscription": spec["subscription"],
                    "resource_group": spec["resource_group"], "cluster": spec["name"], "tenant": TENANT},
            "control": {"url": control_url} if control_url else None,
            "etcd": {"endpoint": etcd.endpoint, "port": etcd.client_port, "peer_port": etcd.peer_port}
            if connected else None,
            "ca_bundle": str(bundle),
            "kubeconfig": m.kubeconfig, "kubeconfig_restricted": m.kubeconfig_restricted,
            "etcd_env": str(etcd_env) if etcd_env else None,
            "kms_socket": str(kms_socket) if kms_socket else None,
            "kms_state": str(kms_state) if kms_state else None,
            "kms_dir": m._partial["kms_dir"],
            "pids": dict(m._partial["pids"]),
            "nodes": nodes, "etcd_pods": sorted(f"etcd-{n}" for n in nodes), "broken_pods": [],
            "pki": _json_safe(pki),
            "seeded": (previous or {}).get("seeded", []), "history": (previous or {}).get("history"),
            "entra": entra_info,
        }
        _write_json(m.dir / "sandbox.json", minfo)
        return {"name": spec["name"], "resource_group": spec["resource_group"], "subscription": spec["subscription"],
                "id": spec["id"], "provider": spec["provider"], "connectivity": spec["connectivity"],
                "tags": spec["tags"], "kubeconfig": m.kubeconfig, "kubeconfig_restricted": m.kubeconfig_restricted,
                "dir": str(m.dir), "apiserver_url": api_url, "control_url": control_url,
                "etcd_endpoint": etcd.endpoint if connected else None, "etcd_env": minfo["etcd_env"],
                "kms_socket": minfo["kms_socket"], "etcd_pods": minfo["etcd_pods"]}

    def ready_and_seed(self, specs: list[dict], history: bool, timeout: float, resume: bool) -> None:
        def one(spec):
            m = self.member(spec["name"])
            m._wait_ready(timeout)
            if resume:
                seeded = m._seed_missing(list(m.info.get("seeded") or []))
                _control().update_info(m.dir, seeded=seeded)
            else:
                seeded, hist = m._seed(spec["provider"], history)
                _control().update_info(m.dir, seeded=seeded, history=hist)
        connected = [s for s in specs if s["connectivity"] == "Connected"]
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(one, connected))


def _serve_member(spec: dict, member_dir: Path, nodes: list[str], pki: dict, started: dict, options: dict,
                  local_key: str | None) -> dict:
    """A cluster's entry in the fleet's serve.json: a single sandbox's configuration plus its ARM record."""
    from .control import KUBERNETES_VERSION, READ_KEYS, TENANT, _json_safe
    kms_socket = started.get("kms_socket")
    etcd = started.get("etcd")
    return {
        "name": spec["name"], "resource_group": spec["resource_group"], "subscription": spec["subscription"],
        "arm_id": spec["id"], "connectivity": spec["connectivity"], "tags": spec["tags"],
        "dir": str(member_dir), "provider": spec["provider"], "etcdctl_version": options["etcdctl"],
        "readyz_style": options["readyz_style"], "nodes": nodes, "kubernetes_version": KUBERNETES_VERSION,
        "started": time.time(),
        "etcd": {"endpoint": etcd.endpoint, "ca": str(pki["etcd_ca_cert"]), "cert": str(pki["etcd_client_cert"]),
                 "key": str(pki["etcd_client_key"])} if etcd else None,
        "kms": {"socket": str(kms_socket), "api": spec["provider"].split("-")[1]} if kms_socket else None,
        "local_key": local_key,
        "pki": _json_safe(pki),
        "arm": {"cluster": spec["name"], "resource_group": spec["resource_group"], "tenant": TENANT,
                "subscription": spec["subscription"]},
        "exec_faults": {},
        "read_keys": str(member_dir / READ_KEYS),
        "entra": None,
    }


def up(box, options: dict, timeout: float) -> dict:
    """A new fleet in ``box.dir`` (``options``: every ``up`` option, defaults applied)."""
    from .control import RESOURCE_GROUP, SUBSCRIPTION, TENANT, _entra_info, _json_safe, _node_names, _write_json
    from .processes.etcdproc import find_etcdctl
    from .pki import make_pki

    t0 = time.monotonic()
    find_etcdctl(options["etcdctl"])  # fail early, with the install hint
    specs = plan(options["clusters"], options["providers"], options["disconnected"])
    fleet = _Fleet(box)
    (box.dir / "logs").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(box.dir / "clusters", ignore_errors=True)
    azure_pki = make_pki(box.dir, [])  # the ARM and Entra certificates (its Kubernetes CA signs nothing used)
    entra_cfg = None
    pool = ThreadPoolExecutor(WORKERS)
    try:
        if options["entra"]:
            from .azure.entra.tenant import create
            entra_cfg = pool.submit(create, box.dir, tenant=TENANT, subscription=SUBSCRIPTION,
                                    resource_group=RESOURCE_GROUP, cluster=specs[0]["name"],
                                    enforce_pop=options["enforce_pop"])
        material = {}
        for spec in specs:
            member_dir = box.dir / "clusters" / spec["name"]
            nodes = _node_names(options["nodes"])
            material[spec["name"]] = (nodes, make_pki(member_dir, nodes))
        connected = [s for s in specs if s["connectivity"] == "Connected"]
        for s in specs:
            fleet.member(s["name"])  # created here, not in the worker threads
        started = dict(zip((s["name"] for s in connected),
                           pool.map(lambda s: fleet.start_member(s, material[s["name"]][1], material[s["name"]][0]),
                                    connected)))
        serve_clusters = []
        for spec in specs:
            nodes, pki = material[spec["name"]]
            local = base64.b64encode(os.urandom(32)).decode() \
                if spec["provider"] in ("aescbc", "aesgcm", "secretbox") else None
            serve_clusters.append(_serve_member(spec, box.dir / "clusters" / spec["name"], nodes, pki,
                                                started.get(spec["name"], {}), options, local))
        serve_cfg = {"fleet": True, "dir": str(box.dir), "pki": _json_safe(azure_pki),
                     "arm": {"tenant": TENANT, "subscription": SUBSCRIPTION, "subscriptions": subscriptions()},
                     "entra": entra_cfg.result() if entra_cfg is not None else None, "clusters": serve_clusters}
        _write_json(box.dir / "serve.json", serve_cfg)
        ready = box._start_server(timeout)
        ca_bundle = _write_bundle(box.dir, [material[s["name"]][1] for s in specs])
        entra_info = _entra_info(serve_cfg, ready, ca_bundle)
        entries = []
        for spec, scfg in zip(specs, serve_clusters):
            got = started.get(spec["name"], {})
            entries.append(fleet.write_member(spec, scfg, ready, got.get("etcd"), got.get("kms_socket"),
                                              material[spec["name"]][1], options, entra_info))
        info = _fleet_info(box.dir, options, ready, ca_bundle, dict(box._partial["pids"]), entra_info, entries,
                           azure_pki)
        _write_json(box.dir / "sandbox.json", info)
        fleet.ready_and_seed(specs, options["history"], timeout, resume=False)
        return _control().update_info(box.dir, up_seconds=round(time.monotonic() - t0, 2))
    except BaseException:
        pool.shutdown(wait=True)
        fleet.teardown()
        raise
    finally:
        pool.shutdown(wait=False)


def _write_bundle(directory: Path, pkis: list[dict]) -> Path:
    """DIR/pki/ca-bundle.pem: the ARM CA (which also signs the Entra emulator's certificate) and every cluster's
    Kubernetes CA."""
    bundle = directory / "pki" / "ca-bundle.pem"
    bundle.write_bytes((directory / "pki" / "arm-ca.crt").read_bytes()
                       + b"".join(Path(p["ca_cert"]).read_bytes() for p in pkis))
    return bundle


def _fleet_info(directory: Path, options: dict, ready: dict, ca_bundle: Path, pids: dict, entra_info, entries: list,
                azure_pki: dict) -> dict:
    from .control import KUBERNETES_VERSION, SUBSCRIPTION, TENANT, _json_safe
    from .azure.resourcegraph import API_VERSIONS
    arm_url = f"https://127.0.0.1:{ready['arm_port']}"
    subs = subscriptions()
    return {
        "dir": str(directory), "fleet": True,
        "options": {k: options[k] for k in ("clusters", "providers", "disconnected", "etcdctl", "nodes",
                                            "readyz_style", "history", "entra", "enforce_pop")},
        "providers": options["providers"], "etcdctl_version": options["etcdctl"],
        "readyz_style": options["readyz_style"], "kubernetes_version": KUBERNETES_VERSION,
        "arm": {"url": arm_url, "port": ready["arm_port"], "tenant": TENANT, "subscription": SUBSCRIPTION},
        "resource_graph": {"url": f"{arm_url}/providers/Microsoft.ResourceGraph/resources",
                           "api_versions": list(API_VERSIONS)},
        "subscriptions": [{"id": s["id"], "display_name": s["display_name"],
                           "restricted_identities_see_it": s["restricted"],
                           "clusters": [e["name"] for e in entries if e["subscription"] == s["id"]]} for s in subs],
        "ca_bundle": str(ca_bundle), "pids": pids, "entra": entra_info, "clusters": entries,
        "pki": _json_safe(azure_pki),
    }


# --- resume ------------------------------------------------------------------------------------------------


def resume(box, info: dict, asked: dict, timeout: float) -> dict:
    """Restart a stopped fleet on its data: every etcd on its data and ports, every KMS plugin on its keys, the
    server on serve.json with its former ports (when free); kubeconfigs rewritten, missing seeds written again."""
    from .control import _FLAGS, _entra_info, _pki_from_info, _write_json, read_info
    from .processes.etcdproc import find_etcdctl
    SandboxError = _control().SandboxError

    stored = info.get("options") or {}
    differ = []
    for k, v in asked.items():
        if v is None or k not in stored or v == stored[k] or (k == "history" and v is False):
            continue
        flag = {"clusters": "--clusters", "providers": "--providers",
                "disconnected": "--disconnected"}.get(k) or _FLAGS.get(k, k)
        shown = stored[k]
        if isinstance(shown, list):
            shown = ",".join(shown)
        elif isinstance(shown, dict):
            shown = ",".join(f"{n}:{s}" for n, s in shown.items()) or "(none)"
        differ.append(f"{flag} {shown}")
    if asked.get("provider") is not None or asked.get("broken_node"):
        differ.append("a fleet (no --provider or --broken-node)")
    if differ:
        raise SandboxError(f"{box.dir} holds a stopped fleet with {', '.join(differ)}: resume it without "
                           f"{'that option' if len(differ) == 1 else 'those options'}, or run 'python -m "
                           f"tests.sandbox down --dir {box.dir}' and remove it, or use another --dir")
    if not (box.dir / "serve.json").exists():
        raise SandboxError(f"{box.dir} holds a stopped fleet that cannot be resumed (no serve.json): run 'python -m "
                           f"tests.sandbox down --dir {box.dir}' and remove it, or use another --dir")
    find_etcdctl(info["etcdctl_version"])
    with contextlib.suppress(FileNotFoundError):
        (box.dir / "serve-ready.json").unlink()
    box.resumed = True
    box._partial = {"pids": {}, "kms_dir": None}
    fleet = _Fleet(box)
    t0 = time.monotonic()
    try:
        serve_cfg = json.loads((box.dir / "serve.json").read_text())
        options = {**stored}
        specs, minfos = [], {}
        for c in info["clusters"]:
            specs.append({k: c[k] for k in ("name", "resource_group", "subscription", "id", "provider",
                                            "connectivity", "tags")})
            minfos[c["name"]] = read_info(c["dir"])
            fleet.member(c["name"])
        connected = [s for s in specs if s["connectivity"] == "Connected"]

        def restart(spec):
            minfo = minfos[spec["name"]]
            e = minfo["etcd"]
            return fleet.start_member(spec, _pki_from_info(minfo), minfo["nodes"],
                                      {"client_port": e["port"], "peer_port": e["peer_port"]},
                                      Path(minfo["kms_state"]) if minfo.get("kms_state") else None)
        with ThreadPoolExecutor(WORKERS) as pool:
            started = dict(zip((s["name"] for s in connected), pool.map(restart, connected)))
        serve_cfg["ports"] = {"arm": info["arm"]["port"]}
        if info.get("entra"):
            serve_cfg["ports"].update(entra=info["entra"]["port"], msi=info["entra"]["msi_port"])
        for scfg in serve_cfg["clusters"]:
            minfo = minfos[scfg["name"]]
            got = started.get(scfg["name"])
            if got and got["kms_socket"]:
                scfg["kms"]["socket"] = str(got["kms_socket"])
            scfg["ports"] = {"apiserver": minfo["apiserver"]["port"],
                             "control": int(minfo["control"]["url"].rsplit(":", 1)[1]) if minfo.get("control") else 0}
        _write_json(box.dir / "serve.json", serve_cfg)
        ready = box._start_server(timeout)
        entra_info = _entra_info(serve_cfg, ready, info["ca_bundle"])
        entries = []
        for spec, scfg in zip(specs, serve_cfg["clusters"]):
            got = started.get(spec["name"], {})
            minfo = minfos[spec["name"]]
            entries.append(fleet.write_member(spec, scfg, ready, got.get("etcd"), got.get("kms_socket"),
                                              _pki_from_info(minfo), options, entra_info, previous=minfo))
        new = _fleet_info(box.dir, options, ready, Path(info["ca_bundle"]), dict(box._partial["pids"]), entra_info,
                          entries, info["pki"])
        _write_json(box.dir / "sandbox.json", new)
        fleet.ready_and_seed(specs, False, timeout, resume=True)
        return _control().update_info(box.dir, up_seconds=round(time.monotonic() - t0, 2))
    except BaseException as e:
        fleet.teardown()
        with contextlib.suppress(Exception):
            _mark_stopped(box.dir, info)
        if isinstance(e, KeyboardInterrupt):
            raise
        text = str(e) if isinstance(e, SandboxError) else f"{type(e).__name__}: {e}"
        raise SandboxError(f"the stopped fleet in {box.dir} did not resume: {text}\n(logs in {box.dir / 'logs'} and "
                           f"{box.dir / 'clusters'}/*/logs)") from e


# --- down ------------------------------------------------------------------------------------------------------


def down(box, info: dict) -> None:
    """Stop the server, then every cluster's KMS plugin and etcd (idempotent)."""
    from .control import Sandbox, read_info
    box._teardown({"pids": {"server": (info.get("pids") or {}).get("server")}})

    def stop(c):
        with contextlib.suppress(Exception):
            m = Sandbox(c["dir"])
            m._teardown(read_info(c["dir"]))
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(stop, info.get("clusters") or []))
    _mark_stopped(box.dir, info)


def _mark_stopped(directory: Path, info: dict) -> None:
    from .control import update_info
    for c in info.get("clusters") or []:
        with contextlib.suppress(Exception):
            minfo = _control().read_info(c["dir"])
            update_info(c["dir"], pids={k: None for k in (minfo.get("pids") or {})})
    update_info(directory, pids={k: None for k in (info.get("pids") or {})})
