"""verdict.rotation: the KmsKeyRotation check from exact etcd writes, from /metrics only, and for KMS v1."""

from datetime import datetime, timedelta, timezone

import pytest

from azext_kmsverify.verdict.rotation import (GRACE_DAYS, KMS_KEY_ROTATION, SOURCE_ETCD, SOURCE_METRICS_PREVIOUS_KEY,
                                              SOURCE_METRICS_UPTIME, EarliestWrites, age_from_etcd, age_from_metrics,
                                              rotation_check)
from azext_kmsverify.verdict.status import parse_metrics

from tests.support.paths import FIXTURES

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
METRICS = FIXTURES / "metrics"
STARTED = datetime.fromtimestamp(1.7961625540086184e9, tz=timezone.utc)


def _writes():
    writes = EarliestWrites()
    writes.add("key-new", "default", "edited", 50, 3)      # rewritten since its creation: not exact
    writes.add("key-new", "default", "young", 90, 1)
    writes.add("key-new", "prod", "oldest", 40, 1)
    writes.add("key-old", "default", "a", 10, 1)
    writes.add("key-old", "default", "b", 30, 1)
    writes.add(None, "default", "no-key", 1, 1)
    writes.add("key-new", "default", "bad-revision", 0, 1)
    return writes


def test_only_exact_writes_count_and_one_entry_per_key():
    writes = _writes()
    assert (writes.first("key-new").namespace, writes.first("key-new").name) == ("prod", "oldest")
    assert writes.first("key-old").name == "a"
    assert writes.last_under_other_keys("key-new").name == "b"
    assert writes.first("nope") is None and writes.first(None) is None
    assert writes.last_under_other_keys("key-old").name == "young"


def test_a_key_older_than_the_period_plus_grace_warns_naming_key_evidence_and_age():
    writes = _writes()
    age = age_from_etcd("key-new", writes.first("key-new"), NOW - timedelta(days=70))
    result = rotation_check(kms_versions=["v2"], age=age, now=NOW)
    assert (result["name"], result["status"], result["target"]) == (KMS_KEY_ROTATION, "Warning", "key-new")
    assert "at least 70.0 days" in result["detail"] and "prod/oldest" in result["detail"]
    assert age.to_dict(NOW)["minAgeDays"] == 70.0 and age.source == SOURCE_ETCD
    assert rotation_check(kms_versions=["v2"], age=age, now=NOW, fail_on_stale=True)["status"] == "Failed"


@pytest.mark.parametrize("days,status", [(30 + GRACE_DAYS, "Passed"), (30 + GRACE_DAYS + 0.2, "Warning")])
def test_the_limit_is_rotation_days_plus_grace(days, status):
    age = age_from_etcd("k", _writes().first("key-new"), NOW - timedelta(days=days))
    assert rotation_check(kms_versions=["v2"], age=age, now=NOW)["status"] == status


def test_rotation_days_is_honoured():
    age = age_from_etcd("k", _writes().first("key-new"), NOW - timedelta(days=20))
    assert rotation_check(kms_versions=["v2"], age=age, now=NOW, rotation_days=10)["status"] == "Warning"
    assert rotation_check(kms_versions=["v2"], age=age, now=NOW, rotation_days=10, grace_days=14)["status"] == \
        "Passed"


def test_an_older_keys_later_write_bounds_the_age_from_above():
    writes = _writes()
    age = age_from_etcd("key-new", writes.first("key-new"), NOW - timedelta(days=3),
                        writes.last_under_other_keys("key-new"), NOW - timedelta(days=4))
    result = rotation_check(kms_versions=["v2"], age=age, now=NOW)
    assert result["status"] == "Passed" and "at most 4.0 days" in result["detail"]
    assert age.to_dict(NOW)["maxAgeDays"] == 4.0


def test_no_exact_write_means_skipped_with_why():
    assert age_from_etcd("k", None, None) is None
    assert age_from_etcd("k", _writes().first("key-new"), None) is None  # the object is gone from the API
    result = rotation_check(kms_versions=["v2"], age=None, unknown_why="no secret under it was written only once",
                            now=NOW)
    assert result["status"] == "Skipped" and "written only once" in result["detail"]


def test_kms_v1_is_skipped_with_why():
    result = rotation_check(kms_versions=["v1"], age=None, now=NOW)
    assert result["status"] == "Skipped" and "KMS v1 stores no key id" in result["detail"]
    assert rotation_check(kms_versions=[], now=NOW)["status"] == "Skipped"


def test_metrics_one_key_since_start_bounds_the_age_by_the_uptime():
    facts = parse_metrics((METRICS / "kms-v2-one-key.txt").read_text())
    age = age_from_metrics(facts)
    assert age.source == SOURCE_METRICS_UPTIME and age.since == STARTED and age.at_most_since is None
    stalled = rotation_check(kms_versions=["v2"], age=age, now=STARTED + timedelta(days=60))
    assert stalled["status"] == "Warning" and "at least 60.0 days" in stalled["detail"]
    assert "process_start_time_seconds" in stalled["detail"]
    young = rotation_check(kms_versions=["v2"], age=age, now=STARTED + timedelta(days=3))
    assert young["status"] == "Skipped" and "all /metrics can tell" in young["detail"]


def test_metrics_with_an_older_key_bound_the_age_from_above():
    facts = parse_metrics((METRICS / "kms-v2.txt").read_text())
    age = age_from_metrics(facts)
    assert age.source == SOURCE_METRICS_PREVIOUS_KEY and age.since is None
    assert rotation_check(kms_versions=["v2"], age=age, now=STARTED + timedelta(days=5))["status"] == "Passed"
    late = rotation_check(kms_versions=["v2"], age=age, now=STARTED + timedelta(days=90))
    assert late["status"] == "Skipped" and "does not tell" in late["detail"]


def test_metrics_evidence_does_not_need_the_hash_total_family():
    with_total = age_from_metrics(parse_metrics((METRICS / "kms-v2.txt").read_text()))
    without = age_from_metrics(parse_metrics((METRICS / "kms-v2-without-hash-total.txt").read_text()))
    assert with_total == without


def test_metrics_without_key_ids_give_no_age():
    assert age_from_metrics(parse_metrics((METRICS / "kms-v1.txt").read_text())) is None
