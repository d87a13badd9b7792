"""The Kubernetes API server emulator: what ``az aksarc kms verify`` (and kubectl) talk to.

aiohttp over HTTPS with the Kubernetes CA's serving cert. It implements only what the product and a person
following the documented procedure use, but implements that the way kube-apiserver does, because the product
must not be able to tell the difference:

- authentication by client certificate (CN = user, O = groups) or an Entra-like bearer JWT; RBAC with a
  ``restricted-user`` that may read but not exec into kube-system nor create secrets (real 403 Status bodies);
- ``/readyz`` and ``/healthz`` with the real check lines, and ``/readyz/<check>`` with the real KMS error;
- pods (kubeadm-like etcd mirror pods) and ``pods/exec`` over WebSocket (v5/v4 channel protocols) or SPDY/3.1
  (kubectl before 1.29) running the real ``etcdctl`` with the pod's paths mapped onto the sandbox, distroless
  (no shell);
- secrets stored in the real etcd exactly as kube-apiserver stores them (protobuf, then the first provider of
  the EncryptionConfiguration), read back through every provider; an unreadable value fails get and list with
  the apiserver's ``unable to transform key`` error.

Started by :mod:`tests.sandbox.serve` from the configuration that :mod:`tests.sandbox.control` writes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import copy
import json
import logging
import os
import random
import re
import secrets as pysecrets
import time
from pathlib import Path

import grpc
from aiohttp import web

from . import codec, kube
from .etcdgrpc import EtcdClient, prefix_end
from .kube import SelectorError, dumps, status_response

log = logging.getLogger("sandbox.apiserver")

AKS_SERVER_ID = "6dae42f8-4368-4678-94ff-3960e28e3630"
SECRETS_PREFIX = "/registry/secrets/"
POD_ETCD_PKI = "/etc/kubernetes/pki/etcd/"
ETCD_BINARIES = ("etcd", "etcdctl", "etcdutl")
EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io", "base64.channel.k8s.io")
ADMIN_GROUP = "system:masters"
RESTRICTED_USER = "restricted-user"
PAGE = 500
CACHE_MAX = 200_000
LOCAL_KINDS = ("aescbc", "aesgcm", "secretbox")
EXEC_CHUNK = 64 * 1024

READYZ_HEAD = ["ping", "log", "etcd", "etcd-readiness"]
READYZ_TAIL = [
    "informer-sync",
    "poststarthook/start-apiserver-admission-initializer",
    "poststarthook/generic-apiserver-start-informers",
    "poststarthook/priority-and-fairness-config-consumer",
    "poststarthook/priority-and-fairness-filter",
    "poststarthook/storage-object-count-tracker-hook",
    "poststarthook/start-apiextensions-informers",
    "poststarthook/start-apiextensions-controllers",
    "poststarthook/crd-informer-synced",
    "poststarthook/start-service-ip-repair-controllers",
    "poststarthook/rbac/bootstrap-roles",
    "poststarthook/scheduling/bootstrap-system-priority-classes",
    "poststarthook/priority-and-fairness-config-producer",
    "poststarthook/start-system-namespaces-controller",
    "poststarthook/bootstrap-controller",
    "poststarthook/start-cluster-authentication-info-controller",
    "poststarthook/start-kube-apiserver-identity-lease-controller",
    "poststarthook/start-kube-apiserver-identity-lease-garbage-collector",
    "poststarthook/start-legacy-token-tracking-controller",
    "poststarthook/aggregator-reload-proxy-client-cert",
    "poststarthook/start-kube-aggregator-informers",
    "poststarthook/apiservice-registration-controller",
    "poststarthook/apiservice-status-available-controller",
    "poststarthook/kube-apiserver-autoregistration",
    "autoregister-completion",
    "poststarthook/apiservice-openapi-controller",
    "poststarthook/apiservice-openapiv3-controller",
    "poststarthook/apiservice-discovery-controller",
    "shutdown",
]
AUTO_RELOAD_HOOK = "poststarthook/start-encryption-provider-config-automatic-reload"
READYZ_ONLY = {"etcd-readiness", "informer-sync", "shutdown"}

TEXT_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache, private"}


class TransformFailure(Exception):
    """A stored value the EncryptionConfiguration cannot read; str() is the apiserver's wording."""

    def __init__(self, key: str, err: Exception):
        super().__init__(f'unable to transform key "{key}": {err}')


class User:
    def __init__(self, name: str, groups=(), restricted: bool = False):
        self.name = name
        self.groups = list(groups)
        self.restricted = restricted


# --- authentication ---------------------------------------------------------------------------------------


def _decode_jwt(token: str) -> dict | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    return claims if isinstance(claims, dict) else None


def _aud_ok(aud) -> bool:
    auds = aud if isinstance(aud, list) else [aud]
    for a in auds:
        if not isinstance(a, str):
            continue
        a = a[len("api://"):] if a.startswith("api://") else a
        a = a[:-len("/.default")] if a.endswith("/.default") else a
        if a == AKS_SERVER_ID:
            return True
    return False


def authenticate(request: web.Request) -> User | None:
    """Client certificate first, then the bearer token, as kube-apiserver's union authenticator orders them
    (x509 before tokens); None when neither authenticates."""
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport else None
    if cert:
        cn, orgs = "", []
        for rdn in cert.get("subject", ()):
            for k, v in rdn:
                if k == "commonName":
                    cn = v
                elif k == "organizationName":
                    orgs.append(v)
        if cn:
            return User(cn, orgs + ["system:authenticated"],
                        restricted=ADMIN_GROUP not in orgs and cn == RESTRICTED_USER)
    auth = request.headers.get("Authorization", "")
    if not auth.lower().startswith("bearer "):
        return None
    claims = _decode_jwt(auth[7:].strip())
    if not claims or not _aud_ok(claims.get("aud")):
        return None
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or exp < time.time():
        return None
    upn = claims.get("upn") or claims.get("unique_name") or claims.get("oid")
    if not upn:
        return None
    groups = list(claims.get("groups") or []) + ["system:authenticated"]
    return User(upn, groups, restricted=upn.lower().startswith("restricted"))


def authorize(user: User, verb: str, resource: str, namespace: str | None, subresource: str | None = None) -> bool:
    """RBAC as the sandbox's roles grant it: admins and Entra users everything; the restricted user read-only
    on pods and secrets (no ``create pods/exec`` in kube-system, no secret writes)."""
    if not user.restricted:
        return True
    if verb in ("get", "list", "watch") and subresource is None:
        return True
    if resource == "pods" and subresource == "exec":
        return namespace != "kube-system"
    return False


# --- the emulator -----------------------------------------------------------------------------------------


