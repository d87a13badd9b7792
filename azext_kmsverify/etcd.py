"""Read raw etcd key/values through ``etcdctl get`` run inside the etcd pod.

Pure and standard-library only: the exec transport is injected as ``run(argv) -> ExecResult``.
This module builds etcdctl argv, parses the three etcdctl output formats (``protobuf``, ``json``,
``fields``) into :class:`RangeResult`, and pages through a prefix at a pinned revision.

Values are secrets (possibly plaintext): nothing here puts value bytes into a repr, a log
message or an exception message.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from . import _protowire as pw
from ._gostrconv import go_unquote

DEFAULT_ENDPOINT = "https://127.0.0.1:2379"
# kubeadm layout inside the etcd pod (see storage-formats.md).
DEFAULT_CACERT = "/etc/kubernetes/pki/etcd/ca.crt"
DEFAULT_CERT = "/etc/kubernetes/pki/etcd/server.crt"
DEFAULT_KEY = "/etc/kubernetes/pki/etcd/server.key"
WRITE_OUT_FORMATS = ("protobuf", "json", "fields")
_SUMMARY_MAX = 300


@dataclass(repr=False)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0

    def __repr__(self) -> str:  # the value may be a plaintext secret: show its length only
        return (f"KeyValue(key={self.key!r}, value=<{len(self.value)} bytes>, "
                f"create_revision={self.create_revision}, mod_revision={self.mod_revision}, "
                f"version={self.version}, lease={self.lease})")

    __str__ = __repr__


@dataclass
class RangeResult:
    revision: int
    kvs: list[KeyValue] = field(default_factory=list)
    more: bool = False
    count: int = 0


@dataclass(repr=False)
class ExecResult:
    """What the injected ``run`` returns for one etcdctl exec."""

    returncode: int
    stdout: bytes
    stderr: bytes

    def __repr__(self) -> str:  # stdout holds values: never shown
        return (f"ExecResult(returncode={self.returncode}, stdout=<{len(self.stdout)} bytes>, "
                f"stderr={_stderr_text(self.stderr)[:_SUMMARY_MAX]!r})")

    __str__ = __repr__


class EtcdOutputError(ValueError):
    """etcdctl output that does not parse or is inconsistent (message never holds value bytes)."""


class EtcdctlError(Exception):
    """etcdctl exited non-zero. ``stderr_summary`` is etcdctl's own error line, never stdout."""

    def __init__(self, message: str, stderr_summary: str, returncode: int, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.stderr_summary = stderr_summary
        self.returncode = returncode
        self.hint = hint if hint is not None else explain_etcdctl_error(stderr_summary)

    def __str__(self) -> str:
        return self.message


# --------------------------------------------------------------------------- parsers


def _check_consistency(result: RangeResult, fmt: str) -> RangeResult:
    # Count is the size of the whole range and More says the limit cut it short. A response
    # truncated after its kvs loses more/count (they are encoded last), which shows up here.
    n = len(result.kvs)
    if n > result.count:
        raise EtcdOutputError(f"etcdctl {fmt} output has {n} key(s) but count {result.count}: truncated?")
    if result.more and n >= result.count:
        raise EtcdOutputError(f"etcdctl {fmt} output says more keys follow but count is {result.count}")
    return result


def parse_protobuf(data: bytes) -> RangeResult:
    """Parse ``etcdctl get -w protobuf`` output (a raw ``etcdserverpb.RangeResponse``)."""
    if not isinstance(data, bytes):
        data = bytes(data)
    if not data:
        raise EtcdOutputError("etcdctl protobuf output is empty")
    try:
        result = _parse_range_response(data)
    except pw.ProtoWireError as exc:
        message = f"etcdctl protobuf output does not parse: {exc}"
    else:
        return _check_consistency(result, "protobuf")
    raise EtcdOutputError(message)


def _parse_range_response(buf: bytes) -> RangeResult:
    iter_fields = pw.iter_fields
    to_int64 = pw.to_int64
    LEN, VARINT = pw.LEN, pw.VARINT
    revision = None
    kvs: list[KeyValue] = []
    more = False
    count = 0
    for number, wire_type, a, b in iter_fields(buf):
        if number == 2:
            if wire_type != LEN:
                raise pw.ProtoWireError(f"RangeResponse.kvs has wire type {wire_type}")
            key = value = b""
            create_rev = mod_rev = version = lease = 0
            for kn, kt, ka, kb in iter_fields(buf, a, b):
                if kn == 5 or kn == 1:
                    if kt != LEN:
                        raise pw.ProtoWireError(f"KeyValue field {kn} has wire type {kt}")
                    if kn == 5:
                        value = buf[ka:kb]
                    else:
                        key = buf[ka:kb]
                elif 2 <= kn <= 6:
                    if kt != VARINT:
                        raise pw.ProtoWireError(f"KeyValue field {kn} has wire type {kt}")
                    if kn == 2:
                        create_rev = to_int64(ka)
                    elif kn == 3:
                        mod_rev = to_int64(ka)
                    elif kn == 4:
                        version = to_int64(ka)
                    else:
                        lease = to_int64(ka)
            kvs.append(KeyValue(key, value, create_rev, mod_rev, version, lease))
        elif number == 1:
            if wire_type != LEN:
                raise pw.ProtoWireError(f"RangeResponse.header has wire type {wire_type}")
            revision = 0
            for hn, ht, ha, _hb in iter_fields(buf, a, b):
                if hn == 3:
                    if ht != VARINT:
                        raise pw.ProtoWireError(f"ResponseHeader.revision has wire type {ht}")
                    revision = to_int64(ha)
        elif number == 3 or number == 4:
            if wire_type != VARINT:
                raise pw.ProtoWireError(f"RangeResponse field {number} has wire type {wire_type}")
            if number == 3:
                more = a != 0
            else:
                count = to_int64(a)
    if revision is None:
        raise pw.ProtoWireError("RangeResponse has no header")
    return RangeResult(revision, kvs, more, count)


def _json_int(obj: dict, name: str, where: str) -> int:
    raw = obj.get(name, 0)
    # Go's encoding/json prints int64 as numbers; protojson would print strings. Accept both.
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise EtcdOutputError(f"etcdctl json output: {where}.{name} is not an integer")
    if isinstance(raw, str):
        if not re.fullmatch(r"-?[0-9]{1,20}", raw):
            raise EtcdOutputError(f"etcdctl json output: {where}.{name} is not an integer")
        raw = int(raw)
    return raw


def _b64(raw, what: str) -> bytes:
    if not isinstance(raw, str):
        raise EtcdOutputError(f"etcdctl json output: {what} is not a base64 string")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        pass  # raised below, outside the handler, so no exception chain carries the input
    raise EtcdOutputError(f"etcdctl json output: {what} is not valid base64")


def parse_json(data: bytes) -> RangeResult:
    """Parse ``etcdctl get -w json`` output (one line; base64 key/value; zero fields omitted)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not data or not bytes(data).strip():
        raise EtcdOutputError("etcdctl json output is empty")
    try:
        doc = json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError; both keep the input
        message = f"etcdctl json output does not parse ({type(exc).__name__} at offset {getattr(exc, 'pos', '?')})"
    else:
        message = None
    if message is not None:
        raise EtcdOutputError(message)
    if not isinstance(doc, dict) or not isinstance(doc.get("header"), dict):
        raise EtcdOutputError("etcdctl json output has no header object")
    revision = _json_int(doc["header"], "revision", "header")
    raw_kvs = doc.get("kvs", [])
    if not isinstance(raw_kvs, list):
        raise EtcdOutputError("etcdctl json output: kvs is not a list")
    kvs = []
    for i, item in enumerate(raw_kvs):
        where = f"kvs[{i}]"
        if not isinstance(item, dict) or "key" not in item:
            raise EtcdOutputError(f"etcdctl json output: {where} is not a key/value object")
        kvs.append(KeyValue(
            key=_b64(item["key"], f"{where}.key"),
            value=_b64(item.get("value", ""), f"{where}.value"),
            create_revision=_json_int(item, "create_revision", where),
            mod_revision=_json_int(item, "mod_revision", where),
            version=_json_int(item, "version", where),
            lease=_json_int(item, "lease", where),
        ))
    more = doc.get("more", False)
    if not isinstance(more, bool):
        raise EtcdOutputError("etcdctl json output: more is not a boolean")
    result = RangeResult(revision, kvs, more, _json_int(doc, "count", "response"))
    return _check_consistency(result, "json")


_FIELDS_LINE = re.compile(r'"([A-Za-z]+)" : (.*)')
_FIELDS_INT = re.compile(r"-?[0-9]{1,20}")
_KV_INT_FIELDS = {"CreateRevision": "create_revision", "ModRevision": "mod_revision",
                  "Version": "version", "Lease": "lease"}


def parse_fields(data: bytes) -> RangeResult:
    """Parse ``etcdctl get -w fields`` output (``"Name" : value`` lines; Key/Value Go-quoted)."""
    if not isinstance(data, bytes):
        data = bytes(data)
    if not data.strip():
        raise EtcdOutputError("etcdctl fields output is empty")
    try:
        text = data.decode("utf-8")  # %q escapes invalid UTF-8, so valid output always decodes
    except UnicodeDecodeError as exc:
        message = f"etcdctl fields output is not UTF-8 (byte offset {exc.start})"
    else:
        message = None
    if message is not None:
        raise EtcdOutputError(message)

    revision = None
    kvs: list[KeyValue] = []
    current: KeyValue | None = None
    more = None
    count = None
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.endswith("\r"):
            line = line[:-1]  # lossless: a CR inside a quoted value is always escaped
        if not line:
            continue
        m = _FIELDS_LINE.fullmatch(line)
        if m is None:
            raise EtcdOutputError(f"etcdctl fields output line {lineno} is not a '\"Name\" : value' line")
        name, raw = m.groups()
        if count is not None or (more is not None and (name in ("Key", "Value", "More") or name in _KV_INT_FIELDS)):
            raise EtcdOutputError(f"etcdctl fields output line {lineno}: {name} after More/Count")
        if name in ("Key", "Value"):
            try:
                decoded = go_unquote(raw)
            except ValueError as exc:
                message = f"etcdctl fields output line {lineno}: {name} is not a Go quoted string ({exc})"
            else:
                message = None
            if message is not None:
                raise EtcdOutputError(message)
            if name == "Key":
                current = KeyValue(decoded, b"")
                kvs.append(current)
            elif current is None:
                raise EtcdOutputError(f"etcdctl fields output line {lineno}: Value before any Key")
            else:
                current.value = decoded
        elif name == "More":
            if raw not in ("true", "false"):
                raise EtcdOutputError(f"etcdctl fields output line {lineno}: More is not true/false")
            more = raw == "true"
        else:
            if not _FIELDS_INT.fullmatch(raw):
                # Unknown fields from newer etcdctl releases are tolerated; known ones must be ints.
                if name in _KV_INT_FIELDS or name in ("Revision", "Count", "ClusterID", "MemberID", "RaftTerm"):
                    raise EtcdOutputError(f"etcdctl fields output line {lineno}: {name} is not an integer")
                continue
            number = int(raw)
            if name in _KV_INT_FIELDS:
                if current is None:
                    raise EtcdOutputError(f"etcdctl fields output line {lineno}: {name} before any Key")
                setattr(current, _KV_INT_FIELDS[name], number)
            elif name == "Revision":
                revision = number
            elif name == "Count":
                count = number
    if count is None:
        raise EtcdOutputError("etcdctl fields output has no Count line: truncated?")
    if revision is None:
        revision = 0  # etcdctl 3.6 omits a zero Revision
    return _check_consistency(RangeResult(revision, kvs, bool(more), count), "fields")


_PARSERS = {"protobuf": parse_protobuf, "json": parse_json, "fields": parse_fields}


def parse_output(data: bytes, write_out: str) -> RangeResult:
    """Parse etcdctl output of the given ``--write-out`` format."""
    try:
        parser = _PARSERS[write_out]
    except KeyError:
        raise ValueError(f"unsupported write_out {write_out!r}; expected one of {WRITE_OUT_FORMATS}") from None
    return parser(data)


# --------------------------------------------------------------------------- argv


def _check_key(name: str, key: str, *, allow_del: bool = False) -> None:
    if not isinstance(key, str):
        raise TypeError(f"{name} must be str, not {type(key).__name__}")
    if not key:
        raise ValueError(f"{name} must not be empty")
    if "\x00" in key:
        raise ValueError(f"{name} must not contain NUL (exec argv cannot carry it)")
    top = 0x7F if allow_del else 0x7E
    if not all(0x01 <= ord(c) <= top for c in key):
        # Kubernetes keys are ASCII; anything else would depend on how the exec layer encodes argv.
        raise ValueError(f"{name} must be ASCII")


def _check_arg(name: str, value: str) -> None:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ValueError(f"{name} must be a non-empty string without NUL")


def etcdctl_argv(*, key: str, range_end: str | None = None, prefix: bool = False, limit: int | None = None,
                 rev: int | None = None, keys_only: bool = False, write_out: str = "protobuf",
                 endpoint: str = DEFAULT_ENDPOINT, cacert: str | None, cert: str | None, key_file: str | None,
                 command_timeout: int | None = None, executable: str = "etcdctl") -> list[str]:
    """Build the argv of an ``etcdctl get`` for a direct exec (no shell, so no quoting).

    Global flags come before ``get``; the key (and range end) come after ``--`` so a key starting
    with '-' is never read as a flag (checked with etcdctl 3.4.23 and 3.5.1). ``--flag=value``
    forms throughout. ``cacert``/``cert``/``key_file`` set to None omit the flag (plain HTTP).
    """
    _check_key("key", key)
    if range_end is not None:
        _check_key("range_end", range_end, allow_del=True)
        if prefix:
            raise ValueError("range_end and prefix are mutually exclusive")
    if write_out not in WRITE_OUT_FORMATS:
        raise ValueError(f"unsupported write_out {write_out!r}; expected one of {WRITE_OUT_FORMATS}")
    for name, number in (("limit", limit), ("rev", rev), ("command_timeout", command_timeout)):
        if number is not None and (isinstance(number, bool) or not isinstance(number, int) or number < 1):
            raise ValueError(f"{name} must be a positive integer or None")
    _check_arg("executable", executable)
    _check_arg("endpoint", endpoint)

    argv = [executable, f"--endpoints={endpoint}"]
    for flag, path in (("--cacert", cacert), ("--cert", cert), ("--key", key_file)):
        if path is not None:
            _check_arg(flag, path)
            argv.append(f"{flag}={path}")
    if command_timeout is not None:
        argv.append(f"--command-timeout={command_timeout}s")
    argv += ["get", f"--write-out={write_out}"]
    if prefix:
        argv.append("--prefix")
    if limit is not None:
        argv.append(f"--limit={limit}")
    if rev is not None:
        argv.append(f"--rev={rev}")
    if keys_only:
        argv.append("--keys-only")
    argv += ["--", key]
    if range_end is not None:
        argv.append(range_end)
    return argv


def prefix_range_end(prefix: str) -> str:
    """etcd's range end for ``prefix``: drop trailing 0xff bytes, increment the last byte.

    Only ASCII prefixes are accepted (argv carries text); an empty prefix would need the
    range end "\\x00" (all keys), which argv cannot carry, so it is rejected.
    """
    _check_key("prefix", prefix)
    raw = bytearray(prefix.encode("ascii"))
    raw[-1] += 1  # keys are 0x01..0x7e, so this stays ASCII (at most 0x7f) and never carries
    return raw.decode("ascii")


# --------------------------------------------------------------------------- errors


def _stderr_text(stderr: bytes | str) -> str:
    if isinstance(stderr, (bytes, bytearray, memoryview)):
        return bytes(stderr).decode("utf-8", errors="replace")
    return stderr or ""


def _trim(text: str, limit: int = _SUMMARY_MAX) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def _json_log_error(line: str) -> str | None:
    """The ``error`` (or ``msg``) of an etcd client JSON log line, else None."""
    if not line.startswith("{"):
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or "level" not in entry:
        return None
    detail = entry.get("error") or entry.get("msg")
    return detail if isinstance(detail, str) else ""


def _innermost_grpc_desc(error: str) -> str:
    # "rpc error: code = X desc = ... desc = \"transport: ...\"": the last desc is the root cause.
    tail = error.rsplit("desc = ", 1)[-1].strip()
    return tail.strip('"')


def summarize_stderr(stderr: bytes | str) -> str:
    """The first meaningful line of etcdctl's stderr, trimmed to 300 characters.

    Prefers etcdctl's final ``Error: ...`` line; when that is the bare
    ``context deadline exceeded``, appends the root cause etcd 3.5's client logged before it
    (TLS or dial error), which is otherwise only in a JSON log line.
    """
    lines = [line.strip() for line in _stderr_text(stderr).splitlines() if line.strip()]
    log_errors = [e for e in (_json_log_error(line) for line in lines) if e]
    summary = next((line for line in lines if line.startswith("Error:")), None)
    if summary is None:
        summary = next((line for line in lines if _json_log_error(line) is None), None)
    if summary is None:
        summary = log_errors[0] if log_errors else ""
    elif "deadline exceeded" in summary and log_errors:
        cause = _innermost_grpc_desc(log_errors[-1])
        if cause and cause not in summary:
            summary = f"{summary} ({cause})"
    return _trim(summary)


_HINTS: list[tuple[re.Pattern, str]] = [
    (re.compile(r'executable file not found|exec: "[^"]*": stat |command not found|etcdctl: not found', re.I),
     "etcdctl was not found in the etcd container. Check the container name and that the image ships "
     "etcdctl (upstream and kubeadm etcd images do, at /usr/local/bin/etcdctl)."),
    (re.compile(r"open (\S+): no such file or directory", re.I),
     "A certificate or key file given to etcdctl does not exist in the etcd container ({0}). Check the "
     "certificate paths; kubeadm mounts them under /etc/kubernetes/pki/etcd/."),
    (re.compile(r"open (\S+): permission denied", re.I),
     "etcdctl cannot read {0} in the etcd container. Use a certificate and key readable by the "
     "container's user (kubeadm: /etc/kubernetes/pki/etcd/server.crt and server.key)."),
    (re.compile(r"x509: certificate signed by unknown authority", re.I),
     "etcd's serving certificate is not signed by the given CA. Pass the etcd CA "
     "(kubeadm: /etc/kubernetes/pki/etcd/ca.crt), not the cluster CA."),
    (re.compile(r"x509: ", re.I),
     "etcd's serving certificate failed verification (expired, or not valid for the endpoint). "
     "Use the endpoint the certificate names, normally https://127.0.0.1:2379 inside the pod."),
    (re.compile(r"tls: bad certificate|certificate required|authentication handshake failed|tls: ", re.I),
     "etcd rejected the TLS handshake: the client certificate is missing or not signed by the etcd CA. "
     "Use an etcd client certificate (kubeadm: server.crt/server.key or healthcheck-client.crt/.key)."),
    (re.compile(r"connection refused", re.I),
     "Nothing is listening on the etcd endpoint. Check the endpoint (https://127.0.0.1:2379 inside the "
     "pod) and that the etcd member is running."),
    (re.compile(r"required revision has been compacted", re.I),
     "etcd compacted the revision the scan was pinned to while it ran. Run the command again."),
    (re.compile(r"etcdserver: (permission denied|user name is empty|authentication failed|invalid auth token)",
                re.I),
     "etcd authentication is enabled and refused this client. Use a client certificate whose common name "
     "is an etcd user allowed to read the keys (the kubeadm server certificate is)."),
    (re.compile(r"unknown (shorthand )?flag", re.I),
     "This etcdctl does not support a flag that was passed. Check the etcdctl version in the etcd image."),
    (re.compile(r"no leader|leader changed|request timed out|too many requests", re.I),
     "The etcd cluster is unhealthy or busy. Check the etcd members and try again, or read from another "
     "member."),
    (re.compile(r"deadline ?exceeded|TransientFailure", re.I),
     "etcd did not answer in time: the endpoint is unreachable, the TLS handshake is failing (etcdctl 3.4 "
     "reports certificate problems only this way), or the member is overloaded. Check the endpoint and "
     "certificates, or raise the command timeout."),
]


def explain_etcdctl_error(stderr: str) -> str:
    """One-line cause and recommendation for a failed etcdctl run, from its stderr."""
    text = _stderr_text(stderr)
    for pattern, hint in _HINTS:
        m = pattern.search(text)
        if m:
            return hint.format(*(_trim(g, 120) for g in m.groups() if g)) if m.groups() else hint
    summary = summarize_stderr(text)
    return f"etcdctl failed: {summary}" if summary else "etcdctl failed without an error message."


# --------------------------------------------------------------------------- reader


class EtcdReader:
    """Reads keys through an injected ``run(argv) -> ExecResult`` that execs etcdctl in the etcd pod.

    After :meth:`iter_prefix` starts, ``revision`` is the revision the scan is pinned to and
    ``total`` the number of keys in the range at that revision (for progress).

    ``page_bytes`` keeps pages near that many bytes of keys and values: etcd pages by count only, and a page
    is held whole in memory (by etcdctl's output, then here), so a count alone gives pages of a few hundred
    kilobytes of small secrets or of gigabytes of Helm releases. With it, the first page is small
    (:data:`FIRST_PAGE_KEYS`), and each next page's limit is what the average key/value of the page before
    gives for ``page_bytes``, growing at most fourfold per page, never above ``page_size``.
    """

    def __init__(self, run: Callable[[list[str]], ExecResult], *, cacert: str | None = DEFAULT_CACERT,
                 cert: str | None = DEFAULT_CERT, key_file: str | None = DEFAULT_KEY,
                 endpoint: str = DEFAULT_ENDPOINT, command_timeout: int | None = None,
                 executable: str = "etcdctl", write_out: str = "protobuf", page_size: int = 1000,
                 page_bytes: int | None = None):
        if write_out not in WRITE_OUT_FORMATS:
            raise ValueError(f"unsupported write_out {write_out!r}; expected one of {WRITE_OUT_FORMATS}")
        _check_page_size(page_size)
        if page_bytes is not None:
            _check_page_size(page_bytes)
        self.page_bytes = page_bytes
        self._run = run
        self._common = {"cacert": cacert, "cert": cert, "key_file": key_file, "endpoint": endpoint,
                        "command_timeout": command_timeout, "executable": executable, "write_out": write_out}
        self.write_out = write_out
        self.page_size = page_size
        self.revision: int | None = None
        self.total: int | None = None

    def _range(self, **kwargs) -> RangeResult:
        argv = etcdctl_argv(**kwargs, **self._common)
        result = self._run(argv)
        if result.returncode != 0:
            summary = summarize_stderr(result.stderr)
            raise EtcdctlError(
                f"etcdctl exited with code {result.returncode}: {summary or 'no error message'}",
                summary, result.returncode, hint=explain_etcdctl_error(_stderr_text(result.stderr)))
        return parse_output(result.stdout, self.write_out)

    def get(self, key: str, *, rev: int | None = None) -> KeyValue | None:
        """The key/value stored at exactly ``key`` (at revision ``rev`` if given), or None."""
        return self._get(key, rev)[0]

    def _get(self, key: str, rev: int | None) -> tuple[KeyValue | None, int]:
        result = self._range(key=key, rev=rev)
        wanted = key.encode("ascii")
        found = [kv for kv in result.kvs if kv.key == wanted]
        if len(found) != len(result.kvs) or len(found) > 1:
            raise EtcdOutputError(f"etcdctl returned {len(result.kvs)} key(s) for a single-key get")
        return (found[0] if found else None), result.revision

    def get_many(self, keys: Iterable[str]) -> dict[str, KeyValue | None]:
        """Each key's value, all read at the revision of the first read (one etcdctl exec per key)."""
        out: dict[str, KeyValue | None] = {}
        rev = None
        for key in keys:
            kv, revision = self._get(key, rev)
            if rev is None:
                rev = revision
            out[key] = kv
        return out

    def iter_prefix(self, prefix: str, page_size: int | None = None, *, keys_only: bool = False
                    ) -> Iterator[KeyValue]:
        """Yield every key/value under ``prefix`` in key order, one page in memory at a time.

        The first page is read at the current revision R; later pages read ``[last key, range end)``
        pinned with ``--rev=R``, so the scan is one consistent snapshot. argv cannot carry the NUL
        that would make "just after the last key", so each later page starts AT the last key with
        ``--limit`` one higher and its first (already yielded) key is dropped.
        """
        page_size = self.page_size if page_size is None else page_size
        _check_page_size(page_size)
        range_end = prefix_range_end(prefix)
        self.revision = None
        self.total = None

        limit = page_size if self.page_bytes is None else min(page_size, FIRST_PAGE_KEYS)
        page = self._range(key=prefix, range_end=range_end, limit=limit, keys_only=keys_only)
        self.revision = page.revision
        self.total = page.count
        kvs, more = page.kvs, page.more
        del page
        while True:
            yield from kvs
            if not more:
                return
            if not kvs:
                raise EtcdOutputError("etcdctl reported more keys but returned an empty page")
            last = kvs[-1].key
            if self.page_bytes is not None:
                limit = _next_limit(kvs, limit, page_size, self.page_bytes)
            del kvs  # hold at most one page
            start = _argv_key(last)
            page = self._range(key=start, range_end=range_end, limit=limit + 1, rev=self.revision,
                               keys_only=keys_only)
            if not page.kvs or page.kvs[0].key != last:
                raise EtcdOutputError(
                    f"page at revision {self.revision} does not start at the previous page's last key")
            kvs, more = page.kvs[1:], page.more
            del page
            if not kvs and more:
                raise EtcdOutputError("etcdctl reported more keys but the page made no progress")


#: Keys in the first page when pages are sized by bytes: nothing is known of the values yet.
FIRST_PAGE_KEYS = 100


def _next_limit(kvs: list[KeyValue], limit: int, page_size: int, page_bytes: int) -> int:
    """The next page's key limit: ``page_bytes`` at this page's average key/value size, at most four times
    this page's limit (sizes change along the key space) and ``page_size``; at least one key."""
    size = sum(len(kv.key) + len(kv.value) for kv in kvs) / len(kvs)
    return max(1, min(page_size, 4 * limit, int(page_bytes / max(size, 1.0))))


def _check_page_size(page_size: int) -> None:
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise ValueError("page_size must be a positive integer")


def _argv_key(key: bytes) -> str:
    """A key etcd returned, as an argv string for the next page's start."""
    if not key or not all(0x01 <= b <= 0x7E for b in key):
        raise EtcdOutputError("cannot page past a key that is not printable ASCII (argv must carry it exactly)")
    return key.decode("ascii")
