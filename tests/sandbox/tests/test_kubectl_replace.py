"""Cross-check of the write model with the machine's real kubectl: the documented re-encryption procedure

    kubectl get secrets -A -o json | kubectl replace -f -

run on a KMS v1 and a KMS v2 sandbox after a key rotation, twice (rotate, replace, rotate, replace), recording
from etcd which secrets were rewritten (ModRevision) and under which key.

What the Kubernetes sources say (tests/sandbox/README.md, "kubectl replace after a key rotation"): kubectl
replace PUTs each object unchanged with ``fieldManager=kubectl-replace``; an unchanged update changes no field,
so the field manager adds no ``kubectl-replace`` entry and the encoding equals the stored one; etcd3
GuaranteedUpdate then writes only stale values. KMS v2: every value under the old key id is stale, so each
round rewrites all of them under the new key. KMS v1: a KEK rotation leaves nothing stale (the apiserver never
sees the KEK), so neither round rewrites a KMS v1 value: they all stay under the first KEK. Values read by a
later provider (plaintext from before encryption, a local key from before KMS) are stale under both: the first
round rewrites them, and from then on they are current.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess

import pytest

from tests.sandbox.control import Sandbox
from tests.support.stored import written_under

V1_PREFIX = b"k8s:enc:kms:v1:kms-plugin:"
V2_PREFIX = b"k8s:enc:kms:v2:kms-plugin:"
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"


def kubectl_or_fail() -> str:
    if not shutil.which(KUBECTL):
        pytest.fail("kubectl not found: install kubectl (1.32 at /usr/bin/kubectl on the test machine)")
    return KUBECTL


def snapshot(box) -> dict:
    """{namespace/name: (ModRevision, key it is under)} of every secret in etcd (host etcdctl 3.5)."""
    r = box.etcdctl("get", "/registry/secrets/", "--prefix", "-w", "json", version="3.5")
    assert r.returncode == 0, r.stderr
    out = {}
    for kv in json.loads(r.stdout).get("kvs") or []:
        key = base64.b64decode(kv["key"]).decode()[len("/registry/secrets/"):]
        out[key] = (kv["mod_revision"], written_under(base64.b64decode(kv["value"])))
    return out


def replace_all(box) -> subprocess.CompletedProcess:
    """The pipeline exactly as documented, with the sandbox's kubeconfig."""
    k = kubectl_or_fail()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(box.dir), "KUBECONFIG": box.kubeconfig}
    got = subprocess.run([k, "get", "secrets", "-A", "-o", "json"], capture_output=True, env=env, timeout=120)
    assert got.returncode == 0, got.stderr.decode()
    listed = json.loads(got.stdout)
    assert listed["kind"] == "List" and all("managedFields" not in i["metadata"] for i in listed["items"])
    done = subprocess.run([k, "replace", "-f", "-"], input=got.stdout, capture_output=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().count(" replaced") == len(listed["items"])
    return done


def rewritten(before: dict, after: dict) -> set:
    return {k for k in after if after[k][0] != before.get(k, (None,))[0]}


@pytest.fixture(params=["kms-v1", "kms-v2"])
def box(request, tmp_path):
    sandbox = Sandbox(tmp_path / request.param)
    sandbox.up(provider=request.param)  # the real kube-apiserver: its GuaranteedUpdate, not the model of it
    yield sandbox
    sandbox.down()


def test_kubectl_replace_after_rotation(box):
    provider = box.info["provider"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(box.dir), "KUBECONFIG": box.kubeconfig}
    for name in ("app-a", "app-b"):
        r = subprocess.run([kubectl_or_fail(), "create", "secret", "generic", name, "-n", "default",
                            f"--from-literal=password={name}-pw"], capture_output=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr.decode()
    box.ctl({"write_secret": {"namespace": "default", "name": "before-encryption", "with": "identity",
                              "data": {"token": "t"}}})
    stale_by_provider = {"default/before-encryption"}
    if provider == "kms-v1":
        box.ctl({"write_secret": {"namespace": "default", "name": "before-kms", "with": "aescbc",
                                  "data": {"token": "t"}}})
        stale_by_provider.add("default/before-kms")
    start = snapshot(box)
    first_key = next(k for _, k in start.values() if k.startswith(("v1:", "v2:")))
    kms_written = {n for n, (_, k) in start.items() if k.startswith(("v1:", "v2:"))}

    key2 = box.kms("rotate")
    replace_all(box)
    round1 = snapshot(box)
    key3 = box.kms("rotate")
    replace_all(box)
    round2 = snapshot(box)
    api = "v1" if provider == "kms-v1" else "v2"
    print(f"\n{provider}: start {json.dumps(start)}\nround 1 (after rotation to {key2}): rewritten "
          f"{sorted(rewritten(start, round1))} {json.dumps(round1)}\nround 2 (after rotation to {key3}): rewritten "
          f"{sorted(rewritten(round1, round2))} {json.dumps(round2)}")

    if provider == "kms-v1":
        # Round 1 rewrites only what a later provider read (stale); every KMS v1 value stays under the first KEK.
        assert rewritten(start, round1) == stale_by_provider
        assert {n: k for n, (_, k) in round1.items() if n in kms_written} == {n: first_key for n in kms_written}
        assert {round1[n][1] for n in stale_by_provider} == {f"v1:{key2}"}
        # Round 2: nothing at all; the secrets rewritten in round 1 stay under the second KEK.
        assert rewritten(round1, round2) == set()
        assert round2 == round1
    else:
        # Every value is stale after each rotation: all rewritten under the newest key id, twice.
        assert rewritten(start, round1) == set(start)
        assert {k for _, k in round1.values()} == {f"{api}:{key2}"}
        assert rewritten(round1, round2) == set(start)
        assert {k for _, k in round2.values()} == {f"{api}:{key3}"}

    # An unchanged replace changes no field: kubectl-replace never becomes a manager.
    got = subprocess.run([kubectl_or_fail(), "get", "secrets", "-A", "-o", "json", "--show-managed-fields"],
                         capture_output=True, env=env, timeout=60)
    items = json.loads(got.stdout)["items"]
    assert not [i["metadata"]["name"] for i in items
                if any(e.get("manager") == "kubectl-replace" for e in i["metadata"].get("managedFields", []))]
