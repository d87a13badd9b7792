"""A local TCP load balancer in front of several real kube-apiservers (``up --apiservers N``).

Plain TCP pass-through, round robin per connection, as a layer-4 load balancer (kube-vip, HAProxy in TCP mode)
fronts an HA control plane: TLS runs end to end between the client and the kube-apiserver that got the connection,
so the kubeconfig's CA and client certificates work unchanged. A backend that refuses the connection is skipped
(the next one is tried); no health checks. Every connection is logged with the backend it went to.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket

log = logging.getLogger("sandbox.lb")


class LoadBalancer:
    def __init__(self, sock: socket.socket, backends: list[int]):
        self.sock, self.backends = sock, list(backends)
        self._next = itertools.cycle(range(len(self.backends)))
        self.connections = [0] * len(self.backends)  # per backend, since start
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, sock=self.sock)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _connect(self):
        for _ in range(len(self.backends)):
            i = next(self._next)
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.backends[i])
            except OSError:
                continue
            self.connections[i] += 1
            return i, reader, writer
        return None, None, None

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        i, up_r, up_w = await self._connect()
        if i is None:
            log.info("lb: no backend accepts the connection")
            client_w.close()
            return
        log.info("lb: connection %s -> kube-apiserver %s (port %s)", sum(self.connections), i + 1, self.backends[i])

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    if dst.can_write_eof():
                        dst.write_eof()

        try:
            await asyncio.gather(pipe(client_r, up_w), pipe(up_r, client_w))
        finally:
            for w in (client_w, up_w):
                with contextlib.suppress(Exception):
                    w.close()
