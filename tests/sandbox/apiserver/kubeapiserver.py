"""The real kube-apiserver of a sandbox (``up --apiserver real``, the default when the binary is there).

The binary is built by ``make kube-apiserver`` (scripts/kube-build.sh, from tests/sandbox/gobuild/go.mod) into
``.tools/kubernetes-<version>/``; with ``KUBEBUILDER_ASSETS`` naming a folder that holds ``kube-apiserver`` (the
envtest convention), that one runs instead. This module writes what it reads and starts it:

- ``apiserver/encryption-config.yaml``: the provider first (KMS v2 or v1 on the sandbox's KMS plugin socket, a
  local key, or identity), then identity, as the emulator's :meth:`.transformers.EncryptionConfig.for_provider`;
- ``apiserver/token-webhook.kubeconfig``: token authentication by a guard-shaped TokenReview webhook that the
  sandbox's server process serves (:mod:`.guard`), verifying Entra and PoP tokens with :mod:`.jwtverify`;
- ``pki/sa.{key,pub}`` and ``pki/apiserver-kubelet-client.{crt,key}`` (``O=system:masters``, as kubeadm's);
- flags: client certificates of the cluster CA (``--admin``), ``--authorization-mode=Node,RBAC``, the kubelet
  reached at the Node's ``InternalIP`` 127.0.0.1 and ``daemonEndpoints.kubeletEndpoint.Port`` (:mod:`.kubelet`).

After ``/readyz`` passes, :func:`bootstrap` adds what kubeadm and AKS Arc add: RBAC bindings (the Entra admin
group and users as cluster-admin; the restricted user reads, and may exec outside kube-system only), the Node
objects and kubeadm's mirror pods (etcd, kube-apiserver) in kube-system with a Running status.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..processes.proc import REPO_ROOT

GO_MOD = Path(__file__).resolve().parents[1] / "gobuild" / "go.mod"
KMS_PROVIDER_NAME = "kms-plugin"  # as transformers.KMS_PROVIDER_NAME (what AKS on Azure Local configures)
ADMIN_GROUP = "3c5a7c2e-5a8e-4c2f-9f5d-5b1a0f0e0a11"  # the AKS Arc cluster's Entra admin group (object id)
RESTRICTED_GROUP = "sandbox:restricted"  # the group the webhook gives identities named restricted*
RESTRICTED_USER = "restricted-user"  # kubeconfig-restricted's client certificate


class BinaryMissing(RuntimeError):
    pass


def release() -> str:
    """The Kubernetes release the committed go.mod pins (``v1.29.6``)."""
    m = re.search(r"^require k8s\.io/kubernetes (v[0-9.]+)$", GO_MOD.read_text(), re.M)
    if not m:
        raise BinaryMissing(f"{GO_MOD} pins no k8s.io/kubernetes release")
    return m.group(1)


def binaries(without_metrics=()) -> Path:
    """The folder holding kube-apiserver (and kubectl): ``KUBEBUILDER_ASSETS`` when it holds kube-apiserver, else
    ``.tools/kubernetes-<release>``; BinaryMissing (with the make target to run) when there is none.

    ``without_metrics`` (KMS envelope metric names): the same release built with those metrics never registered
    (``scripts/kube-build.sh --without-metrics``: a copy of k8s.io/apiserver whose envelope metrics.go lacks their
    ``MustRegister`` lines), built here when missing (seconds with a warm Go build cache), cached in
    ``.tools/kubernetes-<release>-without-<hash>/``. ``--disabled-metrics`` cannot do this: kube-apiserver applies it
    after loading the encryption configuration, which has already registered them (README)."""
    if without_metrics:
        import subprocess
        script = REPO_ROOT / "scripts" / "kube-build.sh"
        done = subprocess.run([str(script), "--without-metrics", ",".join(without_metrics)], capture_output=True,
                              text=True, timeout=3600)
        folder = Path(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else None
        if folder is None or not os.access(folder / "kube-apiserver", os.X_OK):
            raise BinaryMissing(f"could not build kube-apiserver without {', '.join(without_metrics)}: "
                                f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no output'}")
        return folder
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and os.access(Path(assets) / "kube-apiserver", os.X_OK):
        return Path(assets)
    folder = REPO_ROOT / ".tools" / f"kubernetes-{release()}"
    if os.access(folder / "kube-apiserver", os.X_OK):
        return folder
    raise BinaryMissing(f"no kube-apiserver in {folder} (nor in KUBEBUILDER_ASSETS): run `make kube-apiserver` "
                        "(builds it from the Go module proxy), or `up --apiserver emulator`")


def available() -> bool:
    try:
        binaries()
    except BinaryMissing:
        return False
    return True


# --- files ------------------------------------------------------------------------------------------------------


def encryption_config(provider: str, local_key: str | None, kms_socket: str | None,
                      read_keys: dict | None = None, also=()) -> dict:
    """The EncryptionConfiguration for ``provider``: it first (writes), then the local keys kept for reading
    (``read_keys``: kind -> base64 key, what ``ctl write_secret`` "with" a local kind writes with, as a cluster
    that moved from a local key to KMS keeps its old key), then identity (reads of older values). ``also``: other
    resources encrypted the same way (``Sandbox.encrypt_resources``: configmaps, a custom resource)."""
    if provider == "identity":
        first = {"identity": {}}
    elif provider in ("kms-v1", "kms-v2"):
        kms = {"name": KMS_PROVIDER_NAME, "endpoint": f"unix://{kms_socket}", "timeout": "3s"}
        if provider == "kms-v2":
            kms["apiVersion"] = "v2"
        else:
            kms["cachesize"] = 1000
        first = {"kms": kms}
    else:
        first = {provider: {"keys": [{"name": "key1", "secret": local_key}]}}
    kept = [{kind: {"keys": [{"name": "key1", "secret": key}]}} for kind, key in (read_keys or {}).items()
            if kind != provider]
    providers = [first, *kept] if provider == "identity" else [first, *kept, {"identity": {}}]
    return {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration",
            "resources": [{"resources": ["secrets", *also], "providers": providers}]}


def _issue(ca_cert: Path, ca_key: Path, cn: str, orgs=()) -> tuple[bytes, bytes]:
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    ca_k = serialization.load_pem_private_key(ca_key.read_bytes(), None)
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
                     + [x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_k, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _write_private(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return path


def write_files(directory: Path, pki: dict, provider: str, local_key: str | None, kms_socket: str | None,
                webhook_url: str, read_keys: dict | None = None, also=()) -> dict:
    """Write the server's files (once: a resume keeps the keys) and the encryption config; returns their paths."""
    d = directory / "apiserver"
    d.mkdir(parents=True, exist_ok=True)
    pki_dir = Path(pki["ca_cert"]).parent
    files = {"encryption": d / "encryption-config.yaml", "webhook": d / "token-webhook.kubeconfig",
             "sa_key": pki_dir / "sa.key", "sa_pub": pki_dir / "sa.pub",
             "kubelet_cert": pki_dir / "apiserver-kubelet-client.crt",
             "kubelet_key": pki_dir / "apiserver-kubelet-client.key",
             "webhook_cert": pki_dir / "apiserver-webhook-client.crt",
             "webhook_key": pki_dir / "apiserver-webhook-client.key"}
    if not files["sa_key"].exists():
        key = rsa.generate_private_key(65537, 2048)
        _write_private(files["sa_key"], key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
        files["sa_pub"].write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    ca_cert, ca_key = Path(pki["ca_cert"]), Path(pki["ca_key"])
    for stem, cn in (("kubelet", "kube-apiserver-kubelet-client"), ("webhook", "kube-apiserver-webhook-client")):
        if not files[f"{stem}_cert"].exists():
            cert, key = _issue(ca_cert, ca_key, cn, orgs=("system:masters",) if stem == "kubelet" else ())
            files[f"{stem}_cert"].write_bytes(cert)
            _write_private(files[f"{stem}_key"], key)
    config = encryption_config(provider, local_key, kms_socket, read_keys, also)
    _write_private(files["encryption"], yaml.safe_dump(config, sort_keys=False).encode())
    webhook = {"apiVersion": "v1", "kind": "Config",
               "clusters": [{"name": "guard", "cluster": {"server": webhook_url,
                                                          "certificate-authority": str(ca_cert)}}],
               "users": [{"name": "kube-apiserver", "user": {"client-certificate": str(files["webhook_cert"]),
                                                             "client-key": str(files["webhook_key"])}}],
               "contexts": [{"name": "webhook", "context": {"cluster": "guard", "user": "kube-apiserver"}}],
               "current-context": "webhook"}
    _write_private(files["webhook"], yaml.safe_dump(webhook, sort_keys=False).encode())
    return {k: str(v) for k, v in files.items()}


def command(binary: Path, version: str, port: int, etcd: dict, pki: dict, files: dict, provider: str,
            readyz_style: str = "aggregate", disabled_metrics=()) -> list[str]:
    """kube-apiserver's command line (kubeadm's flags where they apply). ``readyz_style`` ``aggregate`` turns on
    the encryption config's automatic reload (one ``kms-providers`` check and the reload poststarthook);
    ``per-provider`` leaves it off (1.29: ``kms-provider-<n>`` checks for KMS v1, still ``kms-providers`` for v2
    alone). ``disabled_metrics``: fully qualified metric names for component-base's ``--disabled-metrics``
    (k8s.io/component-base metrics/options.go: such a metric is hidden, never registered, so ``/metrics`` has no
    line of it)."""
    gates = []
    minor = int(version.split(".")[1])
    if provider == "kms-v1":
        gates.append("KMSv1=true")  # deprecated in 1.28, off by default since 1.29
    if minor == 29:
        gates.append("TranslateStreamCloseWebsocketRequests=true")  # alpha in 1.29, beta (on) from 1.30
    cmd = [str(binary), f"--secure-port={port}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
           f"--etcd-servers={etcd['endpoint']}", f"--etcd-cafile={etcd['ca']}", f"--etcd-certfile={etcd['cert']}",
           f"--etcd-keyfile={etcd['key']}",
           f"--tls-cert-file={pki['apiserver_cert']}", f"--tls-private-key-file={pki['apiserver_key']}",
           f"--client-ca-file={pki['ca_cert']}",
           "--authorization-mode=Node,RBAC", "--anonymous-auth=true",
           f"--authentication-token-webhook-config-file={files['webhook']}",
           "--authentication-token-webhook-version=v1", "--authentication-token-webhook-cache-ttl=10s",
           "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
           f"--service-account-key-file={files['sa_pub']}",
           f"--service-account-signing-key-file={files['sa_key']}",
           "--service-cluster-ip-range=10.96.0.0/12", "--allow-privileged=true",
           f"--encryption-provider-config={files['encryption']}",
           f"--kubelet-client-certificate={files['kubelet_cert']}", f"--kubelet-client-key={files['kubelet_key']}",
           "--kubelet-preferred-address-types=InternalIP", "--enable-bootstrap-token-auth=true",
           "--profiling=false", "--v=1"]
    if minor >= 36:
        # 1.36+ refuses a loopback --advertise-address with the default endpoint reconciler (lease): "cannot use
        # public IP 127.0.0.1 with endpoint reconciler ... may not be in the loopback range"; the sandbox needs no
        # `kubernetes` Service endpoints.
        cmd.append("--endpoint-reconciler-type=none")
    if readyz_style == "aggregate":
        cmd.append("--encryption-provider-config-automatic-reload=true")
    if gates:
        cmd.append("--feature-gates=" + ",".join(gates))
    if disabled_metrics:
        cmd.append("--disabled-metrics=" + ",".join(disabled_metrics))
    return cmd


# --- bootstrap: RBAC, nodes, mirror pods --------------------------------------------------------------------------


def rbac_objects() -> list[tuple[str, dict]]:
    """(collection path, object) of the RBAC an AKS Arc cluster with Entra has, for the sandbox's identities."""
    crb = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
    cr = "/apis/rbac.authorization.k8s.io/v1/clusterroles"
    readers = [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": RESTRICTED_USER},
               {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": RESTRICTED_GROUP}]
    return [
        (crb, {"metadata": {"name": "aad-cluster-admins"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
               "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": ADMIN_GROUP}]}),
        (cr, {"metadata": {"name": "sandbox-reader"},
              "rules": [{"apiGroups": ["", "apps"], "resources": ["pods", "secrets", "namespaces", "nodes",
                                                                  "configmaps", "services", "deployments"],
                         "verbs": ["get", "list", "watch"]}]}),
        (crb, {"metadata": {"name": "sandbox-reader"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "sandbox-reader"},
               "subjects": readers}),
        (cr, {"metadata": {"name": "sandbox-exec"},
              "rules": [{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]}]}),
        ("/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
         {"metadata": {"name": "sandbox-exec", "namespace": "default"},
          "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "sandbox-exec"},
          "subjects": readers}),
    ]


def node_object(node: dict, kubelet_port: int) -> dict:
    """An emulator Node (pods.build_node) as the real API server stores it: reachable at 127.0.0.1:port."""
    obj = json.loads(json.dumps(node))
    meta = obj["metadata"]
    obj = {"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": meta["name"], "labels": meta["labels"]}, "spec": obj["spec"],
           "status": obj["status"]}
    obj["status"]["addresses"] = [{"type": "InternalIP", "address": "127.0.0.1"},
                                  {"type": "Hostname", "address": meta["name"]}]
    obj["status"]["daemonEndpoints"] = {"kubeletEndpoint": {"Port": kubelet_port}}
    return obj


