"""Secret objects as kube-apiserver shapes them, apart from where they are stored or how they are served.

Validation and defaulting (``stringData`` merged into ``data``, ``type`` defaulted, the real ``Invalid`` causes),
update validation (``ValidateSecretUpdate``: ``type`` is immutable, an ``immutable`` secret's ``data`` and
``immutable`` too), metadata in Go's field order, the stored form (no TypeMeta, no resourceVersion) and the
served form (resourceVersion from etcd's mod revision), RFC 7386 merge patch.

``managedFields`` as the field manager computes them (``k8s.io/apimachinery/pkg/util/managedfields/internal``
and structured-merge-diff's ``merge.Updater.Update``, ``typed.Compare``, ``fieldpath`` serialization): the
fields an operation added or modified go to its manager (and are taken from every other manager), removed
fields leave every manager, and only when the operation took a field does its entry get the current time; a
no-op update leaves managedFields, and so the stored bytes, unchanged. Empty sets are dropped, more than 10
Update managers are merged into ``ancient-changes``, entries are sorted (operation, time, manager), fieldsV1 is
written in smd's canonical order. The tracked fields are those the sandbox stores: ``data``, ``type``,
``immutable``, ``metadata.labels``, ``metadata.annotations``, ``metadata.generateName``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime
import json
import re

from aiohttp import web

from . import kube

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
META_ORDER = ("name", "generateName", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
              "deletionTimestamp", "labels", "annotations", "ownerReferences", "finalizers", "managedFields")
SECRET_FIELDS = {"metadata.name": lambda o: o["metadata"]["name"],
                 "metadata.namespace": lambda o: o["metadata"].get("namespace", ""),
                 "type": lambda o: o.get("type", "")}


def order_meta(meta: dict) -> dict:
    out = {k: meta[k] for k in META_ORDER if k in meta}
    out.update({k: v for k, v in meta.items() if k not in out})
    return out


def with_type(obj: dict) -> dict:
    return {"kind": "Secret", "apiVersion": "v1", **{k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}}


def storable(obj: dict) -> dict:
    stored = copy.deepcopy({k: v for k, v in obj.items() if k not in ("kind", "apiVersion")})
    stored["metadata"].pop("resourceVersion", None)
    return stored


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


def check_type(body: dict) -> web.Response | None:
    kind, api = body.get("kind"), body.get("apiVersion")
    if (kind and kind != "Secret") or (api and api != "v1"):
        return kube.bad_request(f"the API version in the data ({api}) does not match the expected API version (v1)"
                                if api and api != "v1" else f"the kind in the data ({kind}) does not match the "
                                "expected kind (Secret)")
    return None


def normalize_secret(body: dict, validate: bool = True) -> tuple[dict, web.Response | None]:
    """Decode and normalize a Secret as the apiserver does: stringData merged into data, type defaulted; a body
    that does not decode is 400. ``validate``: also ValidateSecret (422); an update validates later, after the
    resourceVersion check, with :func:`validate_update`."""
    meta = dict(body.get("metadata") or {})
    name = meta.get("name", "")
    causes = []
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
    causes = secret_causes(name, data) if validate else []
    if causes:
        return {}, invalid_secret(name, causes)
    for drop in ("selfLink", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
        meta.pop(drop, None)
    obj: dict = {"metadata": meta}
    if data:
        obj["data"] = data
    obj["type"] = body.get("type") or "Opaque"
    if body.get("immutable") is not None:
        obj["immutable"] = bool(body["immutable"])
    return obj, None


def secret_causes(name: str, data: dict) -> list[tuple[str, str, str]]:
    """ValidateSecret's causes (name, data keys)."""
    causes = []
    if len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        causes.append(("FieldValueInvalid", "metadata.name",
                       f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case '
                       "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character "
                       "(e.g. 'example.com', regex used for validation is "
                       r"'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"))
    for k in data:
        if not DATA_KEY.match(k):
            causes.append(("FieldValueInvalid", f"data[{k}]", f'Invalid value: "{k}": a valid config key must '
                           "consist of alphanumeric characters, '-', '_' or '.'"))
    return causes


