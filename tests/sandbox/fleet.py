"""A fleet: many AKS-Arc-like clusters behind one ARM emulator (with Resource Graph) and Entra emulator.

    fleet = Fleet(dir)
    fleet.up(clusters=3, providers=["kms-v2", "kms-v1", "identity"], disconnected={"sandbox-3": "Offline"})
    fleet.info["clusters"]               # name, resource group, subscription, ARM id, provider, kubeconfig, ...
    fleet.cluster("sandbox-2").api(...)  # the Sandbox of one cluster: api, ctl, kms, etcdctl as usual
    fleet.down()                         # then fleet.up() resumes it

Clusters ``sandbox-1`` ... ``sandbox-N`` in subscription ``SUBSCRIPTION`` (every 4th in resource group ``edge-rg``
with the tag ``edge=true``, the others in ``sandbox-rg``; ``env=prod`` for odd, ``env=dev`` for even numbers;
``site=<n>``), plus ``other-1`` in ``other-rg`` of ``OTHER_SUBSCRIPTION``, which restricted identities (upn
``restricted*``) cannot see. Providers are given to the clusters in turn from ``providers`` (``other-1`` gets the
first). A cluster that is not ``Connected`` (``disconnected``: ``Offline`` by default, or ``Connecting``,
``Expired``, ``AgentNotInstalled``) has that ``connectivityStatus`` in ARM and Resource Graph, no processes, and an
API server port that refuses connections (its kubeconfig points there).

A :class:`Fleet` composes: each connected cluster is a single real-server sandbox (:class:`.control.Sandbox`, set
up by the same ``_up``/``_resume`` code) in ``DIR/clusters/<name>/``: its own certificates, etcd, KMS plugin, real
kube-apiserver, server process (token webhook, kubelet endpoint, control site), RBAC, Node and mirror pods. The
fleet's own server process (``DIR/serve.json`` with ``fleet``) serves only the ARM (with Resource Graph) and Entra
emulators and holds the disconnected clusters' refusing ports; ARM's ``listUserKubeconfig`` and
``listAdminKubeconfig`` of a cluster name that cluster's kube-apiserver (its port is chosen before the fleet's
server starts), and each cluster's token webhook checks the fleet's Entra tokens for its own ARM id. This module
imports :mod:`.control`; control does not import it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .control import (
    _FLAGS,
    DEFAULTS,
    PROVIDERS,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    TENANT,
    Sandbox,
    SandboxError,
    _binary_version,
    _check_options,
    _entra_info,
    _json_safe,
    _node_names,
    _pki_from_info,
    _port_free,
    _write_json,
    read_info,
    update_info,
)
from .processes.proc import free_port, is_alive, is_ours

MAIN_RG = "sandbox-rg"
EDGE_RG = "edge-rg"
OTHER_SUBSCRIPTION = "00000000-0000-0000-0000-00000000beef"
OTHER_RG = "other-rg"
OTHER_CLUSTER = "other-1"
CONNECTIVITY = ("Connected", "Connecting", "Offline", "Expired", "AgentNotInstalled")
MAX_CLUSTERS = 50
WORKERS = 8  # threads stopping clusters: enough to overlap waits
START_PARALLEL = 3  # clusters started at once: each kube-apiserver takes seconds of CPU to start, on 2 cores
MEMBER_TIMEOUT = 180.0  # a cluster's start (etcd, KMS plugin, kube-apiserver /readyz, RBAC, nodes, seeds)


def arm_id(sub: str, rg: str, name: str) -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Kubernetes/connectedClusters/{name}"


def parse_providers(value) -> list[str] | None:
    """``"kms-v2,kms-v1"`` or a list; None stays None."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [p.strip() for p in items if p and p.strip()]
    if not items:
        raise SandboxError("providers must name at least one provider")
    unknown = [p for p in items if p not in PROVIDERS]
    if unknown:
        raise SandboxError(f"unknown provider {unknown[0]!r} in providers (expected {', '.join(PROVIDERS)})")
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
            raise SandboxError(f"connectivity status {status!r} of {name} is not one ARM reports for a "
                               f"disconnected cluster (expected {', '.join(CONNECTIVITY[1:])})")
        out[name] = match
    return out


