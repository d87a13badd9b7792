"""``pods/exec`` over WebSocket, as kube-apiserver proxies it to the kubelet.

Channel protocols ``v5.channel.k8s.io`` and ``v4.channel.k8s.io`` (binary frames, first byte = channel: 0
stdin, 1 stdout, 2 stderr, 3 error Status, 4 resize; v5 adds ``0xFF <ch>``, with which the client closes its
stdin), and the legacy
``channel.k8s.io`` / ``base64.channel.k8s.io``. The command runs as a real subprocess (the etcd binaries of the
sandbox with the pod's paths mapped) and its output is streamed chunk by chunk with back-pressure, so scans of
very many secrets behave as over a real connection. The etcd image is distroless: any other executable fails
the way containerd reports it. Per-pod faults (``broken``, ``drop``, ``hang``) imitate a dead node, a cut
stream and a stuck one.

The transport-independent part (request checks, RBAC, the ``broken`` fault, the process and its output pumps)
is :func:`check_request` and :class:`ExecSession`; a request asking ``Upgrade: SPDY/3.1`` (kubectl before 1.29)
is served by :mod:`.execspdy` with the same session logic (:func:`tests.sandbox.pods.handle_exec` routes).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
from dataclasses import dataclass

from aiohttp import WSMsgType, web

from . import kube
from .kube import status_response
from .processes.proc import kill_quietly

EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io", "base64.channel.k8s.io")
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
CHUNK = 64 * 1024
FAULT_MODES = ("broken", "drop", "hang")


def _truthy(v: str | None) -> bool:
    return (v or "").lower() in ("1", "true", "yes")


def _go_list(argv: list[str]) -> str:
    """Go's ``%v`` of a []string, as the kubelet prints the command."""
    return "[" + " ".join(argv) + "]"


def exit_status(argv: list[str], code: int) -> dict:
    """The error-channel Status the kubelet sends when the command ends (v4/v5)."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: error executing command {_go_list(argv)}, "
                       f"exit code {code}",
            "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def missing_executable_status(exe: str) -> dict:
    """What containerd answers for an executable that is not in the (distroless) image."""
    if "/" in exe:
        why = f'exec: "{exe}": stat {exe}: no such file or directory'
    else:
        why = f'exec: "{exe}": executable file not found in $PATH'
    err = (f'error executing command in container: failed to exec in container: failed to start exec '
           f'"{secrets.token_hex(32)}": OCI runtime exec failed: exec failed: unable to start container process: '
           f'{why}: unknown')
    return {"metadata": {}, "status": "Failure", "message": f"Internal error occurred: {err}",
            "reason": "InternalError", "details": {"causes": [{"message": err}]}, "code": 500}


@dataclass
class ExecRequest:
    """A checked ``pods/exec`` request: what to run where, which streams the client asked for, the pod's fault."""
    pod: dict
    container: str
    argv: list[str]
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool
    fault: str | None


def check_request(server, request: web.Request) -> ExecRequest | web.Response:
    """Everything kube-apiserver and the kubelet answer before upgrading, whatever the stream protocol: RBAC,
    the pod, the container, the command, the streams, a dead node (``broken``). A Response is the answer."""
    ns, name = request.match_info["ns"], request.match_info["name"]
    denied = server._deny(request, "create", "pods", ns, name, "exec")
    if denied:
        return denied
    pod = server._find_pod(ns, name)
    if pod is None:
        return kube.not_found("pods", name)
    q = request.query
    containers = [c["name"] for c in pod["spec"]["containers"]]
    container = q.get("container")
    if not container:
        if len(containers) != 1:
            return kube.bad_request(f"a container name must be specified for pod {name}, choose one of: "
                                    f"[{' '.join(containers)}]")
        container = containers[0]
    if container not in containers:
        return kube.bad_request(f"container {container} is not valid for pod {name}")
    argv = q.getall("command", [])
    if not argv:
        return kube.bad_request("you must specify at least 1 command")
    want_stdin, want_stdout, want_stderr, tty = (_truthy(q.get(k)) for k in ("stdin", "stdout", "stderr", "tty"))
    if not (want_stdin or want_stdout or want_stderr):
        return kube.bad_request("you must specify at least 1 of stdin, stdout, stderr")
    fault = server.exec_faults.get(name)
    if fault == "broken":
        ip = pod["status"].get("hostIP", "192.0.2.10")
        # No reason: ErrorToAPIStatus of a plain dial error (kubectl prints "Error from server: error dialing ...").
        return status_response(500, "", f"error dialing backend: dial tcp {ip}:10250: connect: connection refused")
    return ExecRequest(pod, container, argv, want_stdin, want_stdout, want_stderr, tty, fault)


def error_payload(proto: str, status: dict) -> bytes | None:
    """What goes on the error stream/channel when the command ends: the Status (v4/v5), else its message for
    a failure and nothing for success (the v1-v3 protocols)."""
    if proto in ("v5.channel.k8s.io", "v4.channel.k8s.io"):
        return kube.dumps(status).encode()
    if status.get("status") != "Success":
        return status.get("message", "").encode()
    return None


async def handle(server, request: web.Request, checked: ExecRequest) -> web.StreamResponse:
    """Serve a checked exec request that asked ``Upgrade: websocket``."""
    ws = web.WebSocketResponse(protocols=EXEC_PROTOCOLS, compress=False, max_msg_size=0, autoping=True)
    await ws.prepare(request)
    session = _WsSession(server, ws, ws.ws_protocol or "channel.k8s.io", request.transport, checked.tty)
    await session.serve(checked)
    return ws


