"""``/readyz``, ``/livez`` and ``/healthz`` as kube-apiserver answers them: the real check lines in the real
order, ``[-]etcd`` when etcd does not answer, the KMS checks (one aggregate ``kms-providers`` line or one
``kms-provider-N`` per provider, ``readyz_style``), and ``/readyz/<check>`` with the check's real error.
The KMS health check runs on every request (the apiserver's runs on a schedule).
"""

from __future__ import annotations

import asyncio

import grpc
from aiohttp import web

from ..kube import TEXT_HEADERS

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


async def _etcd_check(server) -> tuple[bool, str | None]:
    try:
        await asyncio.wait_for(server.store.etcd.range(b"health", b"", limit=1), 2.0)
        return True, None
    except (asyncio.TimeoutError, grpc.RpcError):
        return False, "error getting data from etcd: context deadline exceeded"


async def _kms_checks(server) -> list[tuple[str, bool, str | None]]:
    providers = server.store.encryption.kms_providers
    if not providers:
        return []
    results = await asyncio.gather(*(asyncio.to_thread(p.client.health_check, p.name) for p in providers))
    if server.readyz_style == "per-provider":
        return [(f"kms-provider-{i}", ok, msg) for i, (ok, msg) in enumerate(results)]
    errors = [f"kms-provider-{i}: {msg}" for i, (ok, msg) in enumerate(results) if not ok]
    return [("kms-providers", not errors, ", ".join(errors) if errors else None)]


async def checks(server, probe: str) -> list[tuple[str, bool, str | None]]:
    """(name, ok, error) of each check of ``probe`` (readyz, livez or healthz), in kube-apiserver's order."""
    (etcd_ok, etcd_err), kms = await asyncio.gather(_etcd_check(server), _kms_checks(server))
    out: list[tuple[str, bool, str | None]] = []
    for name in READYZ_HEAD:
        if name.startswith("etcd"):
            out.append((name, etcd_ok, etcd_err))
        else:
            out.append((name, True, None))
    if probe != "livez":
        out += kms
    tail = list(READYZ_TAIL)
    if kms and server.readyz_style == "aggregate":
        tail.insert(1, AUTO_RELOAD_HOOK)
    out += [(n, True, None) for n in tail]
    if probe != "readyz":
        out = [c for c in out if c[0] not in READYZ_ONLY]
    return out


def _faulted(server, request) -> web.StreamResponse | None:
    """The ``readyz`` fault (ctl): the connection reset, or 503."""
    if server.readyz_fault == "unreachable":
        if request.transport:
            request.transport.abort()
        raise asyncio.CancelledError()
    if server.readyz_fault == "unavailable":
        return web.Response(status=503, text="Service Unavailable", headers=TEXT_HEADERS)
    return None


async def handle(server, request: web.Request) -> web.StreamResponse:
    """``/readyz``, ``/livez``, ``/healthz`` (``?verbose``, ``?exclude=``)."""
    probe = request.path.strip("/")
    faulted = _faulted(server, request)
    if faulted:
        return faulted
    excluded = set(request.query.getall("exclude", []))
    verbose = "verbose" in request.query
    lines, failed = [], False
    for name, ok, _ in await checks(server, probe):
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


async def handle_check(server, request: web.Request) -> web.StreamResponse:
    """``/readyz/<check>`` (and livez, healthz): ``ok``, or the check's real error."""
    probe = request.path.strip("/").split("/", 1)[0]
    faulted = _faulted(server, request)
    if faulted:
        return faulted
    wanted = request.match_info["check"]
    for name, ok, err in await checks(server, probe):
        if name == wanted:
            if ok:
                return web.Response(text="ok", content_type="text/plain", charset="utf-8", headers=TEXT_HEADERS)
            return web.Response(status=500, text=f"internal server error: {err}\n", content_type="text/plain",
                                charset="utf-8", headers=TEXT_HEADERS)
    return web.Response(status=404, text="404 page not found\n", headers=TEXT_HEADERS)