def plan(n: int, providers: list[str], disconnected: dict) -> list[dict]:
    """The clusters of a fleet of ``n`` (and ``other-1``), in order."""
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
        raise SandboxError(f"disconnected: no cluster {unknown[0]!r} in this fleet (clusters sandbox-1 ... "
                           f"sandbox-{n} and {OTHER_CLUSTER})")
    for s in specs:
        s["connectivity"] = disconnected.get(s["name"], "Connected")
        s["id"] = arm_id(s["subscription"], s["resource_group"], s["name"])
    return specs


def subscriptions() -> list[dict]:
    return [{"id": SUBSCRIPTION, "display_name": "Sandbox Subscription", "restricted": True},
            {"id": OTHER_SUBSCRIPTION, "display_name": "Sandbox Other Subscription", "restricted": False}]


def check_options(asked: dict) -> None:
    """SandboxError for fleet options that do not go together (None: not given)."""
    n = asked.get("clusters")
    if n is None:
        given = [f for k, f in (("providers", "--providers"), ("disconnected", "--disconnected")) if asked.get(k)]
        if given:
            raise SandboxError(f"{given[0]} needs --clusters N (a fleet)")
        raise SandboxError("a new fleet needs --clusters N (clusters=N)")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CLUSTERS:
        raise SandboxError(f"clusters must be a number from 1 to {MAX_CLUSTERS}, not {n!r}")
    if asked.get("provider") is not None:
        raise SandboxError("--provider is for one cluster: give a fleet its providers with --providers "
                           "kms-v2,kms-v1,... (assigned to the clusters in turn)")
    if asked.get("apiserver") == "emulator":
        raise SandboxError("--apiserver emulator is for one cluster: a fleet's clusters run the real kube-apiserver")
    for k, flag in (("disabled_metrics", "--disabled-metrics"), ("without_metrics", "--without-metrics")):
        if asked.get(k):
            raise SandboxError(f"{flag} is for one cluster, not a fleet")
    if (asked.get("apiservers") or 1) > 1:
        raise SandboxError("--apiservers is for one cluster, not a fleet")
    if asked.get("broken_node"):
        raise SandboxError("--broken-node is for one cluster, not a fleet (break a node of one cluster with its ctl "
                           "exec_fault)")


def all_pids(directory: Path, info: dict) -> list[int]:
    """Every recorded pid of a fleet: the server's and each cluster's (their sandbox.json is kept current by kms
    start/stop and ctl etcd)."""
    pids = [p for p in (info.get("pids") or {}).values() if p]
    for c in info.get("clusters") or []:
        with contextlib.suppress(Exception):
            pids += [p for p in (read_info(c["dir"]).get("pids") or {}).values() if p]
    return pids


def running(directory: Path, info: dict) -> bool:
    return any(is_alive(p) and is_ours(p, str(directory)) for p in all_pids(directory, info))


# --- the fleet ---------------------------------------------------------------------------------------------------