def pod_object(pod: dict) -> tuple[dict, dict]:
    """(the Pod to create, its status) from an emulator pod (pods.build_pods)."""
    meta = pod["metadata"]
    keep = {k: meta[k] for k in ("name", "namespace", "labels", "annotations", "ownerReferences") if k in meta}
    if meta.get("ownerReferences", [{}])[0].get("kind") == "Node":
        keep["annotations"] = dict(meta.get("annotations") or {})
        keep["annotations"].setdefault("kubernetes.io/config.mirror", keep["annotations"].get(
            "kubernetes.io/config.hash", "mirror"))
    spec = json.loads(json.dumps(pod["spec"]))
    if not spec.get("hostNetwork"):
        spec["serviceAccountName"] = "coredns"  # CoreDNS's (no controller runs its ReplicaSet: created as is)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": keep, "spec": spec}, pod["status"]


def bootstrap(api, nodes: list[dict], pods: list[dict], kubelet_ports: dict[str, int]) -> None:
    """Create the RBAC, Node and mirror Pod objects (idempotent: 409 is fine) and mark them Running.
    ``api(method, path, body)`` is the admin's request function (control.Sandbox.api)."""
    def create(path: str, body: dict) -> dict:
        status, obj = api("POST", path, body)
        if status == 409:
            name = body["metadata"]["name"]
            return api("GET", f"{path}/{name}")[1]
        if status not in (200, 201):
            raise RuntimeError(f"POST {path} {body['metadata']['name']}: HTTP {status} {obj}")
        return obj

    for path, obj in rbac_objects():
        create(path, obj)
    for n in nodes:
        obj = node_object(n, kubelet_ports[n["metadata"]["name"]])
        status = obj.pop("status")
        create("/api/v1/nodes", obj)
        code, out = api("PUT", f"/api/v1/nodes/{obj['metadata']['name']}/status",
                        {**api("GET", f"/api/v1/nodes/{obj['metadata']['name']}")[1], "status": status})
        if code != 200:
            raise RuntimeError(f"node status: HTTP {code} {out}")
    bootstrap_pods(api, pods)


