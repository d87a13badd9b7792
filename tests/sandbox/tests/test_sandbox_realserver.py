"""The sandbox on the real kube-apiserver (``up``'s default): the binary answers, the sandbox's own encodings are
byte-compatible with it both ways, and its RBAC, token webhook and kubelet endpoint are what the product meets.

- ``/version`` is the release tests/sandbox/gobuild/go.mod pins, and the process listening is the built binary;
- a Secret the real server wrote decodes with the sandbox's codec and re-encodes byte for byte (no ObjectMeta
  field 15, ``clusterName``, removed in 1.25), and decrypts with the sandbox's transformers, for every provider;
- what the sandbox writes straight into etcd (``ctl seed``, ``ctl write_secret``, the ``--history`` secrets) the
  real server reads back, for every provider: seeding may bypass the API only because of this;
- the restricted identity reads secrets and /readyz, but gets 403 for pods/exec in kube-system and /metrics;
- pods/exec reaches the kubelet endpoint through the real server (its WebSocket-to-SPDY translation).
"""

import base64
import json
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.sandbox import codec

from tests.sandbox.apiserver import kubeapiserver
from tests.sandbox.control import PROVIDERS, Sandbox
from tests.sandbox.processes.kms_client import KMSClient
from tests.sandbox.transformers import EncryptionConfig


@pytest.fixture(scope="module", params=PROVIDERS)
def box(request, tmp_path_factory):
    b = Sandbox(tmp_path_factory.mktemp(f"real-{request.param}"))
    b.up(provider=request.param, history=True)
    yield b
    b.down()


def _transformers(box: Sandbox) -> EncryptionConfig:
    cfg = json.loads((box.dir / "serve.json").read_text())
    client = KMSClient(cfg["kms"]["socket"], cfg["kms"]["api"]) if cfg.get("kms") else None
    key = base64.b64decode(cfg["local_key"]) if cfg.get("local_key") else None
    return EncryptionConfig.for_provider(cfg["provider"], kms_client=client, key=key)


def _as(box: Sandbox, cert: str, key: str, path: str) -> int:
    pki = box.info["pki"]
    ctx = ssl.create_default_context(cafile=pki["ca_cert"])
    ctx.load_cert_chain(pki[cert], pki[key])
    try:
        with urllib.request.urlopen(box.info["apiserver"]["url"] + path, context=ctx, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def test_the_server_is_the_built_kube_apiserver(box):
    status, version = box.api("GET", "/version")
    # the release go.mod pins, or the one in KUBEBUILDER_ASSETS
    built = kubeapiserver.release() if "KUBEBUILDER_ASSETS" not in os.environ else box.info["kubernetes_version"]
    assert status == 200 and version["gitVersion"] == built == box.info["kubernetes_version"]
    assert box.info["apiserver_mode"] == "real"
    pid = box.info["pids"]["kube_apiserver"]
    assert Path(os.readlink(f"/proc/{pid}/exe")) == kubeapiserver.binaries() / "kube-apiserver"


def test_what_the_real_server_stores_the_sandbox_reads_byte_for_byte(box):
    key = "/registry/secrets/default/db-user-pass"
    stored = box.etcdctl_get(key)
    enc = _transformers(box)
    plain = enc.read(key, stored)
    obj = codec.decode_secret(plain)
    assert base64.b64decode(obj["data"]["username"]) == b"admin"
    assert codec.encode_secret(obj) == plain  # the codec writes what kube-apiserver writes (no field 15)


def test_what_the_sandbox_writes_into_etcd_the_real_server_reads(box):
    assert box.ctl({"seed": {"namespace": "bulk", "count": 5, "size": 32}})["ok"]
    assert box.ctl({"write_secret": {"namespace": "bulk", "name": "written", "data": {"k": "v"}}})["ok"]
    status, listed = box.api("GET", "/api/v1/namespaces/bulk/secrets")
    assert status == 200 and len(listed["items"]) == 6, listed
    status, one = box.api("GET", "/api/v1/namespaces/bulk/secrets/written")
    assert status == 200 and base64.b64decode(one["data"]["k"]) == b"v"
    for seeded in box.info["history"]["plaintext"] + box.info["history"]["old_key"]:
        ns, name = seeded.split("/")
        status, obj = box.api("GET", f"/api/v1/namespaces/{ns}/secrets/{name}")
        assert status == 200 and obj["data"], (seeded, status, obj)
    status, ns = box.api("GET", "/api/v1/namespaces/bulk")
    assert status == 200 and ns["status"]["phase"] == "Active"


def test_rbac_is_the_real_servers(box):
    assert _as(box, "restricted_cert", "restricted_key", "/readyz") == 200
    assert _as(box, "restricted_cert", "restricted_key", "/api/v1/namespaces/default/secrets") == 200
    assert _as(box, "restricted_cert", "restricted_key", "/metrics") == 403
    assert _as(box, "admin_cert", "admin_key", "/metrics") == 200
    status, review = box.api("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "restricted-user", "resourceAttributes": {
            "namespace": "kube-system", "verb": "create", "resource": "pods", "subresource": "exec"}}})
    assert status == 201 and review["status"]["allowed"] is False


def test_exec_goes_through_the_real_server_to_the_kubelet_endpoint(box):
    from kubernetes import client, config
    from kubernetes.stream import stream
    api = client.CoreV1Api(config.new_client_from_config(box.kubeconfig))
    pod = box.info["etcd_pods"][0]
    out = stream(api.connect_get_namespaced_pod_exec, pod, "kube-system", command=["etcdctl", "version"],
                 stderr=True, stdin=False, stdout=True, tty=False)
    assert "etcdctl version" in out
