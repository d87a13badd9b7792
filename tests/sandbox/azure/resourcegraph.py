"""Azure Resource Graph, as the ARM emulator serves it: ``POST /providers/Microsoft.ResourceGraph/resources``.

Only the query that finds AKS Arc clusters is understood (whitespace and case do not matter)::

    resources
    | where type =~ 'microsoft.kubernetes/connectedclusters' and kind =~ 'ProvisionedCluster'
        [and resourceGroup =~ '<rg>'] [and tags['<k>'] =~ '<v>'] [and isnotnull(tags['<k>'])] ...
    [| where ...]
    [| project id, name, resourceGroup, subscriptionId, tags, properties.connectivityStatus]
    [| order by id asc]

Predicates: ``=~`` (case-insensitive) and ``==`` (exact; ARG stores ``type`` and ``resourceGroup`` in lower case, so
``resourceGroup == 'Edge-RG'`` matches nothing, as in ARG), ``!=``, ``!~`` on ``name``, ``resourceGroup``,
``subscriptionId``, ``location``, ``kind``, ``type``, ``properties.connectivityStatus`` and ``tags['k']`` (or
``tags.k``); ``isnotnull(tags['k'])`` / ``isnull(...)``; joined by ``and``. ``project`` takes columns and dotted paths
(``properties.connectivityStatus`` becomes the column ``properties_connectivityStatus``, as ARG names it) and
``alias = path``. ``order by``/``sort by`` one column, ``asc`` or ``desc`` (KQL's default: ``desc``). Anything
else (another table or type, ``or``, ``limit``, ``summarize``, ...) is ARG's 400 ``BadRequest`` with an
``InvalidQuery`` detail and a second detail saying what the sandbox does not answer.

Paging as ARG pages: ``options.$top`` (1..1000, default 100), ``options.$skip``, ``options.$skipToken`` (opaque,
bound to the query and scopes); a ``$skipToken`` in the answer while rows remain, but only when ``id`` is projected
(otherwise ``resultTruncated: "true"`` and no token). Scopes: ``subscriptions`` (those the caller cannot see are
left out silently), ``managementGroups`` (only the tenant root group, named by the tenant id), neither: every
subscription the caller can see.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import uuid

API_VERSIONS = ("2021-03-01", "2022-10-01")
DEFAULT_TOP = 100
MAX_TOP = 1000
CONNECTED_CLUSTERS = "microsoft.kubernetes/connectedclusters"
PROVISIONED_CLUSTER = "ProvisionedCluster"
SUPPORTED = ("resources | where type =~ 'microsoft.kubernetes/connectedclusters' and kind =~ 'ProvisionedCluster' "
             "[and resourceGroup =~ '<rg>'] [and tags['<k>'] =~ '<v>'] [and isnotnull(tags['<k>'])] "
             "[| project id, name, resourceGroup, subscriptionId, tags, properties.connectivityStatus] "
             "[| order by id asc]")
COLUMNS = ("id", "name", "type", "tenantId", "kind", "location", "resourceGroup", "subscriptionId", "managedBy",
           "sku", "plan", "properties", "tags", "identity", "zones", "extendedLocation")
_COMPARABLE = {"name", "resourcegroup", "subscriptionid", "location", "kind", "type", "tenantid", "id"}
_STRING = r"""(?P<q>['"])(?P<s>(?:\\.|(?!(?P=q)).)*)(?P=q)"""


class QueryError(Exception):
    """A query or request the sandbox's Resource Graph does not answer: becomes ARG's 400."""

    def __init__(self, message: str, code: str = "UnsupportedQuery", token: str | None = None,
                 parser: bool = False):
        super().__init__(message)
        self.message = message
        self.code = code
        self.token = token
        self.parser = parser  # a KQL syntax error (ParserFailure) rather than a query the sandbox does not answer
        self.position = None  # of the token in the query (ARG's characterPositionInLine)


def error_body(e: QueryError) -> dict:
    """ARG's 400 body: ``BadRequest`` with the support line, then ``InvalidQuery`` and what is wrong."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1e7) % 10**7:07d}Z"
    support = f"Please provide below info when asking for support: timestamp = {stamp}, correlationId = {uuid.uuid4()}."
    details = []
    if e.code in ("UnsupportedQuery", "ParserFailure"):
        details.append({"code": "InvalidQuery", "message": "Query is invalid. Please refer to the documentation for "
                                                           "the Azure Resource Graph service and fix the error before "
                                                           "retrying."})
    detail = {"code": "ParserFailure" if e.parser else e.code, "message": e.message}
    if e.token is not None:
        detail["line"] = 1
        if e.position is not None:
            detail["characterPositionInLine"] = e.position
        detail["token"] = e.token
    details.append(detail)
    return {"error": {"code": "BadRequest", "message": support, "details": details}}


# --- the query ---------------------------------------------------------------------------------------------


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` (a character, or a word such as ``and``) outside string literals."""
    parts, start, quote, i = [], 0, None, 0
    word = len(sep) > 1
    while i < len(text):
        c = text[i]
        if quote is not None:
            if c == "\\":
                i += 1
            elif c == text[quote]:
                quote = None
        elif c in "'\"":
            quote = i
        elif (c == sep if not word else
              text[i:i + len(sep)].lower() == sep and not _word_char(text, i - 1)
              and not _word_char(text, i + len(sep))):
            parts.append(text[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    if quote is not None:
        raise QueryError(f"ParserFailure: the string literal at position {quote + 1} is not closed",
                         code="ParserFailure", token=text[quote:], parser=True)
    parts.append(text[start:])
    return parts


def _word_char(text: str, i: int) -> bool:
    return 0 <= i < len(text) and (text[i].isalnum() or text[i] in "_.")


def _unquote(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)


def _column(expr: str) -> tuple[str, ...]:
    """A column reference as a path: ``name``, ``properties.connectivityStatus``, ``tags['env']``, ``tags.env``."""
    expr = expr.strip()
    m = re.fullmatch(r"tags\s*\[\s*" + _STRING + r"\s*\]", expr, re.I)
    if m:
        return ("tags", _unquote(m["s"]))
    if re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", expr):
        head, *rest = expr.split(".")
        canon = next((c for c in COLUMNS if c.lower() == head.lower()), None)
        if canon is None:
            raise QueryError(f"the sandbox knows no column {head!r} of resources (it has {', '.join(COLUMNS)})",
                             token=expr)
        return (canon, *rest)
    raise QueryError(f"the sandbox does not answer the expression {expr!r}: {SUPPORTED}", token=expr)


def _lookup(row: dict, path: tuple[str, ...]):
    """The value at ``path``; property names are matched case-insensitively (as the sandbox reads queries), tag
    keys exactly."""
    value = row
    for depth, part in enumerate(path):
        if not isinstance(value, dict):
            return None
        if part in value:
            value = value[part]
        elif path[0] == "tags" and depth == 1:
            return None
        else:
            value = next((v for k, v in value.items() if k.lower() == part.lower()), None)
    return value


def _predicate(text: str):
    """One conjunct of a ``where``: returns (test(row) -> bool, path, op, value)."""
    text = text.strip()
    if len(_split(text, "or")) > 1:
        raise QueryError(f"the sandbox does not answer 'or' in a where clause: {SUPPORTED}", token=text)
    m = re.fullmatch(r"(?P<fn>isnotnull|isnull)\s*\(\s*(?P<col>.+?)\s*\)", text, re.I)
    if m:
        path = _column(m["col"])
        want = m["fn"].lower() == "isnotnull"
        return (lambda row: (_lookup(row, path) is not None) == want), path, m["fn"].lower(), None
    m = re.fullmatch(r"(?P<col>.+?)\s*(?P<op>=~|==|!=|!~)\s*" + _STRING, text, re.S)
    if not m:
        raise QueryError(f"the sandbox does not answer the condition {text!r}: {SUPPORTED}", token=text)
    path, op, value = _column(m["col"]), m["op"], _unquote(m["s"])
    if path[0] not in ("tags", "properties") and path[0].lower() not in _COMPARABLE:
        raise QueryError(f"the sandbox does not compare {'.'.join(path)}: {SUPPORTED}", token=m["col"].strip())

    def test(row):
        actual = _lookup(row, path)
        if not isinstance(actual, str):
            return op in ("!=", "!~")
        equal = actual.lower() == value.lower() if op in ("=~", "!~") else actual == value
        return equal if op in ("=~", "==") else not equal
    return test, path, op, value


def parse(query: str) -> dict:
    """The query as {"where": [test, ...], "project": [(column name, path), ...] | None, "order": (path, desc)}."""
    if not isinstance(query, str) or not query.strip():
        raise QueryError("The query is empty.", code="InvalidQuery")
    try:
        return _parse(query)
    except QueryError as e:
        if e.token is not None and e.token in query:
            e.position = query.index(e.token)
        raise


def _parse(query: str) -> dict:
    stages = [s.strip() for s in _split(query, "|")]
    if stages[0].lower() != "resources":
        raise QueryError(f"the sandbox answers queries of the resources table only, not {stages[0]!r}: {SUPPORTED}",
                         token=stages[0])
    where, project, order, seen = [], None, None, {"type": False, "kind": False}
    for stage in stages[1:]:
        m = re.match(r"(?P<op>where|project|order\s+by|sort\s+by)\b\s*(?P<rest>.*)$", stage, re.I | re.S)
        if not m or not m["rest"].strip():
            raise QueryError(f"the sandbox does not answer the operator {stage.split(' ')[0]!r}: {SUPPORTED}",
                             token=stage)
        op, rest = m["op"].lower().split()[0], m["rest"].strip()
        if project is not None and op == "where":
            raise QueryError(f"the sandbox answers where clauses only before project: {SUPPORTED}", token=stage)
        if op == "where":
            for conjunct in _split(rest, "and"):
                test, path, cmp, value = _predicate(conjunct)
                if path == ("type",):
                    if cmp not in ("=~", "==") or value.lower() != CONNECTED_CLUSTERS:
                        raise QueryError(f"the sandbox's Resource Graph answers queries for connected clusters "
                                         f"only (type =~ '{CONNECTED_CLUSTERS}'), not {conjunct.strip()!r}: "
                                         f"{SUPPORTED}", token=conjunct.strip())
                    seen["type"] = True
                if path == ("kind",):
                    if cmp not in ("=~", "==") or value.lower() != PROVISIONED_CLUSTER.lower():
                        raise QueryError(f"the sandbox's Resource Graph answers queries for AKS Arc clusters only "
                                         f"(kind =~ '{PROVISIONED_CLUSTER}'), not {conjunct.strip()!r}: "
                                         f"{SUPPORTED}", token=conjunct.strip())
                    seen["kind"] = True
                where.append(test)
        elif op == "project":
            if project is not None:
                raise QueryError(f"the sandbox answers one project only: {SUPPORTED}", token=stage)
            project = []
            for item in _split(rest, ","):
                alias, eq, expr = item.partition("=")
                if eq and re.fullmatch(r"\s*[A-Za-z_]\w*\s*", alias) and not expr.startswith(("=", "~")):
                    project.append((alias.strip(), _column(expr)))
                else:
                    path = _column(item)
                    project.append(("_".join(path), path))
        else:
            if order is not None:
                raise QueryError(f"the sandbox answers one order by only: {SUPPORTED}", token=stage)
            mo = re.fullmatch(r"(?P<col>\S+?)(\s+(?P<dir>asc|desc))?", rest, re.I)
            if not mo:
                raise QueryError(f"the sandbox orders by one column only: {SUPPORTED}", token=rest)
            order = (mo["col"], (mo["dir"] or "desc").lower() == "desc")
    if not (seen["type"] and seen["kind"]):
        missing = " and ".join(k for k in ("type", "kind") if not seen[k])
        raise QueryError(f"the sandbox's Resource Graph answers queries for AKS Arc connected clusters only: the query "
                         f"must filter on {missing} (type =~ '{CONNECTED_CLUSTERS}' and kind =~ "
                         f"'{PROVISIONED_CLUSTER}'): {SUPPORTED}", token=stages[1] if len(stages) > 1 else stages[0])
    if order is not None:
        names = {name.lower(): path for name, path in (project or [])}
        col = order[0]
        if project is not None:
            if col.lower() not in names:
                raise QueryError(f"order by {col!r}: not a projected column", token=col)
            order = (names[col.lower()], order[1])
        else:
            order = (_column(col), order[1])
    return {"where": where, "project": project, "order": order}


# --- running it --------------------------------------------------------------------------------------------


def _token(offset: int, context: str) -> str:
    return base64.b64encode(json.dumps({"$skip": offset, "ctx": context}).encode()).decode()


def _read_token(token: str, context: str) -> int:
    try:
        data = json.loads(base64.b64decode(token, validate=True))
        offset = data["$skip"]
        if not isinstance(offset, int) or offset < 0 or data.get("ctx") != context:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise QueryError("The $skipToken is invalid, or was issued for another query or other scopes.",
                         code="InvalidSkipToken") from None
    return offset


def _int_option(options: dict, name: str, low: int, high: int | None):
    value = options.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise QueryError(f"options.{name} must be an integer from {low}" + (f" to {high}" if high else "") +
                         f", not {value!r}", code="InvalidQueryOptions")
    return value


def run(body, resources: list[dict], visible: list[str], tenant: str) -> dict:
    """Answer a Resource Graph request ``body`` over ``resources`` (full ARG rows), for a caller who can see the
    subscriptions ``visible``. Raises QueryError for what ARG answers with 400."""
    if not isinstance(body, dict):
        raise QueryError("The request body must be a JSON object with a query.", code="InvalidRequestContent")
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise QueryError("options must be an object", code="InvalidQueryOptions")
    fmt = options.get("resultFormat", "objectArray")
    if fmt not in ("objectArray", "table"):
        raise QueryError(f"options.resultFormat must be table or objectArray, not {fmt!r}",
                         code="InvalidQueryOptions")
    top = _int_option(options, "$top", 1, MAX_TOP) or DEFAULT_TOP
    skip = _int_option(options, "$skip", 0, None)
    q = parse(body.get("query"))

    seen = {s.lower() for s in visible}
    subs = body.get("subscriptions")
    groups = body.get("managementGroups")
    if subs is not None and (not isinstance(subs, list) or not all(isinstance(s, str) for s in subs)):
        raise QueryError("subscriptions must be a list of subscription ids", code="InvalidRequestContent")
    if groups is not None:
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise QueryError("managementGroups must be a list of management group names", code="InvalidRequestContent")
        unknown = [g for g in groups if g.lower() != tenant.lower()]
        if unknown:
            raise QueryError(f"the sandbox knows only the tenant root management group '{tenant}', not "
                             f"{', '.join(unknown)}", code="InvalidManagementGroup")
    scope = seen if subs is None else {s.lower() for s in subs} & seen  # no access: left out, silently
    rows = [r for r in resources if r["subscriptionId"].lower() in scope and all(t(r) for t in q["where"])]
    if q["order"] is not None:
        path, desc = q["order"]
        rows.sort(key=lambda r: str(_lookup(r, path) or "").lower(), reverse=desc)
    else:
        rows.sort(key=lambda r: r["id"].lower())
    context = hashlib.sha256(json.dumps([body.get("query"), sorted(scope), groups]).encode()).hexdigest()[:16]
    offset = skip if skip is not None else 0
    if options.get("$skipToken") is not None:
        token_offset = _read_token(options["$skipToken"], context)
        offset = skip if skip is not None else token_offset
    page = rows[offset:offset + top]
    names = [name for name, _ in q["project"]] if q["project"] is not None else list(COLUMNS)
    paths = [path for _, path in q["project"]] if q["project"] is not None else [(c,) for c in COLUMNS]
    out_rows = [[_lookup(r, p) for p in paths] for r in page]
    more = offset + len(page) < len(rows)
    pageable = any(p == ("id",) for p in paths)
    answer = {"totalRecords": len(rows), "count": len(page),
              "resultTruncated": "true" if more and not pageable else "false"}
    if more and pageable:
        answer["$skipToken"] = _token(offset + len(page), context)
    if fmt == "table":
        answer["data"] = {"columns": [{"name": n, "type": _type([row[i] for row in out_rows])}
                                      for i, n in enumerate(names)], "rows": out_rows}
    else:
        answer["data"] = [dict(zip(names, row)) for row in out_rows]
    answer["facets"] = []
    return answer


def _type(values: list) -> str:
    for v in values:
        if isinstance(v, bool):
            return "boolean"
        if isinstance(v, int):
            return "integer"
        if isinstance(v, (dict, list)):
            return "object"
        if isinstance(v, str):
            return "string"
    return "string"
