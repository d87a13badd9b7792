"""``pods/exec`` over SPDY/3.1, as the kubelet serves it to kubectl before 1.29 (e.g. Debian bookworm's 1.20).

The client asks ``Upgrade: SPDY/3.1`` with the stream protocols it speaks in ``X-Stream-Protocol-Version``
(``v4.channel.k8s.io``, ``v3``, ``v2``, ``channel.k8s.io``). The server answers ``101 Switching Protocols`` with
the first of them it supports, then both sides speak SPDY/3 framing on the raw (TLS) connection: the client
opens one stream per channel with SYN_STREAM frames whose header block names it (``streamtype``: ``error``,
``stdin``, ``stdout``, ``stderr``, ``resize``), the server answers each with SYN_REPLY, waits for the streams
the query asked for, runs the command, sends its output as DATA frames as it comes (TCP back-pressure, no
buffering), half-closes stdout/stderr (empty DATA with FIN), writes the exit Status on the error stream
(JSON Status in v4; the failure message, or nothing, before), half-closes it and sends GOAWAY. It then waits
briefly for the client to hang up: spdystream drops frames still queued when the connection closes under
it, so closing at once could lose the exit Status.

Header blocks are compressed with one zlib stream per direction for the whole connection, primed with the
SPDY/3 dictionary (draft 3, section 2.6.10.1), each block ended by a sync flush. PING from the client is
echoed; WINDOW_UPDATE and SETTINGS are read and ignored (kubectl's spdystream does no flow control and
grants no windows, so none is enforced here either); RST_STREAM closes a stream; GOAWAY is noted.

The framing is written by hand: there is no maintained Python SPDY server library (SPDY was superseded by
HTTP/2, and the old Python implementations are unmaintained), and the part kubectl uses is small. The
transport-independent part (checks, RBAC, faults, the process and its pumps) is shared with the WebSocket
protocols in :mod:`.execws`.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import zlib

from aiohttp import web

from ..execws import ERROR, STDERR, STDOUT, ExecRequest, ExecSession, error_payload

SPDY_PROTOCOLS = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")
VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
RST_PROTOCOL_ERROR, RST_INVALID_STREAM = 1, 2
GOAWAY_OK, GOAWAY_PROTOCOL_ERROR = 0, 1
STREAM_WAIT = 30.0  # the kubelet's stream creation timeout
CLOSE_WAIT = 5.0  # how long to wait for the client to hang up after GOAWAY
MAX_DATA = (1 << 24) - 1


def _dictionary() -> bytes:
    """The SPDY/3 header compression dictionary (draft 3, 2.6.10.1): length-prefixed words, then a raw tail."""
    words = ("options head post put delete trace accept accept-charset accept-encoding accept-language "
             "accept-ranges age allow authorization cache-control connection content-base content-encoding "
             "content-language content-length content-location content-md5 content-range content-type date etag "
             "expect expires from host if-match if-modified-since if-none-match if-range if-unmodified-since "
             "last-modified location max-forwards pragma proxy-authenticate proxy-authorization range referer "
             "retry-after server te trailer transfer-encoding upgrade user-agent vary via warning www-authenticate "
             "method get status").split() + ["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie",
                                             "keep-alive", "origin"]
    tail = ("100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
            "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
            "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
            "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
            "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
            "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.")
    out = b"".join(struct.pack(">I", len(w)) + w.encode() for w in words) + tail.encode()
    assert len(out) == 1423, len(out)
    return out


DICTIONARY = _dictionary()


def control_frame(ftype: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">HHI", 0x8000 | VERSION, ftype, (flags << 24) | len(payload)) + payload


def data_frame(stream_id: int, flags: int, data: bytes) -> bytes:
    return struct.pack(">II", stream_id & 0x7FFFFFFF, (flags << 24) | len(data)) + data


def encode_headers(headers: dict[str, str]) -> bytes:
    """An uncompressed SPDY/3 name/value header block (names lower case; several values joined by NUL)."""
    out = [struct.pack(">I", len(headers))]
    for name, value in headers.items():
        n, v = name.lower().encode(), value.encode()
        out += [struct.pack(">I", len(n)), n, struct.pack(">I", len(v)), v]
    return b"".join(out)


def decode_headers(block: bytes) -> dict[str, list[str]]:
    (count,), pos, out = struct.unpack_from(">I", block), 4, {}
    for _ in range(count):
        (n,) = struct.unpack_from(">I", block, pos)
        name = block[pos + 4:pos + 4 + n].decode()
        pos += 4 + n
        (v,) = struct.unpack_from(">I", block, pos)
        value = block[pos + 4:pos + 4 + v].decode()
        pos += 4 + v
        out.setdefault(name.lower(), []).extend(value.split("\0"))
    return out


def negotiate(request: web.Request) -> tuple[str | None, web.Response | None]:
    """The kubelet's ``httpstream.Handshake``: the first protocol the client lists that the server supports;
    none listed means the legacy ``channel.k8s.io``; no common one is a 403."""
    offered = [p.strip() for h in request.headers.getall("X-Stream-Protocol-Version", []) for p in h.split(",")
               if p.strip()]
    if not offered:
        return "channel.k8s.io", None
    for proto in offered:
        if proto in SPDY_PROTOCOLS:
            return proto, None
    text = (f"unable to upgrade: unable to negotiate protocol: client supports [{' '.join(offered)}], "
            f"server supports [{' '.join(SPDY_PROTOCOLS)}]\n")
    return None, web.Response(status=403, text=text, headers={
        "X-Accepted-Stream-Protocol-Versions": ", ".join(SPDY_PROTOCOLS)})


async def handle(server, request: web.Request, ex: ExecRequest) -> web.StreamResponse:
    proto, refused = negotiate(request)
    if refused is not None:
        return refused
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("Connection lost")
    session = SpdySession(server, request, proto, ex)
    resp = web.StreamResponse(status=101, headers={"Connection": "Upgrade", "Upgrade": "SPDY/3.1",
                                                   "X-Stream-Protocol-Version": proto})
    resp.force_close()
    # Frames from now on go to the session, not to aiohttp's HTTP parser (which upgrades only to WebSocket).
    # The client sends none before it has read the 101, so nothing can slip in between.
    request.protocol.set_parser(_FrameReader(session))
    await resp.prepare(request)
    try:
        if await session.wait_streams():
            await session.serve(ex)
    finally:
        session.close()
    return resp


class _FrameReader:
    """Cuts the byte stream into SPDY frames for the session (aiohttp's payload-parser interface)."""

    def __init__(self, session: SpdySession):
        self.session = session
        self.buf = bytearray()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.buf += data
        while len(self.buf) >= 8:
            length = int.from_bytes(self.buf[5:8], "big")
            if len(self.buf) < 8 + length:
                break
            head, payload = bytes(self.buf[:8]), bytes(self.buf[8:8 + length])
            del self.buf[:8 + length]
            self.session.on_frame(head, payload)
        return False, b""

    def feed_eof(self) -> None:
        self.session.on_eof()


class SpdySession(ExecSession):
    def __init__(self, server, request: web.Request, proto: str, ex: ExecRequest):
        super().__init__(server, proto, request.transport, ex.tty)
        self.protocol = request.protocol
        self.inflate = zlib.decompressobj(zdict=DICTIONARY)
        self.deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
        self.streams: dict[str, int] = {}  # streamtype -> stream id
        self.closed: set[int] = set()  # stream ids the server may no longer write to (FIN sent or reset)
        self.last_id = 0
        expected = {"error"}
        expected |= {name for name, wanted in (("stdin", ex.stdin), ("stdout", ex.stdout),
                                               ("stderr", ex.stderr and not ex.tty)) if wanted}
        self.expected = expected
        self.ready = asyncio.Event()
        self.stdin_pending: list[bytes] = []
        self.stdin_fin = False
        self.goaway = False
        self.eof = asyncio.Event()

    # -- writing ---------------------------------------------------------------------------------------------

    def _write(self, frame: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("Connection lost")
        transport.write(frame)

    async def _drain(self) -> None:
        await self.protocol._drain_helper()  # as aiohttp's own WebSocket writer waits for the socket

    def _control(self, ftype: int, flags: int, payload: bytes) -> None:
        with contextlib.suppress(ConnectionError):
            self._write(control_frame(ftype, flags, payload))

    def _header_block(self, headers: dict[str, str]) -> bytes:
        return self.deflate.compress(encode_headers(headers)) + self.deflate.flush(zlib.Z_SYNC_FLUSH)

    async def _data(self, stream: str, data: bytes, fin: bool = False) -> None:
        sid = self.streams.get(stream)
        if sid is None or sid in self.closed:
            return
        for i in range(0, max(len(data), 1), MAX_DATA):
            last = i + MAX_DATA >= len(data)
            self._write(data_frame(sid, FLAG_FIN if fin and last else 0, data[i:i + MAX_DATA]))
        if fin:
            self.closed.add(sid)
        await self._drain()

    # -- reading ---------------------------------------------------------------------------------------------

    def on_frame(self, head: bytes, payload: bytes) -> None:
        flags = head[4]
        if not head[0] & 0x80:
            self._on_data(int.from_bytes(head[:4], "big") & 0x7FFFFFFF, payload, bool(flags & FLAG_FIN))
            return
        version, ftype = struct.unpack_from(">HH", head)
        if version & 0x7FFF != VERSION:
            self._protocol_error()
            return
        try:
            if ftype == SYN_STREAM:
                sid = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                self._on_syn_stream(sid, flags, decode_headers(self.inflate.decompress(payload[10:])))
            elif ftype == HEADERS:  # keeps the shared zlib state in step; nothing in exec uses it
                self.inflate.decompress(payload[4:])
            elif ftype == RST_STREAM:
                self.closed.add(int.from_bytes(payload[:4], "big") & 0x7FFFFFFF)
            elif ftype == PING:
                if int.from_bytes(payload[:4], "big") & 1:  # client pings are odd; even ones would answer ours
                    self._control(PING, 0, payload[:4])
            elif ftype == GOAWAY:
                self.goaway = True
            # SETTINGS, WINDOW_UPDATE and anything else: read and ignored.
        except (zlib.error, struct.error, UnicodeDecodeError):
            self._protocol_error()

    def _on_syn_stream(self, sid: int, flags: int, headers: dict[str, list[str]]) -> None:
        if sid <= self.last_id or not sid & 1:
            self._control(RST_STREAM, 0, struct.pack(">II", sid, RST_PROTOCOL_ERROR))
            return
        self.last_id = sid
        kind = (headers.get("streamtype") or [""])[0]
        with contextlib.suppress(ConnectionError):
            self._write(control_frame(SYN_REPLY, 0, struct.pack(">I", sid) + self._header_block({})))
        if kind in ("error", "stdin", "stdout", "stderr", "resize") and kind not in self.streams:
            self.streams[kind] = sid
        if kind == "stdin" and flags & FLAG_FIN:
            self._stdin(b"", True)
        if self.expected <= self.streams.keys():
            self.ready.set()

    def _on_data(self, sid: int, data: bytes, fin: bool) -> None:
        if sid == self.streams.get("stdin"):
            self._stdin(data, fin)
        # error (the client half-closes it), resize (terminal sizes, no TTY here) and unknown streams: dropped

    def _stdin(self, data: bytes, fin: bool) -> None:
        if self.proc is None:
            if data:
                self.stdin_pending.append(data)
            self.stdin_fin = self.stdin_fin or fin
            return
        stdin = self.proc.stdin
        if stdin is None or stdin.is_closing():
            return
        if data:
            stdin.write(data)
        if fin:
            stdin.close()

    def started(self) -> None:
        pending, self.stdin_pending = b"".join(self.stdin_pending), []
        if pending or self.stdin_fin:
            self._stdin(pending, self.stdin_fin)

    def _protocol_error(self) -> None:
        self._control(GOAWAY, 0, struct.pack(">II", self.last_id, GOAWAY_PROTOCOL_ERROR))
        if self.transport is not None:
            self.transport.close()

    def on_eof(self) -> None:
        self.eof.set()
        self.client_gone.set()
        self.ready.set()

    # -- the session ----------------------------------------------------------------------------------------

    async def wait_streams(self) -> bool:
        """Wait for the streams the query asked for, as the kubelet does before it starts the command."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.ready.wait(), STREAM_WAIT)
        return not self.eof.is_set() and self.expected <= self.streams.keys()

    async def send(self, ch: int, data: bytes) -> None:
        await self._data({STDOUT: "stdout", STDERR: "stderr", ERROR: "error"}[ch], data)

    async def drain_client(self) -> None:
        await self.eof.wait()

    async def _read_client(self) -> None:
        await self.eof.wait()

    async def finish(self, status: dict | None) -> None:
        for stream in ("stdout", "stderr"):
            await self._data(stream, b"", fin=True)
        payload = error_payload(self.proto, status) if status is not None else None
        if payload:
            await self._data("error", payload)
        await self._data("error", b"", fin=True)
        self._write(control_frame(GOAWAY, 0, struct.pack(">II", self.last_id, GOAWAY_OK)))
        await self._drain()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.eof.wait(), CLOSE_WAIT)

    async def abort(self) -> None:
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