class Fleet:
    """A fleet rooted at ``directory`` (see the module docstring): ``up``, ``down``, ``cluster``, ``info``."""

    def __init__(self, directory):
        self.dir = Path(directory).resolve()
        self.resumed = False  # the last up() resumed a stopped fleet
        self._server = Sandbox(self.dir)  # the fleet's server process (ARM, Resource Graph, Entra) is run by it
        self._server._partial = {"pids": {}, "kms_dir": None}
        self.members: dict[str, Sandbox] = {}  # name -> the Sandbox of each connected cluster started by this up

    @property
    def info(self) -> dict:
        return read_info(self.dir)

    def cluster(self, name: str) -> Sandbox:
        """One cluster of the fleet, as a Sandbox (``api``, ``ctl``, ``kms``, ``etcdctl``, ``info``, kubeconfigs)."""
        info = self.info
        if not info.get("fleet"):
            raise SandboxError(f"{self.dir} holds one cluster, not a fleet (up --clusters N)")
        for c in info.get("clusters") or []:
            if c["name"] == name:
                return Sandbox(c["dir"])
        raise SandboxError(f"no cluster {name!r} in the fleet in {self.dir} (clusters: "
                           f"{', '.join(c['name'] for c in info['clusters'])})")

    # -- up -----------------------------------------------------------------------------------------------------

    def up(self, clusters: int | None = None, providers=None, disconnected=None, *, provider: str | None = None,
           etcdctl: str | None = None, nodes: int | None = None, broken_node: bool | None = None,
           readyz_style: str | None = None, history: bool | None = None, entra: bool | None = None,
           enforce_pop: bool | None = None, apiserver: str | None = None, disabled_metrics=None,
           without_metrics=None, apiservers: int | None = None, timeout: float = 60.0) -> dict:
        """Start a fleet of ``clusters`` (a new directory) or resume the stopped fleet in it; returns sandbox.json.
        ``providers`` (a list or ``"kms-v2,identity"``) are given to the clusters in turn; ``disconnected`` (names,
        ``"NAME[:STATUS],..."`` or a dict name -> status) are not connected; the other options are
        :meth:`.control.Sandbox.up`'s and apply to every cluster (those for one cluster only are refused)."""
        from .control import parse_metric_names
        asked = {"provider": provider, "etcdctl": etcdctl, "nodes": nodes, "broken_node": broken_node,
                 "readyz_style": readyz_style, "history": history, "entra": entra, "enforce_pop": enforce_pop,
                 "apiserver": apiserver, "disabled_metrics": parse_metric_names(disabled_metrics),
                 "without_metrics": parse_metric_names(without_metrics), "apiservers": apiservers}
        _check_options(asked)
        fleet_asked = {"clusters": clusters, "providers": parse_providers(providers),
                       "disconnected": parse_disconnected(disconnected)}
        self.resumed = False
        if (self.dir / "sandbox.json").exists():
            info = read_info(self.dir)
            if info.get("member_of"):
                raise SandboxError(f"{self.dir} is a cluster of the fleet in {info['member_of']}: run up and down on "
                                   "the fleet's directory")
            if running(self.dir, info):
                raise SandboxError(f"a sandbox is already running in {self.dir}: run 'python -m tests.sandbox "
                                   f"down --dir {self.dir}' first, or use another --dir")
            if not info.get("fleet"):
                raise SandboxError(f"{self.dir} holds a stopped single-cluster sandbox: resume it without --clusters, "
                                   f"--providers or --disconnected, or run 'python -m tests.sandbox down --dir "
                                   f"{self.dir}' and remove it, or use another --dir")
            return self._resume(info, {**asked, **fleet_asked}, timeout)
        check_options({**asked, **fleet_asked})
        options = {k: DEFAULTS[k] if v is None else v for k, v in asked.items()}
        if enforce_pop is not None and not options["entra"]:
            raise SandboxError("enforce_pop (--enforce-pop/--no-enforce-pop) needs the Entra emulator (entra=True, "
                               "--entra)")
        options.update(apiserver="real", clusters=clusters,
                       providers=fleet_asked["providers"] or [DEFAULTS["provider"]],
                       disconnected=fleet_asked["disconnected"] or {})
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in ("sandbox.json", "serve-ready.json", "serve.json"):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / stale).unlink()
        try:
            return self._up(options, timeout)
        except BaseException as e:
            self._teardown()
            if isinstance(e, (SandboxError, KeyboardInterrupt)):
                raise
            raise SandboxError(f"the fleet did not come up: {type(e).__name__}: {e}\n(logs in {self.dir / 'logs'} "
                               f"and {self.dir / 'clusters'}/*/logs)") from e

    def _member(self, name: str) -> Sandbox:
        m = self.members.get(name)
        if m is None:
            m = self.members[name] = Sandbox(self.dir / "clusters" / name)
            m._partial = {"pids": {}, "kms_dir": None}
        return m

    def _teardown(self) -> None:
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(lambda m: m._teardown(m._partial), list(self.members.values())))
        self._server._teardown(self._server._partial)

    def _binaries(self) -> tuple[str, str]:
        from .apiserver import kubeapiserver
        try:
            folder = str(kubeapiserver.binaries(()))
        except kubeapiserver.BinaryMissing as e:
            raise SandboxError(str(e)) from None
        return folder, _binary_version(folder)

    def _up(self, options: dict, timeout: float) -> dict:
        from .processes.etcdproc import find_etcdctl
        from .pki import make_pki

        t0 = time.monotonic()
        find_etcdctl(options["etcdctl"])  # fail early, with the install hint
        _, version = self._binaries()
        specs = plan(options["clusters"], options["providers"], options["disconnected"])
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.dir / "clusters", ignore_errors=True)
        azure_pki = make_pki(self.dir, [])  # the ARM and Entra certificates (its Kubernetes CA signs nothing used)
        entra_cfg = None
        if options["entra"]:
            from .azure.entra.tenant import create
            entra_cfg = create(self.dir, tenant=TENANT, subscription=SUBSCRIPTION, resource_group=RESOURCE_GROUP,
                               cluster=specs[0]["name"], enforce_pop=options["enforce_pop"])
        material = {}
        for spec in specs:
            nodes = _node_names(options["nodes"])
            port = free_port() if spec["connectivity"] == "Connected" else None
            material[spec["name"]] = (nodes, make_pki(self.dir / "clusters" / spec["name"], nodes), port)
        serve_cfg = {"fleet": True, "dir": str(self.dir), "pki": _json_safe(azure_pki),
                     "arm": {"tenant": TENANT, "subscription": SUBSCRIPTION, "subscriptions": subscriptions()},
                     "entra": entra_cfg, "clusters": [_serve_record(s, material[s["name"]][1], material[s["name"]][2])
                                                      for s in specs]}
        _write_json(self.dir / "serve.json", serve_cfg)
        ready = self._server._start_server(timeout)
        ca_bundle = _write_bundle(self.dir, [material[s["name"]][1] for s in specs])
        entra_info = _entra_info(serve_cfg, ready, ca_bundle)
        fleet_ports = _fleet_ports(ready)
        for spec in specs:
            _, pki, _ = material[spec["name"]]
            _member_bundle(self.dir, pki)
        connected = [s for s in specs if s["connectivity"] == "Connected"]
        for spec in connected:
            nodes, pki, port = material[spec["name"]]
            m = self._member(spec["name"])
            m.member = {"name": spec["name"], "resource_group": spec["resource_group"],
                        "subscription": spec["subscription"], "arm_id": spec["id"], "port": port, "nodes": nodes,
                        "pki": pki, "entra": entra_cfg, "fleet_ports": fleet_ports, "member_of": str(self.dir),
                        "cluster": _cluster_record(spec)}

        def start(spec):
            m = self.members[spec["name"]]
            m._up(spec["provider"], options["etcdctl"], options["nodes"], False, options["readyz_style"],
                  options["history"], max(timeout, MEMBER_TIMEOUT),
                  entra=options["enforce_pop"] if options["entra"] else None, apiserver="real")
        _run_members(start, connected)
        for spec in specs:
            if spec["connectivity"] != "Connected":
                nodes, pki, _ = material[spec["name"]]
                _write_disconnected(self.dir, spec, ready, pki, nodes, options, entra_info)
        info = _fleet_info(self.dir, options, ready, ca_bundle, dict(self._server._partial["pids"]), entra_info,
                           [_entry(read_info(self.dir / "clusters" / s["name"])) for s in specs], azure_pki, version)
        _write_json(self.dir / "sandbox.json", info)
        return update_info(self.dir, up_seconds=round(time.monotonic() - t0, 2))

    # -- resume -------------------------------------------------------------------------------------------------

    def _resume(self, info: dict, asked: dict, timeout: float) -> dict:
        """Restart a stopped fleet on its data: the server process (ARM, Entra) on its former ports when free, then
        each connected cluster as a stopped single sandbox resumes (etcd, KMS plugin, kube-apiserver on its port
        when free, missing seeds written again)."""
        from .processes.etcdproc import find_etcdctl
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
            raise SandboxError(f"{self.dir} holds a stopped fleet with {', '.join(differ)}: resume it without "
                               f"{'that option' if len(differ) == 1 else 'those options'}, or run 'python -m "
                               f"tests.sandbox down --dir {self.dir}' and remove it, or use another --dir")
        if not (self.dir / "serve.json").exists():
            raise SandboxError(f"{self.dir} holds a stopped fleet that cannot be resumed (no serve.json): run 'python "
                               f"-m tests.sandbox down --dir {self.dir}' and remove it, or use another --dir")
        find_etcdctl(info["etcdctl_version"])
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "serve-ready.json").unlink()
        self.resumed = True
        t0 = time.monotonic()
        try:
            _, version = self._binaries()
            serve_cfg = json.loads((self.dir / "serve.json").read_text())
            minfos = {c["name"]: read_info(c["dir"]) for c in info["clusters"]}
            for rec in serve_cfg["clusters"]:  # a cluster's kube-apiserver keeps its port when free
                port = minfos[rec["name"]]["apiserver"]["port"]
                if rec["connectivity"] == "Connected" and not _port_free(port):
                    port = free_port()
                rec["apiserver_port"] = port
            serve_cfg["ports"] = {"arm": info["arm"]["port"]}
            if info.get("entra"):
                serve_cfg["ports"].update(entra=info["entra"]["port"], msi=info["entra"]["msi_port"])
            _write_json(self.dir / "serve.json", serve_cfg)
            ready = self._server._start_server(timeout)
            entra_info = _entra_info(serve_cfg, ready, info["ca_bundle"])
            fleet_ports = _fleet_ports(ready)
            connected = [rec for rec in serve_cfg["clusters"] if rec["connectivity"] == "Connected"]
            for rec in connected:
                m = self._member(rec["name"])
                mcfg_path = m.dir / "serve.json"
                mcfg = json.loads(mcfg_path.read_text())
                mcfg["fleet_ports"] = fleet_ports
                mcfg["real_apiserver"]["port"] = rec["apiserver_port"]
                mcfg["real_apiserver"]["server_ports"] = [rec["apiserver_port"]]
                _write_json(mcfg_path, mcfg)

            def restart(rec):
                m = self.members[rec["name"]]
                m._resume(minfos[rec["name"]], {}, max(timeout, MEMBER_TIMEOUT))
            _run_members(restart, connected)
            options = dict(info["options"])
            for rec in serve_cfg["clusters"]:
                if rec["connectivity"] != "Connected":
                    minfo = minfos[rec["name"]]
                    _write_disconnected(self.dir, {**minfo["cluster"], "provider": minfo["provider"]}, ready,
                                        _pki_from_info(minfo), minfo["nodes"], options, entra_info)
            new = _fleet_info(self.dir, options, ready, Path(info["ca_bundle"]), dict(self._server._partial["pids"]),
                              entra_info, [_entry(read_info(c["dir"])) for c in info["clusters"]], info["pki"],
                              version)
            _write_json(self.dir / "sandbox.json", new)
            return update_info(self.dir, up_seconds=round(time.monotonic() - t0, 2))
        except BaseException as e:
            self._teardown()
            with contextlib.suppress(Exception):
                _mark_stopped(self.dir, info)
            if isinstance(e, KeyboardInterrupt):
                raise
            text = str(e) if isinstance(e, SandboxError) else f"{type(e).__name__}: {e}"
            raise SandboxError(f"the stopped fleet in {self.dir} did not resume: {text}\n(logs in {self.dir / 'logs'} "
                               f"and {self.dir / 'clusters'}/*/logs)") from e

    # -- down ---------------------------------------------------------------------------------------------------

    def down(self) -> None:
        """Stop every cluster's processes, then the server (idempotent); keeps the directory."""
        if not (self.dir / "sandbox.json").exists():
            self._teardown()
            return
        info = read_info(self.dir)
        if info.get("member_of"):
            raise SandboxError(f"{self.dir} is a cluster of the fleet in {info['member_of']}: run 'python -m "
                               f"tests.sandbox down --dir {info['member_of']}'")
        if not info.get("fleet"):
            raise SandboxError(f"{self.dir} holds one cluster, not a fleet: stop it with Sandbox(dir).down()")

        def stop(c):
            with contextlib.suppress(Exception):
                Sandbox(c["dir"])._teardown(read_info(c["dir"]))
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(stop, info.get("clusters") or []))
        self._server._teardown({"pids": {"server": (info.get("pids") or {}).get("server")}})
        _mark_stopped(self.dir, info)


