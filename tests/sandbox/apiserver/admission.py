"""A validating admission webhook the real kube-apiserver calls: it refuses updates of labelled secrets.

Served by the sandbox's server process on the token webhook's site (:mod:`.guard`: HTTPS with the API server's
serving certificate, issued by the cluster CA, for 127.0.0.1), at :data:`PATH`. kube-apiserver POSTs an
``AdmissionReview`` (``admission.k8s.io/v1``) for every request the ValidatingWebhookConfiguration
(:func:`configuration`, installed by ``Sandbox.admission_webhook()``) selects; the answer allows it, or refuses an
UPDATE of a secret labelled :data:`LABEL` ``"true"`` with :data:`MESSAGE` and code 403, or labelled ``"silent"``
with no status at all. The API server then answers the client with its own Status (``admission webhook "NAME"
denied the request: MESSAGE``, or ``... denied the request without explanation``): a policy engine that refuses
rewrites, as GKE documents for failed re-encryption. The review carries the whole secret; nothing of it is
logged but its namespace and name.
"""

from __future__ import annotations

import base64
import logging

from aiohttp import web

NAME = "deny-secret-updates.sandbox.kmsverify.test"  # the ValidatingWebhookConfiguration and its one webhook
PATH = "/admission/deny-secret-updates"
LABEL = "kmsverify.test/deny-update"
MESSAGE = f"updates of secrets labelled {LABEL}=true are refused by the sandbox's admission policy"
CODE = 403

log = logging.getLogger("sandbox.admission")


def decide(review: dict) -> dict:
    """The AdmissionReview answer to ``review`` (pure)."""
    request = review.get("request") or {}
    allowed = True
    if request.get("operation") == "UPDATE" and (request.get("resource") or {}).get("resource") == "secrets":
        labelled = [((request.get(side) or {}).get("metadata") or {}).get("labels") or {}
                    for side in ("object", "oldObject")]
        values = {labels.get(LABEL) for labels in labelled}
        allowed = not values & {"true", "silent"}
    response: dict = {"uid": request.get("uid", ""), "allowed": allowed}
    if not allowed and "true" in values:
        response["status"] = {"code": CODE, "reason": "Forbidden", "message": MESSAGE}
    return {"apiVersion": review.get("apiVersion", "admission.k8s.io/v1"), "kind": "AdmissionReview",
            "response": response}


async def h_review(request: web.Request) -> web.Response:
    try:
        review = await request.json()
        if not isinstance(review, dict) or not isinstance(review.get("request"), dict):
            raise ValueError
    except ValueError:
        return web.json_response({"error": "not an AdmissionReview"}, status=400)
    answer = decide(review)
    req = review["request"]
    log.info("admission review: %s %s %s/%s: %s", req.get("operation"), (req.get("resource") or {}).get("resource"),
             req.get("namespace"), req.get("name"), "allowed" if answer["response"]["allowed"] else "denied")
    return web.json_response(answer)


def install(app: web.Application) -> None:
    app.router.add_post(PATH, h_review)


def configuration(url: str, ca_pem: bytes) -> dict:
    """The ValidatingWebhookConfiguration: secrets labelled LABEL=true or silent, UPDATE only, failurePolicy
    Fail."""
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": NAME},
            "webhooks": [{"name": NAME,
                          "clientConfig": {"url": url, "caBundle": base64.b64encode(ca_pem).decode()},
                          "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
                                     "resources": ["secrets"], "scope": "Namespaced"}],
                          "objectSelector": {"matchExpressions": [{"key": LABEL, "operator": "In",
                                                                   "values": ["true", "silent"]}]},
                          "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                          "timeoutSeconds": 5}]}
