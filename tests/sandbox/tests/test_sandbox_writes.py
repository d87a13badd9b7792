"""The sandbox's secret writes, checked from etcd (host-side etcdctl: ModRevision and the stored bytes) and through
the API, against what kube-apiserver 1.30 does (sources cited in tests/sandbox/README.md, "Writes"):

- an update whose encoding is unchanged is not written unless the read was stale (etcd3 GuaranteedUpdate); stale:
  a provider other than the first (plaintext, a local key), KMS v2 another key id; KMS v1 is not stale after a
  KEK rotation;
- managedFields as the field manager computes them (manager, operation, time only when the operation took a
  field, timestamp-only changes reverted, no tracking started on an object without managedFields);
- 409 Conflict on a resourceVersion (or UID) mismatch, unconditional update without resourceVersion;
- immutable secrets (422), ``type`` always immutable;
- /metrics (KMS v2 key-id-hash metrics, 403 for the restricted user);
- the ``writes`` faults: APF 429 with Retry-After, a concurrent writer, secrets the API cannot decrypt.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time

import pytest
import requests

from tests.sandbox import codec
from tests.support.stored import written_under
from tests.sandbox.control import Sandbox
from tests.sandbox.processes.kms_client import KMSClient
from tests.sandbox.emulator.metrics import apiserver_id, sha256_label
from tests.sandbox.transformers import _cbc_encrypt

V1_PREFIX = b"k8s:enc:kms:v1:kms-plugin:"
V2_PREFIX = b"k8s:enc:kms:v2:kms-plugin:"
CONFLICT = ('Operation cannot be fulfilled on secrets "{}": the object has been modified; please apply your changes '
            "to the latest version and try again")
IMMUTABLE = "Forbidden: field is immutable when `immutable` is set"


# --- sandboxes and helpers -----------------------------------------------------------------------------------


def _box(tmp_path_factory, provider):
    box = Sandbox(tmp_path_factory.mktemp(provider))
    box.up(provider=provider, apiserver="emulator")
    return box


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    box = _box(tmp_path_factory, "kms-v2")
    yield box
    box.down()


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    box = _box(tmp_path_factory, "kms-v1")
    yield box
    box.down()


def http(box, user="admin", agent=None):
    s = requests.Session()
    s.trust_env = False
    s.verify = box.info["pki"]["ca_cert"]
    if user:
        pki = box.info["pki"]
        s.cert = (pki[f"{user}_cert"], pki[f"{user}_key"])
    if agent:
        s.headers["User-Agent"] = agent
    s.base = box.info["apiserver"]["url"]
    return s


def path(ns, name=""):
    return f"/api/v1/namespaces/{ns}/secrets" + (f"/{name}" if name else "")


def api(s, method, p, body=None, **params):
    return s.request(method, s.base + p, json=body, params=params or None, timeout=30)


def create(box, ns, name, data, manager="kubectl-create", **extra):
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
            "stringData": data, **extra}
    api(http(box), "DELETE", path(ns, name))
    r = api(http(box), "POST", path(ns), body, fieldManager=manager)
    assert r.status_code == 201, r.text
    return r.json()


def get(box, ns, name):
    r = api(http(box), "GET", path(ns, name))
    assert r.status_code == 200, r.text
    return r.json()


def put(box, obj, agent=None, **params):
    m = obj["metadata"]
    return api(http(box, agent=agent), "PUT", path(m["namespace"], m["name"]), obj, **params)


def etcd(box, ns, name):
    """(ModRevision, raw value) of a secret, read with the host's etcdctl 3.5."""
    r = box.etcdctl("get", f"/registry/secrets/{ns}/{name}", "-w", "json", version="3.5")
    assert r.returncode == 0, r.stderr
    kvs = json.loads(r.stdout).get("kvs") or []
    return (kvs[0]["mod_revision"], base64.b64decode(kvs[0]["value"])) if kvs else (None, None)


def managers(obj):
    return [(e.get("manager", ""), e["operation"], e.get("time")) for e in obj["metadata"].get("managedFields", [])]


