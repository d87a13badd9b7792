"""The sandbox's servers and control: API server emulator, ARM emulator, Sandbox up/down/kms/ctl.

The product is tested against these servers, so they are checked here against what the real ones answer: readyz
bodies byte for byte against the fixtures, stored values against the storage format, exec frames and exit
Status bodies, RBAC denials, and the ARM long-running operation.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml

from tests.sandbox import codec
from tests.sandbox.processes.proc import processes_mentioning
from tests.sandbox.control import Sandbox, SandboxError, _alive

PROJECT = Path(__file__).resolve().parents[3]
READYZ = PROJECT / "tests" / "fixtures" / "readyz"
AKS_SERVER_ID = "6dae42f8-4368-4678-94ff-3960e28e3630"
PKI = "/etc/kubernetes/pki/etcd/"
ETCDCTL = ["etcdctl", "--cacert", PKI + "ca.crt", "--cert", PKI + "server.crt", "--key=" + PKI + "server.key",
           "--endpoints=https://127.0.0.1:2379"]

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


def make_token(aud, upn="operator@contoso.com", lifetime=3600):
    """An unsigned JWT with the claims of an Entra v1 access token: what the sandbox without its Entra emulator
    (``entra=False``) accepts in place of Entra's signed tokens."""
    now = int(time.time())
    claims = {"aud": aud, "iss": f"https://sts.windows.net/{TENANT}/", "iat": now - 60, "nbf": now - 60,
              "exp": now + lifetime, "idtyp": "user", "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, "upn:" + upn)),
              "tid": TENANT, "unique_name": upn, "upn": upn, "ver": "1.0"}
    b64 = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()  # noqa: E731
    return ".".join([b64(b'{"alg":"none","typ":"JWT"}'), b64(json.dumps(claims).encode()), ""])


def fixture(name: str) -> str:
    path = READYZ / name
    if not path.exists():
        pytest.fail(f"readyz fixture {path} not found (tests/fixtures)")
    return path.read_text()


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    sandbox = Sandbox(tmp_path_factory.mktemp("servers"))
    # the emulator itself (its bodies against upstream); the unsigned-token path (test_bearer_tokens, ARM)
    sandbox.up(provider="kms-v2", entra=False, apiserver="emulator")
    yield sandbox
    pids = dict(sandbox.info["pids"])
    sandbox.down()
    assert not [p for p in pids.values() if _alive(p)], f"processes left behind: {pids}"


@pytest.fixture(scope="module")
def core(box):
    from kubernetes import client, config
    return client.CoreV1Api(config.new_client_from_config(box.kubeconfig))


def http(box, user="admin"):
    """A requests session to the API server as the admin or restricted cert (or none)."""
    s = requests.Session()
    s.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment overrides s.verify
    s.verify = box.info["pki"]["ca_cert"]
    if user:
        pki = box.info["pki"]
        s.cert = (pki[f"{user}_cert"], pki[f"{user}_key"])
    s.base = box.info["apiserver"]["url"]
    return s


def get(session, path, **kw):
    return session.get(session.base + path, timeout=30, **kw)


def run_exec(core, pod, argv, container="etcd"):
    """(subprotocol, stdout bytes, stderr bytes, error-channel Status) through the Python client (binary, v5)."""
    from kubernetes.stream import stream
    from kubernetes.stream.ws_client import ERROR_CHANNEL
    ws = stream(core.connect_get_namespaced_pod_exec, pod, "kube-system", command=argv, container=container,
                stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False, binary=True)
    from websocket import WebSocketConnectionClosedException
    out, err = b"", b""
    deadline = time.monotonic() + 30
    while ws.is_open() and time.monotonic() < deadline:
        try:
            ws.update(timeout=1)
        except WebSocketConnectionClosedException:  # the TCP connection went away (the "drop" fault)
            break
        finally:
            if ws.peek_stdout():
                out += ws.read_stdout()
            if ws.peek_stderr():
                err += ws.read_stderr()
    status = ws.read_channel(ERROR_CHANNEL)
    return ws.subprotocol, out, err, json.loads(status) if status else None


# --- readyz --------------------------------------------------------------------------------------------------------


def test_readyz_bodies_match_the_real_apiserver(box):
    s = http(box)
    r = get(s, "/readyz?verbose")
    assert r.status_code == 200 and r.text == fixture("aggregate-ok.txt")
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    r = get(s, "/readyz")
    assert r.status_code == 200 and r.text == fixture("nonverbose-ok.txt")
    r = get(s, "/readyz/kms-providers")
    assert (r.status_code, r.text) == (200, "ok")
    health = get(s, "/healthz?verbose").text.splitlines()
    assert "[+]kms-providers ok" in health and health[-1] == "healthz check passed"
    assert "[+]etcd-readiness ok" not in health and "[+]shutdown ok" not in health
    livez = get(s, "/livez?verbose").text
    assert "kms" not in livez and livez.endswith("livez check passed\n")
    assert "[+]kms-providers excluded: ok" in get(s, "/readyz?verbose&exclude=kms-providers").text