def validate_update(new: dict, old: dict) -> list[tuple[str, str, str]]:
    """ValidateSecretUpdate (pkg/apis/core/validation): ObjectMeta update (uid immutable), ``type`` always
    immutable, and for an ``immutable: true`` secret ``immutable`` and ``data`` too; then ValidateSecret. Metadata
    (labels, annotations) stays writable."""
    causes = []
    nm, om = new.get("metadata", {}), old.get("metadata", {})
    if nm.get("uid") != om.get("uid"):
        causes.append(("FieldValueInvalid", "metadata.uid", f'Invalid value: "{nm.get("uid")}": field is immutable'))
    if new.get("type") != old.get("type"):
        causes.append(("FieldValueInvalid", "type", f'Invalid value: "{new.get("type")}": field is immutable'))
    if old.get("immutable"):
        if not new.get("immutable"):
            causes.append(("FieldValueForbidden", "immutable", "Forbidden: field is immutable when `immutable` is set"))
        if (new.get("data") or {}) != (old.get("data") or {}):
            causes.append(("FieldValueForbidden", "data", "Forbidden: field is immutable when `immutable` is set"))
    return causes + secret_causes(nm.get("name", ""), new.get("data") or {})


def invalid_secret(name: str, causes: list[tuple[str, str, str]]) -> web.Response:
    """apierrors.NewInvalid(GroupKind{Kind: "Secret"}, name, errs), as BeforeCreate and BeforeUpdate return it:
    details.kind is the kind (``Secret``; kube.invalid gives the resource); the message aggregates the causes."""
    resp = kube.invalid("Secret", name, causes)
    body = json.loads(resp.text)
    body["details"]["kind"] = "Secret"
    return web.Response(status=422, text=kube.dumps(body), content_type=kube.JSON)


# --- managedFields: the field manager -------------------------------------------------------------------

MAX_UPDATE_MANAGERS = 10  # DefaultMaxUpdateManagers
ANCIENT = "ancient-changes"
_EMPTY_TREE = {"f:metadata": {}}


def _tree(obj: dict) -> dict:
    """The tracked fields of a Secret as smd sees them (path elements ``f:<name>``; leaves ``("v", value)``; empty
    maps are absent, as Go's omitempty leaves them). Stripped fields (stripmeta.go: name, namespace, uid,
    resourceVersion, creationTimestamp, generation, managedFields, ...) are left out: nobody may own them."""
    meta = obj.get("metadata") or {}
    m: dict = {}
    for part in ("annotations", "labels"):
        if meta.get(part):
            m[f"f:{part}"] = {f"f:{k}": ("v", v) for k, v in meta[part].items()}
    if meta.get("generateName"):
        m["f:generateName"] = ("v", meta["generateName"])
    tree: dict = {"f:metadata": m}
    if obj.get("data"):
        tree["f:data"] = {f"f:{k}": ("v", v) for k, v in obj["data"].items()}
    if obj.get("immutable") is not None:
        tree["f:immutable"] = ("v", bool(obj["immutable"]))
    if obj.get("type"):
        tree["f:type"] = ("v", obj["type"])
    return tree


def compare(live: dict, new: dict) -> tuple[set, set, set]:
    """typed.Compare(live, new): (added, modified, removed) paths. A node absent on one side is added/removed
    together with everything under it; a scalar present on both sides is modified when it differs."""
    added: set = set()
    modified: set = set()
    removed: set = set()

    def walk(lhs, rhs, path: tuple) -> None:
        node = lhs if lhs is not None else rhs
        if isinstance(node, dict):
            for k in set(lhs or {}) | set(rhs or {}):
                walk((lhs or {}).get(k), (rhs or {}).get(k), path + (k,))
        elif lhs is not None and rhs is not None and lhs != rhs:
            modified.add(path)
        if path and lhs is None:
            added.add(path)
        elif path and rhs is None:
            removed.add(path)

    walk(_tree(live), _tree(new), ())
    return added, modified, removed