# --- 1. no-op writes are skipped unless stale ------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["v1", "v2"])
def test_unchanged_put_writes_nothing(request, provider):
    box = request.getfixturevalue(provider)
    obj = create(box, "default", "noop", {"k": "v"})
    rev, value = etcd(box, "default", "noop")
    r = put(box, obj)
    assert r.status_code == 200, r.text
    assert r.json()["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"] == str(rev)
    assert etcd(box, "default", "noop") == (rev, value)
    assert r.json()["metadata"]["managedFields"] == obj["metadata"]["managedFields"]


def test_kms_v2_rotation_makes_every_value_stale(v2):
    obj = create(v2, "default", "v2-stale", {"k": "v"})
    rev, value = etcd(v2, "default", "v2-stale")
    before = written_under(value)
    new_key = v2.kms("rotate")
    r = put(v2, obj)
    assert r.status_code == 200, r.text
    rev2, value2 = etcd(v2, "default", "v2-stale")
    assert rev2 > rev and written_under(value2) == f"v2:{new_key}" != before
    assert r.json()["metadata"]["resourceVersion"] == str(rev2)
    assert managers(r.json()) == managers(obj)  # rewritten as it was: no entry added, no time changed
    assert put(v2, r.json()).json()["metadata"]["resourceVersion"] == str(rev2)  # now current: no-op again
    assert etcd(v2, "default", "v2-stale")[0] == rev2


def test_kms_v1_rotation_is_not_stale_the_value_stays_under_the_old_kek(v1):
    obj = create(v1, "default", "v1-kept", {"k": "v"})
    rev, value = etcd(v1, "default", "v1-kept")
    old_kek = written_under(value)
    new_kek = v1.kms("rotate")
    r = put(v1, obj)
    assert r.status_code == 200, r.text
    assert etcd(v1, "default", "v1-kept") == (rev, value)
    assert old_kek != f"v1:{new_kek}"


def test_kms_v1_annotation_forces_the_write_under_the_new_kek(v1):
    obj = create(v1, "default", "v1-annotated", {"k": "v"})
    rev, _ = etcd(v1, "default", "v1-annotated")
    new_kek = v1.kms("rotate")
    obj["metadata"]["annotations"] = {"kmsverify.aksarc/reencrypted-at": "2026-01-01T00:00:00Z"}
    r = put(v1, obj, fieldManager="kmsverify")
    assert r.status_code == 200, r.text
    rev2, value2 = etcd(v1, "default", "v1-annotated")
    assert rev2 > rev and written_under(value2) == f"v1:{new_kek}"
    mf = {e["manager"]: e for e in r.json()["metadata"]["managedFields"]}
    assert set(mf) == {"kubectl-create", "kmsverify"}
    assert mf["kmsverify"]["fieldsV1"] == {"f:metadata": {"f:annotations": {".": {},
                                                                          "f:kmsverify.aksarc/reencrypted-at": {}}}}
    assert mf["kubectl-create"] == obj["metadata"]["managedFields"][0]


@pytest.mark.parametrize("provider", ["v1", "v2"])
def test_plaintext_written_before_encryption_is_stale(request, provider):
    box = request.getfixturevalue(provider)
    box.ctl({"write_secret": {"namespace": "default", "name": "plain-old", "with": "identity", "data": {"a": "b"}}})
    rev, value = etcd(box, "default", "plain-old")
    assert written_under(value) == "identity"
    r = put(box, get(box, "default", "plain-old"))
    assert r.status_code == 200
    rev2, value2 = etcd(box, "default", "plain-old")
    assert rev2 > rev and written_under(value2).startswith(provider + ":")


def test_local_key_secret_read_by_a_later_provider_is_stale(v1):
    v1.ctl({"write_secret": {"namespace": "default", "name": "aescbc-old", "with": "aescbc", "data": {"a": "b"}}})
    rev, value = etcd(v1, "default", "aescbc-old")
    assert written_under(value) == "aescbc"
    put(v1, get(v1, "default", "aescbc-old"))
    rev2, value2 = etcd(v1, "default", "aescbc-old")
    assert rev2 > rev and written_under(value2).startswith("v1:")