def test_kms_plugin_down_withholds_the_reason_but_the_check_endpoint_shows_it(box):
    s = http(box)
    box.kms("stop")
    try:
        r = get(s, "/readyz?verbose")
        assert r.status_code == 500 and r.text == fixture("aggregate-failed.http500.txt")
        assert get(s, "/readyz").text == r.text  # verbose on failure even without ?verbose
        r = get(s, "/readyz/kms-providers")
        assert r.status_code == 500
        assert r.text == (
            "internal server error: kms-provider-0: failed to perform status section of the healthz check for KMS "
            "Provider kms-plugin, error: rpc error: code = Unavailable desc = connection error: desc = \"transport: "
            f"Error while dialing: dial unix {box.info['kms_socket']}: connect: no such file or directory\"\n")
        assert get(s, "/healthz").status_code == 500
        assert get(s, "/livez").status_code == 200
    finally:
        box.kms("start")
    assert get(s, "/readyz?verbose").text == fixture("aggregate-ok.txt")


def test_readyz_shapes_per_provider_and_without_kms(tmp_path):
    per = Sandbox(tmp_path / "per")
    plain = Sandbox(tmp_path / "plain")
    try:
        per.up(provider="kms-v1", readyz_style="per-provider", apiserver="emulator")
        plain.up(provider="aescbc", apiserver="emulator")
        expected = [line for line in fixture("per-provider-ok.txt").splitlines() if line != "[+]kms-provider-1 ok"]
        assert get(http(per), "/readyz?verbose").text.splitlines() == expected
        assert get(http(per), "/readyz/kms-provider-0").text == "ok"
        per.kms("stop")
        r = get(http(per), "/readyz/kms-provider-0")
        assert r.status_code == 500 and r.text.startswith(
            "internal server error: failed to perform encrypt section of the healthz check for KMS Provider "
            "kms-plugin, error: ")
        assert get(http(plain), "/readyz?verbose").text == fixture("no-kms-ok.txt")
        assert plain.etcdctl_get("/registry/secrets/default/db-user-pass").startswith(b"k8s:enc:aescbc:v1:key1:")
        assert per.etcdctl_get("/registry/secrets/default/db-user-pass").startswith(b"k8s:enc:kms:v1:kms-plugin:")
    finally:
        per.down()
        plain.down()


# --- secrets ---------------------------------------------------------------------------------------------------------


def _secret(name, data, **meta):
    from kubernetes import client
    return client.V1Secret(metadata=client.V1ObjectMeta(name=name, **meta),
                           data={k: base64.b64encode(v).decode() for k, v in data.items()})


def test_secret_crud_through_the_kubernetes_client(box, core):
    from kubernetes.client.exceptions import ApiException
    created = core.create_namespaced_secret("default", _secret("crud-one", {"password": b"p\x00w"},
                                                               labels={"app": "crud"}))
    assert created.metadata.uid and created.metadata.creation_timestamp and created.type == "Opaque"
    [entry] = created.metadata.managed_fields
    assert (entry.manager, entry.operation, entry.fields_type) == ("OpenAPI-Generator", "Update", "FieldsV1")
    assert entry.fields_v1 == {"f:data": {".": {}, "f:password": {}},
                               "f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:type": {}}
    got = core.read_namespaced_secret("crud-one", "default")
    assert base64.b64decode(got.data["password"]) == b"p\x00w"
    assert got.metadata.resource_version == created.metadata.resource_version

    with pytest.raises(ApiException) as e:
        core.create_namespaced_secret("default", _secret("crud-one", {"a": b"b"}))
    assert e.value.status == 409 and json.loads(e.value.body)["reason"] == "AlreadyExists"
    gen = core.create_namespaced_secret("default", _secret(None, {"a": b"b"}, generate_name="crud-gen-"))
    assert gen.metadata.name.startswith("crud-gen-") and len(gen.metadata.name) == len("crud-gen-") + 5

    names = [s.metadata.name for s in core.list_namespaced_secret("default", label_selector="app=crud").items]
    assert names == ["crud-one"]
    assert "crud-one" in [s.metadata.name for s in core.list_secret_for_all_namespaces().items]
    assert core.list_namespaced_secret("default", label_selector="app in (crud,x),app!=y").items

    got.data["password"] = base64.b64encode(b"rotated").decode()
    updated = core.replace_namespaced_secret("crud-one", "default", got)
    assert int(updated.metadata.resource_version) > int(got.metadata.resource_version)
    assert updated.metadata.uid == created.metadata.uid
    unchanged = core.replace_namespaced_secret("crud-one", "default", updated)
    assert unchanged.metadata.resource_version == updated.metadata.resource_version  # no-op update: no write
    with pytest.raises(ApiException) as e:
        core.replace_namespaced_secret("crud-one", "default", got)  # stale resourceVersion
    assert e.value.status == 409 and json.loads(e.value.body)["reason"] == "Conflict"

    status = core.delete_namespaced_secret("crud-one", "default")  # the client returns the Status as a dict
    assert status["status"] == "Success" and status["details"] == {"name": "crud-one", "kind": "secrets",
                                                                   "uid": created.metadata.uid}
    core.delete_namespaced_secret(gen.metadata.name, "default")
    with pytest.raises(ApiException) as e:
        core.read_namespaced_secret("crud-one", "default")
    assert e.value.status == 404
    assert json.loads(e.value.body) == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                        "message": 'secrets "crud-one" not found', "reason": "NotFound",
                                        "details": {"name": "crud-one", "kind": "secrets"}, "code": 404}
    with pytest.raises(ApiException) as e:
        core.delete_namespaced_secret("crud-one", "default")
    assert e.value.status == 404


