"""The API server emulator's HTTP routes: the route table, the middleware (authentication, Audit-Id, 404/405
and etcd outages as kube-apiserver answers them), version and discovery, minimal OpenAPI, namespaces, and
secrets CRUD (list with selectors and paging, get, create, update, merge and apply patch, delete, dryRun).

Every handler takes the :class:`tests.sandbox.apiserver.APIServer` first; the health probes are :mod:`.health`'s, nodes,
pods and pods/exec :mod:`tests.sandbox.pods`'.
"""

from __future__ import annotations

import copy
import json
import random
import time
from functools import partial

from aiohttp import web

from .. import codec, kube, pods
from . import health, metrics
from ..auth import authenticate, deny
from ..etcdgrpc import prefix_end
from ..kube import TEXT_HEADERS, SelectorError, dumps, status_response
from ..objects import (DNS_LABEL, SECRET_FIELDS, check_type, fields_set, ignore_timestamp_only_changes, invalid_secret,
                      managed_fields_for, merge_patch, normalize_secret, order_meta, validate_update, with_type)
from ..store import SECRETS_PREFIX, EtcdDown, Expired, NotFound, Rejected, TransformFailure
from ..transformers import TransformError

PAGE = 500


def build_app(server) -> web.Application:
    """The API server's aiohttp application: every route bound to ``server``."""
    app = web.Application(middlewares=[middleware], client_max_size=16 * 1024 * 1024)
    r = app.router

    def get(path: str, handler) -> None:  # GET and HEAD
        r.add_get(path, partial(handler, server))

    def route(method: str, path: str, handler) -> None:
        r.add_route(method, path, partial(handler, server))

    get("/version", version)
    get("/version/", version)
    get("/metrics", metrics.handle)
    server.store.metrics.hostname = server.nodes[0] if server.nodes else "localhost"  # the apiserver identity
    for probe in ("readyz", "healthz", "livez"):
        get(f"/{probe}", health.handle)
        get(f"/{probe}/{{check:.+}}", health.handle_check)
    get("/api", api)
    get("/api/", api)
    get("/apis", apis)
    get("/apis/", apis)
    get("/api/v1", api_v1)
    get("/api/v1/", api_v1)
    get("/openapi/v2", openapi_v2)
    get("/openapi/v3", openapi_v3)
    get("/openapi/v3/api/v1", openapi_v3_v1)
    get("/api/v1/namespaces", list_namespaces)
    route("POST", "/api/v1/namespaces", create_namespace)
    get("/api/v1/namespaces/{ns}", get_namespace)
    get("/api/v1/nodes", pods.list_nodes)
    get("/api/v1/nodes/{name}", pods.get_node)
    get("/api/v1/pods", pods.list_pods)
    get("/api/v1/namespaces/{ns}/pods", pods.list_pods)
    get("/api/v1/namespaces/{ns}/pods/{name}", pods.get_pod)
    route("GET", "/api/v1/namespaces/{ns}/pods/{name}/exec", pods.handle_exec)
    route("POST", "/api/v1/namespaces/{ns}/pods/{name}/exec", pods.handle_exec)
    get("/api/v1/secrets", list_secrets)
    get("/api/v1/namespaces/{ns}/secrets", list_secrets)
    route("POST", "/api/v1/namespaces/{ns}/secrets", create_secret)
    get("/api/v1/namespaces/{ns}/secrets/{name}", get_secret)
    route("PUT", "/api/v1/namespaces/{ns}/secrets/{name}", update_secret)
    route("PATCH", "/api/v1/namespaces/{ns}/secrets/{name}", patch_secret)
    route("DELETE", "/api/v1/namespaces/{ns}/secrets/{name}", delete_secret)
    return app


@web.middleware
async def middleware(request: web.Request, handler):
    """Authentication (401 with a Status), an Audit-Id, aiohttp's 404/405 and etcd outages as kube-apiserver's."""
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
    except EtcdDown as e:
        return kube.internal_error(str(e))
    if isinstance(resp, web.StreamResponse) and not resp.prepared:
        resp.headers.setdefault("Audit-Id", kube.new_uid())
    return resp


# --- version and discovery --------------------------------------------------------------------------------


async def version(server, request):
    major, minor = server.version.lstrip("v").split(".")[:2]
    return web.json_response({
        "major": major, "minor": minor, "gitVersion": server.version,
        "gitCommit": "2bd1a5e8e5ba1ec7ebcd6e5d0f7bbaf3e8bbab9d", "gitTreeState": "clean",
        "buildDate": "2024-08-14T18:57:08Z", "goVersion": "go1.22.5", "compiler": "gc",
        "platform": "linux/amd64"}, dumps=dumps)


async def api(server, request):
    return web.json_response({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{server.port}"}]}, dumps=dumps)


async def apis(server, request):
    return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}, dumps=dumps)