def test_kms_v1_value_read_through_the_cbc_fallback_is_stale(v1):
    """A pre-1.25 KMS v1 value (AES-CBC under the DEK): unionTransformers{GCM, CBC} reads it with its second
    transformer, a stale read."""
    obj = create(v1, "default", "v1-cbc", {"k": "v"})
    rev, value = etcd(v1, "default", "v1-cbc")
    client = KMSClient(v1.info["kms_socket"], "v1")
    try:
        dek = bytes(range(32))
        enc_dek, _, _ = client.encrypt(dek)
    finally:
        client.close()
    plain = codec.encode_secret({k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
                                | {"metadata": {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}})
    cbc = V1_PREFIX + len(enc_dek).to_bytes(2, "big") + enc_dek + _cbc_encrypt(dek, plain)
    assert v1.etcdctl("put", "/registry/secrets/default/v1-cbc", input=cbc).returncode == 0
    rev_cbc, _ = etcd(v1, "default", "v1-cbc")
    current = get(v1, "default", "v1-cbc")
    assert current["data"] == obj["data"]
    put(v1, current)
    rev2, value2 = etcd(v1, "default", "v1-cbc")
    assert rev2 > rev_cbc > rev and value2 != cbc and written_under(value2).startswith("v1:")


def test_kubernetes_client_get_then_replace(v2):
    """The product's pattern through the Python kubernetes client (which sends managedFields back, times with
    ``+00:00``): unchanged is a no-op, after a rotation a rewrite, a stale resourceVersion a 409, a throttled
    write a 429 with Retry-After."""
    from kubernetes.client.exceptions import ApiException

    from tests.conftest import core_api
    core = core_api(v2)
    create(v2, "default", "client", {"k": "v"})
    s = core.read_namespaced_secret("client", "default")
    rev, value = etcd(v2, "default", "client")
    same = core.replace_namespaced_secret("client", "default", s)
    assert same.metadata.resource_version == s.metadata.resource_version == str(rev)
    assert etcd(v2, "default", "client") == (rev, value)
    new_key = v2.kms("rotate")
    moved = core.replace_namespaced_secret("client", "default", same)
    rev2, value2 = etcd(v2, "default", "client")
    assert moved.metadata.resource_version == str(rev2) != str(rev) and written_under(value2) == f"v2:{new_key}"
    assert [(m.manager, m.time) for m in moved.metadata.managed_fields] == [
        (m.manager, m.time) for m in s.metadata.managed_fields]
    with pytest.raises(ApiException) as conflict:
        core.replace_namespaced_secret("client", "default", same)  # the resourceVersion before the rewrite
    assert conflict.value.status == 409 and json.loads(conflict.value.body)["reason"] == "Conflict"
    v2.ctl({"writes": {"throttle": {"share": 1, "retry_after": 1}}})
    try:
        with pytest.raises(ApiException) as throttled:  # urllib3 itself retries a PUT on 429 with Retry-After
            core.replace_namespaced_secret("client", "default", moved)
    finally:
        state = v2.ctl({"writes": {"throttle": None}})["result"]["writes"]["state"]
    assert throttled.value.status == 429 and throttled.value.headers["Retry-After"] == "1"
    assert state["throttle"] is None
    assert etcd(v2, "default", "client")[0] == rev2


# --- 2. managedFields ------------------------------------------------------------------------------------------


def test_manager_from_field_manager_or_user_agent(v2):
    obj = create(v2, "default", "mf-agent", {"k": "v"})
    obj["data"]["k"] = base64.b64encode(b"changed").decode()
    r = put(v2, obj, agent="reencrypt-tool/1.2.3 (linux/amd64) kubernetes/abcdef")
    assert r.status_code == 200, r.text
    mf = {e["manager"]: e for e in r.json()["metadata"]["managedFields"]}
    assert {(m, e["operation"], e["apiVersion"], e["fieldsType"]) for m, e in mf.items()} == {
        ("kubectl-create", "Update", "v1", "FieldsV1"), ("reencrypt-tool", "Update", "v1", "FieldsV1")}
    assert mf["reencrypt-tool"]["fieldsV1"] == {"f:data": {"f:k": {}}}  # the changed field moved to its writer
    assert mf["kubectl-create"]["fieldsV1"] == {"f:data": {}, "f:type": {}}  # still owns the map: member, no children
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", mf["reencrypt-tool"]["time"])
    obj2 = r.json()
    obj2["data"]["k"] = base64.b64encode(b"again").decode()
    r2 = put(v2, obj2, fieldManager="kmsverify")
    assert {e["manager"] for e in r2.json()["metadata"]["managedFields"]} == {
        "kubectl-create", "kmsverify"}  # reencrypt-tool owned nothing more: its entry is gone


def test_entries_sorted_by_operation_time_then_manager(v2):
    obj = create(v2, "default", "mf-sort", {"k": "v"}, manager="zz-creator")
    obj["metadata"]["labels"] = {"a": "b"}
    r = put(v2, obj, fieldManager="aa-labeler")
    mf = r.json()["metadata"]["managedFields"]
    expected = sorted(mf, key=lambda e: (e["operation"], e["time"], e["manager"]))
    assert mf == expected and len(mf) == 2


def test_no_op_by_a_new_manager_adds_no_entry(v2):
    obj = create(v2, "default", "mf-noop", {"k": "v"})
    rev, _ = etcd(v2, "default", "mf-noop")
    r = put(v2, obj, fieldManager="kubectl-replace")
    assert managers(r.json()) == managers(obj)
    assert etcd(v2, "default", "mf-noop")[0] == rev


def test_time_moves_only_for_the_manager_that_took_a_field(v2):
    obj = create(v2, "default", "mf-time", {"k": "v"})
    created = managers(obj)[0][2]
    time.sleep(1.1)
    obj["metadata"]["labels"] = {"team": "a"}
    r = put(v2, obj, fieldManager="labeler")
    mf = r.json()["metadata"]["managedFields"]
    assert mf[0]["manager"] == "kubectl-create" and mf[0]["time"] == created
    assert mf[1]["manager"] == "labeler" and mf[1]["time"] > created
    assert mf[1]["fieldsV1"] == {"f:metadata": {"f:labels": {".": {}, "f:team": {}}}}


def test_timestamp_only_change_in_sent_managed_fields_is_reverted(v2):
    obj = create(v2, "default", "mf-ts", {"k": "v"})
    rev, value = etcd(v2, "default", "mf-ts")
    obj["metadata"]["managedFields"][0]["time"] = "2020-01-01T00:00:00Z"
    r = put(v2, obj)
    assert r.status_code == 200
    assert etcd(v2, "default", "mf-ts") == (rev, value)
    assert r.json()["metadata"]["managedFields"][0]["time"] != "2020-01-01T00:00:00Z"


def test_object_without_managed_fields_does_not_start_tracking(v2):
    raw = codec.encode_secret({"metadata": {"name": "mf-none", "namespace": "default", "uid": "u-1",
                                            "creationTimestamp": "2024-01-01T00:00:00Z"},
                               "data": {"k": base64.b64encode(b"v").decode()}, "type": "Opaque"})
    assert v2.etcdctl("put", "/registry/secrets/default/mf-none", input=raw).returncode == 0
    obj = get(v2, "default", "mf-none")
    assert "managedFields" not in obj["metadata"]
    obj["metadata"]["annotations"] = {"a": "b"}
    r = put(v2, obj, fieldManager="someone")
    assert r.status_code == 200 and "managedFields" not in r.json()["metadata"]
    assert r.json()["metadata"]["annotations"] == {"a": "b"}


def test_empty_managed_fields_resets_them(v2):
    obj = create(v2, "default", "mf-reset", {"k": "v"})
    obj["metadata"]["managedFields"] = []
    r = put(v2, obj)
    assert r.status_code == 200 and "managedFields" not in r.json()["metadata"]
    assert "managedFields" not in get(v2, "default", "mf-reset")["metadata"]


def test_more_than_ten_update_managers_merge_into_ancient_changes(v2):
    obj = create(v2, "default", "mf-cap", {"k": "v"})
    for i in range(11):
        obj["metadata"]["labels"] = {**(obj["metadata"].get("labels") or {}), f"l{i}": "x"}
        obj = put(v2, obj, fieldManager=f"m{i:02d}").json()
    names = [e["manager"] for e in obj["metadata"]["managedFields"]]
    assert len(names) == 10 and "ancient-changes" in names and "kubectl-create" not in names


# --- 3. conflicts ----------------------------------------------------------------------------------------------


def test_stale_resource_version_is_409_and_nothing_is_written(v2):
    obj = create(v2, "default", "conflict", {"k": "v"})
    obj["data"]["k"] = base64.b64encode(b"first").decode()
    assert put(v2, obj).status_code == 200
    rev, value = etcd(v2, "default", "conflict")
    obj["data"]["k"] = base64.b64encode(b"second").decode()
    r = put(v2, obj)  # still the first resourceVersion
    assert r.status_code == 409
    assert r.json() == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": CONFLICT.format("conflict"), "reason": "Conflict",
                        "details": {"name": "conflict", "kind": "secrets"}, "code": 409}
    assert etcd(v2, "default", "conflict") == (rev, value)