def test_stored_value_is_what_kube_apiserver_writes(box, core):
    obj = core.create_namespaced_secret("default", _secret("stored", {"k": b"v"}))
    raw = box.etcdctl_get("/registry/secrets/default/stored")
    assert raw.startswith(b"k8s:enc:kms:v2:kms-plugin:")
    enc = codec.decode_encrypted_object(raw[len(b"k8s:enc:kms:v2:kms-plugin:"):])
    assert enc["keyID"] == json.loads(Path(box.info["kms_state"]).read_text())["current"]
    assert enc["encryptedDEKSourceType"] == 1
    listing = json.loads(box.etcdctl("get", "/registry/secrets/default/stored", "-w", "json").stdout)
    assert obj.metadata.resource_version == str(listing["kvs"][0]["mod_revision"])
    core.delete_namespaced_secret("stored", "default")


def test_update_after_rotation_reencrypts_with_the_new_key(box, core):
    core.create_namespaced_secret("default", _secret("rekey", {"k": b"v"}))
    key_id = lambda: codec.decode_encrypted_object(  # noqa: E731
        box.etcdctl_get("/registry/secrets/default/rekey")[len(b"k8s:enc:kms:v2:kms-plugin:"):])["keyID"]
    before = key_id()
    new = box.kms("rotate")
    assert new != before and key_id() == before  # rotation alone rewrites nothing
    current = core.read_namespaced_secret("rekey", "default")
    core.replace_namespaced_secret("rekey", "default", current)  # `kubectl replace` of an unchanged object
    assert key_id() == new
    core.delete_namespaced_secret("rekey", "default")


def test_paging_and_metadata_only_lists(box, core):
    for i in range(7):
        core.create_namespaced_secret("default", _secret(f"page-{i}", {"k": b"v"}, labels={"paged": "yes"}))
    seen, token, pages = [], None, 0
    while True:
        page = core.list_namespaced_secret("default", limit=3, _continue=token)
        seen += [s.metadata.name for s in page.items]
        pages += 1
        token = page.metadata._continue
        if not token:
            break
        assert page.metadata.remaining_item_count is not None
    assert len(seen) == len(set(seen)) and {f"page-{i}" for i in range(7)} <= set(seen) and pages >= 3
    r = get(http(box), "/api/v1/namespaces/default/secrets?labelSelector=paged%3Dyes", headers={
        "Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"})
    body = r.json()
    assert body["kind"] == "PartialObjectMetadataList" and body["apiVersion"] == "meta.k8s.io/v1"
    assert len(body["items"]) == 7
    assert all(set(i) == {"kind", "apiVersion", "metadata"} for i in body["items"])
    assert body["items"][0]["kind"] == "PartialObjectMetadata"
    bad = get(http(box), "/api/v1/namespaces/default/secrets?limit=2&continue=bm90LWEtdG9rZW4")
    assert bad.status_code == 400
    for i in range(7):
        core.delete_namespaced_secret(f"page-{i}", "default")


def test_unreadable_value_fails_get_and_list_like_kube_apiserver(box, core):
    key = "/registry/secrets/default/corrupt"
    put = box.etcdctl("put", key, input=b"k8s:enc:aescbc:v1:key1:" + os.urandom(48))
    assert put.returncode == 0, put.stderr
    try:
        s = http(box)
        for path in ("/api/v1/namespaces/default/secrets/corrupt", "/api/v1/namespaces/default/secrets",
                     "/api/v1/secrets"):
            r = get(s, path)
            assert r.status_code == 500
            body = r.json()
            assert body["reason"] == "InternalError"
            # etcd3 store.go: GetList names the key ("unable to transform key %q: %v"), Get does not
            where = "" if path.endswith("/corrupt") else 'unable to transform key "/registry/secrets/default/corrupt": '
            assert body["message"].startswith(f"Internal error occurred: {where}no matching prefix found")
    finally:
        box.etcdctl("del", key)


def test_write_secret_as_identity_stores_plaintext(box):
    result = box.ctl({"write_secret": {"namespace": "default", "name": "before-encryption", "with": "identity",
                                       "data": {"token": "t0ken"}}})
    assert result["ok"]
    raw = box.etcdctl_get("/registry/secrets/default/before-encryption")
    assert raw.startswith(b"k8s\x00") and b"t0ken" in raw
    r = get(http(box), "/api/v1/namespaces/default/secrets/before-encryption")
    assert base64.b64decode(r.json()["data"]["token"]) == b"t0ken"  # identity is the second provider
    http(box).delete(box.info["apiserver"]["url"] + "/api/v1/namespaces/default/secrets/before-encryption")


