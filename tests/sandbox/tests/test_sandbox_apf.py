"""API Priority and Fairness of the real kube-apiserver throttling one identity (``Sandbox.throttle``).

The throttled identity (``kubeconfig-throttled``, CN=throttled-admin, cluster-admin) gets real 429s under
parallel load, as kube-apiserver v1.29.6 sends them: a plain-text body, ``Retry-After`` in whole seconds that
grows while the flow keeps being rejected, and the uids of the FlowSchema and priority level that matched. The
admin (system:masters, exempt) is not throttled at the same moment, and ``unthrottle`` ends it. Numbers are
written down in tests/sandbox/README.md.
"""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.sandbox.apiserver import kubeapiserver
from tests.sandbox.control import Sandbox

APF_BODY = b"Too many requests, please try again later.\n"
PATH = "/api/v1/namespaces/kube-system/secrets"


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    b = Sandbox(tmp_path_factory.mktemp("apf"))
    b.up(provider="identity")
    yield b
    b.down()


def _burst(box, identity, n=20, seconds=0.0):
    """``n`` threads GETting ``PATH`` as ``identity`` at once (for ``seconds``, else once each): every answer."""
    stop = time.monotonic() + seconds
    answers = []

    def worker(_):
        while True:
            answers.append(box.request("GET", PATH, identity=identity))
            if time.monotonic() >= stop:
                return

    with ThreadPoolExecutor(n) as pool:
        list(pool.map(worker, range(n)))
    return answers


def test_the_throttled_identity_gets_real_429s_and_the_admin_does_not(box):
    throttle = box.throttle()
    # ceil(600 (--max-requests-inflight 400 + --max-mutating-requests-inflight 200) x 1 share / 246 shares)
    assert throttle["nominal_limit"] == 3
    assert box.info["throttle"]["flow_schema_uid"] == throttle["flow_schema_uid"]
    before = box.flow_counts()
    answers = _burst(box, "throttled", seconds=1.0)
    statuses = [status for status, _, _ in answers]
    assert statuses.count(200) > 0 and statuses.count(429) > 0, statuses
    assert set(statuses) == {200, 429}
    for status, headers, body in answers:
        # every answer names what classified it: this FlowSchema and priority level
        assert headers["x-kubernetes-pf-flowschema-uid"] == throttle["flow_schema_uid"]
        assert headers["x-kubernetes-pf-prioritylevel-uid"] == throttle["priority_level_uid"]
        if status == 429:
            assert body == APF_BODY  # plain text, not a Status
            assert headers["content-type"] == "text/plain; charset=utf-8"
            assert 1 <= int(headers["retry-after"]) <= 32
    after = box.flow_counts()
    assert after["rejected"] - before["rejected"] == statuses.count(429)
    assert after["dispatched"] - before["dispatched"] == statuses.count(200)
    # the admin, at the same moment, is not throttled (system:masters: the exempt FlowSchema)
    with ThreadPoolExecutor(2) as pool:
        admin = pool.submit(_burst, box, "admin", 20, 1.0)
        throttled = pool.submit(_burst, box, "throttled", 20, 1.0)
        assert {status for status, _, _ in admin.result()} == {200}
        assert 429 in {status for status, _, _ in throttled.result()}


def test_retry_after_grows_while_the_flow_keeps_being_rejected(box):
    box.throttle()
    answers = _burst(box, "throttled", n=24, seconds=8.0)
    asked = sorted({int(h["retry-after"]) for s, h, _ in answers if s == 429})
    # kube-apiserver doubles it (1, 2, 4, ...) each time the drops of the last Retry-After seconds reach 3x it
    assert asked[0] >= 1 and asked[-1] >= 4, asked
    assert all(a & (a - 1) == 0 for a in asked), asked  # powers of two


def test_unthrottle_ends_it_and_throttle_again_is_idempotent(box):
    first = box.throttle()
    box.unthrottle()
    assert box.info["throttle"] is None
    deadline = time.monotonic() + 30
    while True:  # the server's APF controller drops the FlowSchema in a moment
        _, headers, _ = box.request("GET", "/api", identity="throttled")
        if headers.get("x-kubernetes-pf-flowschema-uid") != first["flow_schema_uid"]:
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert {status for status, _, _ in _burst(box, "throttled")} == {200}
    again = box.throttle(shares=2)
    assert again["nominal_limit"] == 5  # ceil(600 x 2 / 247)
    assert box.throttle()["nominal_limit"] == 3  # a second call replaces the priority level's spec
    status, _, _ = box.request("GET", PATH, identity="throttled")
    assert status == 200


def test_throttle_needs_the_real_server(tmp_path):
    from tests.sandbox.control import SandboxError
    emulated = Sandbox(tmp_path / "emulated")
    emulated.up(provider="identity", apiserver="emulator", entra=False)
    try:
        with pytest.raises(SandboxError, match="real kube-apiserver"):
            emulated.throttle()
    finally:
        emulated.down()


def test_flow_counts_reads_the_servers_counters():
    page = "\n".join([
        'apiserver_flowcontrol_dispatched_requests_total{flow_schema="sandbox-throttled",priority_level="x"} 12',
        'apiserver_flowcontrol_rejected_requests_total{flow_schema="sandbox-throttled",priority_level="x",'
        'reason="concurrency-limit"} 5',
        'apiserver_flowcontrol_rejected_requests_total{flow_schema="sandbox-throttled",priority_level="x",'
        'reason="time-out"} 2',
        'apiserver_flowcontrol_rejected_requests_total{flow_schema="global-default",priority_level="x",'
        'reason="concurrency-limit"} 99',
        'apiserver_flowcontrol_nominal_limit_seats{priority_level="sandbox-throttled"} 3'])
    assert kubeapiserver.flow_counts(page) == {"dispatched": 12, "rejected": 7}
    assert kubeapiserver.nominal_limit(page, "sandbox-throttled") == 3
    assert kubeapiserver.nominal_limit(page, "other") is None