def test_put_without_resource_version_is_unconditional(v2):
    obj = create(v2, "default", "uncond", {"k": "v"})
    rev, _ = etcd(v2, "default", "uncond")
    obj["metadata"].pop("resourceVersion")
    obj["data"]["k"] = base64.b64encode(b"w").decode()
    r = put(v2, obj)
    assert r.status_code == 200, r.text
    rev2, _ = etcd(v2, "default", "uncond")
    assert rev2 > rev and r.json()["metadata"]["resourceVersion"] == str(rev2)
    assert base64.b64decode(get(v2, "default", "uncond")["data"]["k"]) == b"w"


def test_uid_precondition_of_a_recreated_secret_is_409(v2):
    obj = create(v2, "default", "recreated", {"k": "v"})
    new = create(v2, "default", "recreated", {"k": "v"})  # deleted and created again: another uid
    obj["metadata"].pop("resourceVersion")
    r = put(v2, obj)
    assert r.status_code == 409 and r.json()["reason"] == "Conflict"
    assert r.json()["message"] == (
        'Operation cannot be fulfilled on secrets "recreated": StorageError: invalid object, Code: 4, Key: '
        f'/registry/secrets/default/recreated, ResourceVersion: 0, AdditionalErrorMsg: Precondition failed: UID in '
        f'precondition: {obj["metadata"]["uid"]}, UID in object meta: {new["metadata"]["uid"]}')


