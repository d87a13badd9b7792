"""verdict.readyz on every body in the readyz fixtures."""


import pytest

from azext_kmsverify.verdict.readyz import kms_checks, overall_status, parse_check_error, parse_readyz

from tests.support.kubectl_text import unwrap_kubectl_error

from tests.support.paths import FIXTURES

READYZ = FIXTURES / "readyz"
assert READYZ.is_dir(), f"fixtures missing: {READYZ} (tests/fixtures)"

REASON = ('kms-provider-0: failed to perform status section of the healthz check for KMS Provider kms-plugin, '
          'error: rpc error: code = Unavailable desc = connection error: desc = "transport: Error while dialing: '
          'dial unix /opt/kms/kms.sock: connect: no such file or directory"')

# file -> (overall status, KMS checks as (name, status))
EXPECTED = {
    "aggregate-ok.txt": ("ok", [("kms-providers", "ok")]),
    "aggregate-v2-no-reload-ok.txt": ("ok", [("kms-providers", "ok")]),
    "aggregate-failed.http500.txt": ("failed", [("kms-providers", "failed")]),
    "per-provider-ok.txt": ("ok", [("kms-provider-0", "ok"), ("kms-provider-1", "ok")]),
    "no-kms-ok.txt": ("ok", []),
    "nonverbose-ok.txt": ("ok", []),
    # a real kube-apiserver v1.29.6 (see tests/fixtures/readyz/README.md)
    "kas-1.29.6-v2-reload-ok.txt": ("ok", [("kms-providers", "ok")]),
    "kas-1.29.6-v2-noreload-ok.txt": ("ok", [("kms-providers", "ok")]),
    "kas-1.29.6-v2-noreload-plugin-down.http500.txt": ("failed", [("kms-providers", "failed")]),
    "kas-1.29.6-v1-noreload-ok.txt": ("ok", [("kms-provider-0", "ok")]),
    "kas-1.29.6-v1-reload-ok.txt": ("ok", [("kms-providers", "ok")]),
    "kas-1.29.6-v2-v1-noreload.http500.txt": ("failed", [("kms-provider-0", "ok"), ("kms-provider-1", "ok")]),
}
REAL_REASON = ('kms-provider-0: rpc error: code = DeadlineExceeded desc = latest balancer error: connection error: '
               'desc = "transport: Error while dialing: dial unix /tmp/wt18-kas/kms.sock: connect: no such file or '
               'directory"')
CHECK_ERRORS = {"aggregate-failed.kms-providers.http500.txt": REASON,
                "kas-1.29.6-kms-providers-plugin-down.http500.txt": REAL_REASON}


def _body(name):
    return (READYZ / name).read_text()


def test_every_readyz_fixture_is_covered():
    files = {p.name for p in READYZ.glob("*.txt")}
    assert files == set(EXPECTED) | set(CHECK_ERRORS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_readyz_fixture(name):
    overall, kms = EXPECTED[name]
    parsed = parse_readyz(_body(name))
    assert overall_status(parsed) == overall
    assert [(c["name"], c["status"]) for c in kms_checks(parsed)] == kms
    for entry in parsed:
        assert set(entry) == {"name", "status", "line", "overall"}
        assert entry["status"] in ("ok", "failed", "excluded")
        assert entry["line"] in _body(name)
    assert sum(e["overall"] for e in parsed) == 1


def test_verbose_bodies_list_every_check_line():
    body = _body("aggregate-failed.http500.txt")
    parsed = parse_readyz(body)
    checks = [e for e in parsed if not e["overall"]]
    assert len(checks) == sum(1 for line in body.splitlines() if line.startswith("["))
    assert checks[0] == {"name": "ping", "status": "ok", "line": "[+]ping ok", "overall": False}
    failed = [e for e in checks if e["status"] == "failed"]
    assert failed == [{"name": "kms-providers", "status": "failed", "line": "[-]kms-providers failed: reason withheld",
                       "overall": False}]
    assert parsed[-1] == {"name": "readyz", "status": "failed", "line": "readyz check failed", "overall": True}
    names = [e["name"] for e in checks]
    assert "poststarthook/start-encryption-provider-config-automatic-reload" in names


def test_nonverbose_ok():
    assert parse_readyz(_body("nonverbose-ok.txt")) == [
        {"name": "readyz", "status": "ok", "line": "ok", "overall": True}]


def test_excluded_healthz_crlf_and_noise():
    body = ("[+]ping ok\r\n[+]kms-provider-0 excluded: ok\r\n[-]kms-provider-1 failed: reason withheld\r\n"
            "some log noise\r\n\r\nhealthz check failed\r\n")
    parsed = parse_readyz(body)
    assert [(e["name"], e["status"]) for e in kms_checks(parsed)] == [("kms-provider-0", "excluded"),
                                                                       ("kms-provider-1", "failed")]
    assert overall_status(parsed) == "failed" and parsed[-1]["name"] == "healthz"
    assert parse_readyz(body.encode()) == parsed


def test_kms_check_names_are_exact():
    parsed = parse_readyz("[+]kms-providers-extra ok\n[+]kms-provider-x ok\n[+]kms-provider-12 ok\nreadyz check passed")
    assert [c["name"] for c in kms_checks(parsed)] == ["kms-provider-12"]


def test_empty_body():
    assert parse_readyz("") == [] and overall_status([]) is None


def test_parse_check_error_fixture():
    assert parse_check_error(_body("aggregate-failed.kms-providers.http500.txt")) == REASON


def test_parse_check_error_kubectl_wrapping():
    body = _body("aggregate-failed.kms-providers.http500.txt").strip()
    quoted = '"' + body.replace("\\", "\\\\").replace('"', '\\"') + '"'
    wrapped = ("Error from server (InternalError): an error on the server (" + quoted
               + ") has prevented the request from succeeding")
    assert parse_check_error(unwrap_kubectl_error(wrapped)) == REASON


def test_parse_check_error_is_linear():
    """A hostile 2 MB body is parsed in well under a second (the old kubectl-unwrapping regex was quadratic)."""
    import time
    body = 'Error from server (InternalError): an error on the server ("' + '\\"' * 1_000_000
    start = time.monotonic()
    parse_check_error(body)
    assert time.monotonic() - start < 0.5


@pytest.mark.parametrize("body,reason", [("ok", ""), ("ok\n", ""), ("internal server error: boom\n", "boom"),
                                         ("something else", "something else"), ("", "")])
def test_parse_check_error_other_bodies(body, reason):
    assert parse_check_error(body) == reason


