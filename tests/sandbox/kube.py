"""Kubernetes API conventions shared by the API server emulator: Status bodies, selectors, objects, tables,
answers in the form the client asked for.

Kept apart from the HTTP handlers so the shapes (which the product parses) are easy to check against the real
apiserver's: Status JSON is compact and in Go's field order, errors carry the real reasons and messages.
"""

from __future__ import annotations

import base64
import calendar
import json
import re
import time
import uuid

from aiohttp import web

JSON = "application/json"
TEXT_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache, private"}  # plain-text answers


def dumps(obj) -> str:
    """Go's json.Marshal layout (compact), which clients and the product see."""
    return json.dumps(obj, separators=(",", ":"))


def now_rfc3339(ts: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if ts is None else ts))


def new_uid() -> str:
    return str(uuid.uuid4())


def stable_uid(seed: str) -> str:
    """The same uid for the same object on every start (nodes, pods, namespaces)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "sandbox:" + seed))


# --- Status -----------------------------------------------------------------------------------------------


def status_obj(code: int, reason: str, message: str, details: dict | None = None, kind: bool = True) -> dict:
    """A metav1.Status; ``kind=False`` gives the bare form the exec error channel carries."""
    body: dict = {"kind": "Status", "apiVersion": "v1"} if kind else {}
    body["metadata"] = {}
    body["status"] = "Success" if 200 <= code < 300 else "Failure"
    if message:
        body["message"] = message
    if reason:
        body["reason"] = reason
    if details:
        body["details"] = details
    body["code"] = code
    return body


def status_response(code: int, reason: str, message: str, details: dict | None = None,
                    headers: dict | None = None) -> web.Response:
    return web.Response(status=code, text=dumps(status_obj(code, reason, message, details)),
                        content_type=JSON, headers=headers)


def not_found(resource: str, name: str) -> web.Response:
    return status_response(404, "NotFound", f'{resource} "{name}" not found', {"name": name, "kind": resource})


def already_exists(resource: str, name: str) -> web.Response:
    return status_response(409, "AlreadyExists", f'{resource} "{name}" already exists',
                           {"name": name, "kind": resource})


def conflict(resource: str, name: str) -> web.Response:
    return status_response(409, "Conflict", f'Operation cannot be fulfilled on {resource} "{name}": the object has '
                           "been modified; please apply your changes to the latest version and try again",
                           {"name": name, "kind": resource})


def internal_error(message: str) -> web.Response:
    """apierrors.NewInternalError: the message is prefixed, the bare error is the one cause."""
    return status_response(500, "InternalError", f"Internal error occurred: {message}",
                           {"causes": [{"message": message}]})


def bad_request(message: str) -> web.Response:
    return status_response(400, "BadRequest", message)


def invalid(kind: str, name: str, causes: list[tuple[str, str, str]]) -> web.Response:
    """422 Invalid; causes are (reason e.g. FieldValueRequired, field, message)."""
    text = "; ".join(f"{field}: {msg}" for _, field, msg in causes)
    if len(causes) > 1:
        text = "[" + ", ".join(f"{field}: {msg}" for _, field, msg in causes) + "]"
    return status_response(422, "Invalid", f'{kind} "{name}" is invalid: {text}', {
        "name": name, "kind": kind.lower() + "s",
        "causes": [{"reason": r, "message": m, "field": f} for r, f, m in causes]})


def forbidden(user: str, verb: str, resource: str, namespace: str | None, name: str | None = None,
              subresource: str | None = None) -> web.Response:
    """The RBAC denial text of kube-apiserver (``... cannot create resource "pods/exec" in API group ""``)."""
    res = f"{resource}/{subresource}" if subresource else resource
    subject = f'{resource} "{name}"' if name else resource
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    msg = f'{subject} is forbidden: User "{user}" cannot {verb} resource "{res}" in API group ""{where}'
    details = {"kind": resource}
    if name:
        details = {"name": name, "kind": resource}
    return status_response(403, "Forbidden", msg, details)


UNAUTHORIZED = status_obj(401, "Unauthorized", "Unauthorized")


# --- selectors --------------------------------------------------------------------------------------------

_REQ = re.compile(r"^\s*(!?)\s*([A-Za-z0-9./_-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9._-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


class SelectorError(ValueError):
    pass


def parse_label_selector(text: str | None):
    """Equality- and set-based selectors (``a=b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``)."""
    reqs = []
    for part in _split_top(text or ""):
        m = _REQ.match(part)
        if not m:
            raise SelectorError(f'unable to parse requirement: found "{part.strip()}", expected: '
                                "identifier, in, notin, =, ==, !=")
        neg, key, op, val, setop, setvals = m.groups()
        if neg and (op or setop):
            raise SelectorError(f"unable to parse requirement: {part.strip()}")
        if op:
            reqs.append((key, "!=" if op == "!=" else "=", {val}))
        elif setop:
            reqs.append((key, setop, {v.strip() for v in setvals.split(",") if v.strip()}))
        else:
            reqs.append((key, "!" if neg else "exists", set()))
    return reqs


def labels_match(reqs, labels: dict | None) -> bool:
    labels = labels or {}
    for key, op, vals in reqs:
        has = key in labels
        v = labels.get(key)
        if op == "=" and not (has and v in vals):
            return False
        if op == "!=" and has and v in vals:
            return False
        if op == "in" and not (has and v in vals):
            return False
        if op == "notin" and has and v in vals:
            return False
        if op == "exists" and not has:
            return False
        if op == "!" and has:
            return False
    return True


def parse_field_selector(text: str | None, supported: dict) -> list:
    """``metadata.name=x,status.phase!=Failed``; ``supported`` maps field -> getter(obj)."""
    reqs = []
    for part in _split_top(text or ""):
        m = re.match(r"^\s*([A-Za-z.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{part}'")
        field, op, val = m.groups()
        if field not in supported:
            raise SelectorError(f'"{field}" is not a known field selector: only '
                                + ", ".join(f'"{f}"' for f in supported))
        reqs.append((supported[field], op != "!=", val))
    return reqs


def fields_match(reqs, obj: dict) -> bool:
    return all((getter(obj) == val) == positive for getter, positive, val in reqs)


# --- Accept negotiation -----------------------------------------------------------------------------------


def wanted_form(accept: str | None) -> str:
    """``table``, ``metadata`` or ``json`` from an Accept header (first supported media type wins)."""
    for media in (accept or JSON).split(","):
        parts = [p.strip() for p in media.split(";")]
        mtype, params = parts[0].lower(), dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        if mtype not in (JSON, "*/*", "application/*"):
            continue
        as_ = params.get("as")
        if as_ == "Table" and params.get("g") == "meta.k8s.io":
            return "table"
        if as_ in ("PartialObjectMetadata", "PartialObjectMetadataList") and params.get("g") == "meta.k8s.io":
            return "metadata"
        if as_ is None:
            return "json"
    return "unacceptable"


# --- tables -----------------------------------------------------------------------------------------------


def human_age(since_ts: float) -> str:
    """Go's duration.HumanDuration, as the ``AGE`` column shows it."""
    s = max(0, int(time.time() - since_ts))
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    d = h // 24
    if d < 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    return f"{d}d" if d < 730 else f"{d // 365}y"


