"""A fleet of sandbox clusters (``up --clusters N``) and the Resource Graph the ARM emulator serves for it.

Resource Graph answers as ARG does (paging by ``$top``/``$skipToken``, filters by resource group and tags, ARG's
400 for what it does not answer, subscriptions the caller cannot see left out); each connected cluster is a
cluster of its own, a single real-server sandbox (its ARM kubeconfig reaches its own kube-apiserver, which lists its
etcd mirror pod; its secrets are in its etcd under its provider; the in-pod etcdctl sees its keys through the real
server's exec); a disconnected one refuses connections. The cost of a cluster is measured and printed (not
asserted).
"""

import base64
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests
import yaml

from tests.sandbox.processes.proc import processes_mentioning
from tests.sandbox.control import SUBSCRIPTION, Sandbox, SandboxError, read_info
from tests.sandbox.fleet import OTHER_SUBSCRIPTION, Fleet

PROJECT = Path(__file__).resolve().parents[3]
# The fleets here run without the Entra emulator (entra=False): ARM then accepts unsigned tokens of the shape
# Entra issues, which these tests make themselves (test_a_fleet_with_entra covers signed ones).
from tests.sandbox.tests.test_sandbox_servers import make_token  # noqa: E402

ARM_AUD = "https://management.azure.com/"
QUERY = ("resources | where type =~ 'microsoft.kubernetes/connectedclusters' and kind =~ 'ProvisionedCluster'{} "
         "| project id, name, resourceGroup, subscriptionId, tags, properties.connectivityStatus | order by id asc")
PKI = "/etc/kubernetes/pki/etcd/"
ETCDCTL = ["etcdctl", "--endpoints=https://127.0.0.1:2379", f"--cacert={PKI}ca.crt", f"--cert={PKI}server.crt",
           f"--key={PKI}server.key"]
PREFIX = {"kms-v2": b"k8s:enc:kms:v2:kms-plugin:", "kms-v1": b"k8s:enc:kms:v1:kms-plugin:", "identity": b"k8s\x00"}


def sandbox_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.sandbox", *args], cwd=PROJECT, capture_output=True, text=True,
                          timeout=180)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """sandbox-1 kms-v2, sandbox-2 kms-v1, sandbox-3 identity, sandbox-4 (edge-rg) Offline; other-1 (kms-v2) in
    the second subscription."""
    d = tmp_path_factory.mktemp("fleet")
    r = sandbox_cli("up", "--dir", str(d), "--clusters", "4", "--providers", "kms-v2,kms-v1,identity",
                    "--disconnected", "sandbox-4", "--no-entra")
    assert r.returncode == 0, r.stderr
    box = Fleet(d)
    yield box
    box.down()
    assert processes_mentioning(str(d)) == []


def arm_session(info: dict, upn: str = "operator@contoso.com", token: str | None = None) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.verify = info["ca_bundle"]
    s.headers["Authorization"] = f"Bearer {token or make_token(ARM_AUD, upn=upn)}"
    s.base = info["arm"]["url"]
    return s


def graph(session, body: dict, api_version: str = "2022-10-01") -> requests.Response:
    return session.post(f"{session.base}/providers/Microsoft.ResourceGraph/resources?api-version={api_version}",
                        json=body, timeout=30)


def all_rows(session, query: str, subscriptions=None, top: int | None = None) -> tuple[list, list]:
    """Every row of a query, page after page; and each page's answer."""
    rows, pages, token = [], [], None
    while True:
        options = {"resultFormat": "objectArray"}
        if top:
            options["$top"] = top
        if token:
            options["$skipToken"] = token
        body = {"query": query, "options": options}
        if subscriptions is not None:
            body["subscriptions"] = subscriptions
        r = graph(session, body)
        assert r.status_code == 200, r.text
        page = r.json()
        pages.append(page)
        rows += page["data"]
        token = page.get("$skipToken")
        if not token:
            return rows, pages


def cluster(info: dict, name: str) -> dict:
    return next(c for c in info["clusters"] if c["name"] == name)


# --- Resource Graph ----------------------------------------------------------------------------------------------