class APIServer:
    """State and handlers of one emulated kube-apiserver (one sandbox)."""

    def __init__(self, cfg: dict):
        from .etcdproc import find_etcd, find_etcdctl
        from .transformers import EncryptionConfig

        self.cfg = cfg
        self.dir = Path(cfg["dir"])
        self.provider = cfg["provider"]
        self.nodes = list(cfg["nodes"])
        self.readyz_style = cfg.get("readyz_style", "aggregate")
        self.version = cfg.get("kubernetes_version", "v1.30.4")
        self.started = cfg.get("started", time.time())
        self.kms_client = None
        if cfg.get("kms"):
            from .kms_client import KMSClient
            self.kms_client = KMSClient(cfg["kms"]["socket"], cfg["kms"]["api"])
        key = base64.b64decode(cfg["local_key"]) if cfg.get("local_key") else None
        self.encryption = EncryptionConfig.for_provider(self.provider, kms_client=self.kms_client, key=key)
        self.etcd: EtcdClient | None = None
        self.etcd_endpoint = cfg["etcd"]["endpoint"]
        self.etcd_port = int(self.etcd_endpoint.rsplit(":", 1)[1])
        self.etcdctl = find_etcdctl(cfg.get("etcdctl_version", "3.5"))
        self.etcd_bin = find_etcd()
        self.etcdutl_bin = str(Path(self.etcd_bin).with_name("etcdutl"))
        self.exec_faults: dict[str, str] = dict(cfg.get("exec_faults") or {})
        self.readyz_fault: str | None = None
        # ctl exec_key_prefix: etcdctl run through exec sees /registry/ keys under this prefix instead (as if the
        # etcd pod served another etcd than the API server's, or the API server used another --etcd-prefix).
        self.exec_key_prefix: str | None = None
        self.cache: collections.OrderedDict = collections.OrderedDict()
        self.namespaces = {ns: self.started - 3600 for ns in ("default", "kube-system", "kube-public",
                                                               "kube-node-lease")}
        self.pods = build_pods(self.nodes, cfg.get("etcdctl_version", "3.5"), self.started)
        self.node_objs = [build_node(n, i, self.version, self.started) for i, n in enumerate(self.nodes)]
        self.port = 0
        self.exec_procs: set = set()

    async def start(self) -> None:
        e = self.cfg["etcd"]
        self.etcd = EtcdClient.from_files(e["endpoint"], e["ca"], e["cert"], e["key"])

    async def close(self) -> None:
        for proc in list(self.exec_procs):
            _kill(proc)
        if self.etcd:
            await self.etcd.close()
        if self.kms_client:
            self.kms_client.close()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=16 * 1024 * 1024)
        r = app.router
        r.add_get("/version", self.h_version)
        r.add_get("/version/", self.h_version)
        for probe in ("readyz", "healthz", "livez"):
            r.add_get(f"/{probe}", self.h_health)
            r.add_get(f"/{probe}/{{check:.+}}", self.h_health_check)
        r.add_get("/api", self.h_api)
        r.add_get("/api/", self.h_api)
        r.add_get("/apis", self.h_apis)
        r.add_get("/apis/", self.h_apis)
        r.add_get("/api/v1", self.h_api_v1)
        r.add_get("/api/v1/", self.h_api_v1)
        r.add_get("/openapi/v2", self.h_openapi_v2)
        r.add_get("/openapi/v3", self.h_openapi_v3)
        r.add_get("/openapi/v3/api/v1", self.h_openapi_v3_v1)
        r.add_get("/api/v1/namespaces", self.h_list_namespaces)
        r.add_post("/api/v1/namespaces", self.h_create_namespace)
        r.add_get("/api/v1/namespaces/{ns}", self.h_get_namespace)
        r.add_get("/api/v1/nodes", self.h_list_nodes)
        r.add_get("/api/v1/nodes/{name}", self.h_get_node)
        r.add_get("/api/v1/pods", self.h_list_pods)
        r.add_get("/api/v1/namespaces/{ns}/pods", self.h_list_pods)
        r.add_get("/api/v1/namespaces/{ns}/pods/{name}", self.h_get_pod)
        r.add_route("GET", "/api/v1/namespaces/{ns}/pods/{name}/exec", self.h_exec)
        r.add_route("POST", "/api/v1/namespaces/{ns}/pods/{name}/exec", self.h_exec)
        r.add_get("/api/v1/secrets", self.h_list_secrets)
        r.add_get("/api/v1/namespaces/{ns}/secrets", self.h_list_secrets)
        r.add_post("/api/v1/namespaces/{ns}/secrets", self.h_create_secret)
        r.add_get("/api/v1/namespaces/{ns}/secrets/{name}", self.h_get_secret)
        r.add_put("/api/v1/namespaces/{ns}/secrets/{name}", self.h_update_secret)
        r.add_patch("/api/v1/namespaces/{ns}/secrets/{name}", self.h_patch_secret)
        r.add_delete("/api/v1/namespaces/{ns}/secrets/{name}", self.h_delete_secret)
        return app

    # -- middleware: authentication, audit id, 404s as Status ------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        user = authenticate(request)
        if user is None:
            return web.Response(status=401, text=dumps(kube.UNAUTHORIZED), content_type=kube.JSON)
        request["user"] = user
        try:
            resp = await handler(request)
        except web.HTTPNotFound:
            return web.Response(status=404, text="404 page not found\n", headers=TEXT_HEADERS)
        except web.HTTPMethodNotAllowed as e:
            return status_response(405, "MethodNotAllowed", f"the server does not allow this method on the "
                                   f"requested resource ({e.method})")
        except _EtcdDown as e:
            return kube.internal_error(str(e))
        if isinstance(resp, web.StreamResponse) and not resp.prepared:
            resp.headers.setdefault("Audit-Id", kube.new_uid())
        return resp

    # -- health -------------------------------------------------------------------------------------------------

    async def _etcd_check(self) -> tuple[bool, str | None]:
        try:
            await asyncio.wait_for(self.etcd.range(b"health", b"", limit=1), 2.0)
            return True, None
        except (asyncio.TimeoutError, grpc.RpcError):
            return False, "error getting data from etcd: context deadline exceeded"

    async def _kms_checks(self) -> list[tuple[str, bool, str | None]]:
        providers = self.encryption.kms_providers
        if not providers:
            return []
        results = await asyncio.gather(*(asyncio.to_thread(p.client.health_check, p.name) for p in providers))
        if self.readyz_style == "per-provider":
            return [(f"kms-provider-{i}", ok, msg) for i, (ok, msg) in enumerate(results)]
        errors = [f"kms-provider-{i}: {msg}" for i, (ok, msg) in enumerate(results) if not ok]
        return [("kms-providers", not errors, ", ".join(errors) if errors else None)]

    async def _checks(self, probe: str) -> list[tuple[str, bool, str | None]]:
        (etcd_ok, etcd_err), kms = await asyncio.gather(self._etcd_check(), self._kms_checks())
        checks: list[tuple[str, bool, str | None]] = []
        for name in READYZ_HEAD:
            if name.startswith("etcd"):
                checks.append((name, etcd_ok, etcd_err))
            else:
                checks.append((name, True, None))
        if probe != "livez":
            checks += kms
        tail = list(READYZ_TAIL)
        if kms and self.readyz_style == "aggregate":
            tail.insert(1, AUTO_RELOAD_HOOK)
        checks += [(n, True, None) for n in tail]
        if probe != "readyz":
            checks = [c for c in checks if c[0] not in READYZ_ONLY]
        return checks

    def _readyz_faulted(self, request) -> web.StreamResponse | None:
        if self.readyz_fault == "unreachable":
            if request.transport:
                request.transport.abort()
            raise asyncio.CancelledError()
        if self.readyz_fault == "unavailable":
            return web.Response(status=503, text="Service Unavailable", headers=TEXT_HEADERS)
        return None

    async def h_health(self, request: web.Request) -> web.StreamResponse:
        probe = request.path.strip("/")
        faulted = self._readyz_faulted(request)
        if faulted:
            return faulted
        excluded = set(request.query.getall("exclude", []))
        verbose = "verbose" in request.query
        lines, failed = [], False
        for name, ok, _ in await self._checks(probe):
            if name in excluded:
                lines.append(f"[+]{name} excluded: ok")
            elif ok:
                lines.append(f"[+]{name} ok")
            else:
                lines.append(f"[-]{name} failed: reason withheld")
                failed = True
        if failed:
            lines.append(f"{probe} check failed")
            return web.Response(status=500, text="\n".join(lines) + "\n", content_type="text/plain",
                                charset="utf-8", headers=TEXT_HEADERS)
        if not verbose:
            return web.Response(text="ok", content_type="text/plain", charset="utf-8", headers=TEXT_HEADERS)
        lines.append(f"{probe} check passed")
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8",
                            headers=TEXT_HEADERS)

    async def h_health_check(self, request: web.Request) -> web.StreamResponse:
        probe = request.path.strip("/").split("/", 1)[0]
        faulted = self._readyz_faulted(request)
        if faulted:
            return faulted
        wanted = request.match_info["check"]
        for name, ok, err in await self._checks(probe):
            if name == wanted:
                if ok:
                    return web.Response(text="ok", content_type="text/plain", charset="utf-8", headers=TEXT_HEADERS)
                return web.Response(status=500, text=f"internal server error: {err}\n", content_type="text/plain",
                                    charset="utf-8", headers=TEXT_HEADERS)
        return web.Response(status=404, text="404 page not found\n", headers=TEXT_HEADERS)

    # -- version and discovery -----------------------------------------------------------------------------------

    async def h_version(self, request):
        major, minor = self.version.lstrip("v").split(".")[:2]
        return web.json_response({
            "major": major, "minor": minor, "gitVersion": self.version,
            "gitCommit": "2bd1a5e8e5ba1ec7ebcd6e5d0f7bbaf3e8bbab9d", "gitTreeState": "clean",
            "buildDate": "2024-08-14T18:57:08Z", "goVersion": "go1.22.5", "compiler": "gc",
            "platform": "linux/amd64"}, dumps=dumps)

    async def h_api(self, request):
        return web.json_response({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}]}, dumps=dumps)

    async def h_apis(self, request):
        return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}, dumps=dumps)

    async def h_api_v1(self, request):
        all_verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        resources = [
            {"name": "namespaces", "singularName": "namespace", "namespaced": False, "kind": "Namespace",
             "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["ns"],
             "storageVersionHash": "Q3oi5N2YM8M="},
            {"name": "nodes", "singularName": "node", "namespaced": False, "kind": "Node", "verbs": all_verbs,
             "shortNames": ["no"], "storageVersionHash": "XwShjMxG9Fs="},
            {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod", "verbs": all_verbs,
             "shortNames": ["po"], "categories": ["all"], "storageVersionHash": "xPOwRZ+Yhw8="},
            {"name": "pods/exec", "singularName": "", "namespaced": True, "kind": "PodExecOptions",
             "verbs": ["create", "get"]},
            {"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret", "verbs": all_verbs,
             "storageVersionHash": "S6u1pOWzb84="},
        ]
        return web.json_response({"kind": "APIResourceList", "groupVersion": "v1", "resources": resources},
                                 dumps=dumps)

    async def h_openapi_v2(self, request):
        """A minimal OpenAPI v2 document (protobuf, as kubectl asks for it): no definitions, so kubectl's client-side
        validation (used for ``kind: List`` input, e.g. ``kubectl get secrets -A -o json | kubectl replace -f -``)
        finds no schema and lets the server validate."""
        info = _pb_str(1, "Kubernetes") + _pb_str(2, self.version)
        doc = _pb_str(1, "2.0") + _pb_bytes(2, info)
        if "protobuf" in request.headers.get("Accept", ""):
            return web.Response(body=doc, content_type="application/com.github.proto-openapi.spec.v2.v1.0+protobuf")
        return web.json_response({"swagger": "2.0", "info": {"title": "Kubernetes", "version": self.version},
                                  "paths": {}, "definitions": {}}, dumps=dumps)

    async def h_openapi_v3(self, request):
        return web.json_response({"paths": {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=" + "0" * 128}}},
                                 dumps=dumps)

    async def h_openapi_v3_v1(self, request):
        """Just enough of the core/v1 OpenAPI v3 spec for kubectl to see that the server supports
        ``fieldValidation`` (so it validates server-side) for the kinds the sandbox serves."""
        paths = {}
        for kind, plural, namespaced in (("Secret", "secrets", True), ("Namespace", "namespaces", False),
                                         ("Pod", "pods", True)):
            path = f"/api/v1/namespaces/{{namespace}}/{plural}/{{name}}" if namespaced else f"/api/v1/{plural}/{{name}}"
            op = {"operationId": f"patchCoreV1{'Namespaced' if namespaced else ''}{kind}",
                  "x-kubernetes-action": "patch",
                  "x-kubernetes-group-version-kind": {"group": "", "version": "v1", "kind": kind},
                  "parameters": [{"name": n, "in": "query", "schema": {"type": "string"}}
                                 for n in ("dryRun", "fieldManager", "fieldValidation", "force")],
                  "responses": {"200": {"description": "OK"}}}
            paths[path] = {"patch": op}
        return web.json_response({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": self.version},
                                  "paths": paths, "components": {"schemas": {}}}, dumps=dumps)

    # -- helpers ----------------------------------------------------------------------------------------------------

    def _deny(self, request, verb, resource, namespace, name=None, subresource=None):
        user: User = request["user"]
        if authorize(user, verb, resource, namespace, subresource):
            return None
        return kube.forbidden(user.name, verb, resource, namespace, name, subresource)

    @staticmethod
    def _respond(obj: dict, status: int = 200, content_type: str = kube.JSON) -> web.Response:
        return web.Response(status=status, text=dumps(obj), content_type=content_type)

    def _render_one(self, request, obj: dict, kind: str, row, columns, status: int = 200) -> web.Response:
        form = kube.wanted_form(request.headers.get("Accept"))
        if form == "table":
            return self._respond(kube.table(columns, [row(obj)], obj["metadata"].get("resourceVersion", "")), status)
        if form == "metadata":
            return self._respond(kube.partial_metadata(obj), status)
        if form == "unacceptable":
            return status_response(406, "NotAcceptable", "only the following media types are accepted: "
                                   "application/json, application/yaml, application/vnd.kubernetes.protobuf")
        return self._respond({"kind": kind, "apiVersion": "v1", **obj}, status)

    def _render_list(self, request, items: list, kind: str, row, columns, rv: str, cont: str = "",
                     remaining: int | None = None) -> web.Response:
        form = kube.wanted_form(request.headers.get("Accept"))
        meta: dict = {"resourceVersion": rv}
        if cont:
            meta["continue"] = cont
            if remaining is not None:
                meta["remainingItemCount"] = remaining
        if form == "table":
            t = kube.table(columns, [row(o) for o in items], rv)
            t["metadata"] = meta
            return self._respond(t)
        if form == "metadata":
            return self._respond({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                                  "metadata": meta, "items": [kube.partial_metadata(o) for o in items]},
                                 content_type=kube.JSON)
        if form == "unacceptable":
            return status_response(406, "NotAcceptable", "only the following media types are accepted: "
                                   "application/json, application/yaml, application/vnd.kubernetes.protobuf")
        return self._respond({"kind": kind, "apiVersion": "v1", "metadata": meta, "items": items})

    # -- namespaces and nodes ----------------------------------------------------------------------------------------

    def _ns_obj(self, name: str) -> dict:
        return {"metadata": {"name": name, "uid": _stable_uid("ns:" + name), "resourceVersion": "1",
                             "creationTimestamp": kube.now_rfc3339(self.namespaces[name]),
                             "labels": {"kubernetes.io/metadata.name": name}},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}

    async def h_list_namespaces(self, request):
        denied = self._deny(request, "list", "namespaces", None)
        if denied:
            return denied
        items = [self._ns_obj(n) for n in sorted(self.namespaces)]
        cols = [kube.SECRET_COLUMNS[0], ("Status", "string", "", "The status of the namespace", 0),
                kube.SECRET_COLUMNS[3]]
        return self._render_list(request, items, "NamespaceList", _ns_row, cols, "1")

    async def h_get_namespace(self, request):
        name = request.match_info["ns"]
        denied = self._deny(request, "get", "namespaces", None, name)
        if denied:
            return denied
        if name not in self.namespaces:
            return kube.not_found("namespaces", name)
        cols = [kube.SECRET_COLUMNS[0], ("Status", "string", "", "The status of the namespace", 0),
                kube.SECRET_COLUMNS[3]]
        return self._render_one(request, self._ns_obj(name), "Namespace", _ns_row, cols)

    async def h_create_namespace(self, request):
        denied = self._deny(request, "create", "namespaces", None)
        if denied:
            return denied
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        name = (body.get("metadata") or {}).get("name", "")
        if not _DNS_LABEL.match(name or ""):
            return kube.invalid("Namespace", name, [("FieldValueInvalid", "metadata.name",
                                                     f'Invalid value: "{name}": a lowercase RFC 1123 label')])
        if name in self.namespaces:
            return kube.already_exists("namespaces", name)
        self.namespaces[name] = time.time()
        return self._respond({"kind": "Namespace", "apiVersion": "v1", **self._ns_obj(name)}, 201)

    async def h_list_nodes(self, request):
        denied = self._deny(request, "list", "nodes", None)
        if denied:
            return denied
        return self._render_list(request, self.node_objs, "NodeList", _node_row, _NODE_COLUMNS, "1")

    async def h_get_node(self, request):
        name = request.match_info["name"]
        denied = self._deny(request, "get", "nodes", None, name)
        if denied:
            return denied
        for n in self.node_objs:
            if n["metadata"]["name"] == name:
                return self._render_one(request, n, "Node", _node_row, _NODE_COLUMNS)
        return kube.not_found("nodes", name)

    # -- pods ---------------------------------------------------------------------------------------------------------

    async def h_list_pods(self, request):
        ns = request.match_info.get("ns")
        denied = self._deny(request, "list", "pods", ns)
        if denied:
            return denied
        try:
            labels = kube.parse_label_selector(request.query.get("labelSelector"))
            fields = kube.parse_field_selector(request.query.get("fieldSelector"), _POD_FIELDS)
        except SelectorError as e:
            return kube.bad_request(str(e))
        items = [p for p in self.pods if (ns is None or p["metadata"]["namespace"] == ns)
                 and kube.labels_match(labels, p["metadata"].get("labels"))
                 and kube.fields_match(fields, p)]
        return self._render_list(request, items, "PodList", kube.pod_row, kube.POD_COLUMNS, "1")

    def _find_pod(self, ns: str, name: str) -> dict | None:
        for p in self.pods:
            if p["metadata"]["namespace"] == ns and p["metadata"]["name"] == name:
                return p
        return None

    async def h_get_pod(self, request):
        ns, name = request.match_info["ns"], request.match_info["name"]
        denied = self._deny(request, "get", "pods", ns, name)
        if denied:
            return denied
        pod = self._find_pod(ns, name)
        if pod is None:
            return kube.not_found("pods", name)
        return self._render_one(request, pod, "Pod", kube.pod_row, kube.POD_COLUMNS)

    # -- pods/exec ----------------------------------------------------------------------------------------------------

    async def h_exec(self, request: web.Request) -> web.StreamResponse:
        from . import execws
        return await execws.handle(self, request)

    def map_exec(self, pod: dict, argv: list[str]) -> tuple[list[str] | None, dict]:
        """Map an argv inside the etcd container onto the host: the binary, the node's pki dir, the client URL.
        Returns (None, env) when argv[0] does not exist in the (distroless) image."""
        node = pod["spec"]["nodeName"]
        pki = str(self.dir / "nodes" / node / "pki" / "etcd") + "/"
        exe = argv[0]
        base = exe[len("/usr/local/bin/"):] if exe.startswith("/usr/local/bin/") else exe
        binaries = {"etcdctl": self.etcdctl, "etcd": self.etcd_bin}
        if self.cfg.get("etcdctl_version", "3.5") != "3.4":
            binaries["etcdutl"] = self.etcdutl_bin  # the 3.4 image has no etcdutl
        if pod["metadata"].get("labels", {}).get("component") != "etcd" or base not in binaries or (
                "/" in exe and not exe.startswith("/usr/local/bin/")):
            return None, {}
        mapped = [binaries[base]]
        endpoint_flag = False
        for arg in argv[1:]:
            if arg.startswith("--endpoints"):
                endpoint_flag = True
            arg = arg.replace(POD_ETCD_PKI, pki)
            if self.exec_key_prefix and arg.startswith("/registry/"):
                arg = self.exec_key_prefix + arg[len("/registry/"):]
            arg = re.sub(r"(?<![\w.])(127\.0\.0\.1|localhost):2379\b", rf"\g<1>:{self.etcd_port}", arg)
            mapped.append(arg)
        env = {"PATH": "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "ETCDCTL_API": "3",
               "HOSTNAME": node}
        if not endpoint_flag:
            env["ETCDCTL_ENDPOINTS"] = f"127.0.0.1:{self.etcd_port}"
        return mapped, env

    # -- secrets: storage ---------------------------------------------------------------------------------------------

    def _kms(self) -> bool:
        return bool(self.encryption.kms_providers)

    async def _offload(self, fn, *args):
        """KMS transformers make blocking gRPC calls: run them off the event loop; local keys are quick."""
        if self._kms():
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    def _cache_put(self, key: str, rev: int, plain: bytes) -> None:
        self.cache[key] = (rev, plain)
        self.cache.move_to_end(key)
        while len(self.cache) > CACHE_MAX:
            self.cache.popitem(last=False)

    def _transform_reads(self, kvs) -> list[bytes]:
        """Plaintext of each KeyValue (may run on a worker thread: touches no shared state). Raises
        TransformFailure for the first unreadable value, as the apiserver fails a whole list on one bad value."""
        out = []
        for kv in kvs:
            try:
                out.append(self.encryption.read(kv.key.decode(), kv.value))
            except Exception as e:  # noqa: BLE001 - TransformError, or a crashed KMS client
                raise TransformFailure(kv.key.decode(), e) from None
        return out

    async def _decoded(self, kvs) -> list[tuple]:
        """(kv, secret object with resourceVersion) for each KeyValue. Cached plaintext (by key and mod revision)
        stands in for the apiserver's DEK cache, so reads of what this server wrote need no KMS call."""
        plains: dict = {}
        misses = []
        for kv in kvs:
            hit = self.cache.get(kv.key.decode())
            if hit and hit[0] == kv.mod_revision:
                plains[kv.key] = hit[1]
            else:
                misses.append(kv)
        if misses:
            read = (await asyncio.to_thread(self._transform_reads, misses) if self._kms()
                    else self._transform_reads(misses))
            for kv, plain in zip(misses, read):
                self._cache_put(kv.key.decode(), kv.mod_revision, plain)
                plains[kv.key] = plain
        pairs = [(kv, plains[kv.key]) for kv in kvs]
        out = []
        for kv, plain in pairs:
            try:
                obj = codec.decode_secret(plain)
            except (ValueError, IndexError) as e:
                raise TransformFailure(kv.key.decode(), e) from None
            out.append((kv, finish_secret(obj, kv)))
        return out

    async def _etcd(self, coro):
        try:
            return await coro
        except grpc.RpcError as e:
            details = e.details() if hasattr(e, "details") else str(e)
            if e.code() == grpc.StatusCode.OUT_OF_RANGE or "compacted" in (details or ""):
                raise _Expired(details) from None
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise _EtcdDown("etcdserver: request timed out") from None
            raise _EtcdDown(details or str(e)) from None

    def _encode(self, key: str, obj: dict) -> tuple[bytes, bytes]:
        stored = copy.deepcopy(obj)
        stored.pop("kind", None)
        stored.pop("apiVersion", None)
        stored["metadata"].pop("resourceVersion", None)
        plain = codec.encode_secret(stored)
        return plain, self.encryption.write(key, plain)

    def _is_stale(self, value: bytes) -> bool:
        """Whether an update must rewrite a value even when the object is unchanged: written by a provider that
        is not the first one, or (KMS v2) under a key id that is no longer current."""
        writer = self.encryption.writer
        if not writer.prefix:
            return value.startswith(b"k8s:enc:")
        if not value.startswith(writer.prefix):
            return True
        if writer.kind == "kms" and writer.prefix.startswith(b"k8s:enc:kms:v2:"):
            try:
                key_id = codec.decode_encrypted_object(value[len(writer.prefix):])["keyID"]
                return key_id != writer.client.key_id()
            except Exception:  # noqa: BLE001 - unreadable status: rewrite, as the apiserver would on doubt
                return True
        return False

    # -- secrets: handlers --------------------------------------------------------------------------------------------

    async def h_list_secrets(self, request):
        ns = request.match_info.get("ns")
        denied = self._deny(request, "list", "secrets", ns)
        if denied:
            return denied
        if request.query.get("watch") in ("1", "true"):
            return status_response(405, "MethodNotAllowed", "watch is not supported by the sandbox API server")
        try:
            labels = kube.parse_label_selector(request.query.get("labelSelector"))
            fields = kube.parse_field_selector(request.query.get("fieldSelector"), _SECRET_FIELDS)
            limit = int(request.query.get("limit") or 0)
            rv, start = 0, ""
            if request.query.get("continue"):
                rv, start = kube.decode_continue(request.query["continue"])
        except (SelectorError, ValueError) as e:
            return kube.bad_request(str(e))
        prefix = SECRETS_PREFIX + (f"{ns}/" if ns else "")
        end = prefix_end(prefix.encode())
        cursor = (prefix + start).encode()
        items: list = []
        cont, remaining = "", None
        try:
            while True:
                page = PAGE if not limit else max(1, min(PAGE, limit - len(items)))
                res = await self._etcd(self.etcd.range(cursor, end, limit=page, revision=rv))
                rv = rv or res.revision
                decoded = await self._decoded(res.kvs)
                taken = 0
                for _kv, obj in decoded:
                    taken += 1
                    if kube.labels_match(labels, obj["metadata"].get("labels")) and kube.fields_match(fields, obj):
                        items.append(obj)
                        if limit and len(items) >= limit:
                            break
                more = res.more or taken < len(decoded)
                last = decoded[taken - 1][0].key if taken else None
                if limit and len(items) >= limit and more:
                    # like the apiserver's, the token's start key is relative to the listed prefix
                    cont = kube.encode_continue(rv, last.decode()[len(prefix):] + "\x00")
                    if not labels and not fields:
                        remaining = res.count - taken
                    break
                if not res.more or last is None:
                    break
                cursor = last + b"\x00"
        except TransformFailure as e:
            return kube.internal_error(str(e))
        except _Expired:
            return status_response(410, "Expired", "The provided continue parameter is too old to display a "
                                   "consistent list result. You can start a new list without the continue parameter.")
        return self._render_list(request, items, "SecretList", kube.secret_row, kube.SECRET_COLUMNS, str(rv), cont,
                                 remaining)

    async def h_get_secret(self, request):
        ns, name = request.match_info["ns"], request.match_info["name"]
        denied = self._deny(request, "get", "secrets", ns, name)
        if denied:
            return denied
        key = f"{SECRETS_PREFIX}{ns}/{name}"
        kv = await self._etcd(self.etcd.get(key.encode()))
        if kv is None:
            return kube.not_found("secrets", name)
        try:
            [(_, obj)] = await self._decoded([kv])
        except TransformFailure as e:
            return kube.internal_error(str(e))
        return self._render_one(request, obj, "Secret", kube.secret_row, kube.SECRET_COLUMNS)

    async def h_create_secret(self, request):
        ns = request.match_info["ns"]
        denied = self._deny(request, "create", "secrets", ns)
        if denied:
            return denied
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        return await self._create(request, ns, body, operation="Update")

    async def _create(self, request, ns: str, body: dict, operation: str) -> web.Response:
        if ns not in self.namespaces:
            return kube.not_found("namespaces", ns)
        problem = _check_type(body)
        if problem:
            return problem
        meta = body.setdefault("metadata", {})
        if meta.get("namespace") and meta["namespace"] != ns:
            return kube.bad_request("the namespace of the provided object does not match the namespace sent on the "
                                    "request")
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + "".join(random.choice("bcdfghjklmnpqrstvwxz2456789")
                                                              for _ in range(5))
            else:
                return kube.invalid("Secret", "", [("FieldValueRequired", "metadata.name",
                                                    "Required value: name or generateName is required")])
        obj, problem = normalize_secret(body)
        if problem:
            return problem
        name = obj["metadata"]["name"]
        now = kube.now_rfc3339()
        obj["metadata"].update({"namespace": ns, "uid": kube.new_uid(), "creationTimestamp": now})
        obj["metadata"]["managedFields"] = [managed_entry(field_manager(request), operation, now, obj)]
        obj["metadata"] = order_meta(obj["metadata"])
        key = f"{SECRETS_PREFIX}{ns}/{name}"
        try:
            plain, value = await self._offload(self._encode, key, obj)
        except Exception as e:  # noqa: BLE001 - TransformError (KMS down)
            return kube.internal_error(str(e))
        if _dry_run(request):
            return self._respond(with_type(obj), 201)
        rev = await self._etcd(self.etcd.create(key.encode(), value))
        if rev is None:
            return kube.already_exists("secrets", name)
        self._cache_put(key, rev, plain)
        obj["metadata"]["resourceVersion"] = str(rev)
        obj["metadata"] = order_meta(obj["metadata"])
        return self._respond(with_type(obj), 201)

    async def _current(self, ns: str, name: str):
        key = f"{SECRETS_PREFIX}{ns}/{name}"
        kv = await self._etcd(self.etcd.get(key.encode()))
        if kv is None:
            return key, None, None, None
        [(kv, obj)] = await self._decoded([kv])
        return key, kv, obj, codec.encode_secret(_storable(obj)) if key not in self.cache else self.cache[key][1]

    async def h_update_secret(self, request):
        ns, name = request.match_info["ns"], request.match_info["name"]
        denied = self._deny(request, "update", "secrets", ns, name)
        if denied:
            return denied
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        return await self._update(request, ns, name, body, "Update", allow_create=False)

    async def _update(self, request, ns, name, body, operation, allow_create) -> web.Response:
        problem = _check_type(body)
        if problem:
            return problem
        meta = body.setdefault("metadata", {})
        if meta.get("name") and meta["name"] != name:
            return kube.bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL "
                                    f"({name})")
        if meta.get("namespace") and meta["namespace"] != ns:
            return kube.bad_request("the namespace of the provided object does not match the namespace sent on the "
                                    "request")
        meta["name"] = name
        try:
            key, kv, old, old_plain = await self._current(ns, name)
        except TransformFailure as e:
            return kube.internal_error(str(e))
        if kv is None:
            if allow_create:
                return await self._create(request, ns, body, operation)
            return kube.not_found("secrets", name)
        want_rv = meta.get("resourceVersion")
        if want_rv and want_rv != str(kv.mod_revision):
            return kube.conflict("secrets", name)
        obj, problem = normalize_secret(body)
        if problem:
            return problem
        if old.get("immutable") and (obj.get("data") != old.get("data") or obj.get("immutable") is not True):
            return kube.invalid("Secret", name, [("FieldValueForbidden", "data",
                                                  "Forbidden: field is immutable when `immutable` is set")])
        om = old["metadata"]
        obj["metadata"].update({"namespace": ns, "uid": om.get("uid"),
                                "creationTimestamp": om.get("creationTimestamp")})
        if _content(obj) == _content(old):
            obj["metadata"]["managedFields"] = om.get("managedFields", [])
        else:
            mgr = field_manager(request)
            entries = [e for e in om.get("managedFields", [])
                       if not (e.get("manager") == mgr and e.get("operation") == operation)]
            entries.append(managed_entry(mgr, operation, kube.now_rfc3339(), obj))
            obj["metadata"]["managedFields"] = entries
        obj["metadata"] = order_meta({k: v for k, v in obj["metadata"].items() if v is not None})
        try:
            plain, _ = await self._offload(lambda: (codec.encode_secret(_storable(obj)), None))
            stale = await self._offload(self._is_stale, kv.value)
            if plain == old_plain and not stale:
                return self._respond(with_type(old))
            plain, value = await self._offload(self._encode, key, obj)
        except Exception as e:  # noqa: BLE001
            return kube.internal_error(str(e))
        if _dry_run(request):
            return self._respond(with_type(obj))
        rev = await self._etcd(self.etcd.update(key.encode(), value, kv.mod_revision))
        if rev is None:
            return kube.conflict("secrets", name)
        self._cache_put(key, rev, plain)
        obj["metadata"]["resourceVersion"] = str(rev)
        obj["metadata"] = order_meta(obj["metadata"])
        return self._respond(with_type(obj))

    async def h_patch_secret(self, request):
        ns, name = request.match_info["ns"], request.match_info["name"]
        denied = self._deny(request, "patch", "secrets", ns, name)
        if denied:
            return denied
        ctype = request.content_type
        raw = await request.read()
        if ctype == "application/apply-patch+yaml":
            if not request.query.get("fieldManager"):
                return kube.invalid("PatchOptions", "", [("FieldValueRequired", "fieldManager",
                                                          "Required value: is required for apply patch")])
            import yaml
            try:
                patch = yaml.safe_load(raw)
            except yaml.YAMLError as e:
                return kube.bad_request(f"error decoding YAML: {e}")
            operation = "Apply"
        elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            try:
                patch = json.loads(raw)
            except ValueError as e:
                return kube.bad_request(f"error decoding patch: {e}")
            operation = "Update"
        else:
            return status_response(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                                   "accepted media types include: application/merge-patch+json, "
                                   "application/strategic-merge-patch+json, application/apply-patch+yaml")
        if not isinstance(patch, dict):
            return kube.bad_request("the patch is not a JSON object")
        try:
            _, kv, old, _ = await self._current(ns, name)
        except TransformFailure as e:
            return kube.internal_error(str(e))
        if kv is None:
            if operation == "Apply":
                return await self._create(request, ns, patch, "Apply")
            return kube.not_found("secrets", name)
        merged = merge_patch(copy.deepcopy(old), patch)
        merged["metadata"]["resourceVersion"] = patch.get("metadata", {}).get("resourceVersion") or ""
        return await self._update(request, ns, name, merged, operation, allow_create=False)

    async def h_delete_secret(self, request):
        ns, name = request.match_info["ns"], request.match_info["name"]
        denied = self._deny(request, "delete", "secrets", ns, name)
        if denied:
            return denied
        try:
            key, kv, old, _ = await self._current(ns, name)
        except TransformFailure as e:
            return kube.internal_error(str(e))
        if kv is None:
            return kube.not_found("secrets", name)
        details = {"name": name, "kind": "secrets", "uid": old["metadata"].get("uid", "")}
        if _dry_run(request):
            return self._respond(kube.status_obj(200, "", "", details))
        deleted = await self._etcd(self.etcd.delete(key.encode()))
        self.cache.pop(key, None)
        if deleted is None:
            return kube.not_found("secrets", name)
        return self._respond(kube.status_obj(200, "", "", details))

    # -- sandbox-only writes (control port) -------------------------------------------------------------------------

    async def seed(self, ns: str, count: int, prefix: str = "bulk-", size: int = 64, with_: str = "current",
                   labels: dict | None = None, start: int = 0) -> dict:
        """Write ``count`` Secrets ``<prefix><n>`` quickly (batched etcd transactions, encryption on worker
        threads), stored exactly as :meth:`_create` stores them: for benchmarks of scans over many secrets."""
        from concurrent.futures import ThreadPoolExecutor

        from .transformers import EncryptionConfig
        if with_ not in ("current", "identity"):
            raise ValueError(f"with must be 'identity' or 'current', not {with_!r}")
        if count < 0 or size < 0:
            raise ValueError("count and size must not be negative")
        self.namespaces.setdefault(ns, time.time())
        enc = self.encryption if with_ == "current" else EncryptionConfig.for_provider("identity")
        now = kube.now_rfc3339()

        def build(i: int) -> tuple[bytes, bytes]:
            name = f"{prefix}{i}"
            obj = {"metadata": {"name": name, "namespace": ns, "uid": kube.new_uid(), "creationTimestamp": now},
                   "data": {"value": base64.b64encode(os.urandom(size)).decode()}, "type": "Opaque"}
            if labels:
                obj["metadata"]["labels"] = dict(labels)
            obj["metadata"]["managedFields"] = [managed_entry("sandbox-seed", "Update", now, obj)]
            obj["metadata"] = order_meta(obj["metadata"])
            key = f"{SECRETS_PREFIX}{ns}/{name}"
            return key.encode(), enc.write(key, codec.encode_secret(obj))

        started = time.monotonic()
        batch = 128
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=4) as pool:
            for lo in range(start, start + count, batch * 8):
                hi = min(start + count, lo + batch * 8)
                items = await asyncio.gather(*(loop.run_in_executor(pool, build, i) for i in range(lo, hi)))
                for j in range(0, len(items), batch):
                    await self._etcd(self.etcd.put_many(items[j:j + batch]))
        return {"written": count, "seconds": round(time.monotonic() - started, 2)}

    async def write_secret_as(self, ns: str, name: str, data: dict, with_: str = "current",
                              labels: dict | None = None, written_at: str | None = None,
                              prefix: str | None = None) -> dict:
        """Store a Secret as an apiserver configured with ``with_`` would have: "identity" reproduces a secret
        written before encryption was enabled; "aescbc"/"aesgcm"/"secretbox" one written with a local key
        before KMS was configured (the sandbox then keeps that key as a read-only provider after the first one,
        as such a cluster's EncryptionConfiguration does). ``written_at`` (RFC 3339) backdates creationTimestamp
        and the managedFields time. ``prefix`` replaces the provider prefix of the stored value (e.g.
        ``k8s:enc:kms:v1:retired-plugin:``): a value under a provider this apiserver no longer has, which it
        cannot read."""
        from .transformers import EncryptionConfig
        if with_ not in ("current", "identity") + LOCAL_KINDS:
            raise ValueError(f"with must be 'identity', 'current' or one of {', '.join(LOCAL_KINDS)}, not {with_!r}")
        if written_at is not None:
            kube.parse_ts(written_at)  # ValueError (400) for a malformed time
        self.namespaces.setdefault(ns, time.time())
        now = written_at or kube.now_rfc3339()
        obj = {"metadata": {"name": name, "namespace": ns, "uid": kube.new_uid(), "creationTimestamp": now},
               "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}, "type": "Opaque"}
        if labels:
            obj["metadata"]["labels"] = dict(labels)
        obj["metadata"]["managedFields"] = [managed_entry("kubectl-create", "Update", now, obj)]
        obj["metadata"] = order_meta(obj["metadata"])
        key = f"{SECRETS_PREFIX}{ns}/{name}"
        plain = codec.encode_secret(_storable(obj))
        if with_ == "identity":
            writer = EncryptionConfig.for_provider("identity").writer
            value = writer.to_storage(key, plain)
        elif with_ == "current":
            writer = self.encryption.writer
            plain, value = await self._offload(self._encode, key, obj)
        else:
            writer = self._local_reader(with_)
            value = writer.to_storage(key, plain)
        if prefix is not None:
            value = prefix.encode() + value[len(writer.prefix):]
        rev = await self._etcd(self.etcd.put(key.encode(), value))
        if prefix is None:  # a cached plaintext would let the API read what it cannot decrypt
            self._cache_put(key, rev, plain)
        else:
            self.cache.pop(key, None)
        stored_prefix = prefix.encode() if prefix is not None else (writer.prefix or b"k8s")
        return {"key": key, "resourceVersion": str(rev), "prefix": stored_prefix.decode("latin-1")}

    def _local_reader(self, kind: str):
        """The local-key transformer of ``kind`` the encryption config reads with, added after the first
        provider when missing (a cluster that moved from a local key to KMS keeps the old key for reading)."""
        from .transformers import LOCAL_TRANSFORMERS
        for p in self.encryption.providers:
            if p.kind == kind:
                return p
        t = LOCAL_TRANSFORMERS[kind]("key1")
        self.encryption.providers.insert(1, t)
        return t


# --- exceptions -------------------------------------------------------------------------------------------------


class _EtcdDown(Exception):
    pass


class _Expired(Exception):
    pass


# --- object helpers ---------------------------------------------------------------------------------------------

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_META_ORDER = ("name", "generateName", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
               "deletionTimestamp", "labels", "annotations", "ownerReferences", "finalizers", "managedFields")
_SECRET_FIELDS = {"metadata.name": lambda o: o["metadata"]["name"],
                  "metadata.namespace": lambda o: o["metadata"].get("namespace", ""),
                  "type": lambda o: o.get("type", "")}
_POD_FIELDS = {"metadata.name": lambda o: o["metadata"]["name"],
               "metadata.namespace": lambda o: o["metadata"]["namespace"],
               "spec.nodeName": lambda o: o["spec"].get("nodeName", ""),
               "status.phase": lambda o: o["status"].get("phase", "")}
_NODE_COLUMNS = [kube.SECRET_COLUMNS[0], ("Status", "string", "", "The status of the node", 0),
                 ("Roles", "string", "", "The roles of the node", 0), kube.SECRET_COLUMNS[3],
                 ("Version", "string", "", "Kubelet Version reported by the node.", 0)]


def _ns_row(ns: dict) -> tuple:
    return ([ns["metadata"]["name"], "Active", kube.human_age(kube.parse_ts(ns["metadata"]["creationTimestamp"]))],
            ns)


def _node_row(node: dict) -> tuple:
    return ([node["metadata"]["name"], "Ready", "control-plane",
             kube.human_age(kube.parse_ts(node["metadata"]["creationTimestamp"])),
             node["status"]["nodeInfo"]["kubeletVersion"]], node)


def _stable_uid(seed: str) -> str:
    import uuid
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "sandbox:" + seed))