def fields_set(obj: dict) -> set:
    """The fields a create of ``obj`` gives its manager: everything, each map with its own entry."""
    return compare({}, obj)[0]


def to_fields_v1(paths: set) -> dict:
    """fieldpath.Set.ToJSON: ``"."`` first for a member that has children, then the path elements in order."""
    trie: dict = {}
    for p in paths:
        node = trie
        for pe in p:
            node = node.setdefault(pe, {})

    def emit(node: dict, prefix: tuple) -> dict:
        out: dict = {}
        if prefix and node and prefix in paths:
            out["."] = {}
        for pe in sorted(node):
            out[pe] = emit(node[pe], prefix + (pe,))
        return out

    return emit(trie, ())


def from_fields_v1(fields: dict, prefix: tuple = ()) -> set:
    out: set = set()
    for k, v in fields.items():
        if k == ".":
            out.add(prefix)
        elif not v:
            out.add(prefix + (k,))
        else:
            out |= from_fields_v1(v, prefix + (k,))
    return out


def _manager_id(e: dict) -> str:
    """BuildManagerIdentifier: the entry without fields and time (and, for Apply, apiVersion), as Go's json."""
    ident = {"manager": e.get("manager", ""), "operation": e.get("operation", ""),
             "apiVersion": "" if e.get("operation") == "Apply" else e.get("apiVersion", ""),
             "subresource": e.get("subresource", "")}
    return json.dumps({k: v for k, v in ident.items() if v}, separators=(",", ":"))


def rfc3339(value) -> str | None:
    """A metav1.Time as it round-trips: parsed as RFC 3339 (``Z`` or an offset, fractions), written back in UTC
    to the second. ValueError for anything else."""
    if value is None:
        return None
    t = datetime.datetime.fromisoformat(str(value).replace("z", "Z"))
    if t.tzinfo is None:
        raise ValueError(f"time {value!r} has no zone")
    return t.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def decode_managed(entries) -> dict | None:
    """DecodeManagedFields: {identifier: entry with a ``set``}; None when an entry is invalid."""
    managed: dict = {}
    for e in entries or []:
        if not isinstance(e, dict) or e.get("operation") not in ("Apply", "Update") or not e.get("apiVersion"):
            return None
        if e.get("fieldsType") != "FieldsV1" or not isinstance(e.get("fieldsV1", {}), dict):
            return None
        try:
            when = rfc3339(e.get("time"))
        except ValueError:
            return None
        managed[_manager_id(e)] = {"manager": e.get("manager", ""), "operation": e["operation"],
                                   "apiVersion": e["apiVersion"], "time": when,
                                   "subresource": e.get("subresource", ""),
                                   "set": from_fields_v1(e.get("fieldsV1") or {})}
    return managed


def _seconds(t: str | None) -> int:
    return int(kube.parse_ts(t)) if t else 0


def encode_managed(managed: dict) -> list:
    """encodeManagedFields + sortEncodedManagedFields: (operation, time in seconds, manager, apiVersion,
    subresource)."""
    out = []
    for e in managed.values():
        entry = {"manager": e["manager"], "operation": e["operation"], "apiVersion": e["apiVersion"]}
        if e.get("time"):
            entry["time"] = e["time"]
        entry["fieldsType"] = "FieldsV1"
        entry["fieldsV1"] = to_fields_v1(e["set"])
        if e.get("subresource"):
            entry["subresource"] = e["subresource"]
        out.append(entry)
    out.sort(key=lambda e: (e["operation"], _seconds(e.get("time")), e["manager"], e["apiVersion"],
                            e.get("subresource", "")))
    return out