def test_resource_graph_pages_return_every_cluster_once(fleet):
    info = fleet.info
    s = arm_session(info)
    subs = [SUBSCRIPTION, OTHER_SUBSCRIPTION]
    rows, pages = all_rows(s, QUERY.format(""), subs, top=2)
    assert [len(p["data"]) for p in pages] == [2, 2, 1]
    assert all(p["totalRecords"] == 5 and p["count"] == len(p["data"]) and p["resultTruncated"] == "false"
               and p["facets"] == [] for p in pages)
    assert "$skipToken" not in pages[-1]
    ids = [r["id"] for r in rows]
    assert ids == sorted(ids, key=str.lower) and len(set(ids)) == 5
    assert {r["id"] for r in rows} == {c["id"] for c in info["clusters"]}
    by_name = {r["name"]: r for r in rows}
    assert set(by_name["sandbox-1"]) == {"id", "name", "resourceGroup", "subscriptionId", "tags",
                                         "properties_connectivityStatus"}
    assert by_name["sandbox-4"]["properties_connectivityStatus"] == "Offline"
    assert by_name["sandbox-4"]["resourceGroup"] == "edge-rg" and by_name["sandbox-4"]["tags"]["edge"] == "true"
    assert by_name["other-1"]["subscriptionId"] == OTHER_SUBSCRIPTION
    assert {r["properties_connectivityStatus"] for n, r in by_name.items() if n != "sandbox-4"} == {"Connected"}
    # the default page holds them all; 2021-03-01 answers the same; no subscriptions: every one the caller sees
    assert len(all_rows(s, QUERY.format(""), subs)[1]) == 1
    r = graph(s, {"subscriptions": subs, "query": QUERY.format("")}, api_version="2021-03-01")
    assert r.status_code == 200 and r.json()["totalRecords"] == 5
    assert len(all_rows(s, QUERY.format(""))[0]) == 5
    # a token from another query is refused; without id projected there is no token, the result is truncated
    r = graph(s, {"subscriptions": subs, "query": QUERY.format(" and resourceGroup =~ 'sandbox-rg'"),
                  "options": {"$skipToken": pages[0]["$skipToken"]}})
    assert r.status_code == 400 and r.json()["error"]["details"][0]["code"] == "InvalidSkipToken"
    r = graph(s, {"subscriptions": subs, "options": {"$top": 2}, "query": QUERY.format("").replace(
        "project id, ", "project ").replace("order by id", "order by name")})
    assert r.json()["resultTruncated"] == "true" and "$skipToken" not in r.json() and r.json()["count"] == 2
    # the table format
    r = graph(s, {"subscriptions": subs, "query": QUERY.format(""), "options": {"resultFormat": "table", "$top": 1}})
    table = r.json()["data"]
    assert [c["name"] for c in table["columns"]] == ["id", "name", "resourceGroup", "subscriptionId", "tags",
                                                      "properties_connectivityStatus"]
    assert len(table["rows"]) == 1 and table["rows"][0][0] == ids[0]


@pytest.mark.parametrize("where,expected", [
    (" and resourceGroup =~ 'EDGE-RG'", ["sandbox-4"]),
    (" and resourceGroup =~ 'sandbox-rg'", ["sandbox-1", "sandbox-2", "sandbox-3"]),
    (" and resourceGroup == 'Edge-RG'", []),  # ARG keeps resourceGroup in lower case: == is exact
    (" and tags['env'] =~ 'prod'", ["other-1", "sandbox-1", "sandbox-3"]),
    (" and tags['env'] =~ 'dev' and resourceGroup =~ 'sandbox-rg'", ["sandbox-2"]),
    (" and isnotnull(tags['edge'])", ["sandbox-4"]),
    (" and tags['site'] == '2'", ["sandbox-2"]),
])
def test_resource_graph_filters_by_resource_group_and_tag(fleet, where, expected):
    rows, _ = all_rows(arm_session(fleet.info), QUERY.format(where), [SUBSCRIPTION, OTHER_SUBSCRIPTION])
    assert sorted(r["name"] for r in rows) == expected