def bootstrap_pods(api, pods: list[dict]) -> None:
    """Create the mirror pods among ``pods`` (idempotent) and mark them Running."""
    def create(path: str, body: dict) -> None:
        status, obj = api("POST", path, body)
        if status not in (200, 201, 409):
            raise RuntimeError(f"POST {path} {body['metadata']['name']}: HTTP {status} {obj}")

    if any(not p["spec"].get("hostNetwork") for p in pods):
        create("/api/v1/namespaces/kube-system/serviceaccounts", {"apiVersion": "v1", "kind": "ServiceAccount",
                                                                  "metadata": {"name": "coredns",
                                                                               "namespace": "kube-system"}})
        code, dns = api("GET", "/api/v1/namespaces/kube-system/pods?labelSelector=k8s-app%3Dkube-dns")
        if code == 200 and dns.get("items"):  # a resume: CoreDNS's pods (random names) are there already
            pods = [p for p in pods if p["spec"].get("hostNetwork")]
    for p in pods:
        body, status = pod_object(p)
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        create(f"/api/v1/namespaces/{ns}/pods", body)
        current = api("GET", f"/api/v1/namespaces/{ns}/pods/{name}")[1]
        if current.get("status", {}).get("phase") == "Running":
            continue
        status = dict(status)
        if current.get("status", {}).get("qosClass"):  # set by the server at create, immutable from 1.32 on
            status["qosClass"] = current["status"]["qosClass"]
        code, out = api("PUT", f"/api/v1/namespaces/{ns}/pods/{name}/status", {**current, "status": status})
        if code != 200:
            raise RuntimeError(f"pod status {ns}/{name}: HTTP {code} {out}")