def _run_members(fn, specs: list[dict]) -> None:
    """``fn(spec)`` for each cluster, START_PARALLEL at a time; the first failure (after all have finished) is
    raised, naming its cluster."""
    errors = []

    def one(spec):
        try:
            fn(spec)
        except BaseException as e:  # reported below, with the cluster's name
            errors.append((spec["name"], e))
    with ThreadPoolExecutor(START_PARALLEL) as pool:
        list(pool.map(one, specs))
    if errors:
        name, e = errors[0]
        if isinstance(e, KeyboardInterrupt):
            raise e
        raise SandboxError(f"cluster {name}: {e if isinstance(e, SandboxError) else f'{type(e).__name__}: {e}'}") \
            from e


def _cluster_record(spec: dict) -> dict:
    return {k: spec[k] for k in ("name", "resource_group", "subscription", "id", "connectivity", "tags")}


def _serve_record(spec: dict, pki: dict, port: int | None) -> dict:
    """A cluster's entry in the fleet's serve.json: its ARM record (the port its kube-apiserver will listen on)."""
    return {"name": spec["name"], "resource_group": spec["resource_group"], "subscription": spec["subscription"],
            "arm_id": spec["id"], "connectivity": spec["connectivity"], "tags": spec["tags"],
            "provider": spec["provider"], "pki": _json_safe(pki), "apiserver_port": port}