def test_write_secret_with_a_local_key_stays_readable_through_the_api(box):
    result = box.ctl({"write_secret": {"namespace": "default", "name": "before-kms", "with": "aescbc",
                                       "data": {"token": "l0cal"}}})
    assert result["result"]["write_secret"]["prefix"] == "k8s:enc:aescbc:v1:key1:"
    raw = box.etcdctl_get("/registry/secrets/default/before-kms")
    assert raw.startswith(b"k8s:enc:aescbc:v1:key1:") and b"l0cal" not in raw
    r = get(http(box), "/api/v1/namespaces/default/secrets/before-kms")
    assert base64.b64decode(r.json()["data"]["token"]) == b"l0cal"  # the old key stays configured for reading
    http(box).delete(box.info["apiserver"]["url"] + "/api/v1/namespaces/default/secrets/before-kms")


def test_write_secret_backdated_and_under_a_retired_prefix(box):
    box.ctl({"write_secret": {"namespace": "default", "name": "old-one", "data": {"a": "b"},
                              "written_at": "2024-01-02T03:04:05Z"}})
    meta = get(http(box), "/api/v1/namespaces/default/secrets/old-one").json()["metadata"]
    assert meta["creationTimestamp"] == "2024-01-02T03:04:05Z"
    assert [f["time"] for f in meta["managedFields"]] == ["2024-01-02T03:04:05Z"]
    http(box).delete(box.info["apiserver"]["url"] + "/api/v1/namespaces/default/secrets/old-one")

    result = box.ctl({"write_secret": {"namespace": "default", "name": "retired", "data": {"a": "b"},
                                       "prefix": "k8s:enc:kms:v1:retired-plugin:"}})
    assert result["result"]["write_secret"]["prefix"] == "k8s:enc:kms:v1:retired-plugin:"
    try:
        assert box.etcdctl_get("/registry/secrets/default/retired").startswith(b"k8s:enc:kms:v1:retired-plugin:")
        r = get(http(box), "/api/v1/namespaces/default/secrets/retired")
        assert r.status_code == 500 and "no matching prefix found" in r.json()["message"]
    finally:
        box.etcdctl("del", "/registry/secrets/default/retired")


def test_seed_writes_many_secrets_as_the_api_server_would(box):
    result = box.ctl({"seed": {"namespace": "bench", "count": 300, "size": 32, "labels": {"seeded": "yes"}}})
    assert result["result"]["seed"]["written"] == 300
    keys = box.etcdctl("get", "/registry/secrets/bench/", "--prefix", "--keys-only").stdout.split()
    assert len(keys) == 300
    assert box.etcdctl_get("/registry/secrets/bench/bulk-299").startswith(b"k8s:enc:kms:v2:kms-plugin:")
    items = get(http(box), "/api/v1/namespaces/bench/secrets?labelSelector=seeded").json()["items"]
    assert len(items) == 300 and len(base64.b64decode(items[0]["data"]["value"])) == 32
    box.etcdctl("del", "/registry/secrets/bench/", "--prefix")


# --- pods and exec ------------------------------------------------------------------------------------------------


def test_pods_look_like_a_kubeadm_control_plane(box, core):
    [etcd] = core.list_namespaced_pod("kube-system", label_selector="component=etcd").items
    assert etcd.metadata.name == box.info["etcd_pods"][0] and etcd.metadata.name.startswith("etcd-moc-")
    assert etcd.metadata.labels == {"component": "etcd", "tier": "control-plane"}
    assert etcd.spec.containers[0].name == "etcd" and etcd.status.phase == "Running"
    assert etcd.spec.containers[0].image.startswith("registry.k8s.io/etcd:3.5.")
    names = [p.metadata.name for p in core.list_pod_for_all_namespaces().items]
    assert any(n.startswith("kube-apiserver-moc-") for n in names) and any(n.startswith("coredns-") for n in names)
    assert core.list_namespaced_pod("kube-system", label_selector="component in (etcd),tier").items
    assert not core.list_namespaced_pod("default").items
    assert core.read_namespaced_pod(etcd.metadata.name, "kube-system").metadata.uid == etcd.metadata.uid
    by_field = core.list_namespaced_pod("kube-system", field_selector=f"metadata.name={etcd.metadata.name}").items
    assert [p.metadata.name for p in by_field] == [etcd.metadata.name]


def test_exec_streams_exact_bytes_and_exit_codes(box, core):
    pod = box.info["etcd_pods"][0]
    raw = box.etcdctl_get("/registry/secrets/default/db-user-pass")
    proto, out, err, status = run_exec(core, pod, ETCDCTL + ["get", "/registry/secrets/default/db-user-pass",
                                                             "--print-value-only"])
    assert proto == "v5.channel.k8s.io"
    assert out == raw + b"\n" and err == b"" and status == {"metadata": {}, "status": "Success"}
    # without --endpoints the pod's default endpoint (ETCDCTL_ENDPOINTS unset in a real pod: 127.0.0.1:2379)
    _, out, _, status = run_exec(core, pod, ETCDCTL[:-1] + ["get", "/registry/secrets/default/db-user-pass",
                                                            "-w", "protobuf"])
    assert status["status"] == "Success" and raw in out
    _, out, err, status = run_exec(core, pod, ETCDCTL + ["get"])
    assert out == b"" and b"get command needs one argument" in err
    assert status == {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                      "message": "command terminated with non-zero exit code: error executing command "
                                 f"[{' '.join(ETCDCTL)} get], exit code 128",
                      "details": {"causes": [{"reason": "ExitCode", "message": "128"}]}}
    _, out, _, status = run_exec(core, pod, ["/usr/local/bin/etcdctl", "version"])
    assert out.startswith(b"etcdctl version: 3.5.") and status["status"] == "Success"


