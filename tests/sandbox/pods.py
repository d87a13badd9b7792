"""The cluster's static objects and pods/exec: the nodes, kube-system's pods (a kubeadm-like etcd and
kube-apiserver mirror pod per control-plane node, CoreDNS), listing and getting them, and exec: routed to
:mod:`.execws` (WebSocket, and from there SPDY/3.1 to :mod:`.execspdy`), the in-pod argv mapped onto the host
(the real etcd binaries, the node's pki directory, the sandbox's etcd port), distroless (no shell).
"""

from __future__ import annotations

import random
import re
import secrets as pysecrets

from aiohttp import web

from .apiserver import execspdy
from . import execws, kube
from .auth import deny
from .kube import SelectorError

POD_ETCD_PKI = "/etc/kubernetes/pki/etcd/"
POD_FIELDS = {"metadata.name": lambda o: o["metadata"]["name"],
              "metadata.namespace": lambda o: o["metadata"]["namespace"],
              "spec.nodeName": lambda o: o["spec"].get("nodeName", ""),
              "status.phase": lambda o: o["status"].get("phase", "")}
NODE_COLUMNS = [kube.SECRET_COLUMNS[0], ("Status", "string", "", "The status of the node", 0),
                ("Roles", "string", "", "The roles of the node", 0), kube.SECRET_COLUMNS[3],
                ("Version", "string", "", "Kubelet Version reported by the node.", 0)]


# --- pods and pods/exec -----------------------------------------------------------------------------------


async def list_pods(server, request):
    ns = request.match_info.get("ns")
    denied = deny(request, "list", "pods", ns)
    if denied:
        return denied
    try:
        labels = kube.parse_label_selector(request.query.get("labelSelector"))
        fields = kube.parse_field_selector(request.query.get("fieldSelector"), POD_FIELDS)
    except SelectorError as e:
        return kube.bad_request(str(e))
    items = [p for p in server.pods if (ns is None or p["metadata"]["namespace"] == ns)
             and kube.labels_match(labels, p["metadata"].get("labels"))
             and kube.fields_match(fields, p)]
    return kube.render_list(request, items, "PodList", kube.pod_row, kube.POD_COLUMNS, "1")


def find_pod(pods: list[dict], ns: str, name: str) -> dict | None:
    for p in pods:
        if p["metadata"]["namespace"] == ns and p["metadata"]["name"] == name:
            return p
    return None


async def get_pod(server, request):
    ns, name = request.match_info["ns"], request.match_info["name"]
    denied = deny(request, "get", "pods", ns, name)
    if denied:
        return denied
    pod = find_pod(server.pods, ns, name)
    if pod is None:
        return kube.not_found("pods", name)
    return kube.render_one(request, pod, "Pod", kube.pod_row, kube.POD_COLUMNS)


async def handle_exec(server, request: web.Request) -> web.StreamResponse:
    """``pods/exec`` (GET or POST): the checks every transport shares (:func:`.execws.check_request`), then the
    stream protocol the client asked for, WebSocket (:mod:`.execws`) or SPDY/3.1 (:mod:`.execspdy`)."""
    checked = execws.check_request(server, request)
    if isinstance(checked, web.StreamResponse):
        return checked
    upgrade = request.headers.get("Upgrade", "").lower()
    if upgrade.startswith("spdy/"):
        return await execspdy.handle(server, request, checked)
    if upgrade != "websocket":
        return kube.bad_request("Upgrade request required")
    return await execws.handle(server, request, checked)


def map_exec(server, pod: dict, argv: list[str]) -> tuple[list[str] | None, dict]:
    """Map an argv inside the etcd container onto the host: the binary, the node's pki dir, the client URL.
    Returns (None, env) when argv[0] does not exist in the (distroless) image."""
    node = pod["spec"]["nodeName"]
    pki = str(server.dir / "nodes" / node / "pki" / "etcd") + "/"
    exe = argv[0]
    base = exe[len("/usr/local/bin/"):] if exe.startswith("/usr/local/bin/") else exe
    binaries = {"etcdctl": server.etcdctl, "etcd": server.etcd_bin}
    if server.cfg.get("etcdctl_version", "3.5") != "3.4":
        binaries["etcdutl"] = server.etcdutl_bin  # the 3.4 image has no etcdutl
    if pod["metadata"].get("labels", {}).get("component") != "etcd" or base not in binaries or (
            "/" in exe and not exe.startswith("/usr/local/bin/")):
        return None, {}
    mapped = [binaries[base]]
    endpoint_flag = False
    for arg in argv[1:]:
        if arg.startswith("--endpoints"):
            endpoint_flag = True
        arg = arg.replace(POD_ETCD_PKI, pki)
        if server.exec_key_prefix and arg.startswith("/registry/"):
            arg = server.exec_key_prefix + arg[len("/registry/"):]
        arg = re.sub(r"(?<![\w.])(127\.0\.0\.1|localhost):2379\b", rf"\g<1>:{server.etcd_port}", arg)
        mapped.append(arg)
    env = {"PATH": "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "ETCDCTL_API": "3",
           "HOSTNAME": node}
    if not endpoint_flag:
        env["ETCDCTL_ENDPOINTS"] = f"127.0.0.1:{server.etcd_port}"
    return mapped, env


