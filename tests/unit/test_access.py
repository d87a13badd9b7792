"""verdict.access and kube.access: the permissions each command needs (as the product's requests use them), what
an identity lacks from SelfSubjectAccessReview answers, and the least-privilege RBAC that grants it."""

import json

import pytest
import yaml

from azext_kmsverify.deadline import Deadline
from azext_kmsverify.kube.access import SSAR_PATH, parse_review, review_all
from azext_kmsverify.kube.errors import KubeErrors
from azext_kmsverify.verdict import access
from azext_kmsverify.verdict.access import (ALLOWED, DENIED, UNKNOWN, Answer, Permission, assess, missing_summary,
                                            rbac_objects, rbac_yaml, requirements)


def _described(command, **kwargs):
    return {(p.describe(), p.required) for p in requirements(command, **kwargs)}


def test_the_probe_needs_exec_on_etcd_and_create_delete_in_the_probe_namespace():
    assert _described("verify", probe_namespace="kmsprobe") == {
        ("get on the non-resource URL /readyz", True),
        ("get on the non-resource URL /readyz/*", False),
        ("list pods in namespace kube-system", True),
        ("get pods/exec in namespace kube-system", True),
        ("create pods/exec in namespace kube-system", True),
        ("create secrets in namespace kmsprobe", True),
        ("delete secrets in namespace kmsprobe", True),
    }


def test_named_secrets_need_no_secret_permission_beyond_an_optional_get():
    needs = _described("verify --secret", secret_namespaces=["prod", "default", "prod"])
    assert ("get secrets in namespace prod", False) in needs and ("get secrets in namespace default", False) in needs
    assert not any(d.startswith(("create secrets", "list secrets", "update")) for d, _ in needs)


def test_all_secrets_needs_metrics_and_list_as_optional():
    needs = _described("verify --all-secrets")
    assert ("get on the non-resource URL /metrics", False) in needs
    assert ("list secrets in all namespaces", False) in needs
    assert not any(d.startswith(("create secrets", "update")) for d, _ in needs)


def test_reencrypt_needs_get_and_update_everywhere_and_dry_run_does_not():
    needs = _described("reencrypt")
    assert ("get secrets in all namespaces", True) in needs and ("update secrets in all namespaces", True) in needs
    assert not any(d.startswith(("patch", "create secrets", "delete")) for d, _ in needs)  # a GET and a PUT only
    assert not any(d.startswith("update") for d, _ in _described("reencrypt --dry-run"))


def test_status_needs_readyz_only():
    assert {d for d, required in _described("status") if required} == {"get on the non-resource URL /readyz"}


def test_an_etcd_pod_narrows_the_exec_grant_to_it():
    needs = requirements("verify --all-secrets", etcd_pod="etcd-node1")
    exec_rules = [p for p in needs if p.subresource == "exec"]
    assert exec_rules and all(p.name == "etcd-node1" for p in exec_rules)
    assert any(p.verb == "get" and p.resource == "pods" and not p.subresource and p.name == "etcd-node1"
               for p in needs)


def test_unknown_command_is_refused():
    with pytest.raises(ValueError):
        requirements("delete-everything")


def test_review_specs():
    exec_create = Permission("create", "pods", "exec", "kube-system", name="etcd-a")
    assert exec_create.review_spec() == {"resourceAttributes": {
        "verb": "create", "group": "", "resource": "pods", "subresource": "exec", "namespace": "kube-system",
        "name": "etcd-a"}}
    assert Permission("get", path="/metrics").review_spec() == {"nonResourceAttributes": {"path": "/metrics",
                                                                                          "verb": "get"}}
    assert Permission("update", "secrets").review_spec() == {"resourceAttributes": {
        "verb": "update", "group": "", "resource": "secrets"}}


def _answers(needs, denied=(), unknown=()):
    out = []
    for p in needs:
        state = DENIED if p.describe() in denied else UNKNOWN if p.describe() in unknown else ALLOWED
        out.append(Answer(p, state, "because"))
    return out


