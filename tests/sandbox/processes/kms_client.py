"""The API server's side of the KMS plugin gRPC calls (what kube-apiserver's envelope transformers do).

Errors read like kube-apiserver's, because the product shows them to operators (through ``/readyz/<check>``):
gRPC failures are rendered as Go's ``status.Error`` prints them (``rpc error: code = Unavailable desc = ...``),
and a dead socket reads exactly as grpc-go reports it:
``rpc error: code = Unavailable desc = connection error: desc = "transport: Error while dialing: dial unix
<path>: connect: connection refused"`` (or ``no such file or directory`` once the socket file is gone).
:meth:`KMSClient.health_check` adds the apiserver's health-check wording around that.

Calls time out after 2 s. After a failed connection the channel is rebuilt, so a restarted plugin is reached
on the next call instead of after gRPC's reconnect backoff. The client is thread-safe and synchronous
(call it via ``asyncio.to_thread`` from an event loop).
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import uuid

import grpc

from . import protos

TIMEOUT = 2.0
V1_API_VERSION = "v1beta1"
V2_VERSIONS = ("v2", "v2beta1")

# grpc-go's codes.Code String() names.
_GO_CODE = {
    "OK": "OK", "CANCELLED": "Canceled", "UNKNOWN": "Unknown", "INVALID_ARGUMENT": "InvalidArgument",
    "DEADLINE_EXCEEDED": "DeadlineExceeded", "NOT_FOUND": "NotFound", "ALREADY_EXISTS": "AlreadyExists",
    "PERMISSION_DENIED": "PermissionDenied", "RESOURCE_EXHAUSTED": "ResourceExhausted",
    "FAILED_PRECONDITION": "FailedPrecondition", "ABORTED": "Aborted", "OUT_OF_RANGE": "OutOfRange",
    "UNIMPLEMENTED": "Unimplemented", "INTERNAL": "Internal", "UNAVAILABLE": "Unavailable",
    "DATA_LOSS": "DataLoss", "UNAUTHENTICATED": "Unauthenticated",
}

# The syscall error strings Go prints (syscall.Errno.Error()).
_GO_ERRNO = {
    errno.ECONNREFUSED: "connection refused", errno.ENOENT: "no such file or directory",
    errno.EACCES: "permission denied", errno.ENOTSOCK: "socket operation on non-socket",
    errno.ETIMEDOUT: "connection timed out",
}


class KMSError(Exception):
    """A failed KMS call; ``str()`` is the apiserver-style message, ``code`` the Go gRPC code name."""

    def __init__(self, message: str, code: str = "Unknown"):
        super().__init__(message)
        self.code = code


class KMSClient:
    """``KMSClient(socket_path, api)`` with ``api`` ``"v1"`` (v1beta1 service) or ``"v2"``."""

    def __init__(self, socket_path, api: str, timeout: float = TIMEOUT):
        if api not in ("v1", "v2"):
            raise ValueError(f"api must be v1 or v2, not {api!r}")
        self.socket_path = str(socket_path)
        self.api = api
        self.timeout = timeout
        self._pb2, self._grpc = protos.load(api)
        self._lock = threading.Lock()
        self._channel = None
        self._stub = None
        self._version_checked = False

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _get_stub(self):
        with self._lock:
            if self._stub is None:
                self._channel = grpc.insecure_channel(f"unix:{self.socket_path}", options=[
                    ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000), ("grpc.enable_retries", 0)])
                self._stub = self._grpc.KeyManagementServiceStub(self._channel)
            return self._stub

    def _reset(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = self._stub = None
            # _version_checked survives: kube-apiserver checks the v1 version once per process, not per dial.

    def close(self) -> None:
        self._reset()

    def _call(self, method: str, request):
        """One RPC; on a connection failure rebuild the channel and try once more, then raise KMSError."""
        for attempt in (1, 2):
            try:
                return getattr(self._get_stub(), method)(request, timeout=self.timeout)
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
                if code == grpc.StatusCode.UNAVAILABLE:
                    self._reset()
                    if attempt == 1:
                        continue
                raise KMSError(self._go_error(e), _GO_CODE.get(code.name, "Unknown")) from None

    def _go_error(self, e: grpc.RpcError) -> str:
        code = e.code()
        name = _GO_CODE.get(code.name, "Unknown")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return "rpc error: code = DeadlineExceeded desc = context deadline exceeded"
        if code == grpc.StatusCode.UNAVAILABLE:
            dial = self._dial_error()
            if dial:
                return ("rpc error: code = Unavailable desc = connection error: desc = "
                        f'"transport: Error while dialing: dial unix {self.socket_path}: connect: {dial}"')
        return f"rpc error: code = {name} desc = {e.details() or ''}"

    def _dial_error(self) -> str | None:
        """What ``connect(2)`` on the socket says now, in Go's words; None if it connects."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.socket_path)
            return None
        except OSError as err:
            return _GO_ERRNO.get(err.errno, os.strerror(err.errno or 0).lower())
        finally:
            s.close()

    def _check_v1_version(self) -> None:
        """kube-apiserver checks the v1 plugin's API version once, before its first Encrypt/Decrypt."""
        if self._version_checked:
            return
        try:
            version = self.version()
        except KMSError as e:
            raise KMSError(f"failed get version from remote KMS provider: {e}", e.code) from None
        if version != V1_API_VERSION:
            raise KMSError(f"KMS provider api version {version} is not supported, only {V1_API_VERSION} is "
                           "supported now", "Unknown")
        self._version_checked = True

    # -- API ----------------------------------------------------------------------------------------------------

    def version(self) -> str:
        """v1 only: the plugin's API version (``v1beta1``)."""
        if self.api != "v1":
            raise ValueError("Version is a KMS v1 call; use status() for v2")
        return self._call("Version", self._pb2.VersionRequest(version=V1_API_VERSION)).version

    def status(self):
        """v2 only: the StatusResponse (``version``, ``healthz``, ``key_id``)."""
        if self.api != "v2":
            raise ValueError("Status is a KMS v2 call")
        return self._call("Status", self._pb2.StatusRequest())

    def key_id(self) -> str:
        """The plugin's current key id (v2 Status); v1 has no key id, so ``""``."""
        return self.status().key_id if self.api == "v2" else ""

    def encrypt(self, plain: bytes, uid: str | None = None) -> tuple[bytes, str, dict[str, bytes]]:
        """``(cipher, key_id, annotations)``; v1 answers only the cipher (key_id ``""``, no annotations)."""
        uid = uid or str(uuid.uuid4())
        if self.api == "v1":
            self._check_v1_version()
            resp = self._call("Encrypt", self._pb2.EncryptRequest(version=V1_API_VERSION, plain=plain))
            return resp.cipher, "", {}
        resp = self._call("Encrypt", self._pb2.EncryptRequest(plaintext=plain, uid=uid))
        return resp.ciphertext, resp.key_id, dict(resp.annotations)

    def decrypt(self, cipher: bytes, key_id: str = "", annotations: dict[str, bytes] | None = None,
                uid: str | None = None) -> bytes:
        uid = uid or str(uuid.uuid4())
        if self.api == "v1":
            self._check_v1_version()
            return self._call("Decrypt", self._pb2.DecryptRequest(version=V1_API_VERSION, cipher=cipher)).plain
        req = self._pb2.DecryptRequest(ciphertext=cipher, uid=uid, key_id=key_id, annotations=annotations or {})
        return self._call("Decrypt", req).plaintext

    def health(self) -> tuple[bool, str | None]:
        """``(ok, error)`` as the apiserver's probe sees the plugin: v2 Status must answer ``healthz == "ok"``
        with version v2 and a key id; v1 must answer Version and an Encrypt/Decrypt round trip of ``ping``."""
        ok, err, _ = self._probe()
        return ok, err

    def health_check(self, provider_name: str) -> tuple[bool, str | None]:
        """``(ok, message)`` with the apiserver's wording for the ``kms-provider-N`` check, e.g. ``failed to
        perform status section of the healthz check for KMS Provider kms-plugin, error: rpc error: ...``."""
        ok, err, section = self._probe()
        if ok:
            return True, None
        if section is None:  # answered, but not healthy: the apiserver reports the reason bare
            return False, err
        return False, (f"failed to perform {section} section of the healthz check for KMS Provider "
                       f"{provider_name}, error: {err}")

    def _probe(self) -> tuple[bool, str | None, str | None]:
        if self.api == "v2":
            try:
                resp = self.status()
            except KMSError as e:
                return False, str(e), "status"
            errs = []
            if resp.healthz != "ok":
                errs.append(f"got unexpected healthz status: {resp.healthz}")
            if resp.version not in V2_VERSIONS:
                errs.append(f"expected KMSv2 API version v2, got {resp.version}")
            if not resp.key_id:
                errs.append('got invalid KMSv2 KeyID hash "": keyID is empty')
            if errs:
                return False, errs[0] if len(errs) == 1 else "[" + ", ".join(errs) + "]", None
            return True, None, None
        try:
            cipher, _, _ = self.encrypt(b"ping")
        except KMSError as e:
            return False, str(e), "encrypt"
        try:
            if self.decrypt(cipher) != b"ping":
                return False, "decrypted ping does not match", "decrypt"
        except KMSError as e:
            return False, str(e), "decrypt"
        return True, None, None