def _pb_bytes(num: int, value: bytes) -> bytes:
    return codec.field_bytes(num, value)


def _pb_str(num: int, value: str) -> bytes:
    return codec.field_bytes(num, value.encode())


def order_meta(meta: dict) -> dict:
    out = {k: meta[k] for k in _META_ORDER if k in meta}
    out.update({k: v for k, v in meta.items() if k not in out})
    return out


def with_type(obj: dict) -> dict:
    return {"kind": "Secret", "apiVersion": "v1", **{k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}}


def _storable(obj: dict) -> dict:
    stored = copy.deepcopy({k: v for k, v in obj.items() if k not in ("kind", "apiVersion")})
    stored["metadata"].pop("resourceVersion", None)
    return stored


def _content(obj: dict) -> dict:
    """The parts of a Secret a user changes (for no-op update detection)."""
    meta = obj.get("metadata", {})
    return {"labels": meta.get("labels") or {}, "annotations": meta.get("annotations") or {},
            "data": obj.get("data") or {}, "type": obj.get("type"), "immutable": obj.get("immutable")}


def finish_secret(obj: dict, kv) -> dict:
    """A stored Secret as the API returns it: resourceVersion from the etcd mod revision, no TypeMeta."""
    obj.pop("kind", None)
    obj.pop("apiVersion", None)
    meta = obj.setdefault("metadata", {})
    if meta.get("creationTimestamp") is None:
        meta.pop("creationTimestamp", None)
    meta["resourceVersion"] = str(kv.mod_revision)
    obj["metadata"] = order_meta(meta)
    return obj