async def api_v1(server, request):
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


async def openapi_v2(server, request):
    """A minimal OpenAPI v2 document (protobuf, as kubectl asks for it): no definitions, so kubectl's client-side
    validation (used for ``kind: List`` input, e.g. ``kubectl get secrets -A -o json | kubectl replace -f -``)
    finds no schema and lets the server validate."""
    info = _pb_str(1, "Kubernetes") + _pb_str(2, server.version)
    doc = _pb_str(1, "2.0") + _pb_bytes(2, info)
    if "protobuf" in request.headers.get("Accept", ""):
        return web.Response(body=doc, content_type="application/com.github.proto-openapi.spec.v2.v1.0+protobuf")
    return web.json_response({"swagger": "2.0", "info": {"title": "Kubernetes", "version": server.version},
                              "paths": {}, "definitions": {}}, dumps=dumps)


async def openapi_v3(server, request):
    return web.json_response({"paths": {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=" + "0" * 128}}},
                             dumps=dumps)


async def openapi_v3_v1(server, request):
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
    return web.json_response({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": server.version},
                              "paths": paths, "components": {"schemas": {}}}, dumps=dumps)


# --- namespaces -------------------------------------------------------------------------------------------


def _ns_obj(server, name: str) -> dict:
    return {"metadata": {"name": name, "uid": kube.stable_uid("ns:" + name), "resourceVersion": "1",
                         "creationTimestamp": kube.now_rfc3339(server.namespaces[name]),
                         "labels": {"kubernetes.io/metadata.name": name}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


async def list_namespaces(server, request):
    denied = deny(request, "list", "namespaces", None)
    if denied:
        return denied
    items = [_ns_obj(server, n) for n in sorted(server.namespaces)]
    cols = [kube.SECRET_COLUMNS[0], ("Status", "string", "", "The status of the namespace", 0),
            kube.SECRET_COLUMNS[3]]
    return kube.render_list(request, items, "NamespaceList", _ns_row, cols, "1")


async def get_namespace(server, request):
    name = request.match_info["ns"]
    denied = deny(request, "get", "namespaces", None, name)
    if denied:
        return denied
    if name not in server.namespaces:
        return kube.not_found("namespaces", name)
    cols = [kube.SECRET_COLUMNS[0], ("Status", "string", "", "The status of the namespace", 0),
            kube.SECRET_COLUMNS[3]]
    return kube.render_one(request, _ns_obj(server, name), "Namespace", _ns_row, cols)


async def create_namespace(server, request):
    denied = deny(request, "create", "namespaces", None)
    if denied:
        return denied
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    name = (body.get("metadata") or {}).get("name", "")
    if not DNS_LABEL.match(name or ""):
        return kube.invalid("Namespace", name, [("FieldValueInvalid", "metadata.name",
                                                 f'Invalid value: "{name}": a lowercase RFC 1123 label')])
    if name in server.namespaces:
        return kube.already_exists("namespaces", name)
    server.namespaces[name] = time.time()
    return kube.respond({"kind": "Namespace", "apiVersion": "v1", **_ns_obj(server, name)}, 201)


# --- secrets ----------------------------------------------------------------------------------------------


async def list_secrets(server, request):
    ns = request.match_info.get("ns")
    denied = deny(request, "list", "secrets", ns)
    if denied:
        return denied
    if request.query.get("watch") in ("1", "true"):
        return status_response(405, "MethodNotAllowed", "watch is not supported by the sandbox API server")
    try:
        labels = kube.parse_label_selector(request.query.get("labelSelector"))
        fields = kube.parse_field_selector(request.query.get("fieldSelector"), SECRET_FIELDS)
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
            res = await server.store.call(server.store.etcd.range(cursor, end, limit=page, revision=rv))
            rv = rv or res.revision
            decoded = await server.store.decoded(res.kvs)
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
    except Expired:
        return status_response(410, "Expired", "The provided continue parameter is too old to display a "
                               "consistent list result. You can start a new list without the continue parameter.")
    return kube.render_list(request, items, "SecretList", kube.secret_row, kube.SECRET_COLUMNS, str(rv), cont,
                            remaining)


async def get_secret(server, request):
    ns, name = request.match_info["ns"], request.match_info["name"]
    denied = deny(request, "get", "secrets", ns, name)
    if denied:
        return denied
    key = f"{SECRETS_PREFIX}{ns}/{name}"
    kv = await server.store.call(server.store.etcd.get(key.encode()))
    if kv is None:
        return kube.not_found("secrets", name)
    try:
        [(_, obj)] = await server.store.decoded([kv])
    except TransformFailure as e:  # store.Get: storage.NewInternalError(err.Error()), no key (only lists add it)
        return kube.internal_error(e.bare)
    return kube.render_one(request, obj, "Secret", kube.secret_row, kube.SECRET_COLUMNS)


# --- secret writes: create, update (PUT), patch, delete --------------------------------------------------------
# As kube-apiserver's handler chain and registry: API Priority and Fairness (the ``writes.throttle`` fault) before
# authorization, the field manager (managedFields), the registry's resourceVersion and UID preconditions (409),
# BeforeUpdate's validation (422), then etcd3 GuaranteedUpdate (store.py): an unchanged encoding of a value that
# is not stale is not written.

APF_FLOWSCHEMA_UID = kube.stable_uid("flowschema:workload-low")
APF_PRIORITY_LEVEL_UID = kube.stable_uid("prioritylevel:workload-low")


def _throttled(server, request) -> web.Response | None:
    """APF's rejection (filters/priority-and-fairness.go ``tooManyRequests``): http.Error's plain text with
    ``Retry-After`` and the matched flow schema / priority level UIDs; not a Status body."""
    retry_after = server.store.throttled_write(request["user"])
    if retry_after is None:
        return None
    headers = {"Retry-After": str(retry_after), "X-Content-Type-Options": "nosniff",
               "X-Kubernetes-Pf-Flowschema-Uid": APF_FLOWSCHEMA_UID,
               "X-Kubernetes-Pf-Prioritylevel-Uid": APF_PRIORITY_LEVEL_UID}
    return web.Response(status=429, text="Too many requests, please try again later.\n", content_type="text/plain",
                        charset="utf-8", headers=headers)


async def create_secret(server, request):
    ns = request.match_info["ns"]
    throttled = _throttled(server, request)
    if throttled:
        return throttled
    denied = deny(request, "create", "secrets", ns)
    if denied:
        return denied
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    return await _create(server, request, ns, body, operation="Update")


async def _create(server, request, ns: str, body: dict, operation: str) -> web.Response:
    if ns not in server.namespaces:
        return kube.not_found("namespaces", ns)
    problem = check_type(body)
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
            return invalid_secret("", [("FieldValueRequired", "metadata.name",
                                        "Required value: name or generateName is required")])
    obj, problem = normalize_secret(body)
    if problem:
        return problem
    name = obj["metadata"]["name"]
    now = kube.now_rfc3339()
    obj["metadata"].update({"namespace": ns, "uid": kube.new_uid(), "creationTimestamp": now})
    obj["metadata"]["managedFields"] = managed_fields_for(None, obj, field_manager(request), operation, now)
    obj["metadata"] = order_meta({k: v for k, v in obj["metadata"].items() if v is not None})
    key = f"{SECRETS_PREFIX}{ns}/{name}"
    if _dry_run(request):  # DryRunnableStorage.Create: no transformation, no write
        if await server.store.call(server.store.etcd.get(key.encode())) is not None:
            return kube.already_exists("secrets", name)
        return kube.respond(with_type(obj), 201)
    try:
        rev = await server.store.create(key, obj)
    except Exception as e:  # TransformError (KMS down)
        return kube.internal_error(str(e))
    if rev is None:
        return kube.already_exists("secrets", name)
    obj["metadata"]["resourceVersion"] = str(rev)
    obj["metadata"] = order_meta(obj["metadata"])
    return kube.respond(with_type(obj), 201)


async def update_secret(server, request):
    ns, name = request.match_info["ns"], request.match_info["name"]
    throttled = _throttled(server, request)
    if throttled:
        return throttled
    denied = deny(request, "update", "secrets", ns, name)
    if denied:
        return denied
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    return await _update(server, ns, name, body, field_manager(request), "Update", _dry_run(request))


def _uid_conflict(key: str, name: str, want: str, have: str) -> web.Response:
    """storage.Preconditions.Check (UID) through InterpretUpdateError: a Conflict carrying the StorageError."""
    return status_response(409, "Conflict", f'Operation cannot be fulfilled on secrets "{name}": StorageError: '
                           f"invalid object, Code: 4, Key: {key}, ResourceVersion: 0, AdditionalErrorMsg: "
                           f"Precondition failed: UID in precondition: {want}, UID in object meta: {have}",
                           {"name": name, "kind": "secrets"})


async def _update(server, ns: str, name: str, body: dict, manager: str, operation: str, dry_run: bool = False,
                  applied: set | None = None, check_uid: bool = True) -> web.Response:
    """The registry's Store.Update over store.guaranteed_update (see the section comment)."""
    problem = check_type(body)
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
    obj, problem = normalize_secret(body, validate=False)
    if problem:
        return problem
    want_rv = str(meta.get("resourceVersion") or "")
    want_uid = str(meta.get("uid") or "") if check_uid else ""
    key = f"{SECRETS_PREFIX}{ns}/{name}"
    now = kube.now_rfc3339()

    def try_update(existing: dict) -> dict:
        em = existing["metadata"]
        if want_uid and want_uid != em.get("uid"):  # the UpdatedObjectInfo's UID precondition
            raise Rejected(_uid_conflict(key, name, want_uid, em.get("uid", "")))
        new = copy.deepcopy(obj)
        nm = new["metadata"]
        nm["namespace"] = ns
        nm["managedFields"] = managed_fields_for(existing, new, manager, operation, now, applied)
        if not want_rv:  # an unconditional update: the latest resourceVersion
            nm["resourceVersion"] = em.get("resourceVersion")
        elif want_rv != em.get("resourceVersion"):
            raise Rejected(kube.conflict("secrets", name))
        if not nm.get("uid"):  # BeforeUpdate
            nm["uid"] = em.get("uid")
        if em.get("creationTimestamp"):
            nm["creationTimestamp"] = em["creationTimestamp"]
        causes = validate_update(new, existing)
        if causes:
            raise Rejected(invalid_secret(name, causes))
        ignore_timestamp_only_changes(new, existing)
        new["metadata"] = order_meta({k: v for k, v in nm.items() if v is not None})
        return new

    try:
        result, _ = await server.store.guaranteed_update(key, try_update, dry_run)
    except NotFound:
        return kube.not_found("secrets", name)
    except Rejected as e:
        return e.response
    except TransformFailure as e:  # getState: storage.NewInternalError(err.Error())
        return kube.internal_error(e.bare)
    except TransformError as e:  # TransformToStorage (KMS down)
        return kube.internal_error(str(e))
    return kube.respond(with_type(result))


async def patch_secret(server, request):
    ns, name = request.match_info["ns"], request.match_info["name"]
    throttled = _throttled(server, request)
    if throttled:
        return throttled
    denied = deny(request, "patch", "secrets", ns, name)
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
        _, kv, old, _ = await server.store.current(ns, name)
    except TransformFailure as e:
        return kube.internal_error(e.bare)
    if kv is None:
        if operation == "Apply":
            return await _create(server, request, ns, patch, "Apply")
        return kube.not_found("secrets", name)
    merged = merge_patch(copy.deepcopy(old), patch)
    merged["metadata"]["resourceVersion"] = patch.get("metadata", {}).get("resourceVersion") or ""
    applied = None
    if operation == "Apply":  # the applier owns what it applied (an approximation of server-side apply)
        applied_obj, _ = normalize_secret({**patch, "metadata": {**(patch.get("metadata") or {}), "name": name}},
                                          validate=False)
        applied = fields_set(applied_obj)
    return await _update(server, ns, name, merged, field_manager(request), operation, _dry_run(request),
                         applied=applied, check_uid=False)


async def delete_secret(server, request):
    ns, name = request.match_info["ns"], request.match_info["name"]
    throttled = _throttled(server, request)
    if throttled:
        return throttled
    denied = deny(request, "delete", "secrets", ns, name)
    if denied:
        return denied
    try:
        key, kv, old, _ = await server.store.current(ns, name)
    except TransformFailure as e:
        return kube.internal_error(e.bare)
    if kv is None:
        return kube.not_found("secrets", name)
    details = {"name": name, "kind": "secrets", "uid": old["metadata"].get("uid", "")}
    if _dry_run(request):
        return kube.respond(kube.status_obj(200, "", "", details))
    deleted = await server.store.call(server.store.etcd.delete(key.encode()))
    hit = server.store.cache.pop(key, None)
    if deleted is None:
        return kube.not_found("secrets", name)
    if hit:
        server.store.record_watch_decode(hit[2])  # the watch cache decodes the deleted value (prevKV)
    return kube.respond(kube.status_obj(200, "", "", details))


# --- request helpers --------------------------------------------------------------------------------------


def field_manager(request: web.Request) -> str:
    """managerOrUserAgent (endpoints/handlers/create.go): ``?fieldManager=``, else prefixFromUserAgent: the
    User-Agent before the first ``/``, non-printable characters dropped, at most 128 bytes (kubectl's own
    commands send ``fieldManager``: ``kubectl-replace``, ``kubectl-create``, ...)."""
    fm = request.query.get("fieldManager")
    if fm:
        return fm
    out = ""
    for ch in request.headers.get("User-Agent", "").split("/", 1)[0]:
        if not ch.isprintable():
            continue
        if len((out + ch).encode()) > 128:
            break
        out += ch
    return out


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


def _pb_bytes(num: int, value: bytes) -> bytes:
    return codec.field_bytes(num, value)


def _pb_str(num: int, value: str) -> bytes:
    return codec.field_bytes(num, value.encode())


def _ns_row(ns: dict) -> tuple:
    return ([ns["metadata"]["name"], "Active", kube.human_age(kube.parse_ts(ns["metadata"]["creationTimestamp"]))],
            ns)