# --- 4. immutable secrets --------------------------------------------------------------------------------------


def test_immutable_secret_rejects_data_and_immutable_changes_but_takes_metadata(v2):
    obj = create(v2, "default", "frozen", {"k": "v"}, immutable=True)
    rev, value = etcd(v2, "default", "frozen")
    changed = json.loads(json.dumps(obj))
    changed["data"]["k"] = base64.b64encode(b"new").decode()
    r = put(v2, changed)
    assert r.status_code == 422
    assert r.json() == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": f'Secret "frozen" is invalid: data: {IMMUTABLE}', "reason": "Invalid",
                        "details": {"name": "frozen", "kind": "Secret", "causes": [
                            {"reason": "FieldValueForbidden", "message": IMMUTABLE, "field": "data"}]},
                        "code": 422}
    thawed = json.loads(json.dumps(obj))
    thawed["immutable"] = False
    r = put(v2, thawed)
    assert r.status_code == 422 and r.json()["message"] == f'Secret "frozen" is invalid: immutable: {IMMUTABLE}'
    assert etcd(v2, "default", "frozen") == (rev, value)
    obj["metadata"]["annotations"] = {"note": "allowed"}
    r = put(v2, obj)
    assert r.status_code == 200 and etcd(v2, "default", "frozen")[0] > rev
    assert get(v2, "default", "frozen")["metadata"]["annotations"] == {"note": "allowed"}


def test_type_is_immutable_for_every_secret(v2):
    obj = create(v2, "default", "typed", {"k": "v"})
    obj["type"] = "kubernetes.io/basic-auth"
    r = put(v2, obj)
    assert r.status_code == 422
    assert r.json()["message"] == 'Secret "typed" is invalid: type: Invalid value: "kubernetes.io/basic-auth": ' \
                                  "field is immutable"


# --- 5. /metrics -----------------------------------------------------------------------------------------------


def scrape(box, user="admin"):
    return http(box, user).get(box.info["apiserver"]["url"] + "/metrics", timeout=30)