def test_assess_splits_missing_degraded_and_unknown():
    needs = requirements("reencrypt")
    result = assess("reencrypt", needs, _answers(needs, denied={"update secrets in all namespaces",
                                                                "get on the non-resource URL /metrics"},
                                                 unknown={"list pods in namespace kube-system"}))
    assert [a.permission.describe() for a in result.missing] == ["update secrets in all namespaces"]
    assert [a.permission.describe() for a in result.degraded] == ["get on the non-resource URL /metrics"]
    assert [a.permission.describe() for a in result.unknown] == ["list pods in namespace kube-system"]
    assert result.can_run is False
    line = missing_summary(result)
    assert "missing: update secrets in all namespaces" in line and "optional, missing: get on" in line
    data = result.to_dict()
    assert data["canRun"] is False and data["missing"][0]["verb"] == "update"


def test_can_run_is_unknown_when_a_required_answer_is_missing_and_true_when_all_allowed():
    needs = requirements("status")
    assert assess("status", needs, []).can_run is None
    assert assess("status", needs, _answers(needs)).can_run is True
    assert missing_summary(assess("status", needs, _answers(needs))) == "every permission is allowed"


def test_rbac_is_namespaced_where_possible_and_parses_as_kubernetes_objects():
    needs = requirements("verify", probe_namespace="kmsprobe") + requirements("reencrypt")
    docs = list(yaml.safe_load_all(rbac_yaml(needs, "User", "alice@example.com")))
    kinds = [(d["kind"], d["metadata"].get("namespace")) for d in docs]
    assert kinds == [("Role", "kmsprobe"), ("RoleBinding", "kmsprobe"), ("Role", "kube-system"),
                     ("RoleBinding", "kube-system"), ("ClusterRole", None), ("ClusterRoleBinding", None)]
    probe_role, _, etcd_role, _, cluster_role, binding = docs
    assert probe_role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "delete"]}]
    assert {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]} in etcd_role["rules"]
    assert {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "update"]} in cluster_role["rules"]
    assert {"nonResourceURLs": ["/metrics", "/readyz", "/readyz/*"], "verbs": ["get"]} in cluster_role["rules"]
    assert binding["subjects"] == [{"kind": "User", "name": "alice@example.com",
                                    "apiGroup": "rbac.authorization.k8s.io"}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kmsverify"}


def test_only_what_is_missing_is_granted():
    needs = requirements("verify")
    missing = [p for p in needs if p.resource == "secrets"]
    docs = list(yaml.safe_load_all(rbac_yaml(missing, "Group", "kms-operators")))
    assert [d["kind"] for d in docs] == ["Role", "RoleBinding"]
    assert rbac_yaml([], "Group", "g") == ""


def test_a_service_account_subject_and_hostile_names_stay_data():
    docs = list(yaml.safe_load_all(rbac_yaml(requirements("status"), "ServiceAccount", 'sa"\n- kind: User',
                                             subject_namespace="ci: {x}")))
    assert docs[1]["subjects"] == [{"kind": "ServiceAccount", "name": 'sa"\n- kind: User', "namespace": "ci: {x}"}]
    with pytest.raises(ValueError):
        rbac_objects([], "ServiceAccount", "sa")
    with pytest.raises(ValueError):
        rbac_objects([], "Robot", "r")


def test_resource_names_become_a_resource_names_rule():
    docs = rbac_objects(requirements("verify --all-secrets", etcd_pod="etcd-a"), "User", "u")
    role = next(d for d in docs if d["kind"] == "Role")
    assert {"apiGroups": [""], "resources": ["pods/exec"], "resourceNames": ["etcd-a"],
            "verbs": ["create", "get"]} in role["rules"]


def test_preflight_commands_cover_what_status_reports():
    commands = access.preflight_commands("kmsprobe")
    assert set(commands) == {"verify", "verify --all-secrets", "reencrypt", "status"}
    unique = access.unique_permissions(commands)
    assert len({p.key for p in unique}) == len(unique)


# ---- kube.access: the SelfSubjectAccessReview requests -------------------------------------------------------

class FakeClient:
    def __init__(self, answers):
        self.answers = list(answers)
        self.sent = []
        self.deadline = Deadline(30)
        self.errors = KubeErrors("https://api.example:6443", "kubeconfig", self.deadline)

    def request(self, method, path, **kwargs):
        self.sent.append((method, path, kwargs.get("body")))
        status, body = self.answers.pop(0)
        return status, json.dumps(body).encode() if not isinstance(body, bytes) else body


def _ssar(allowed, **status):
    return 201, {"kind": "SelfSubjectAccessReview", "status": {"allowed": allowed, **status}}


def test_reviews_are_posted_and_read():
    needs = requirements("status")
    client = FakeClient([_ssar(True, reason='RBAC: allowed by ClusterRoleBinding "system:public-info-viewer"'),
                         _ssar(False), _ssar(False, denied=False, evaluationError="webhook authorizer timed out")])
    answers = review_all(client, needs)
    assert [a.state for a in answers] == [ALLOWED, DENIED, UNKNOWN]
    assert "timed out" in answers[2].reason
    method, path, body = client.sent[0]
    assert (method, path) == ("POST", SSAR_PATH)
    assert body == {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                    "spec": {"nonResourceAttributes": {"path": "/readyz", "verb": "get"}}}


def test_an_explicit_deny_is_denied_even_with_an_evaluation_error():
    answer = parse_review(Permission("update", "secrets"),
                          json.dumps({"status": {"allowed": False, "denied": True, "evaluationError": "x"}}).encode())
    assert answer.state == DENIED


def test_a_server_that_forbids_ssar_leaves_everything_unknown_with_why_and_is_asked_once():
    needs = requirements("verify")
    client = FakeClient([(403, {"kind": "Status", "message": 'selfsubjectaccessreviews.authorization.k8s.io is '
                                                           'forbidden: User "bob" cannot create resource'})])
    answers = review_all(client, needs)
    assert len(client.sent) == 1
    assert {a.state for a in answers} == {UNKNOWN}
    assert all("SelfSubjectAccessReview is forbidden" in a.reason for a in answers)
    assert assess("verify", needs, answers).can_run is None


@pytest.mark.parametrize("status", [404, 405])
def test_a_server_without_the_review_api(status):
    answers = review_all(FakeClient([(status, b"")]), requirements("status"))
    assert all(a.state == UNKNOWN and "does not serve" in a.reason for a in answers)


def test_odd_answers_are_unknown_not_allowed():
    needs = requirements("status")
    client = FakeClient([(201, b"not json"), (201, {"status": {}}), (500, {"message": "etcd down"})])
    answers = review_all(client, needs)
    assert [a.state for a in answers] == [UNKNOWN, UNKNOWN, UNKNOWN]
    assert "HTTP 500: etcd down" in answers[2].reason


def test_bad_credentials_raise():
    from azure.cli.core.azclierror import UnauthorizedError
    with pytest.raises(UnauthorizedError):
        review_all(FakeClient([(401, {"message": "Unauthorized"})]), requirements("status"))


def test_preflight_asks_each_permission_once_and_judges_the_command():
    from azext_kmsverify.kube.access import preflight
    needs = requirements("verify", probe_namespace="kmsprobe")
    replies = [_ssar(p.describe() != "create secrets in namespace kmsprobe") for p in needs]
    client = FakeClient(replies)
    result = preflight(client, "verify", probe_namespace="kmsprobe")
    assert len(client.sent) == len(needs)
    assert [a.permission.describe() for a in result.missing] == ["create secrets in namespace kmsprobe"]


def test_preflight_all_shares_answers_between_commands():
    from azext_kmsverify.kube.access import preflight_all
    unique = access.unique_permissions(access.preflight_commands("default"))
    client = FakeClient([_ssar(p.path in ("/readyz", "/readyz/*")) for p in unique])
    results = {a.command: a for a in preflight_all(client, "default")}
    assert len(client.sent) == len(unique)
    assert results["status"].can_run is True
    assert results["verify"].can_run is False and results["reencrypt"].can_run is False
    assert any(a.permission.describe() == "update secrets in all namespaces" for a in results["reencrypt"].missing)


def test_the_missing_error_names_each_permission_on_one_line():
    from azure.cli.core.azclierror import ForbiddenError

    from azext_kmsverify.kube.access import missing_error
    needs = requirements("reencrypt")
    error = missing_error(assess("reencrypt", needs, _answers(needs, denied={"update secrets in all namespaces",
                                                                             "create pods/exec in namespace "
                                                                             "kube-system"})))
    assert isinstance(error, ForbiddenError)
    assert error.error_msg == ("'reencrypt' cannot run with this identity: Kubernetes RBAC denies create pods/exec in "
                               "namespace kube-system; update secrets in all namespaces.")
    assert "az aksarc kms status" in error.recommendations[0]


def test_whoami_and_the_subject_it_gives():
    from azext_kmsverify.kube.access import SSR_PATH, whoami
    from azext_kmsverify.verdict.access import subject_of
    client = FakeClient([(201, {"kind": "SelfSubjectReview", "status": {"userInfo": {
        "username": "system:serviceaccount:ci:kms-pipeline", "groups": ["system:serviceaccounts", 7]}}})])
    user, why = whoami(client)
    assert client.sent[0][:2] == ("POST", SSR_PATH) and why == ""
    assert user == {"username": "system:serviceaccount:ci:kms-pipeline", "groups": ["system:serviceaccounts"]}
    assert subject_of(user) == ("ServiceAccount", "kms-pipeline", "ci")
    assert subject_of({"username": "alice@example.com"}) == ("User", "alice@example.com", "")
    assert subject_of({"username": "system:serviceaccount:ci"}) == ("User", "system:serviceaccount:ci", "")
    assert whoami(FakeClient([(403, {"message": "forbidden"})])) == (None, "SelfSubjectReview answered HTTP 403")
    assert whoami(FakeClient([(201, {"status": {}})]))[0] is None


def test_other_resources_get_their_own_grants():
    needs = requirements("reencrypt", resources=[("", "configmaps"), ("example.com", "widgets")])
    described = {(p.describe(), p.required) for p in needs}
    assert ("update configmaps in all namespaces", True) in described
    assert ("update widgets.example.com in all namespaces", True) in described
    assert not any("secrets" in d for d, _ in described)
    rules = next(d for d in rbac_objects(needs, "User", "u") if d["kind"] == "ClusterRole")["rules"]
    assert {"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get", "list", "update"]} in rules