def _check_type(body: dict) -> web.Response | None:
    kind, api = body.get("kind"), body.get("apiVersion")
    if (kind and kind != "Secret") or (api and api != "v1"):
        return kube.bad_request(f"the API version in the data ({api}) does not match the expected API version (v1)"
                                if api and api != "v1" else f"the kind in the data ({kind}) does not match the "
                                "expected kind (Secret)")
    return None


def normalize_secret(body: dict) -> tuple[dict, web.Response | None]:
    """Validate and normalize a Secret as the apiserver does: stringData merged into data, type defaulted."""
    meta = dict(body.get("metadata") or {})
    name = meta.get("name", "")
    causes = []
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        causes.append(("FieldValueInvalid", "metadata.name",
                       f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case '
                       "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character "
                       "(e.g. 'example.com', regex used for validation is "
                       r"'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"))
    data = dict(body.get("data") or {})
    for v in data.values():
        if not isinstance(v, str):
            return {}, kube.bad_request(f"Secret in version \"v1\" cannot be handled as a Secret: json: cannot "
                                        f"unmarshal {type(v).__name__} into Go struct field Secret.data of type "
                                        "[]uint8")
        try:
            base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            return {}, kube.bad_request('Secret in version "v1" cannot be handled as a Secret: illegal base64 data '
                                        "at input byte 0")
    for k, v in (body.get("stringData") or {}).items():
        data[k] = base64.b64encode(str(v).encode()).decode()
    for k in data:
        if not _DATA_KEY.match(k):
            causes.append(("FieldValueInvalid", f"data[{k}]", f'Invalid value: "{k}": a valid config key must '
                           "consist of alphanumeric characters, '-', '_' or '.'"))
    if causes:
        return {}, kube.invalid("Secret", name, causes)
    for drop in ("selfLink", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
        meta.pop(drop, None)
    obj: dict = {"metadata": meta}
    if data:
        obj["data"] = data
    obj["type"] = body.get("type") or "Opaque"
    if body.get("immutable") is not None:
        obj["immutable"] = bool(body["immutable"])
    return obj, None


def _fields_of(obj: dict) -> dict:
    fields: dict = {}
    meta = obj.get("metadata", {})
    mf: dict = {}
    for part in ("labels", "annotations"):
        if meta.get(part):
            mf[f"f:{part}"] = {".": {}, **{f"f:{k}": {} for k in sorted(meta[part])}}
    if mf:
        fields["f:metadata"] = mf
    if obj.get("data"):
        fields["f:data"] = {".": {}, **{f"f:{k}": {} for k in sorted(obj["data"])}}
    if obj.get("immutable") is not None:
        fields["f:immutable"] = {}
    fields["f:type"] = {}
    return dict(sorted(fields.items()))


def managed_entry(manager: str, operation: str, now: str, obj: dict) -> dict:
    return {"manager": manager, "operation": operation, "apiVersion": "v1", "time": now, "fieldsType": "FieldsV1",
            "fieldsV1": _fields_of(obj)}


def field_manager(request: web.Request) -> str:
    """``?fieldManager=`` or, as kube-apiserver defaults it, the User-Agent up to the first ``/``."""
    fm = request.query.get("fieldManager")
    if fm:
        return fm
    ua = request.headers.get("User-Agent", "")
    return ua.split("/", 1)[0].strip() or "unknown"


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch (strategic merge is the same for a Secret's maps)."""
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        else:
            target[k] = merge_patch(target.get(k), v)
    return target


def _dry_run(request) -> bool:
    return "All" in request.query.getall("dryRun", [])


async def _json_body(request) -> dict | web.Response:
    try:
        body = await request.json(loads=json.loads)
    except ValueError as e:
        return kube.bad_request(f"couldn't get version/kind; json parse error: {e}")
    if not isinstance(body, dict):
        return kube.bad_request("couldn't get version/kind; json parse error: not an object")
    return body


def _kill(proc) -> None:
    try:
        if proc.returncode is None:
            proc.kill()
    except ProcessLookupError:
        pass


# --- static objects: nodes and pods -----------------------------------------------------------------------------


def node_ip(i: int) -> str:
    return f"192.0.2.{10 + i}"  # TEST-NET-1: only ever printed, never dialled


def build_node(name: str, i: int, version: str, started: float) -> dict:
    return {
        "metadata": {"name": name, "uid": _stable_uid("node:" + name), "resourceVersion": "1",
                     "creationTimestamp": kube.now_rfc3339(started - 86400),
                     "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                "node-role.kubernetes.io/control-plane": "", "kubernetes.io/arch": "amd64"}},
        "spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]},
        "status": {"addresses": [{"type": "InternalIP", "address": node_ip(i)}, {"type": "Hostname", "address": name}],
                   "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                   "message": "kubelet is posting ready status"}],
                   # Every field a kubelet reports (the Python client >= 35 rejects a NodeSystemInfo without them).
                   "nodeInfo": {"machineID": _stable_uid("machine:" + name).replace("-", ""),
                                "systemUUID": _stable_uid("system:" + name).upper(),
                                "bootID": _stable_uid("boot:" + name), "kernelVersion": "5.15.173.1-1.cm2",
                                "osImage": "CBL-Mariner/Linux", "containerRuntimeVersion": "containerd://1.7.20",
                                "kubeletVersion": version, "kubeProxyVersion": version,
                                "operatingSystem": "linux", "architecture": "amd64"}},
    }


def _container_status(name: str, image: str, started_at: str) -> dict:
    return {"name": name, "state": {"running": {"startedAt": started_at}}, "ready": True, "restartCount": 0,
            "image": image, "imageID": image.split(":")[0] + "@sha256:" + pysecrets.token_hex(32),
            "containerID": "containerd://" + pysecrets.token_hex(32), "started": True}


def _pod(name: str, node: str, i: int, labels: dict, annotations: dict, containers: list, started: float,
         host_network: bool = True, owner: dict | None = None) -> dict:
    ts = kube.now_rfc3339(started - 86000)
    ip = node_ip(i) if host_network else f"198.51.100.{20 + i}"
    meta = {"name": name, "namespace": "kube-system", "uid": _stable_uid("pod:" + name),
            "resourceVersion": str(400 + i),
            "creationTimestamp": ts, "labels": labels, "annotations": annotations,
            "ownerReferences": [owner or {"apiVersion": "v1", "kind": "Node", "name": node,
                                          "uid": _stable_uid("node:" + node), "controller": True}]}
    return {
        "metadata": meta,
        "spec": {"containers": containers, "nodeName": node, "hostNetwork": host_network,
                 "priorityClassName": "system-node-critical" if host_network else "system-cluster-critical",
                 "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
                 "tolerations": [{"operator": "Exists", "effect": "NoExecute"}], "enableServiceLinks": True},
        "status": {"phase": "Running", "conditions": [
            {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": ts}
            for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")],
            "hostIP": node_ip(i), "hostIPs": [{"ip": node_ip(i)}], "podIP": ip, "podIPs": [{"ip": ip}],
            "startTime": ts, "qosClass": "Burstable",
            "containerStatuses": [_container_status(c["name"], c["image"], ts) for c in containers]},
    }


def build_pods(nodes: list[str], etcdctl_version: str, started: float) -> list[dict]:
    """kubeadm-like static (mirror) pods per control-plane node, plus CoreDNS: what ``kubectl get pods -n
    kube-system`` shows on an AKS Arc control plane."""
    etcd_image = "registry.k8s.io/etcd:" + ("3.4.13-0" if etcdctl_version == "3.4" else "3.5.1-0")
    pods = []
    for i, node in enumerate(nodes):
        ip = node_ip(i)
        etcd_cmd = ["etcd", f"--advertise-client-urls=https://{ip}:2379",
                    "--cert-file=/etc/kubernetes/pki/etcd/server.crt",
                    "--client-cert-auth=true", "--data-dir=/var/lib/etcd", "--experimental-initial-corrupt-check=true",
                    f"--initial-advertise-peer-urls=https://{ip}:2380",
                    f"--initial-cluster={node}=https://{ip}:2380", "--key-file=/etc/kubernetes/pki/etcd/server.key",
                    f"--listen-client-urls=https://127.0.0.1:2379,https://{ip}:2379",
                    "--listen-metrics-urls=http://127.0.0.1:2381", f"--listen-peer-urls=https://{ip}:2380",
                    f"--name={node}", "--peer-cert-file=/etc/kubernetes/pki/etcd/peer.crt",
                    "--peer-client-cert-auth=true", "--peer-key-file=/etc/kubernetes/pki/etcd/peer.key",
                    "--peer-trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt", "--snapshot-count=10000",
                    "--trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt"]
        etcd = {"name": "etcd", "image": etcd_image, "imagePullPolicy": "IfNotPresent", "command": etcd_cmd,
                "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}},
                "volumeMounts": [{"name": "etcd-data", "mountPath": "/var/lib/etcd"},
                                 {"name": "etcd-certs", "mountPath": "/etc/kubernetes/pki/etcd"}],
                "livenessProbe": {"httpGet": {"host": "127.0.0.1", "path": "/health?exclude=NOSPACE&serializable=true",
                                              "port": 2381, "scheme": "HTTP"}, "failureThreshold": 8}}
        annotations = {"kubeadm.kubernetes.io/etcd.advertise-client-urls": f"https://{ip}:2379",
                       "kubernetes.io/config.hash": pysecrets.token_hex(16),
                       "kubernetes.io/config.mirror": pysecrets.token_hex(16),
                       "kubernetes.io/config.seen": kube.now_rfc3339(started - 86000),
                       "kubernetes.io/config.source": "file"}
        pod = _pod(f"etcd-{node}", node, i, {"component": "etcd", "tier": "control-plane"}, annotations, [etcd],
                   started)
        pod["spec"]["volumes"] = [
            {"name": "etcd-certs", "hostPath": {"path": "/etc/kubernetes/pki/etcd", "type": "DirectoryOrCreate"}},
            {"name": "etcd-data", "hostPath": {"path": "/var/lib/etcd", "type": "DirectoryOrCreate"}}]
        pods.append(pod)
        api = {"name": "kube-apiserver", "image": "registry.k8s.io/kube-apiserver:v1.30.4",
               "command": ["kube-apiserver", f"--advertise-address={ip}", "--encryption-provider-config="
                           "/etc/kubernetes/encryption-config.yaml", "--etcd-servers=https://127.0.0.1:2379"]}
        pods.append(_pod(f"kube-apiserver-{node}", node, i, {"component": "kube-apiserver", "tier": "control-plane"},
                         {"kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint": f"{ip}:6443",
                          "kubernetes.io/config.source": "file"}, [api], started))
    rs = "coredns-7db6d8ff4d"
    for j in range(2):
        name = f"{rs}-" + "".join(random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
        owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": _stable_uid("rs:" + rs),
                 "controller": True, "blockOwnerDeletion": True}
        c = {"name": "coredns", "image": "registry.k8s.io/coredns/coredns:v1.11.1", "args": ["-conf",
                                                                                          "/etc/coredns/Corefile"]}
        pods.append(_pod(name, nodes[j % len(nodes)], j, {"k8s-app": "kube-dns", "pod-template-hash": "7db6d8ff4d"},
                         {}, [c], started, host_network=False, owner=owner))
    pods.sort(key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"]))
    return pods


def etcd_pod_names(pods: list[dict]) -> list[str]:
    return [p["metadata"]["name"] for p in pods if p["metadata"].get("labels", {}).get("component") == "etcd"]