class ExecSession:
    """The in-pod process behind one exec connection, whatever carries its streams. Subclasses send a
    channel's bytes (:meth:`send`), end the exchange with the exit Status (:meth:`finish`), watch the client
    (:meth:`_read_client`, which sets ``client_gone``; :meth:`drain_client` for the ``hang`` fault) and tear
    the connection down after an error (:meth:`abort`)."""

    def __init__(self, server, proto: str, transport, tty: bool):
        self.server = server
        self.proto = proto
        self.transport = transport
        self.tty = tty
        self.proc = None
        self.client_gone = asyncio.Event()

    async def send(self, ch: int, data: bytes) -> None:
        raise NotImplementedError

    async def finish(self, status: dict | None) -> None:
        raise NotImplementedError

    async def drain_client(self) -> None:
        raise NotImplementedError

    async def _read_client(self) -> None:
        raise NotImplementedError

    async def abort(self) -> None:
        raise NotImplementedError

    def started(self) -> None:
        """The process is running (its stdin, if any, can be written)."""

    async def serve(self, ex: ExecRequest) -> None:
        try:
            if ex.fault == "hang":
                await self.drain_client()
                return
            mapped, env = self.server.map_exec(ex.pod, ex.argv)
            if mapped is None:
                await self.finish(missing_executable_status(ex.argv[0]))
                return
            await self.run(ex.argv, mapped, env, ex.stdin, drop=(ex.fault == "drop"))
        except ConnectionError:
            self.kill()
            with contextlib.suppress(Exception):
                await self.abort()
        except asyncio.CancelledError:
            self.kill()
            raise

    def kill(self) -> None:
        kill_quietly(self.proc)

    async def run(self, argv: list[str], mapped: list[str], env: dict, want_stdin: bool, drop: bool) -> None:
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *mapped, stdin=asyncio.subprocess.PIPE if want_stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT if self.tty else asyncio.subprocess.PIPE,
                env=env, cwd="/", start_new_session=True)
        except OSError:
            await self.finish(missing_executable_status(argv[0]))
            return
        self.server.exec_procs.add(self.proc)
        self.started()
        reader = asyncio.ensure_future(self._read_client())
        try:
            pumps = [self._pump(self.proc.stdout, STDOUT, drop)]
            if not self.tty:
                pumps.append(self._pump(self.proc.stderr, STDERR, False))
            done = asyncio.ensure_future(asyncio.gather(*pumps))
            gone = asyncio.ensure_future(self.client_gone.wait())
            await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not done.done():  # the client went away mid-stream
                self.kill()
                done.cancel()
                with contextlib.suppress(BaseException):
                    await done
                return
            gone.cancel()
            done.result()
            rc = await self.proc.wait()
            code = 128 - rc if rc < 0 else rc
            await self.finish(exit_status(argv, code))
        except _Dropped:
            return
        finally:
            self.kill()
            if self.proc.returncode is None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.proc.wait(), 5)
            self.server.exec_procs.discard(self.proc)
            reader.cancel()

    async def _pump(self, stream, ch: int, drop: bool) -> None:
        while True:
            data = await stream.read(CHUNK)
            if not data:
                return
            if self.tty:
                data = data.replace(b"\n", b"\r\n")
            if drop:
                # Part of the output, then the TCP connection goes away: no error frame, no close frame.
                await self.send(ch, data[:max(1, len(data) // 2)])
                await asyncio.sleep(0.05)
                self.kill()
                if self.transport is not None:
                    self.transport.abort()
                raise _Dropped()
            await self.send(ch, data)


class _WsSession(ExecSession):
    """The WebSocket channel protocols: one binary (or base64 text) frame per chunk, channel in the first byte."""

    def __init__(self, server, ws: web.WebSocketResponse, proto: str, transport, tty: bool):
        super().__init__(server, proto, transport, tty)
        self.ws = ws

    async def send(self, ch: int, data: bytes) -> None:
        if self.proto == "base64.channel.k8s.io":
            await self.ws.send_str(str(ch) + base64.b64encode(data).decode())
        else:
            await self.ws.send_bytes(bytes([ch]) + data)

    async def drain_client(self) -> None:
        """Read (and drop) what the client sends until it goes away: the ``hang`` fault."""
        async for _ in self.ws:
            pass

    async def finish(self, status: dict | None) -> None:
        """Send the exit Status and close the WebSocket. No v5 ``0xFF <ch>`` frames towards the client: the
        apiserver sends none (kubectl 1.32 logs "Unknown stream id 255" for each), it only accepts the client's."""
        if status is not None:
            payload = error_payload(self.proto, status)
            if payload is not None:
                await self.send(ERROR, payload)
        await self.ws.close()

    async def abort(self) -> None:
        if not self.ws.closed:
            await self.ws.close()

    async def _read_client(self) -> None:
        """stdin frames to the process; v5 ``0xFF 0`` closes its stdin; a closed WebSocket kills it."""
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.BINARY:
                    data = msg.data
                elif msg.type == WSMsgType.TEXT and self.proto == "base64.channel.k8s.io":
                    data = bytes([int(msg.data[:1] or "0")]) + base64.b64decode(msg.data[1:])
                else:
                    continue
                if not data:
                    continue
                stdin = self.proc.stdin if self.proc else None
                if data[0] == CLOSE and data[1:2] == bytes([STDIN]) and stdin:
                    stdin.close()
                elif data[0] == STDIN and stdin and not stdin.is_closing():
                    stdin.write(data[1:])
                    with contextlib.suppress(ConnectionError):
                        await stdin.drain()
        finally:
            self.client_gone.set()


class _Dropped(Exception):
    pass