def test_exec_of_a_shell_fails_like_a_distroless_image(box, core):
    pod = box.info["etcd_pods"][0]
    _, out, err, status = run_exec(core, pod, ["sh", "-c", "etcdctl version"])
    assert out == err == b""
    assert status["status"] == "Failure" and status["reason"] == "InternalError" and status["code"] == 500
    assert ('OCI runtime exec failed: exec failed: unable to start container process: exec: "sh": executable file '
            'not found in $PATH: unknown') in status["message"]
    _, _, _, status = run_exec(core, pod, ["/bin/sh"])
    assert 'exec: "/bin/sh": stat /bin/sh: no such file or directory: unknown' in status["message"]


def test_exec_handshake_errors_are_real_status_bodies(box):
    pod = box.info["etcd_pods"][0]
    url = f"/api/v1/namespaces/kube-system/pods/{pod}/exec?command=etcdctl&command=version&stdout=true"
    r = get(http(box), url + "&container=kube-apiserver")
    assert r.status_code == 400 and r.json()["message"] == f"container kube-apiserver is not valid for pod {pod}"
    r = get(http(box, "restricted"), url + "&container=etcd")
    assert r.status_code == 403
    assert r.json() == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": f'pods "{pod}" is forbidden: User "restricted-user" cannot create resource '
                                   '"pods/exec" in API group "" in the namespace "kube-system"',
                        "reason": "Forbidden", "details": {"name": pod, "kind": "pods"}, "code": 403}
    assert get(http(box), "/api/v1/namespaces/kube-system/pods/etcd-moc-nope/exec?command=x").status_code == 404


def test_exec_faults(box, core):
    from kubernetes.client.exceptions import ApiException
    pod = box.info["etcd_pods"][0]
    argv = ETCDCTL + ["get", "/registry/secrets/", "--prefix", "-w", "json"]
    try:
        box.ctl({"exec_fault": {"pod": pod, "mode": "broken"}})
        r = get(http(box), f"/api/v1/namespaces/kube-system/pods/{pod}/exec?command=etcdctl&container=etcd"
                           "&stdout=true")
        assert r.status_code == 500 and r.json()["message"].startswith("error dialing backend: dial tcp ")
        with pytest.raises(ApiException, match="500"):
            run_exec(core, pod, argv)

        box.ctl({"exec_fault": {"pod": pod, "mode": "drop"}})
        _, out, _, status = run_exec(core, pod, argv)
        assert 0 < len(out) and status is None  # some output, then the connection is gone without an exit status
        json_out = box.etcdctl("get", "/registry/secrets/", "--prefix", "-w", "json").stdout
        assert len(out) < len(json_out)

        box.ctl({"exec_fault": {"pod": pod, "mode": "hang"}})
        from kubernetes.stream import stream
        ws = stream(core.connect_get_namespaced_pod_exec, pod, "kube-system", command=argv, container="etcd",
                    stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False, binary=True)
        ws.update(timeout=1.0)
        assert ws.is_open() and not ws.peek_stdout() and not ws.peek_channel(3)
        ws.close()
    finally:
        box.ctl({"exec_fault": {"pod": pod, "mode": None}})
    assert run_exec(core, pod, ETCDCTL + ["version"])[3]["status"] == "Success"


# --- authentication and authorization ---------------------------------------------------------------------------


def test_restricted_user_reads_but_may_not_create_secrets(box):
    s = http(box, "restricted")
    assert get(s, "/api/v1/namespaces/default/secrets").status_code == 200
    assert get(s, "/api/v1/namespaces/kube-system/pods").status_code == 200
    r = s.post(s.base + "/api/v1/namespaces/default/secrets", json={"metadata": {"name": "x"}}, timeout=30)
    assert r.status_code == 403 and r.json()["message"] == (
        'secrets is forbidden: User "restricted-user" cannot create resource "secrets" in API group "" in the '
        'namespace "default"')