def test_combining_modes_keeps_a_permission_required_when_any_mode_requires_it():
    optional_get = requirements("verify --all-secrets")
    required_get = requirements("reencrypt")
    merged = access.combine(optional_get, required_get)
    get = [p for p in merged if p.key == Permission("get", "secrets").key]
    assert len(get) == 1 and get[0].required is True
    assert [p.required for p in merged] == sorted((p.required for p in merged), reverse=True)


def test_grant_covers_what_the_commands_lack_for_the_identity():
    per_command = access.preflight_commands("default")
    answers = [Answer(p, ALLOWED if p.path == "/readyz" else DENIED) for p in access.unique_permissions(per_command)]
    accesses = [assess(c, needs, answers) for c, needs in per_command.items()]
    user = {"username": "system:serviceaccount:ci:kms", "groups": []}
    docs = list(yaml.safe_load_all(access.grant(accesses, user)))
    assert {d["kind"] for d in docs} == {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    assert all(d["subjects"] == [{"kind": "ServiceAccount", "name": "kms", "namespace": "ci"}]
               for d in docs if d["kind"].endswith("Binding"))
    cluster = next(d for d in docs if d["kind"] == "ClusterRole")
    assert {"nonResourceURLs": ["/metrics", "/readyz/*"], "verbs": ["get"]} in cluster["rules"]  # not /readyz
    required_only = list(yaml.safe_load_all(access.grant(accesses, user, include_optional=False)))
    assert not any("/metrics" in str(d) for d in required_only)
    assert access.grant(accesses, None) == ""
    assert access.grant([assess("status", [], [])], user) == ""