def _fleet_ports(ready: dict) -> dict:
    """What a cluster's server process needs of the fleet's: the ARM and Entra ports."""
    return {"arm_port": ready["arm_port"], "entra_port": ready.get("entra_port"), "msi_port": ready.get("msi_port")}


def _member_bundle(directory: Path, pki: dict) -> None:
    """A cluster's ``pki/ca-bundle.pem``: its Kubernetes CA and the fleet's ARM CA (which signs the Entra
    emulator's certificate too)."""
    Path(pki["ca_bundle"]).write_bytes(Path(pki["ca_cert"]).read_bytes()
                                       + (directory / "pki" / "arm-ca.crt").read_bytes())


def _write_disconnected(directory: Path, spec: dict, ready: dict, pki: dict, nodes: list[str], options: dict,
                        entra_info) -> None:
    """sandbox.json and kubeconfigs of a cluster that is not connected: no processes, its API server port refuses."""
    m = Sandbox(directory / "clusters" / spec["name"])
    port = ready["clusters"][spec["name"]]["apiserver_port"]
    api_url = m._write_kubeconfigs({"apiserver_port": port}, pki)
    arm_port = ready["arm_port"]
    _write_json(m.dir / "sandbox.json", {
        "dir": str(m.dir), "member_of": str(directory), "cluster": _cluster_record(spec),
        "provider": spec["provider"], "etcdctl_version": options["etcdctl"], "readyz_style": options["readyz_style"],
        "apiserver_mode": "real", "apiserver": {"url": api_url, "port": port},
        "arm": {"url": f"https://127.0.0.1:{arm_port}", "port": arm_port, "subscription": spec["subscription"],
                "resource_group": spec["resource_group"], "cluster": spec["name"], "tenant": TENANT},
        "control": None, "etcd": None, "ca_bundle": str(pki["ca_bundle"]),
        "kubeconfig": m.kubeconfig, "kubeconfig_restricted": m.kubeconfig_restricted, "etcd_env": None,
        "kms_socket": None, "kms_state": None, "kms_dir": None, "pids": {}, "kube_apiservers": [],
        "nodes": nodes, "etcd_pods": sorted(f"etcd-{n}" for n in nodes), "broken_pods": [], "pki": _json_safe(pki),
        "seeded": [], "history": None, "entra": entra_info})