def _cap_update_managers(managed: dict) -> None:
    """capManagersManager: beyond 10 Update entries, the oldest are merged into ``ancient-changes`` (one per
    apiVersion), taking the merged entry's time."""
    updaters = [m for m, e in managed.items() if e["operation"] == "Update"]
    if len(updaters) <= MAX_UPDATE_MANAGERS:
        return
    updaters.sort(key=lambda m: (_seconds(managed[m].get("time")), m))
    first_of: dict = {}
    length = len(updaters)
    for m in updaters:
        if length <= MAX_UPDATE_MANAGERS:
            break
        e = managed[m]
        version = e["apiVersion"]
        bucket = _manager_id({"manager": ANCIENT, "operation": "Update", "apiVersion": version})
        if version in first_of:
            if bucket not in managed:
                first = managed.pop(first_of[version])
                managed[bucket] = {**first, "manager": ANCIENT}
            managed[bucket]["set"] = e["set"] | managed[bucket]["set"]
            managed[bucket]["time"] = e.get("time")
            del managed[m]
            length -= 1
        else:
            first_of[version] = m


def managed_fields_for(live: dict | None, new: dict, manager: str, operation: str, now: str,
                       applied: set | None = None) -> list | None:
    """The managedFields an Update (or, roughly, an Apply) of ``live`` into ``new`` stores, as the field manager
    chain computes them (FieldManager.Update: decodeLiveOrNew, skipNonApplied, managedFieldsUpdater,
    structured merge, stripMeta, capManagers, encode). ``live`` None is a create. None: no managedFields."""
    live_obj = live or {}
    requested = (new.get("metadata") or {}).get("managedFields")
    if requested is not None and (requested == [] or requested == [{}]):
        managed: dict = {}  # isResetManagedFields: the client asked to reset them
    else:
        managed = decode_managed(requested) if requested else None
        if not managed:  # absent, empty or undecodable: the live object's (clients that do not know managedFields)
            managed = decode_managed((live_obj.get("metadata") or {}).get("managedFields")) or {}
    if not managed and live is not None:
        return None  # skipNonApplied: an update of an object with no managedFields does not start tracking
    added, modified, removed = compare(live_obj, new)
    taken = added | modified
    me = _manager_id({"manager": manager, "operation": operation, "apiVersion": "v1"})
    for mid in list(managed):  # every manager but the current operation loses what it took, and what went away
        managed[mid]["set"] = managed[mid]["set"] - taken - removed
        if not managed[mid]["set"]:
            del managed[mid]
    own = set(applied) if applied is not None else taken
    if own:
        previous = managed.get(me, {}).get("set", set()) if applied is None else set()
        managed[me] = {"manager": manager, "operation": operation, "apiVersion": "v1", "time": now,
                       "subresource": "", "set": own | previous}
    _cap_update_managers(managed)
    return encode_managed(managed) or None


def ignore_timestamp_only_changes(new: dict, old: dict) -> None:
    """IgnoreManagedFieldsTimestampsTransformer: when managedFields differ from the old ones only in their
    times and the objects are otherwise equal, the old times are put back (no write for a timestamp alone)."""
    nmf = (new.get("metadata") or {}).get("managedFields") or []
    omf = (old.get("metadata") or {}).get("managedFields") or []
    if len(nmf) != len(omf) or not nmf:
        return
    if all(a.get("time") == b.get("time") for a, b in zip(nmf, omf)):
        return
    untimed = [[{k: v for k, v in e.items() if k != "time"} for e in mf] for mf in (nmf, omf)]
    if untimed[0] != untimed[1]:
        return
    rest = [storable({**o, "metadata": {k: v for k, v in o["metadata"].items() if k != "managedFields"}})
            for o in (new, old)]
    if rest[0] == rest[1]:
        for a, b in zip(nmf, omf):
            if b.get("time") is None:
                a.pop("time", None)
            else:
                a["time"] = b["time"]


def managed_entry(manager: str, operation: str, now: str, obj: dict) -> dict:
    """The one entry a create of ``obj`` by ``manager`` writes."""
    return encode_managed({"x": {"manager": manager, "operation": operation, "apiVersion": "v1", "time": now,
                                 "subresource": "", "set": fields_set(obj)}})[0]


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