def admin_api(pki: dict, port: int):
    """A ``api(method, path, body) -> (status, parsed JSON)`` function for the admin (client certificate)."""
    import ssl
    import urllib.error
    import urllib.request
    ctx = ssl.create_default_context(cafile=str(pki["ca_cert"]))
    ctx.load_cert_chain(str(pki["admin_cert"]), str(pki["admin_key"]))

    def api(method: str, path: str, body: dict | None = None):
        req = urllib.request.Request(f"https://127.0.0.1:{port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")
    return api


def set_kubelet_port(api, node: str, port: int) -> None:
    """Point the Node's kubelet endpoint at ``port`` (a refusing port: the node's kubelet is down)."""
    code, obj = api("GET", f"/api/v1/nodes/{node}")
    if code != 200:
        raise RuntimeError(f"node {node}: HTTP {code} {obj}")
    obj["status"]["daemonEndpoints"] = {"kubeletEndpoint": {"Port": port}}
    code, out = api("PUT", f"/api/v1/nodes/{node}/status", obj)
    if code != 200:
        raise RuntimeError(f"node {node} status: HTTP {code} {out}")


# --- API Priority and Fairness: a throttled identity -------------------------------------------------------------

THROTTLED_USER = "throttled-admin"  # kubeconfig-throttled's client certificate (no group: not system:masters)
THROTTLE_NAME = "sandbox-throttled"  # the FlowSchema, PriorityLevelConfiguration and ClusterRoleBinding
FLOWCONTROL = "/apis/flowcontrol.apiserver.k8s.io/v1"  # GA in 1.29
THROTTLE_PRECEDENCE = 50  # before every suggested FlowSchema but exempt (1) and probes (2)