def test_bearer_tokens(box):
    s = http(box, user=None)
    url = s.base + "/api/v1/namespaces/default/secrets"
    unauthorized = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "Unauthorized", "reason": "Unauthorized", "code": 401}
    r = s.get(url, timeout=30)
    assert r.status_code == 401 and r.json() == unauthorized
    for aud in (AKS_SERVER_ID, "api://" + AKS_SERVER_ID, AKS_SERVER_ID + "/.default"):
        ok = s.get(url, headers={"Authorization": "Bearer " + make_token(aud)}, timeout=30)
        assert ok.status_code == 200, aud
    for bad in (make_token("https://management.azure.com/"), make_token(AKS_SERVER_ID, lifetime=-120), "x.y.z"):
        r = s.get(url, headers={"Authorization": "Bearer " + bad}, timeout=30)
        assert r.status_code == 401 and r.json() == unauthorized
    restricted = {"Authorization": "Bearer " + make_token(AKS_SERVER_ID, upn="restricted-dev@contoso.com")}
    assert s.get(url, headers=restricted, timeout=30).status_code == 200
    r = s.post(url, json={"metadata": {"name": "x"}, "data": {}}, headers=restricted, timeout=30)
    assert r.status_code == 403 and 'User "restricted-dev@contoso.com" cannot create' in r.json()["message"]


# --- kubectl ---------------------------------------------------------------------------------------------------------


def _kubectl(box, tmp_path, *args):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.fail("kubectl not found on PATH: run `make system-deps` (installs Debian's kubernetes-client)")
    env = dict(os.environ, KUBECONFIG=box.kubeconfig, HOME=str(tmp_path))
    return subprocess.run([kubectl, *args], capture_output=True, env=env, timeout=60)


def test_kubectl_raw_readyz_pods_secrets_and_exec(box, tmp_path):
    r = _kubectl(box, tmp_path, "get", "--raw=/readyz?verbose")
    assert r.returncode == 0 and r.stdout.decode() == fixture("aggregate-ok.txt")
    r = _kubectl(box, tmp_path, "get", "pods", "-n", "kube-system")
    assert r.returncode == 0 and box.info["etcd_pods"][0] in r.stdout.decode()
    r = _kubectl(box, tmp_path, "create", "secret", "generic", "from-kubectl", "--from-literal=password=s3cret")
    assert r.returncode == 0, r.stderr
    r = _kubectl(box, tmp_path, "get", "secret", "from-kubectl", "-o", "json", "--show-managed-fields")
    meta = json.loads(r.stdout)["metadata"]
    assert meta["managedFields"][0]["manager"] == "kubectl-create"
    r = _kubectl(box, tmp_path, "exec", box.info["etcd_pods"][0], "-n", "kube-system", "--", "etcdctl",
                 "--cacert", PKI + "ca.crt", "--key", PKI + "server.key", "--cert", PKI + "server.crt",
                 "get", "/registry/secrets/default/from-kubectl", "-w", "fields")
    assert r.returncode == 0, r.stderr
    assert b'"Value" : "k8s:enc:kms:v2:kms-plugin:' in r.stdout and b'"Count" : 1' in r.stdout
    assert r.stderr == b""
    r = _kubectl(box, tmp_path, "exec", box.info["etcd_pods"][0], "-n", "kube-system", "--", "sh")
    assert r.returncode != 0 and b"executable file not found in $PATH" in r.stderr
    assert _kubectl(box, tmp_path, "delete", "secret", "from-kubectl").returncode == 0


def test_kubectl_replace_reencrypts_a_plaintext_secret(box, tmp_path):
    """The documented remediation: ``kubectl get secrets -o json | kubectl replace -f -`` (a List)."""
    box.ctl({"write_secret": {"namespace": "default", "name": "old-plain", "with": "identity", "data": {"a": "b"}}})
    assert box.etcdctl_get("/registry/secrets/default/old-plain").startswith(b"k8s\x00")
    listing = _kubectl(box, tmp_path, "get", "secrets", "-n", "default", "-o", "json")
    replaced = subprocess.run(["/usr/bin/kubectl", "replace", "-f", "-"], input=listing.stdout, capture_output=True,
                              env=dict(os.environ, KUBECONFIG=box.kubeconfig, HOME=str(tmp_path)), timeout=60)
    assert replaced.returncode == 0, replaced.stderr
    assert b"secret/old-plain replaced" in replaced.stdout
    assert box.etcdctl_get("/registry/secrets/default/old-plain").startswith(b"k8s:enc:kms:v2:kms-plugin:")
    assert _kubectl(box, tmp_path, "delete", "secret", "old-plain").returncode == 0


# --- ARM -------------------------------------------------------------------------------------------------------------


def arm_post(box, name, action="listUserKubeconfig", token=None, rg=None):
    arm = box.info["arm"]
    url = (f"{arm['url']}/subscriptions/{arm['subscription']}/resourceGroups/{rg or arm['resource_group']}/"
           f"providers/Microsoft.Kubernetes/connectedClusters/{name}/providers/Microsoft.HybridContainerService/"
           f"provisionedClusterInstances/default/{action}?api-version=2024-01-01")
    token = token if token is not None else make_token("https://management.azure.com/")
    return requests.post(url, headers={"Authorization": "Bearer " + token}, verify=box.info["ca_bundle"], timeout=30)


def poll(box, url, times):
    headers = {"Authorization": "Bearer " + make_token("https://management.core.windows.net/")}
    return [requests.get(url, headers=headers, verify=box.info["ca_bundle"], timeout=30).json() for _ in range(times)]


