"""kube.keyage: dating the current KMS v2 key from the creation time of objects written once, checked against the
scan's revisions."""

import json
from datetime import datetime, timedelta, timezone

from azext_kmsverify.deadline import Deadline
from azext_kmsverify.kube.errors import KubeErrors
from azext_kmsverify.kube.keyage import creation_time, key_age
from azext_kmsverify.verdict.rotation import EarliestWrites, FirstWrite, rotation_check

NOW = datetime(2026, 12, 7, tzinfo=timezone.utc)


class FakeClient:
    def __init__(self, objects):
        self.objects = objects  # path -> (status, body)
        self.paths = []
        self.deadline = Deadline(30)
        self.errors = KubeErrors("https://api.example:6443", "kubeconfig", self.deadline)

    def request(self, method, path, **kwargs):
        assert method == "GET" and "PartialObjectMetadata" in kwargs["accept"]  # metadata only, never data
        self.paths.append(path)
        status, body = self.objects.get(path, (404, {}))
        return status, json.dumps(body).encode()


def _meta(revision, created):
    return 200, {"kind": "PartialObjectMetadata", "metadata": {"resourceVersion": str(revision),
                                                               "creationTimestamp": created}}


def test_the_creation_time_must_belong_to_the_scanned_write():
    write = FirstWrite("k", "prod", "db pass", 41)
    client = FakeClient({"/api/v1/namespaces/prod/secrets/db%20pass": _meta(41, "2026-09-01T10:00:00Z")})
    assert creation_time(client, write) == (datetime(2026, 9, 1, 10, tzinfo=timezone.utc), "")
    rewritten = FakeClient({"/api/v1/namespaces/prod/secrets/db%20pass": _meta(77, "2026-09-01T10:00:00Z")})
    assert creation_time(rewritten, write) == (None, "prod/db pass was written again since the scan")
    assert "deleted" in creation_time(FakeClient({}), write)[1]
    forbidden = FakeClient({"/api/v1/namespaces/prod/secrets/db%20pass": (403, {"message": "no"})})
    assert "HTTP 403" in creation_time(forbidden, write)[1]
    odd = FakeClient({"/api/v1/namespaces/prod/secrets/db%20pass": _meta(41, "yesterday")})
    assert "no usable creationTimestamp" in creation_time(odd, write)[1]


def test_a_stalled_key_is_dated_from_etcd_evidence():
    writes = EarliestWrites()
    writes.add("key-2", "default", "first", 10, 1)
    writes.add("key-2", "default", "later", 90, 1)
    client = FakeClient({"/api/v1/namespaces/default/secrets/first": _meta(10, "2026-09-28T00:00:00Z")})
    age, why = key_age(client, writes, "key-2")
    assert why == "" and age.since == datetime(2026, 9, 28, tzinfo=timezone.utc)
    result = rotation_check(kms_versions=["v2"], age=age, now=NOW)
    assert result["status"] == "Warning" and "key-2" in result["detail"] and "default/first" in result["detail"]


def test_a_recent_rotation_is_bounded_by_the_older_keys_last_write():
    writes = EarliestWrites()
    writes.add("key-1", "default", "old", 5, 1)
    writes.add("key-2", "default", "new", 50, 1)
    client = FakeClient({"/api/v1/namespaces/default/secrets/new": _meta(50, (NOW - timedelta(days=2)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")), "/api/v1/namespaces/default/secrets/old": _meta(5, (NOW - timedelta(days=3)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"))})
    age, _ = key_age(client, writes, "key-2")
    assert rotation_check(kms_versions=["v2"], age=age, now=NOW)["status"] == "Passed"


def test_no_evidence_says_why():
    assert key_age(FakeClient({}), EarliestWrites(), None)[1] == "the current KMS v2 key id is not known"
    assert "written only once" in key_age(FakeClient({}), EarliestWrites(), "k")[1]
    writes = EarliestWrites()
    writes.add("k", "ns", "gone", 3, 1)
    age, why = key_age(FakeClient({}), writes, "k")
    assert age is None and "deleted since the scan" in why
