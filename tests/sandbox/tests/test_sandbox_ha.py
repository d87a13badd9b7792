"""``up --apiservers 3``: three real kube-apiservers on one etcd and KMS plugin, behind the sandbox's TCP load
balancer (tests/sandbox/apiserver/lb.py), each with its own KMS v2 key-id state.

- each server is the built binary on its own port, and the kubeconfig names the load balancer;
- the load balancer spreads connections over the three processes (each counts the requests it served on its own
  /metrics), with TLS end to end (the kubeconfig's CA verifies the servers' certificate);
- after ``rotate_with_lag`` the restarted servers write under the new key id and the lagging one under the old,
  as etcd shows; restarting it ends the disagreement;
- ``down`` stops every server, and a resume starts them all again.
"""

import json
import os
import re
from pathlib import Path

import pytest

from tests.sandbox import codec

from tests.sandbox.apiserver import kubeapiserver
from tests.sandbox.control import Sandbox, key_id_hash
from tests.sandbox.processes.proc import is_alive


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    b = Sandbox(tmp_path_factory.mktemp("ha"))
    b.up(apiservers=3)
    yield b
    b.down()


PROBE = "/api/v1/namespaces/default/limitranges/lb-probe"  # a GET nothing else makes (404)


def _served(box):
    """{port: GETs of a limitrange served} of each kube-apiserver, from its own /metrics (``apiserver_request_total``:
    each server counts only what it served; ``/version`` is not counted there)."""
    counts = {}
    for port in box.apiserver_ports():
        status, page = box.api("GET", "/metrics", port=port)
        assert status == 200
        counts[port] = sum(float(m.group(1)) for m in re.finditer(
            r'^apiserver_request_total\{[^}]*resource="limitranges"[^}]*verb="GET"[^}]*\} (\S+)$', page, re.M))
    return counts


def _spread(box, n=6):
    """How many requests through the load balancer (a new connection each) each server served."""
    before = _served(box)
    for _ in range(n):
        assert box.api("GET", PROBE)[0] == 404
    after = _served(box)
    return sorted(after[p] - before[p] for p in after)


def _key_id(box, name):
    value = box.etcdctl_get(f"/registry/secrets/ha/{name}")
    assert value.startswith(b"k8s:enc:kms:v2:kms-plugin:"), value[:40]
    return codec.decode_encrypted_object(value[len(b"k8s:enc:kms:v2:kms-plugin:"):])["keyID"]


def test_three_built_servers_each_on_its_own_port_and_the_kubeconfig_names_the_balancer(box):
    servers = box.info["kube_apiservers"]
    assert len(servers) == 3 and len({s["port"] for s in servers}) == 3
    assert [s["pid"] for s in servers] == [box.info["pids"][k] for k in
                                           ("kube_apiserver", "kube_apiserver_2", "kube_apiserver_3")]
    for s in servers:
        assert Path(os.readlink(f"/proc/{s['pid']}/exe")) == (kubeapiserver.binaries() / "kube-apiserver").resolve()
        assert box.api("GET", "/version", port=s["port"])[1]["gitVersion"] == box.info["kubernetes_version"]
    assert box.info["apiserver"]["port"] not in {s["port"] for s in servers}
    assert box.api("GET", "/version")[1]["gitVersion"] == box.info["kubernetes_version"]


def test_the_balancer_spreads_connections_over_the_three_processes(box):
    assert len({s["pid"] for s in box.info["kube_apiservers"]}) == 3
    assert _spread(box) == [2, 2, 2]  # urllib: a new connection per request, round robin


def test_a_lagging_server_writes_under_the_old_key_until_it_takes_the_new_one(box):
    ports = box.apiserver_ports()
    assert box.api("POST", "/api/v1/namespaces", {"metadata": {"name": "ha"}})[0] in (201, 409)
    old = json.loads(Path(box.info["kms_state"]).read_text())["current"]
    new = box.rotate_with_lag(lagging=[0])
    assert new != old
    assert box.status_key_ids(ports[0])[-1] == key_id_hash(old)
    assert box.status_key_ids(ports[1]) == box.status_key_ids(ports[2]) == [key_id_hash(new)]
    for i, port in enumerate(ports):
        body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"from-{i}", "namespace": "ha"},
                "data": {"k": "dmFsdWU="}}
        assert box.api("POST", "/api/v1/namespaces/ha/secrets", body, port=port)[0] == 201
    assert [_key_id(box, f"from-{i}") for i in range(3)] == [old, new, new]
    box.restart_apiservers([0])
    assert box.status_key_ids(ports[0]) == [key_id_hash(new)]


def test_down_stops_every_server_and_a_resume_starts_them_all(box):
    pids = [s["pid"] for s in box.info["kube_apiservers"]]
    box.down()
    assert not any(is_alive(p) for p in pids)
    box.up()
    servers = box.info["kube_apiservers"]
    assert len(servers) == 3 and all(is_alive(s["pid"]) for s in servers)
    assert _spread(box) == [2, 2, 2]