@pytest.mark.parametrize("admin", [False, True])
def test_arm_long_running_operation_returns_the_kubeconfig(box, admin):
    cluster = box.info["arm"]["cluster"]
    r = arm_post(box, cluster, "listAdminKubeconfig" if admin else "listUserKubeconfig")
    assert r.status_code == 202 and r.headers["Retry-After"] == "1" and r.content == b""
    assert "/operationResults/" in r.headers["Location"]
    states = poll(box, r.headers["Azure-AsyncOperation"], 3)
    assert [s["status"] for s in states] == ["InProgress", "InProgress", "Succeeded"]
    final = states[-1]
    assert final["resourceId"].endswith(f"/connectedClusters/{cluster}/providers/Microsoft.HybridContainerService/"
                                        "provisionedClusterInstances/default")
    [kc] = final["properties"]["kubeconfigs"]
    assert kc["name"] == ("credentialAdmin" if admin else "credentialUser")
    cfg = yaml.safe_load(base64.b64decode(kc["value"]))
    assert cfg["clusters"][0]["cluster"]["server"] == box.info["apiserver"]["url"]
    ca = base64.b64decode(cfg["clusters"][0]["cluster"]["certificate-authority-data"])
    assert ca == Path(box.info["pki"]["ca_cert"]).read_bytes()
    assert cfg["current-context"] == f"{cluster}-{'admin' if admin else 'user'}"
    user = cfg["users"][0]["user"]
    if admin:
        assert base64.b64decode(user["client-certificate-data"]) == Path(box.info["pki"]["admin_cert"]).read_bytes()
    else:
        ex = user["exec"]
        assert ex["command"] == "kubelogin" and ex["apiVersion"] == "client.authentication.k8s.io/v1beta1"
        assert ex["provideClusterInfo"] is False
        args = ex["args"]
        assert args[:4] == ["get-token", "--login", "devicecode", "--server-id"]
        assert args[args.index("--server-id") + 1] == AKS_SERVER_ID
        assert args[args.index("--client-id") + 1] == "80faf920-1908-4b52-b5ef-a8e7bedfc67a"
        assert args[args.index("--environment") + 1] == "AzurePublicCloud"
    location = requests.get(r.headers["Location"], verify=box.info["ca_bundle"], timeout=30,
                            headers={"Authorization": "Bearer " + make_token("https://management.azure.com")})
    assert location.status_code == 200 and location.json()["properties"] == final["properties"]


def test_arm_failure_modes(box):
    r = arm_post(box, "missing-cluster")
    assert r.status_code == 404 and r.json() == {"error": {"code": "ResourceNotFound", "message": (
        "The Resource 'Microsoft.Kubernetes/connectedClusters/missing-cluster' under resource group 'sandbox-rg' was "
        "not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix")}}
    assert arm_post(box, box.info["arm"]["cluster"], rg="other-rg").status_code == 404
    r = arm_post(box, "forbidden-cluster", "listAdminKubeconfig")
    err = r.json()["error"]
    assert r.status_code == 403 and err["code"] == "AuthorizationFailed"
    assert err["message"].startswith("The client 'operator@contoso.com' with object id '")
    assert ("does not have authorization to perform action 'Microsoft.HybridContainerService/"
            "provisionedClusterInstances/listAdminKubeconfig/action' over scope '/subscriptions/") in err["message"]
    assert arm_post(box, "useronly-cluster", "listUserKubeconfig").status_code == 202
    assert arm_post(box, "useronly-cluster", "listAdminKubeconfig").status_code == 403

    failing = poll(box, arm_post(box, "failing-cluster").headers["Azure-AsyncOperation"], 3)
    assert failing[-1]["status"] == "Failed" and set(failing[-1]["error"]) == {"code", "message"}
    stuck = poll(box, arm_post(box, "stuck-cluster").headers["Azure-AsyncOperation"], 5)
    assert {s["status"] for s in stuck} == {"InProgress"}
    malformed = poll(box, arm_post(box, "malformed-cluster").headers["Azure-AsyncOperation"], 3)[-1]
    value = base64.b64decode(malformed["properties"]["kubeconfigs"][0]["value"])
    assert malformed["status"] == "Succeeded" and b"clusters" not in value
    r = arm_post(box, "sync-cluster")
    assert r.status_code == 200 and r.json()["status"] == "Succeeded" and r.json()["properties"]["kubeconfigs"]


def test_arm_requires_an_arm_token(box):
    cluster = box.info["arm"]["cluster"]
    for token in ("", make_token(AKS_SERVER_ID), make_token("https://management.azure.com/", lifetime=-60)):
        r = arm_post(box, cluster, token=token)
        assert r.status_code == 401 and r.json()["error"]["code"] == "AuthenticationFailed"
    meta = requests.get(box.info["arm"]["url"] + "/metadata/endpoints?api-version=2022-09-01",
                        verify=box.info["ca_bundle"], timeout=30).json()
    assert meta[0]["resourceManager"] == box.info["arm"]["url"] + "/"


# --- control: ctl, etcd, nodes, etcdctl 3.4, CLI, down -------------------------------------------------------