def throttle_objects(user: str, shares: int = 1, queue: int = 0) -> list[tuple[str, dict]]:
    """(collection path, object) of what throttles ``user`` (and only it): cluster-admin for it, a Limited
    PriorityLevelConfiguration with ``shares`` nominal concurrency shares that lends nothing and borrows nothing
    (its concurrency limit is its nominal one, ceil(server limit x shares / all shares)), excess requests rejected
    with 429 at once (``queue=0``: ``limitResponse: Reject``) or after waiting in one queue of ``queue`` requests,
    and a FlowSchema sending every request of ``user`` (resource and non-resource) there."""
    limit = {"type": "Reject"} if queue <= 0 else {
        "type": "Queue", "queuing": {"queues": 1, "handSize": 1, "queueLengthLimit": queue}}
    return [
        ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
         {"metadata": {"name": THROTTLE_NAME},
          "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
          "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}]}),
        (f"{FLOWCONTROL}/prioritylevelconfigurations",
         {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
          "metadata": {"name": THROTTLE_NAME},
          "spec": {"type": "Limited", "limited": {"nominalConcurrencyShares": shares, "lendablePercent": 0,
                                                  "borrowingLimitPercent": 0, "limitResponse": limit}}}),
        (f"{FLOWCONTROL}/flowschemas",
         {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
          "metadata": {"name": THROTTLE_NAME},
          "spec": {"priorityLevelConfiguration": {"name": THROTTLE_NAME},
                   "matchingPrecedence": THROTTLE_PRECEDENCE, "distinguisherMethod": {"type": "ByUser"},
                   "rules": [{"subjects": [{"kind": "User", "user": {"name": user}}],
                              "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                                 "clusterScope": True, "namespaces": ["*"]}],
                              "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]}]}}),
    ]


def issue_client(pki: dict, cn: str, cert_path: Path, key_path: Path, orgs=()) -> None:
    """A client certificate of the cluster CA for ``cn`` (once: kept if it is there)."""
    if Path(cert_path).exists() and Path(key_path).exists():
        return
    cert, key = _issue(Path(pki["ca_cert"]), Path(pki["ca_key"]), cn, orgs)
    _write_private(Path(key_path), key)
    Path(cert_path).write_bytes(cert)


def flow_counts(metrics_page: str, flow_schema: str = THROTTLE_NAME) -> dict:
    """``{"dispatched": n, "rejected": n}``: the requests of ``flow_schema`` the server has executed and rejected
    (429) since it started (``apiserver_flowcontrol_{dispatched,rejected}_requests_total``, summed over reasons)."""
    counts = {"dispatched": 0, "rejected": 0}
    for line in metrics_page.splitlines():
        for kind in counts:
            if line.startswith(f"apiserver_flowcontrol_{kind}_requests_total{{") and \
                    f'flow_schema="{flow_schema}"' in line:
                counts[kind] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def nominal_limit(metrics_page: str, priority_level: str) -> int | None:
    """``apiserver_flowcontrol_nominal_limit_seats`` of ``priority_level`` in a /metrics page."""
    for line in metrics_page.splitlines():
        if line.startswith("apiserver_flowcontrol_nominal_limit_seats{") and \
                f'priority_level="{priority_level}"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return None


def delete_pods(api, pods: list[dict]) -> None:
    for p in pods:
        meta = p["metadata"]
        code, out = api("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}?gracePeriodSeconds=0")
        if code not in (200, 404):
            raise RuntimeError(f"deleting pod {meta['name']}: HTTP {code} {out}")
