"""Secret objects as kube-apiserver shapes them, apart from where they are stored or how they are served.

Validation and defaulting (``stringData`` merged into ``data``, ``type`` defaulted, the real ``Invalid`` causes),
metadata in Go's field order, ``managedFields`` entries, the stored form (no TypeMeta, no resourceVersion) and
the served form (resourceVersion from etcd's mod revision), RFC 7386 merge patch.
"""

from __future__ import annotations

import base64
import binascii
import copy
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


def content(obj: dict) -> dict:
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


def check_type(body: dict) -> web.Response | None:
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
    if len(name) > 253 or not DNS_SUBDOMAIN.match(name):
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
        if not DATA_KEY.match(k):
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
