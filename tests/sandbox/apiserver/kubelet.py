"""A kubelet-shaped streaming endpoint for the real kube-apiserver's ``pods/exec``.

kube-apiserver proxies ``pods/exec`` to the kubelet of the pod's node (the Node's ``InternalIP`` and
``daemonEndpoints.kubeletEndpoint.Port``): ``/exec/{namespace}/{pod}/{container}?command=...&input=1&output=1&
error=1&tty=0``, authenticated with its ``--kubelet-client-certificate``. From 1.30 (1.29 with the
``TranslateStreamCloseWebsocketRequests`` gate) it translates a client's WebSocket to SPDY towards the kubelet; a
WebSocket that reaches this endpoint is served too (the kubelet's own WebSocket support). The in-pod argv runs on
the host as the emulator runs it (:func:`.pods.map_exec`: the real etcdctl with the node's pki directory), through
the same stream code (:mod:`.execspdy`, :mod:`.execws`). ``server`` is an :class:`.apiserver.APIServer`: its pods
(the same as the mirror pods in the real server), exec faults and exec processes.
"""

from __future__ import annotations

from aiohttp import web

from . import execspdy
from .. import execws
from ..execws import ExecRequest


def _flag(v: str | None) -> bool:
    return (v or "").lower() in ("1", "true")


class Kubelet:
    def __init__(self, server):
        self.server = server

    def app(self) -> web.Application:
        app = web.Application()
        for method in ("GET", "POST"):
            app.router.add_route(method, "/exec/{ns}/{name}/{container}", self.h_exec)
        return app

    async def h_exec(self, request: web.Request) -> web.StreamResponse:
        ns, name, container = (request.match_info[k] for k in ("ns", "name", "container"))
        pod = self.server._find_pod(ns, name)
        if pod is None or container not in [c["name"] for c in pod["spec"]["containers"]]:
            return web.Response(status=404, text=f'container "{container}" in pod "{name}" not found\n')
        q = request.query
        argv = q.getall("command", [])
        if not argv:
            return web.Response(status=400, text="you must specify at least 1 command\n")
        ex = ExecRequest(pod, container, argv, _flag(q.get("input")), _flag(q.get("output")),
                         _flag(q.get("error")), _flag(q.get("tty")), self.server.exec_faults.get(name))
        upgrade = request.headers.get("Upgrade", "").lower()
        if upgrade.startswith("spdy/"):
            return await execspdy.handle(self.server, request, ex)
        if upgrade == "websocket":
            return await execws.handle(self.server, request, ex)
        return web.Response(status=400, text="Upgrade request required\n")