def samples(text):
    """{(name, frozenset(labels)): value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        assert m, line
        labels = frozenset(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def test_metrics_key_id_hashes_follow_writes_and_rotation(v2):
    key_id = KMSClient(v2.info["kms_socket"], "v2").key_id()
    ident = sha256_label(apiserver_id(v2.info["nodes"][0]))
    labels = lambda kind, kid: frozenset({("apiserver_id_hash", ident), ("key_id_hash", sha256_label(kid)),  # noqa: E731
                                          ("provider_name", "kms-plugin"), ("transformation_type", kind)})
    before = samples(scrape(v2).text)
    create(v2, "default", "metered", {"k": "v"})
    r = scrape(v2)
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    after = samples(r.text)
    total = "apiserver_envelope_encryption_key_id_hash_total"
    assert after[(total, labels("to_storage", key_id))] == before.get((total, labels("to_storage", key_id)), 0) + 1
    assert (total, labels("from_storage", key_id)) in after  # the watch cache decodes the write
    assert ("apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds", labels("to_storage", key_id)) in after
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", sha256_label(key_id))
    assert sha256_label(key_id) == "sha256:" + hashlib.sha256(key_id.encode()).hexdigest()
    new_key = v2.kms("rotate")
    put(v2, get(v2, "default", "metered"))  # stale: rewritten under the new key
    final = samples(scrape(v2).text)
    assert final[(total, labels("to_storage", new_key))] == 1
    status = "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds"
    assert any(n == status and ("key_id_hash", sha256_label(new_key)) in ls for n, ls in final)
    assert ("apiserver_storage_transformation_operations_total",
            frozenset({("status", "OK"), ("transformation_type", "to_storage"),
                       ("transformer_prefix", "k8s:enc:kms:v2:kms-plugin:")})) in final


def test_metrics_kms_v1_has_no_key_id_metrics(v1):
    text = scrape(v1).text
    assert "apiserver_envelope_encryption_dek_cache_fill_percent" in text
    assert "key_id_hash" not in text
    assert 'transformer_prefix="k8s:enc:kms:v1:kms-plugin:"' in text


def test_metrics_forbidden_for_the_restricted_user_and_401_without_credentials(v2):
    r = scrape(v2, "restricted")
    assert r.status_code == 403
    assert r.json() == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": 'forbidden: User "restricted-user" cannot get path "/metrics"',
                        "reason": "Forbidden", "details": {}, "code": 403}
    assert scrape(v2, None).status_code == 401


def test_metrics_fixtures_have_the_sandbox_shape(v1, v2):
    """tests/fixtures/metrics/kms-v{1,2}.txt were captured from these pages: every family of a fixture is on the
    live page with the same HELP and TYPE lines and the same label names."""
    from tests.support.paths import FIXTURES

    def shape(text):
        return {(n, frozenset(k for k, _ in ls)) for n, ls in samples(text)}

    def meta(text):
        return {ln for ln in text.splitlines() if ln.startswith("#")}

    for box, name in ((v1, "kms-v1"), (v2, "kms-v2")):
        fixture = (FIXTURES / "metrics" / f"{name}.txt").read_text()
        live = scrape(box).text
        assert shape(fixture) <= shape(live)
        assert meta(fixture) <= meta(live)
        assert ("key_id_hash" in fixture) == (name == "kms-v2")


# --- 6. faults: 429, a concurrent writer, undecryptable secrets ------------------------------------------------


def test_throttled_writes_get_429_with_retry_after(v2):
    obj = create(v2, "default", "throttled", {"k": "v"})
    v2.ctl({"writes": {"throttle": {"share": 0.5, "retry_after": 3}}})
    try:
        codes = []
        for i in range(4):
            obj["data"]["k"] = base64.b64encode(f"v{i}".encode()).decode()
            rev_before = etcd(v2, "default", "throttled")[0]
            r = put(v2, obj)
            codes.append(r.status_code)
            if r.status_code == 429:
                assert r.text == "Too many requests, please try again later.\n"
                assert r.headers["Retry-After"] == "3"
                assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
                assert r.headers["X-Kubernetes-Pf-Flowschema-Uid"] and r.headers["X-Kubernetes-Pf-Prioritylevel-Uid"]
                assert etcd(v2, "default", "throttled")[0] == rev_before
            else:
                obj = r.json()
        assert codes == [200, 429, 200, 429]  # every 1/share-th write
        v2.ctl({"writes": {"throttle": {"share": 1, "retry_after": 1}}})
        r = api(http(v2, "restricted"), "PUT", path("default", "throttled"), obj)
        assert r.status_code == 429  # APF comes before authorization
        v2.ctl({"writes": {"throttle": {"share": 1, "retry_after": 1, "exempt_masters": True}}})
        assert put(v2, obj).status_code == 200  # system:masters: the exempt priority level
        assert api(http(v2), "GET", path("default", "throttled")).status_code == 200  # reads are not throttled
    finally:
        state = v2.ctl({"writes": {"throttle": None}})["result"]["writes"]["state"]
    assert state["throttle"] is None


def test_concurrent_writer_changes_data_and_makes_puts_conflict(v2):
    obj = create(v2, "default", "busy", {"k": "v"})
    v2.ctl({"writes": {"writer": {"secrets": ["default/busy"], "interval": 0.05, "key": "rotated"}}})
    try:
        deadline = time.monotonic() + 10
        while get(v2, "default", "busy")["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]:
            assert time.monotonic() < deadline, "the writer did not write"
            time.sleep(0.05)
        r = put(v2, obj)
        assert r.status_code == 409 and r.json()["message"] == CONFLICT.format("busy")
        current = get(v2, "default", "busy")
        assert "rotated" in current["data"]
        assert {e["manager"] for e in current["metadata"]["managedFields"]} == {"kubectl-create", "sandbox-writer"}
    finally:
        stopped = v2.ctl({"writes": {"writer": None}})["result"]["writes"]
    assert stopped["writer"]["writes"] >= 1 and not stopped["state"]["writer"]["running"]
    rev = etcd(v2, "default", "busy")[0]
    time.sleep(0.3)
    assert etcd(v2, "default", "busy")[0] == rev


@pytest.mark.parametrize("provider", ["v1", "v2"])
def test_undecryptable_secret_fails_get_put_and_list_as_kube_apiserver(request, provider):
    box = request.getfixturevalue(provider)
    box.ctl({"writes": {"undecryptable": {"namespace": "broken", "name": "lost-key", "data": {"k": "v"},
                                          "mode": "unknown-key"}}})
    try:
        grpc = "rpc error: code = InvalidArgument desc = failed to decrypt: unknown key id 'key-9999'"
        err = grpc if provider == "v1" else f"failed to decrypt DEK, error: {grpc}"
        s = http(box)
        r = api(s, "GET", path("broken", "lost-key"))
        assert r.status_code == 500
        assert r.json() == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": f"Internal error occurred: {err}", "reason": "InternalError",
                            "details": {"causes": [{"message": err}]}, "code": 500}
        r = api(s, "PUT", path("broken", "lost-key"), {"metadata": {"name": "lost-key"}, "data": {}})
        assert r.status_code == 500 and r.json()["message"] == f"Internal error occurred: {err}"
        for p in (path("broken"), "/api/v1/secrets"):
            r = api(s, "GET", p)
            assert r.status_code == 500
            assert r.json()["message"] == ('Internal error occurred: unable to transform key '
                                           f'"/registry/secrets/broken/lost-key": {err}')
    finally:
        box.etcdctl("del", "/registry/secrets/broken/lost-key")


def test_garbage_after_a_valid_prefix(v1, v2):
    for box, err in ((v1, "invalid data encountered by envelope transformer: failed to read uint16 length prefixed "
                          "data"),
                     (v2, "proto: cannot parse invalid wire-format data")):
        box.ctl({"writes": {"undecryptable": {"namespace": "broken", "name": "garbage", "mode": "garbage"}}})
        try:
            raw = etcd(box, "broken", "garbage")[1]
            assert raw.startswith(V1_PREFIX if box is v1 else V2_PREFIX)
            r = api(http(box), "GET", path("broken", "garbage"))
            assert r.status_code == 500 and r.json()["message"] == f"Internal error occurred: {err}"
        finally:
            box.etcdctl("del", "/registry/secrets/broken/garbage")