# --- nodes ------------------------------------------------------------------------------------------------


async def list_nodes(server, request):
    denied = deny(request, "list", "nodes", None)
    if denied:
        return denied
    return kube.render_list(request, server.node_objs, "NodeList", _node_row, NODE_COLUMNS, "1")


async def get_node(server, request):
    name = request.match_info["name"]
    denied = deny(request, "get", "nodes", None, name)
    if denied:
        return denied
    for n in server.node_objs:
        if n["metadata"]["name"] == name:
            return kube.render_one(request, n, "Node", _node_row, NODE_COLUMNS)
    return kube.not_found("nodes", name)


def _node_row(node: dict) -> tuple:
    return ([node["metadata"]["name"], "Ready", "control-plane",
             kube.human_age(kube.parse_ts(node["metadata"]["creationTimestamp"])),
             node["status"]["nodeInfo"]["kubeletVersion"]], node)


# --- the static objects -----------------------------------------------------------------------------------


def node_ip(i: int) -> str:
    return f"192.0.2.{10 + i}"  # TEST-NET-1: only ever printed, never dialled


def build_node(name: str, i: int, version: str, started: float) -> dict:
    return {
        "metadata": {"name": name, "uid": kube.stable_uid("node:" + name), "resourceVersion": "1",
                     "creationTimestamp": kube.now_rfc3339(started - 86400),
                     "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                "node-role.kubernetes.io/control-plane": "", "kubernetes.io/arch": "amd64"}},
        "spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]},
        "status": {"addresses": [{"type": "InternalIP", "address": node_ip(i)}, {"type": "Hostname", "address": name}],
                   "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                   "message": "kubelet is posting ready status"}],
                   # Every field a kubelet reports (the Python client >= 35 rejects a NodeSystemInfo without them).
                   "nodeInfo": {"machineID": kube.stable_uid("machine:" + name).replace("-", ""),
                                "systemUUID": kube.stable_uid("system:" + name).upper(),
                                "bootID": kube.stable_uid("boot:" + name), "kernelVersion": "5.15.173.1-1.cm2",
                                "osImage": "CBL-Mariner/Linux", "containerRuntimeVersion": "containerd://1.7.20",
                                "kubeletVersion": version, "kubeProxyVersion": version,
                                "operatingSystem": "linux", "architecture": "amd64"}},
    }


def _container_status(name: str, image: str, started_at: str) -> dict:
    return {"name": name, "state": {"running": {"startedAt": started_at}}, "ready": True, "restartCount": 0,
            "image": image, "imageID": image.split(":")[0] + "@sha256:" + pysecrets.token_hex(32),
            "containerID": "containerd://" + pysecrets.token_hex(32), "started": True}


def _pod(name: str, node: str, i: int, labels: dict, annotations: dict, containers: list, started: float,
         host_network: bool = True, owner: dict | None = None) -> dict:
    ts = kube.now_rfc3339(started - 86000)
    ip = node_ip(i) if host_network else f"198.51.100.{20 + i}"
    meta = {"name": name, "namespace": "kube-system", "uid": kube.stable_uid("pod:" + name),
            "resourceVersion": str(400 + i),
            "creationTimestamp": ts, "labels": labels, "annotations": annotations,
            "ownerReferences": [owner or {"apiVersion": "v1", "kind": "Node", "name": node,
                                          "uid": kube.stable_uid("node:" + node), "controller": True}]}
    return {
        "metadata": meta,
        "spec": {"containers": containers, "nodeName": node, "hostNetwork": host_network,
                 "priorityClassName": "system-node-critical" if host_network else "system-cluster-critical",
                 "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
                 "tolerations": [{"operator": "Exists", "effect": "NoExecute"}], "enableServiceLinks": True},
        "status": {"phase": "Running", "conditions": [
            {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": ts}
            for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")],
            "hostIP": node_ip(i), "hostIPs": [{"ip": node_ip(i)}], "podIP": ip, "podIPs": [{"ip": ip}],
            "startTime": ts, "qosClass": "Burstable",
            "containerStatuses": [_container_status(c["name"], c["image"], ts) for c in containers]},
    }


def build_pods(nodes: list[str], etcdctl_version: str, started: float) -> list[dict]:
    """kubeadm-like static (mirror) pods per control-plane node, plus CoreDNS: what ``kubectl get pods -n
    kube-system`` shows on an AKS Arc control plane."""
    etcd_image = "registry.k8s.io/etcd:" + ("3.4.13-0" if etcdctl_version == "3.4" else "3.5.1-0")
    pods = []
    for i, node in enumerate(nodes):
        ip = node_ip(i)
        etcd_cmd = ["etcd", f"--advertise-client-urls=https://{ip}:2379",
                    "--cert-file=/etc/kubernetes/pki/etcd/server.crt",
                    "--client-cert-auth=true", "--data-dir=/var/lib/etcd", "--experimental-initial-corrupt-check=true",
                    f"--initial-advertise-peer-urls=https://{ip}:2380",
                    f"--initial-cluster={node}=https://{ip}:2380", "--key-file=/etc/kubernetes/pki/etcd/server.key",
                    f"--listen-client-urls=https://127.0.0.1:2379,https://{ip}:2379",
                    "--listen-metrics-urls=http://127.0.0.1:2381", f"--listen-peer-urls=https://{ip}:2380",
                    f"--name={node}", "--peer-cert-file=/etc/kubernetes/pki/etcd/peer.crt",
                    "--peer-client-cert-auth=true", "--peer-key-file=/etc/kubernetes/pki/etcd/peer.key",
                    "--peer-trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt", "--snapshot-count=10000",
                    "--trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt"]
        etcd = {"name": "etcd", "image": etcd_image, "imagePullPolicy": "IfNotPresent", "command": etcd_cmd,
                "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}},
                "volumeMounts": [{"name": "etcd-data", "mountPath": "/var/lib/etcd"},
                                 {"name": "etcd-certs", "mountPath": "/etc/kubernetes/pki/etcd"}],
                "livenessProbe": {"httpGet": {"host": "127.0.0.1", "path": "/health?exclude=NOSPACE&serializable=true",
                                              "port": 2381, "scheme": "HTTP"}, "failureThreshold": 8}}
        annotations = {"kubeadm.kubernetes.io/etcd.advertise-client-urls": f"https://{ip}:2379",
                       "kubernetes.io/config.hash": pysecrets.token_hex(16),
                       "kubernetes.io/config.mirror": pysecrets.token_hex(16),
                       "kubernetes.io/config.seen": kube.now_rfc3339(started - 86000),
                       "kubernetes.io/config.source": "file"}
        pod = _pod(f"etcd-{node}", node, i, {"component": "etcd", "tier": "control-plane"}, annotations, [etcd],
                   started)
        pod["spec"]["volumes"] = [
            {"name": "etcd-certs", "hostPath": {"path": "/etc/kubernetes/pki/etcd", "type": "DirectoryOrCreate"}},
            {"name": "etcd-data", "hostPath": {"path": "/var/lib/etcd", "type": "DirectoryOrCreate"}}]
        pods.append(pod)
        api = {"name": "kube-apiserver", "image": "registry.k8s.io/kube-apiserver:v1.30.4",
               "command": ["kube-apiserver", f"--advertise-address={ip}", "--encryption-provider-config="
                           "/etc/kubernetes/encryption-config.yaml", "--etcd-servers=https://127.0.0.1:2379"]}
        pods.append(_pod(f"kube-apiserver-{node}", node, i, {"component": "kube-apiserver", "tier": "control-plane"},
                         {"kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint": f"{ip}:6443",
                          "kubernetes.io/config.source": "file"}, [api], started))
    rs = "coredns-7db6d8ff4d"
    for j in range(2):
        name = f"{rs}-" + "".join(random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
        owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": kube.stable_uid("rs:" + rs),
                 "controller": True, "blockOwnerDeletion": True}
        c = {"name": "coredns", "image": "registry.k8s.io/coredns/coredns:v1.11.1", "args": ["-conf",
                                                                                          "/etc/coredns/Corefile"]}
        pods.append(_pod(name, nodes[j % len(nodes)], j, {"k8s-app": "kube-dns", "pod-template-hash": "7db6d8ff4d"},
                         {}, [c], started, host_network=False, owner=owner))
    pods.sort(key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"]))
    return pods


def etcd_pod_names(pods: list[dict]) -> list[str]:
    return [p["metadata"]["name"] for p in pods if p["metadata"].get("labels", {}).get("component") == "etcd"]