def _entry(minfo: dict) -> dict:
    """A cluster's entry in the fleet's sandbox.json ``clusters``, from its own sandbox.json."""
    c = minfo["cluster"]
    return {"name": c["name"], "resource_group": c["resource_group"], "subscription": c["subscription"],
            "id": c["id"], "provider": minfo["provider"], "connectivity": c["connectivity"], "tags": c["tags"],
            "kubeconfig": minfo["kubeconfig"], "kubeconfig_restricted": minfo["kubeconfig_restricted"],
            "dir": minfo["dir"], "apiserver_url": minfo["apiserver"]["url"],
            "control_url": (minfo.get("control") or {}).get("url"),
            "etcd_endpoint": (minfo.get("etcd") or {}).get("endpoint"), "etcd_env": minfo.get("etcd_env"),
            "kms_socket": minfo.get("kms_socket"), "etcd_pods": minfo["etcd_pods"]}


def _write_bundle(directory: Path, pkis: list[dict]) -> Path:
    """DIR/pki/ca-bundle.pem: the ARM CA (which also signs the Entra emulator's certificate) and every cluster's
    Kubernetes CA."""
    bundle = directory / "pki" / "ca-bundle.pem"
    bundle.write_bytes((directory / "pki" / "arm-ca.crt").read_bytes()
                       + b"".join(Path(p["ca_cert"]).read_bytes() for p in pkis))
    return bundle