def test_etcd_stop_and_start_through_ctl(box):
    s = http(box)
    box.ctl({"etcd": "stop"})
    try:
        r = get(s, "/readyz?verbose")
        assert r.status_code == 500 and "[-]etcd failed: reason withheld" in r.text
        assert get(s, "/api/v1/namespaces/default/secrets/db-user-pass").status_code == 500
    finally:
        box.ctl({"etcd": "start"})
    deadline = time.monotonic() + 15
    while get(s, "/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert get(s, "/api/v1/namespaces/default/secrets/db-user-pass").status_code == 200


def test_readyz_faults(box):
    s = http(box)
    box.ctl({"readyz": "unavailable"})
    try:
        assert get(s, "/readyz").status_code == 503
        box.ctl({"readyz": "unreachable"})
        with pytest.raises(requests.ConnectionError):
            get(s, "/readyz?verbose")
        assert get(s, "/version").json()["gitVersion"] == "v1.30.4"
    finally:
        box.ctl({"readyz": None})
    assert get(s, "/readyz").text == "ok"
    with pytest.raises(SandboxError, match="unknown ctl keys"):
        box.ctl({"nonsense": 1})


def test_three_nodes_with_a_broken_one_and_etcdctl_34(tmp_path):
    box3 = Sandbox(tmp_path / "three")
    try:
        box3.up(provider="identity", nodes=3, broken_node=True, etcdctl="3.4", apiserver="emulator")
        info = box3.info
        assert len(info["nodes"]) == 3 and len(info["etcd_pods"]) == 3
        assert info["broken_pods"] == [info["etcd_pods"][0]] and info["etcdctl_version"] == "3.4"
        from kubernetes import client, config
        core3 = client.CoreV1Api(config.new_client_from_config(box3.kubeconfig))
        _, out, _, status = run_exec(core3, info["etcd_pods"][1], ["etcdctl", "version"])
        assert out.startswith(b"etcdctl version: 3.4.") and status["status"] == "Success"
        _, _, _, status = run_exec(core3, info["etcd_pods"][2], ["etcdutl", "version"])
        assert "executable file not found" in status["message"]  # not in the 3.4 image
        r = get(http(box3), f"/api/v1/namespaces/kube-system/pods/{info['etcd_pods'][0]}/exec?command=etcdctl"
                                  "&stdout=true")
        assert r.status_code == 500
        raw = box3.etcdctl_get("/registry/secrets/default/db-user-pass")
        assert raw.startswith(b"k8s\x00")
    finally:
        box3.down()


def test_cli_up_down_and_history(tmp_path):
    d = tmp_path / "cli"
    cmd = [sys.executable, "-m", "tests.sandbox"]
    up = subprocess.run(cmd + ["up", "--dir", str(d), "--provider", "kms-v1", "--history"], cwd=PROJECT,
                        capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stderr
        info = json.loads(up.stdout)
        assert set(info) >= {"dir", "provider", "etcdctl_version", "apiserver", "arm", "control", "etcd", "ca_bundle",
                             "kms_socket", "pids", "nodes", "etcd_pods"}
        assert info["history"]["plaintext"] == ["legacy/app-credentials-2023"] and info["history"]["rotated_to"]
        box = Sandbox(d)
        assert box.etcdctl_get("/registry/secrets/legacy/app-credentials-2023").startswith(b"k8s\x00")
        assert box.etcdctl_get("/registry/secrets/default/db-user-pass").startswith(b"k8s:enc:kms:v1:kms-plugin:")
        env = dict(line.split("=", 1) for line in (d / "etcd.env").read_text().splitlines())
        assert env["ETCDCTL_ENDPOINTS"] == info["etcd"]["endpoint"] and Path(env["ETCDCTL_CACERT"]).exists()
        again = subprocess.run(cmd + ["up", "--dir", str(d)], cwd=PROJECT, capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and "already running" in again.stderr
        kms = subprocess.run(cmd + ["kms", "--dir", str(d), "rotate"], cwd=PROJECT, capture_output=True, text=True,
                             timeout=60)
        assert kms.returncode == 0 and kms.stdout.strip() == "key-0003"
        ctl = subprocess.run(cmd + ["ctl", "--dir", str(d), '{"readyz": null}'], cwd=PROJECT, capture_output=True,
                             text=True, timeout=60)
        assert ctl.returncode == 0 and json.loads(ctl.stdout)["ok"] is True
    finally:
        down = subprocess.run(cmd + ["down", "--dir", str(d)], cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not [p for p in info["pids"].values() if _alive(p)]
    assert subprocess.run(cmd + ["down", "--dir", str(d)], cwd=PROJECT, timeout=60).returncode == 0
    bad = subprocess.run(cmd + ["up", "--dir", str(tmp_path / "bad"), "--provider", "kms-v3"], cwd=PROJECT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_failed_up_cleans_up_after_itself(tmp_path):
    d = tmp_path / "failing"
    with pytest.raises(SandboxError, match="did not listen within"):
        Sandbox(d).up(provider="kms-v2", timeout=0.001)
    assert processes_mentioning(str(d)) == []
    with pytest.raises(SandboxError, match="unknown provider"):
        Sandbox(d).up(provider="rot13")