def parse_ts(value: str | None) -> float:
    if not value:
        return time.time()
    return calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ"))


def partial_metadata(obj: dict) -> dict:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}


def table(columns: list[tuple], rows: list[tuple], resource_version: str = "") -> dict:
    """metav1.Table with ``PartialObjectMetadata`` row objects (kubectl's default ``includeObject=Metadata``)."""
    return {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [{"name": n, "type": t, "format": f, "description": d, "priority": p}
                              for n, t, f, d, p in columns],
        "rows": [{"cells": cells, "object": partial_metadata(obj)} for cells, obj in rows],
    }


SECRET_COLUMNS = [
    ("Name", "string", "name", "Name must be unique within a namespace.", 0),
    ("Type", "string", "", "Used to facilitate programmatic handling of secret data.", 0),
    ("Data", "string", "", "Data contains the secret data.", 0),
    ("Age", "string", "", "CreationTimestamp is a timestamp representing the server time when this object was "
                          "created.", 0),
]

POD_COLUMNS = [
    ("Name", "string", "name", "Name must be unique within a namespace.", 0),
    ("Ready", "string", "", "The aggregate readiness state of this pod for accepting traffic.", 0),
    ("Status", "string", "", "The aggregate status of the containers in this pod.", 0),
    ("Restarts", "string", "", "The number of times the containers in this pod have been restarted and when the "
                               "last container in this pod has restarted.", 0),
    ("Age", "string", "", "CreationTimestamp is a timestamp representing the server time when this object was "
                          "created.", 0),
    ("IP", "string", "", "The IP address assigned to the pod", 1),
    ("Node", "string", "", "The name of the node where the pod is running", 1),
    ("Nominated Node", "string", "", "The name of the node where the pod is nominated to run", 1),
    ("Readiness Gates", "string", "", "The readiness gates of the pod", 1),
]


