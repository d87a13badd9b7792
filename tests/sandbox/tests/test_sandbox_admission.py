"""The sandbox's validating admission webhook (tests/sandbox/apiserver/admission.py): what it decides, and what the real
kube-apiserver answers a client once ``Sandbox.admission_webhook()`` installed it (the shapes
azext_kmsverify/verdict/admission.py reads, recorded in tests/sandbox/README.md)."""

import json
import time
from pathlib import Path

import pytest

from tests.sandbox.apiserver import admission
from tests.sandbox.control import Sandbox, SandboxError

SECRETS = "/api/v1/namespaces/default/secrets"
PREFIX = 'admission webhook "deny-secret-updates.sandbox.kmsverify.test" denied the request'


def _review(operation="UPDATE", resource="secrets", labels=None, old_labels=None):
    meta = {"name": "s", "namespace": "n", "labels": labels or {}}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "operation": operation, "resource": {"group": "", "version": "v1",
                                                                           "resource": resource},
                        "object": {"metadata": meta}, "oldObject": {"metadata": {"labels": old_labels or {}}}}}


@pytest.mark.parametrize("review, allowed, status", [
    (_review(labels={admission.LABEL: "true"}), False,
     {"code": 403, "reason": "Forbidden", "message": admission.MESSAGE}),
    (_review(old_labels={admission.LABEL: "true"}), False,  # taking the label off is an update of a labelled one
     {"code": 403, "reason": "Forbidden", "message": admission.MESSAGE}),
    (_review(labels={admission.LABEL: "silent"}), False, None),
    (_review(labels={admission.LABEL: "false"}), True, None),
    (_review(labels={"app": "web"}), True, None),
    (_review(operation="CREATE", labels={admission.LABEL: "true"}), True, None),
    (_review(resource="configmaps", labels={admission.LABEL: "true"}), True, None),
])
def test_decide(review, allowed, status):
    answer = admission.decide(review)
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == "u-1"
    assert answer["response"]["allowed"] is allowed
    assert answer["response"].get("status") == status


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    b = Sandbox(tmp_path_factory.mktemp("admission"))
    b.up(provider="kms-v2")
    yield b
    b.down()


def _until(request, status, timeout=30.0):
    """The API server picks webhook configurations up from its informer, within a second or so."""
    deadline = time.monotonic() + timeout
    while True:
        answer = request()
        if answer[0] == status or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


def _secret(box, name, label=None):
    return box.create_secret("default", name, {"k": "v"}, labels={admission.LABEL: label} if label else None)


def test_the_real_server_calls_it_and_answers_with_its_name(box):
    assert box.admission_webhook() == admission.NAME
    assert box.admission_webhook() == admission.NAME  # idempotent
    loud, silent, other = _secret(box, "loud", "true"), _secret(box, "silent", "silent"), _secret(box, "other")
    status, body = box.api("PUT", f"{SECRETS}/loud", loud)
    assert (status, body["code"], body["reason"], body["message"]) == (403, 403, "Forbidden",
                                                                       f"{PREFIX}: {admission.MESSAGE}")
    status, body = box.api("PUT", f"{SECRETS}/silent", silent)
    assert (status, body["code"], "reason" in body, body["message"]) == (400, 400, False,
                                                                         f"{PREFIX} without explanation")
    assert box.api("PUT", f"{SECRETS}/other", other)[0] == 200
    log = (box.dir / "logs" / "server.log").read_text()
    assert "admission review: UPDATE secrets default/loud: denied" in log
    assert "admission review: UPDATE secrets default/other" not in log  # the objectSelector keeps it away
    box.admission_webhook(install=False)
    assert _until(lambda: box.api("PUT", f"{SECRETS}/loud?dryRun=All", loud), 200)[0] == 200


def test_an_unreachable_webhook_is_a_500_naming_it(box):
    refused = json.loads((box.dir / "serve-ready.json").read_text())["refused_port"]
    config = admission.configuration(f"https://127.0.0.1:{refused}{admission.PATH}",
                                     Path(box.info["pki"]["ca_cert"]).read_bytes())
    path = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
    status, answer = box.api("POST", path, config)
    assert status == 201, answer
    try:
        obj = _secret(box, "unreachable", "true")
        status, body = _until(lambda: box.api("PUT", f"{SECRETS}/unreachable?dryRun=All", obj), 500)
        assert status == 500, body
        assert body["reason"] == "InternalError"
        assert body["message"] == (
            f'Internal error occurred: failed calling webhook "{admission.NAME}": failed to call webhook: Post '
            f'"https://127.0.0.1:{refused}{admission.PATH}?timeout=5s": dial tcp 127.0.0.1:{refused}: connect: '
            'connection refused')
    finally:
        box.api("DELETE", f"{path}/{admission.NAME}")


def test_the_emulator_has_no_admission_webhook(tmp_path):
    b = Sandbox(tmp_path / "emu")
    b.up(provider="identity", apiserver="emulator", entra=False)
    try:
        with pytest.raises(SandboxError, match="needs the real kube-apiserver"):
            b.admission_webhook()
    finally:
        b.down()