@pytest.mark.parametrize("query", [
    "resources | where type =~ 'microsoft.compute/virtualmachines' | project id, name",
    "resources | where type =~ 'microsoft.kubernetes/connectedclusters' | project id",  # no kind filter
    "resourcecontainers | where type =~ 'microsoft.resources/subscriptions'",
    QUERY.format("").replace("| order by id asc", "| summarize count()"),
    QUERY.format(" or name =~ 'x'"),
    "resources | where type =~ 'microsoft.kubernetes/connectedclusters and kind =~ 'ProvisionedCluster'",
])
def test_resource_graph_answers_another_query_with_a_400(fleet, query):
    r = graph(arm_session(fleet.info), {"subscriptions": [SUBSCRIPTION], "query": query})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "BadRequest" and "correlationId" in error["message"]
    assert error["details"][0] == {"code": "InvalidQuery", "message": "Query is invalid. Please refer to the "
                                   "documentation for the Azure Resource Graph service and fix the error before "
                                   "retrying."}
    assert error["details"][1]["code"] in ("UnsupportedQuery", "ParserFailure") and error["details"][1]["message"]


def test_resource_graph_requests_arm_refuses(fleet):
    info = fleet.info
    s = arm_session(info)
    body = {"subscriptions": [SUBSCRIPTION], "query": QUERY.format("")}
    r = graph(s, body, api_version="2019-04-01")
    assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidApiVersionParameter"
    for top in (0, 1001, "5"):
        r = graph(s, {**body, "options": {"$top": top}})
        assert r.status_code == 400, top
    for headers in ({}, {"Authorization": "Bearer " + make_token("https://vault.azure.net/")},
                    {"Authorization": "Bearer " + make_token(ARM_AUD, lifetime=-600)}):
        r = requests.post(f"{info['resource_graph']['url']}?api-version=2022-10-01", json=body, headers=headers,
                          verify=info["ca_bundle"], timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "AuthenticationFailed"
    r = s.get(f"{info['resource_graph']['url']}?api-version=2022-10-01", timeout=30)
    assert r.status_code == 405


def test_a_subscription_without_access_yields_no_rows(fleet):
    info = fleet.info
    restricted = arm_session(info, upn="restricted-user@contoso.com")
    rows, _ = all_rows(restricted, QUERY.format(""), [SUBSCRIPTION, OTHER_SUBSCRIPTION])
    assert sorted(r["name"] for r in rows) == ["sandbox-1", "sandbox-2", "sandbox-3", "sandbox-4"]
    r = graph(restricted, {"subscriptions": [OTHER_SUBSCRIPTION], "query": QUERY.format("")})
    assert r.status_code == 200 and (r.json()["totalRecords"], r.json()["data"]) == (0, [])
    assert len(all_rows(restricted, QUERY.format(""))[0]) == 4  # tenant scope: what it can see
    # unknown subscriptions are left out the same way; the operator sees both
    r = graph(arm_session(info), {"subscriptions": ["11111111-1111-1111-1111-111111111111"], "query": QUERY.format("")})
    assert r.json()["totalRecords"] == 0
    assert len(all_rows(arm_session(info), QUERY.format(""), [OTHER_SUBSCRIPTION])[0]) == 1
    # ARM agrees: the restricted identity lists one subscription and may not read the other's cluster
    subs = restricted.get(f"{restricted.base}/subscriptions?api-version=2022-12-01", timeout=30).json()
    assert [s["subscriptionId"] for s in subs["value"]] == [SUBSCRIPTION]
    other = cluster(info, "other-1")
    r = restricted.get(f"{restricted.base}{other['id']}?api-version=2024-01-01", timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "AuthorizationFailed"
    r = restricted.post(f"{restricted.base}{other['id']}/providers/Microsoft.HybridContainerService/"
                        "provisionedClusterInstances/default/listAdminKubeconfig?api-version=2024-01-01", timeout=30)
    assert r.status_code == 403
    # and a cluster is found only in its own subscription
    moved = other["id"].replace(OTHER_SUBSCRIPTION, SUBSCRIPTION)
    assert arm_session(info).get(f"{restricted.base}{moved}?api-version=2024-01-01", timeout=30).status_code == 404


# --- the clusters --------------------------------------------------------------------------------------------


def arm_kubeconfig(session, arm_id: str, admin: bool = True) -> dict:
    """listAdminKubeconfig (or listUserKubeconfig) through the long-running operation, as az aksarc does."""
    action = "listAdminKubeconfig" if admin else "listUserKubeconfig"
    r = session.post(f"{session.base}{arm_id}/providers/Microsoft.HybridContainerService/provisionedClusterInstances/"
                     f"default/{action}?api-version=2024-01-01", timeout=30)
    assert r.status_code == 202, r.text
    url = r.headers["Azure-AsyncOperation"]
    for _ in range(20):
        body = session.get(url, timeout=30).json()
        if body["status"] != "InProgress":
            break
    assert body["status"] == "Succeeded", body
    return yaml.safe_load(base64.b64decode(body["properties"]["kubeconfigs"][0]["value"]))


def run_exec(core, pod, argv):
    from kubernetes.stream import stream
    ws = stream(core.connect_get_namespaced_pod_exec, pod, "kube-system", command=argv, container="etcd",
                stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
    out = ""
    deadline = time.monotonic() + 30
    while ws.is_open() and time.monotonic() < deadline:
        ws.update(timeout=1)
        if ws.peek_stdout():
            out += ws.read_stdout()
    return out


def test_each_cluster_is_its_own(fleet):
    from kubernetes import client, config
    info = fleet.info
    s = arm_session(info)
    tokens = set()
    for name, provider in (("sandbox-1", "kms-v2"), ("sandbox-2", "kms-v1"), ("sandbox-3", "identity"),
                           ("other-1", "kms-v2")):
        c = cluster(info, name)
        assert (c["provider"], c["connectivity"]) == (provider, "Connected")
        kubeconfig = arm_kubeconfig(s, c["id"])
        assert kubeconfig["clusters"][0]["cluster"]["server"] == c["apiserver_url"]
        core = client.CoreV1Api(config.new_client_from_config_dict(kubeconfig))
        pods = core.list_namespaced_pod("kube-system", label_selector="component=etcd").items
        assert [p.metadata.name for p in pods] == c["etcd_pods"]
        secrets = core.list_namespaced_secret("kube-system").items
        token = next(x.metadata.name for x in secrets if x.type == "bootstrap.kubernetes.io/token")
        tokens.add(token)
        # stored with its provider, in its own etcd (host side)
        member = fleet.cluster(name)
        assert member.info["etcd"]["endpoint"] == c["etcd_endpoint"]
        for key in ("/registry/secrets/default/db-user-pass", f"/registry/secrets/kube-system/{token}"):
            value = member.etcdctl_get(key)
            assert value is not None and value.startswith(PREFIX[provider]), (name, key, value[:40] if value else None)
        keys = member.etcdctl("get", "--prefix", "--keys-only", "/registry/secrets/kube-system/").stdout.split()
        assert keys == [f"/registry/secrets/kube-system/{token}".encode()]
        # the etcdctl in its etcd pod sees the same keys
        out = run_exec(core, c["etcd_pods"][0], ETCDCTL + ["get", "--prefix", "--keys-only",
                                                           "/registry/secrets/kube-system/"])
        assert out.split() == [f"/registry/secrets/kube-system/{token}"]
        # the user kubeconfig names this cluster too
        user = arm_kubeconfig(s, c["id"], admin=False)
        assert user["clusters"][0]["cluster"]["server"] == c["apiserver_url"]
        assert user["users"][0]["name"] == f"clusterUser_{c['resource_group']}_{name}"
    assert len(tokens) == 4
    ports = [urlparse(c["apiserver_url"]).port for c in info["clusters"]]
    assert len(set(ports)) == len(ports)


def test_a_disconnected_cluster_has_no_reachable_api_server(fleet):
    info = fleet.info
    c = cluster(info, "sandbox-4")
    assert c["connectivity"] == "Offline" and c["etcd_endpoint"] is None and c["control_url"] is None
    kubeconfig = arm_kubeconfig(arm_session(info), c["id"])
    url = urlparse(kubeconfig["clusters"][0]["cluster"]["server"])
    assert url.geturl() == c["apiserver_url"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((url.hostname, url.port), timeout=5).close()
    r = arm_session(info).get(f"{info['arm']['url']}{c['id']}?api-version=2024-01-01", timeout=30)
    assert r.json()["properties"]["connectivityStatus"] == "Offline" and r.json()["tags"]["edge"] == "true"
    with pytest.raises(SandboxError, match="not connected"):
        fleet.cluster("sandbox-4").ctl({"readyz": None})
    member = read_info(c["dir"])
    assert member["pids"] == {} and member["member_of"] == str(fleet.dir)


def test_each_cluster_runs_its_own_real_kube_apiserver(fleet):
    info = fleet.info
    assert info["apiserver_mode"] == "real" and info["kubernetes_version"].startswith("v1.")
    binaries = set()
    for c in info["clusters"]:
        member = read_info(c["dir"])
        if c["connectivity"] != "Connected":
            assert member["pids"] == {} and member["kube_apiservers"] == []
            continue
        assert member["apiserver_mode"] == "real" and member["member_of"] == str(fleet.dir)
        status, version = fleet.cluster(c["name"]).api("GET", "/version")
        assert status == 200 and version["gitVersion"] == info["kubernetes_version"]
        pid = member["pids"]["kube_apiserver"]
        exe = Path(f"/proc/{pid}/exe").resolve()
        assert exe.name == "kube-apiserver"
        binaries.add(exe)
        # the process listening on the kubeconfig's port is that kube-apiserver
        port = urlparse(c["apiserver_url"]).port
        assert f"--secure-port={port}" in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        # its own server process (token webhook, kubelet endpoint, control site), none of the fleet's ARM or Entra
        assert member["pids"]["server"] != info["pids"]["server"]
        assert member["arm"]["url"] == info["arm"]["url"] and member["arm"]["cluster"] == c["name"]
    assert len(binaries) == 1


def test_cluster_controls_reach_one_cluster(fleet):
    one, two = fleet.cluster("sandbox-1"), fleet.cluster("sandbox-2")
    before = two.kms("rotate")
    # etcd of sandbox-1 stops: its kube-apiserver's /readyz fails, sandbox-2's does not
    assert one.ctl({"etcd": "stop"})["result"]["etcd"]["stopped"]
    try:
        deadline = time.monotonic() + 60
        while one.api("GET", "/readyz", timeout=10)[0] == 200:
            assert time.monotonic() < deadline, "sandbox-1's /readyz still passes with its etcd stopped"
            time.sleep(0.5)
        assert two.api("GET", "/readyz")[0] == 200
    finally:
        one.ctl({"etcd": "start"})
    one._wait_ready(60)
    assert before == "key-0002" and json.loads(Path(one.info["kms_state"]).read_text())["current"] == "key-0001"
    r = sandbox_cli("ctl", "--dir", str(fleet.dir), "--cluster", "sandbox-2", '{"exec_key_prefix": null}')
    assert r.returncode == 0 and json.loads(r.stdout)["ok"]
    for args in (("kms", "--dir", str(fleet.dir), "rotate"), ("ctl", "--dir", str(fleet.dir), "{}"),
                 ("kms", "--dir", str(fleet.dir), "--cluster", "nope", "rotate")):
        r = sandbox_cli(*args)
        assert r.returncode == 1 and r.stderr.startswith("error: ") and len(r.stderr.splitlines()) == 1, r.stderr
    assert sandbox_cli("up", "--dir", str(fleet.dir)).returncode == 1  # running
    with pytest.raises(SandboxError, match="cluster of the fleet"):
        one.up()


@pytest.mark.parametrize("args,fragment", [
    (("--providers", "identity"), "--providers needs --clusters"),
    (("--clusters", "2", "--provider", "identity"), "--providers"),
    (("--clusters", "2", "--providers", "kms-v3"), "unknown provider 'kms-v3'"),
    (("--clusters", "2", "--disconnected", "sandbox-9"), "no cluster 'sandbox-9'"),
    (("--clusters", "2", "--disconnected", "sandbox-2:Disconnected"), "Offline"),
    (("--clusters", "0",), "clusters must be"),
])
def test_fleet_options_errors_are_one_line(tmp_path, args, fragment):
    r = sandbox_cli("up", "--dir", str(tmp_path / "f"), *args)
    assert r.returncode == 1 and r.stdout == "" and "Traceback" not in r.stderr, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], r.stderr
    assert not (tmp_path / "f" / "sandbox.json").exists()


def test_a_fleet_resumes_after_down(tmp_path):
    box = Fleet(tmp_path / "f")
    info = box.up(clusters=1, providers=["kms-v1"], entra=False)
    first = {c["name"]: c for c in info["clusters"]}
    secret = box.cluster("sandbox-1").api("GET", "/api/v1/namespaces/default/secrets/db-user-pass")[1]
    box.down()
    assert processes_mentioning(str(box.dir)) == []
    assert all(p is None for c in info["clusters"] for p in read_info(c["dir"])["pids"].values())
    again = box.up()
    try:
        assert box.resumed
        assert {c["name"]: c["apiserver_url"] for c in again["clusters"]} == \
            {n: c["apiserver_url"] for n, c in first.items()}
        status, same = box.cluster("sandbox-1").api("GET", "/api/v1/namespaces/default/secrets/db-user-pass")
        assert status == 200 and same["metadata"]["uid"] == secret["metadata"]["uid"]
        assert same["data"] == secret["data"]  # decrypted with the KMS plugin's kept keys
        names = [i["metadata"]["name"] for i in box.cluster("other-1").api("GET", "/api/v1/secrets")[1]["items"]]
        assert names.count("db-user-pass") == 1
    finally:
        box.down()
    assert processes_mentioning(str(box.dir)) == []
    with pytest.raises(SandboxError, match="stopped fleet with --clusters 1"):
        Fleet(box.dir).up(clusters=3, entra=False)
    with pytest.raises(SandboxError, match="--providers kms-v1"):
        Fleet(box.dir).up(providers="identity")
    with pytest.raises(SandboxError, match="holds a fleet"):
        Sandbox(box.dir).up()
    assert processes_mentioning(str(box.dir)) == []


def test_a_fleet_with_entra(tmp_path):
    """ARM and Resource Graph accept only the emulator's tokens; each API server takes PoP tokens for its own ARM
    id (the user kubeconfig says which)."""
    box = Fleet(tmp_path / "f")
    info = box.up(clusters=1, providers="identity", entra=True)
    try:
        entra = info["entra"]
        ca = info["ca_bundle"]

        def token(**form):
            r = requests.post(entra["token_endpoint"], data={"scope": "https://management.core.windows.net//.default",
                                                             **form}, verify=ca, timeout=30)
            assert r.status_code == 200, r.text
            return r.json()["access_token"]
        sp = token(grant_type="client_credentials", client_id=entra["service_principal"]["client_id"],
                   client_secret=entra["service_principal"]["secret"])
        restricted = token(grant_type="password", client_id="04b07795-8ddb-461a-bbee-02f9e1bf7b46",
                           username=entra["restricted_user"]["upn"], password=entra["restricted_user"]["password"])
        subs = [SUBSCRIPTION, OTHER_SUBSCRIPTION]
        assert sorted(r["name"] for r in all_rows(arm_session(info, token=sp), QUERY.format(""), subs)[0]) == \
            ["other-1", "sandbox-1"]
        assert [r["name"] for r in all_rows(arm_session(info, token=restricted), QUERY.format(""), subs)[0]] == \
            ["sandbox-1"]
        r = graph(arm_session(info), {"subscriptions": subs, "query": QUERY.format("")})  # an unsigned token
        assert r.status_code == 401 and r.json()["error"]["code"] == "InvalidAuthenticationToken"
        for c in info["clusters"]:
            user = arm_kubeconfig(arm_session(info, token=sp), c["id"], admin=False)
            args = user["users"][0]["user"]["exec"]["args"]
            assert args[args.index("--pop-claims") + 1] == f"u={c['id']}"
            assert box.cluster(c["name"]).api("GET", "/readyz")[0] == 200
            r = requests.get(f"{c['apiserver_url']}/api/v1/namespaces", headers={"Authorization": f"Bearer {sp}"},
                             verify=ca, timeout=30)
            # kube-apiserver answers a refused token with a bare 401 (its token webhook's reason stays in the
            # webhook's log): a plain Bearer token is refused there because this cluster demands a PoP token for
            # its own ARM id
            assert r.status_code == 401 and r.json()["message"] == "Unauthorized", r.text
            log = (Path(c["dir"]) / "logs" / "server.log").read_text()
            assert "tokenreview: denied" in log and f"u={c['id']}" in log
        # a PoP token bound to one cluster's ARM id (its sandbox.json's entra.cluster_id) is taken by that cluster's
        # kube-apiserver (through its token webhook) and by no other
        from tests.conftest import pop_token
        one, other = info["clusters"]
        assert box.cluster(one["name"]).info["entra"]["cluster_id"] == one["id"]
        token = pop_token(box.cluster(one["name"]))
        for c, status in ((one, 200), (other, 401)):
            r = requests.get(f"{c['apiserver_url']}/api/v1/namespaces", headers={"Authorization": f"Bearer {token}"},
                             verify=ca, timeout=30)
            assert r.status_code == status, (c["name"], r.text)
    finally:
        box.down()
    assert processes_mentioning(str(box.dir)) == []


def test_a_single_sandbox_answers_resource_graph_for_its_cluster(tmp_path):
    box = Sandbox(tmp_path / "one")
    info = box.up(provider="identity", entra=False)
    try:
        rows, _ = all_rows(arm_session(info), QUERY.format(""), [SUBSCRIPTION])
        assert [(r["name"], r["resourceGroup"], r["properties_connectivityStatus"]) for r in rows] == \
            [("sandbox-cluster", "sandbox-rg", "Connected")]
        assert "clusters" not in info and info["apiserver"]["url"]
    finally:
        box.down()


# --- cost ---------------------------------------------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_cost_of_a_cluster(tmp_path):
    """Start time and RSS of fleets of 1, 3 and 10 (plus other-1), by process kind, printed: not asserted."""
    report = []
    for n in (1, 3, 10):
        box = Fleet(tmp_path / f"n{n}")
        t0 = time.monotonic()
        info = box.up(clusters=n, providers="kms-v2,kms-v1,identity", entra=False)
        seconds = time.monotonic() - t0
        try:
            rss = {"fleet server": _rss_mb(info["pids"]["server"])}
            counts = {}
            for c in info["clusters"]:
                for kind, pid in read_info(c["dir"])["pids"].items():
                    if pid:
                        rss[kind] = rss.get(kind, 0.0) + _rss_mb(pid)
                        counts[kind] = counts.get(kind, 0) + 1
            assert len(info["clusters"]) == n + 1 and counts["kube_apiserver"] == n + 1
            report.append((n, seconds, sum(rss.values()), rss, counts))
        finally:
            box.down()
    for n, seconds, total, rss, counts in report:
        parts = ", ".join(f"{counts.get(k, 1)} {k} {v:.0f} MB" for k, v in rss.items())
        print(f"\nfleet of {n} (+other-1): up {seconds:.2f} s, RSS {total:.0f} MB ({parts}); per cluster "
              f"{(total - rss['fleet server']) / (n + 1):.0f} MB")
    (n1, s1, t1, *_), (nn, sn, tn, *_) = report[0], report[-1]
    print(f"per extra cluster: {(sn - s1) / (nn - n1):.2f} s, {(tn - t1) / (nn - n1):.0f} MB")


def test_control_does_not_import_fleet():
    """Imports run one way: fleet composes control's Sandbox; control knows nothing of fleets' code."""
    import ast
    tree = ast.parse((PROJECT / "tests" / "sandbox" / "control.py").read_text())
    imported = {(n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m == "fleet" or m.endswith(".fleet")}, imported
    fleet_tree = ast.parse((PROJECT / "tests" / "sandbox" / "fleet.py").read_text())
    assert any(isinstance(n, ast.ImportFrom) and n.module == "control" and n.level == 1 for n in fleet_tree.body)
