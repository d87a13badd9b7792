"""verdict.posture: a cluster's KMS version for a fleet row and the KmsV1Deprecated verdict."""

import pytest

from azext_kmsverify.verdict.posture import MIXED, fleet_columns, kms_v1_check, kms_version


@pytest.mark.parametrize("result,version,source", [
    ({"scan": {"byKmsVersion": {"v1": 3, "v2": 0}}}, "v1", "etcd scan"),
    ({"scan": {"byKmsVersion": {"v1": 3, "v2": 9}}}, MIXED, "etcd scan"),
    ({"scan": {"byKmsVersion": {"v1": 0, "v2": 0}}, "secrets": [{"storage": "kms", "kmsVersion": "v2"}]}, "v2",
     "probe"),
    ({"secrets": [{"storage": "identity", "kmsVersion": None}],
      "kmsVersions": {"value": ["v1"], "source": "/metrics"}}, "v1", "/metrics"),
    ({"secrets": [], "kmsVersions": {"value": None}}, None, "did not say"),
    ({}, None, "did not say"),
])
def test_the_version_comes_from_the_best_evidence(result, version, source):
    found, where = kms_version(result)
    assert found == version and source in where


def test_kms_v1_warns_and_fails_with_the_flag():
    assert kms_v1_check("v2", "x") is None and kms_v1_check(None, "x") is None
    warning = kms_v1_check("v1", "the etcd scan (every secret)")
    assert warning["name"] == "KmsV1Deprecated" and warning["status"] == "Warning"
    assert "1.28" in warning["detail"] and "1.29" in warning["detail"]
    assert kms_v1_check("v1", "s", fail_on_kms_v1=True)["status"] == "Failed"
    assert "still stored with KMS v1" in kms_v1_check(MIXED, "s")["detail"]


def test_fleet_columns():
    status = {"kmsVersions": {"value": ["v2"], "source": "/metrics"}, "keyAge": {"minAgeDays": 45.0},
              "access": [{"command": "verify", "missing": [{}, {}]}, {"command": "reencrypt", "missing": [{}]}]}
    assert fleet_columns(status) == {"kmsVersion": "v2", "keyMinAgeDays": 45.0, "missingPermissions": 3}
    assert fleet_columns({}) == {"kmsVersion": None, "keyMinAgeDays": None, "missingPermissions": None}