def _fleet_info(directory: Path, options: dict, ready: dict, ca_bundle: Path, pids: dict, entra_info, entries: list,
                azure_pki: dict, version: str) -> dict:
    from .azure.resourcegraph import API_VERSIONS
    arm_url = f"https://127.0.0.1:{ready['arm_port']}"
    subs = subscriptions()
    return {
        "dir": str(directory), "fleet": True, "apiserver_mode": "real",
        "options": {k: options[k] for k in ("clusters", "providers", "disconnected", "etcdctl", "nodes",
                                            "readyz_style", "history", "entra", "enforce_pop")},
        "providers": options["providers"], "etcdctl_version": options["etcdctl"],
        "readyz_style": options["readyz_style"], "kubernetes_version": version,
        "arm": {"url": arm_url, "port": ready["arm_port"], "tenant": TENANT, "subscription": SUBSCRIPTION},
        "resource_graph": {"url": f"{arm_url}/providers/Microsoft.ResourceGraph/resources",
                           "api_versions": list(API_VERSIONS)},
        "subscriptions": [{"id": s["id"], "display_name": s["display_name"],
                           "restricted_identities_see_it": s["restricted"],
                           "clusters": [e["name"] for e in entries if e["subscription"] == s["id"]]} for s in subs],
        "ca_bundle": str(ca_bundle), "pids": pids, "entra": entra_info, "clusters": entries,
        "pki": _json_safe(azure_pki),
    }


def _mark_stopped(directory: Path, info: dict) -> None:
    for c in info.get("clusters") or []:
        with contextlib.suppress(Exception):
            minfo = read_info(c["dir"])
            update_info(c["dir"], pids={k: None for k in (minfo.get("pids") or {})})
    update_info(directory, pids={k: None for k in (info.get("pids") or {})})
