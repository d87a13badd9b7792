"""``python -m tests.sandbox up`` on a directory that already holds a sandbox.

A stopped sandbox is resumed: its processes restart on its data (certificates, etcd data and ports, KMS keys,
local keys kept for reading), the seeded secrets that are still there are not written again and the ones that
are gone are; the kubeconfig written by the first ``up`` keeps working. A running sandbox, or options that
differ from the stopped one's, fail with one line on stderr and exit code 1, leaving the sandbox as it was.
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.sandbox.processes.proc import free_port, processes_mentioning
from tests.sandbox.control import KEY_ID_HASH_TOTAL, Sandbox, _alive

PROJECT = Path(__file__).resolve().parents[3]


def sandbox_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.sandbox", *args], cwd=PROJECT, capture_output=True, text=True,
                          timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == ""
    return lines[0]


def secret_names(box: Sandbox) -> list:
    status, body = box.api("GET", "/api/v1/secrets")
    assert status == 200, body
    return [f"{i['metadata']['namespace']}/{i['metadata']['name']}" for i in body["items"]]


@pytest.fixture
def sandbox_dir(tmp_path):
    d = tmp_path / "box"
    yield d
    if (d / "sandbox.json").exists():
        sandbox_cli("down", "--dir", str(d))
    assert processes_mentioning(str(d)) == []


def test_up_on_a_running_sandbox_fails_in_one_line_and_leaves_it_running(sandbox_dir):
    first = sandbox_cli("up", "--dir", str(sandbox_dir), "--provider", "aescbc")
    assert first.returncode == 0, first.stderr
    pids = json.loads(first.stdout)["pids"]
    for again in (sandbox_cli("up", "--dir", str(sandbox_dir)),
                  sandbox_cli("up", "--dir", str(sandbox_dir), "--provider", "kms-v1")):
        assert_one_line_error(again, "already running", str(sandbox_dir), "down")
    box = Sandbox(sandbox_dir)
    assert box.info["pids"] == pids and all(_alive(p) for p in pids.values())
    assert box.api("GET", "/readyz")[0] == 200
    assert secret_names(box).count("default/db-user-pass") == 1


def test_up_on_a_stopped_sandbox_resumes_it(sandbox_dir):
    from kubernetes import client, config

    d = str(sandbox_dir)
    first = sandbox_cli("up", "--dir", d, "--history")
    assert first.returncode == 0, first.stderr
    before = json.loads(first.stdout)
    box = Sandbox(sandbox_dir)
    # What a user adds: a namespace and a secret in it, one written with a local key before KMS (a read-only
    # provider the API server adds), and a seeded secret deleted.
    assert box.api("POST", "/api/v1/namespaces", {"metadata": {"name": "team"}})[0] == 201
    box.create_secret("team", "app-config", {"token": "t0ken"})
    box.ctl({"write_secret": {"namespace": "team", "name": "pre-kms", "with": "aescbc", "data": {"k": "v"}}})
    assert box.api("DELETE", "/api/v1/namespaces/default/secrets/registry-credentials")[0] == 200
    listed = secret_names(box)
    credentials = yaml.safe_load((sandbox_dir / "kubeconfig").read_text())
    assert sandbox_cli("down", "--dir", d).returncode == 0
    assert processes_mentioning(d) == []

    other = sandbox_cli("up", "--dir", d, "--provider", "aescbc", "--nodes", "3")
    assert_one_line_error(other, "stopped sandbox", "--provider kms-v2 (not aescbc)", "--nodes 1 (not 3)")
    assert processes_mentioning(d) == []
    other = sandbox_cli("up", "--dir", d, "--without-metrics", KEY_ID_HASH_TOTAL)
    assert_one_line_error(other, "stopped sandbox", f"--without-metrics (none) (not {KEY_ID_HASH_TOTAL})")
    assert processes_mentioning(d) == []

    for _ in range(2):  # resuming a resumed sandbox is the same again
        resumed = sandbox_cli("up", "--dir", d)
        assert resumed.returncode == 0, resumed.stderr
        assert "Traceback" not in resumed.stderr
        assert resumed.stderr.strip().splitlines() == [f"resumed the stopped sandbox in {sandbox_dir} (its data, "
                                                       "certificates and keys)"]
        info = json.loads(resumed.stdout)
        assert all(_alive(p) for p in info["pids"].values()) and info["pids"] != before["pids"]
        # Same etcd (ports and data), nodes and seeds; the sites ask for their former ports again.
        assert {k: info[k] for k in ("etcd", "nodes", "seeded", "history")} == \
            {k: before[k] for k in ("etcd", "nodes", "seeded", "history")}
        assert box.api("GET", "/readyz")[0] == 200
        names = secret_names(box)
        assert sorted(names) == sorted(set(listed) | {"default/registry-credentials"})
        assert names.count("default/db-user-pass") == 1 and names.count("default/registry-credentials") == 1
        assert box.api("GET", "/api/v1/namespaces/team")[0] == 200
        assert box.api("GET", "/api/v1/namespaces/team/secrets/pre-kms")[0] == 200
        assert box.etcdctl_get("/registry/secrets/default/db-user-pass").startswith(b"k8s:enc:kms:v2:kms-plugin:")
        # DIR/kubeconfig reaches the API server, with the certificates of the first up.
        kubeconfig = yaml.safe_load((sandbox_dir / "kubeconfig").read_text())
        assert kubeconfig["users"] == credentials["users"]
        assert kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"] == \
            credentials["clusters"][0]["cluster"]["certificate-authority-data"]
        assert kubeconfig["clusters"][0]["cluster"]["server"] == info["apiserver"]["url"]
        core = client.CoreV1Api(config.new_client_from_config(str(sandbox_dir / "kubeconfig")))
        assert core.read_namespaced_secret("app-config", "team").data == {"token": "dDBrZW4="}
        assert sandbox_cli("down", "--dir", d).returncode == 0
        assert processes_mentioning(d) == []


def test_metric_options_it_cannot_honour_fail_in_one_line_and_start_nothing(tmp_path):
    d = str(tmp_path / "box")
    assert_one_line_error(sandbox_cli("up", "--dir", d, "--apiserver", "emulator", "--without-metrics",
                                      KEY_ID_HASH_TOTAL), "needs the real kube-apiserver")
    assert_one_line_error(sandbox_cli("up", "--dir", d, "--disabled-metrics", "not a name"),
                          "fully qualified metric names", "'not a name'")
    assert_one_line_error(sandbox_cli("up", "--dir", d, "--clusters", "2", "--without-metrics", KEY_ID_HASH_TOTAL),
                          "not a fleet")
    # a name that is not a KMS envelope metric of k8s.io/apiserver: the build says so, nothing is left in .tools
    before = set((PROJECT / ".tools").glob("kubernetes-*-without-*"))
    assert_one_line_error(sandbox_cli("up", "--dir", d, "--without-metrics", "apiserver_envelope_encryption_nope"),
                          "apiserver_envelope_encryption_nope is not a KMS envelope metric")
    assert set((PROJECT / ".tools").glob("kubernetes-*-without-*")) == before
    assert processes_mentioning(d) == []


def test_up_on_a_directory_without_a_complete_sandbox_fails_in_one_line(tmp_path):
    d = tmp_path / "broken"
    d.mkdir()
    (d / "sandbox.json").write_text(json.dumps({"dir": str(d), "provider": "kms-v2", "pids": {}}))
    assert_one_line_error(sandbox_cli("up", "--dir", str(d)), "cannot be resumed", "another --dir")
    (d / "sandbox.json").write_text("{not json")
    assert_one_line_error(sandbox_cli("up", "--dir", str(d)), "not JSON")
    assert processes_mentioning(str(d)) == []


def test_listen_ports_are_never_in_the_ephemeral_range_and_never_given_twice():
    """CI lost a module to "bind: address already in use": a port from bind(0) is ephemeral, and kube-apiserver's
    own connections to etcd can be given it before kube-apiserver listens on it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= p < low for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))