def secret_row(obj: dict) -> tuple:
    meta = obj["metadata"]
    return ([meta["name"], obj.get("type", "Opaque"), len(obj.get("data") or {}),
             human_age(parse_ts(meta.get("creationTimestamp")))], obj)


def pod_row(pod: dict) -> tuple:
    meta, status = pod["metadata"], pod["status"]
    statuses = status.get("containerStatuses", [])
    ready = sum(1 for c in statuses if c.get("ready"))
    restarts = sum(c.get("restartCount", 0) for c in statuses)
    return ([meta["name"], f"{ready}/{len(pod['spec']['containers'])}", status.get("phase", ""), str(restarts),
             human_age(parse_ts(meta.get("creationTimestamp"))), status.get("podIP", "<none>"),
             pod["spec"].get("nodeName", "<none>"), "<none>", "<none>"], pod)


# --- responses in the form the client asked for (JSON, Table, PartialObjectMetadata) ----------------------


def respond(obj: dict, status: int = 200, content_type: str = JSON) -> web.Response:
    return web.Response(status=status, text=dumps(obj), content_type=content_type)


def _not_acceptable() -> web.Response:
    return status_response(406, "NotAcceptable", "only the following media types are accepted: "
                           "application/json, application/yaml, application/vnd.kubernetes.protobuf")


def render_one(request, obj: dict, kind: str, row, columns, status: int = 200) -> web.Response:
    form = wanted_form(request.headers.get("Accept"))
    if form == "table":
        return respond(table(columns, [row(obj)], obj["metadata"].get("resourceVersion", "")), status)
    if form == "metadata":
        return respond(partial_metadata(obj), status)
    if form == "unacceptable":
        return _not_acceptable()
    return respond({"kind": kind, "apiVersion": "v1", **obj}, status)


def render_list(request, items: list, kind: str, row, columns, rv: str, cont: str = "",
                remaining: int | None = None) -> web.Response:
    form = wanted_form(request.headers.get("Accept"))
    meta: dict = {"resourceVersion": rv}
    if cont:
        meta["continue"] = cont
        if remaining is not None:
            meta["remainingItemCount"] = remaining
    if form == "table":
        t = table(columns, [row(o) for o in items], rv)
        t["metadata"] = meta
        return respond(t)
    if form == "metadata":
        return respond({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                        "metadata": meta, "items": [partial_metadata(o) for o in items]}, content_type=JSON)
    if form == "unacceptable":
        return _not_acceptable()
    return respond({"kind": kind, "apiVersion": "v1", "metadata": meta, "items": items})


# --- continue tokens --------------------------------------------------------------------------------------


def encode_continue(rv: int, start: str) -> str:
    """The apiserver's continue token: base64 of ``{"v":"meta.k8s.io/v1","rv":N,"start":"<key after prefix>"}``."""
    raw = dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = json.loads(raw)
        if body.get("v") != "meta.k8s.io/v1" or not isinstance(body.get("rv"), int) or "start" not in body:
            raise ValueError
        start = body["start"]
        if start.startswith("/") or ".." in start.split("/"):
            raise ValueError
        return body["rv"], start
    except (ValueError, TypeError, json.JSONDecodeError):
        raise SelectorError("continue key is not valid: incorrect encoded start resourceVersion "
                            "(version meta.k8s.io/v1)") from None
