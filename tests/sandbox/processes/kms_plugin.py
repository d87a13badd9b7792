"""A KMS plugin for the sandbox: a separate process serving the real KMS gRPC API on a unix socket.

    python -m tests.sandbox.processes.kms_plugin --socket PATH --api v1|v2 --state FILE [--provider-name NAME]

kube-apiserver reaches its KMS plugin over ``unix://`` gRPC (v1beta1 ``KeyManagementService`` for KMS v1, v2
``KeyManagementService`` for KMS v2); this process speaks exactly those services, so the apiserver emulator's
client code, and the failure modes the product must report (plugin down, unhealthy, rotated), are real.

Keys: one key-encryption key (KEK, 32 random bytes) per key id (``key-0001``, ``key-0002``, ...), persisted in
the JSON state file ``{"current": id, "keys": {id: base64}, "healthz": "ok"}`` so a restarted plugin can still
decrypt everything it ever encrypted. Ciphertext is ``b"sbx1" | len(key id) | key id | 12-byte nonce |
AES-256-GCM(KEK, plaintext, aad=key id)``: it names its KEK, so v1 (which has no key id on the wire) decrypts
after rotation too. v2 Encrypt returns the key id and the annotation ``version.encryption.remote.io: 1`` (as
the upstream mock plugin); Status returns ``healthz`` from the state file (``"ok"`` unless a test set it
otherwise with :func:`set_healthz`) and the current key id.

Rotation: SIGHUP makes a new current key (old ones stay for Decrypt); the state file is also re-read whenever
its mtime changes, so :func:`rotate_state` from another process works with or without the plugin running.
A pid file ``<socket>.pid`` is written once the socket listens; SIGTERM/SIGINT stop cleanly and remove the
socket and the pid file.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import protos
from .proc import kill_process, read_pid_file, remove, spawn_python, terminate, wait_ready, write_pid_file

MAGIC = b"sbx1"
ANNOTATIONS = {"version.encryption.remote.io": b"1"}
RUNTIME_NAME = "kmsverify-sandbox-kms"
RUNTIME_VERSION = "0.1.0"


# --- key state --------------------------------------------------------------------------------------------


@contextmanager
def _locked(state_path: Path):
    """Serialize state-file read-modify-write between the plugin and control processes."""
    lock_path = Path(str(state_path) + ".lock")
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _write_state(path: Path, state: dict) -> None:
    """Atomic replace, 0600: the file holds key material."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _new_key_id(state: dict) -> str:
    n = max((int(k.rsplit("-", 1)[1]) for k in state["keys"]), default=0) + 1
    return f"key-{n:04d}"


def _add_key(state: dict) -> str:
    key_id = _new_key_id(state)
    state["keys"][key_id] = base64.b64encode(AESGCM.generate_key(256)).decode()
    state["current"] = key_id
    return key_id


def ensure_state(state_path: Path) -> dict:
    """Load the state file, creating it with ``key-0001`` if absent."""
    state_path = Path(state_path)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(state_path):
        state = _read_state(state_path)
        if state is None:
            state = {"keys": {}, "healthz": "ok"}
            _add_key(state)
            _write_state(state_path, state)
        return state


def rotate_state(state_path: Path) -> str:
    """Make a new current KEK in the state file; return its key id. A running plugin picks it up on its next
    call (mtime check); send it SIGHUP instead to have the plugin rotate itself."""
    ensure_state(state_path)
    with _locked(state_path):
        state = _read_state(state_path)
        key_id = _add_key(state)
        _write_state(state_path, state)
        return key_id


def set_healthz(state_path: Path, value: str = "ok") -> None:
    """Fault injection: what v2 Status reports as ``healthz`` (anything but ``ok`` fails the apiserver's check)."""
    ensure_state(state_path)
    with _locked(state_path):
        state = _read_state(state_path)
        state["healthz"] = value
        _write_state(state_path, state)


def current_key_id(state_path: Path) -> str:
    return ensure_state(state_path)["current"]


class KeyStore:
    """The plugin's view of the state file, re-read when its mtime changes."""

    def __init__(self, state_path: Path):
        self.path = Path(state_path)
        self._lock = threading.Lock()
        self._mtime = None
        self._state = ensure_state(self.path)
        self._mtime = self._stat()

    def _stat(self):
        try:
            st = self.path.stat()
            return (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            return None

    def refresh(self) -> dict:
        with self._lock:
            mtime = self._stat()
            if mtime != self._mtime:
                self._state = ensure_state(self.path)
                self._mtime = self._stat()
            return self._state

    def rotate(self) -> str:
        with self._lock:
            key_id = rotate_state(self.path)
            self._state = _read_state(self.path)
            self._mtime = self._stat()
            return key_id

    def encrypt(self, plain: bytes) -> tuple[bytes, str]:
        state = self.refresh()
        key_id = state["current"]
        kek = base64.b64decode(state["keys"][key_id])
        nonce = os.urandom(12)
        kid = key_id.encode()
        ct = AESGCM(kek).encrypt(nonce, plain, kid)
        return MAGIC + bytes([len(kid)]) + kid + nonce + ct, key_id

    def decrypt(self, cipher: bytes) -> tuple[bytes, str]:
        if not cipher.startswith(MAGIC) or len(cipher) < len(MAGIC) + 1:
            raise ValueError("ciphertext was not produced by this plugin")
        n = cipher[len(MAGIC)]
        start = len(MAGIC) + 1
        kid = cipher[start:start + n]
        nonce = cipher[start + n:start + n + 12]
        key_id = kid.decode()
        state = self.refresh()
        if key_id not in state["keys"]:
            raise LookupError(f"unknown key id {key_id!r}")
        kek = base64.b64decode(state["keys"][key_id])
        return AESGCM(kek).decrypt(nonce, cipher[start + n + 12:], kid), key_id


# --- gRPC services ----------------------------------------------------------------------------------------


def _servicer_v1(keys: KeyStore):
    pb2, pb2_grpc = protos.load("v1")

    class Servicer(pb2_grpc.KeyManagementServiceServicer):
        def Version(self, request, context):
            return pb2.VersionResponse(version="v1beta1", runtime_name=RUNTIME_NAME, runtime_version=RUNTIME_VERSION)

        def Encrypt(self, request, context):
            cipher, _ = keys.encrypt(request.plain)
            return pb2.EncryptResponse(cipher=cipher)

        def Decrypt(self, request, context):
            try:
                plain, _ = keys.decrypt(request.cipher)
            except Exception as e:  # every failure is reported to the caller as gRPC status
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"failed to decrypt: {e}")
            return pb2.DecryptResponse(plain=plain)

    return Servicer(), pb2_grpc.add_KeyManagementServiceServicer_to_server


def _servicer_v2(keys: KeyStore):
    pb2, pb2_grpc = protos.load("v2")

    class Servicer(pb2_grpc.KeyManagementServiceServicer):
        def Status(self, request, context):
            state = keys.refresh()
            return pb2.StatusResponse(version="v2", healthz=state.get("healthz", "ok"), key_id=state["current"])

        def Encrypt(self, request, context):
            cipher, key_id = keys.encrypt(request.plaintext)
            return pb2.EncryptResponse(ciphertext=cipher, key_id=key_id, annotations=ANNOTATIONS)

        def Decrypt(self, request, context):
            try:
                plain, key_id = keys.decrypt(request.ciphertext)
            except Exception as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"failed to decrypt: {e}")
            if request.key_id and request.key_id != key_id:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"key id mismatch: request has {request.key_id!r}, ciphertext has {key_id!r}")
            return pb2.DecryptResponse(plaintext=plain)

    return Servicer(), pb2_grpc.add_KeyManagementServiceServicer_to_server


def pid_file_for(socket_path) -> Path:
    return Path(str(socket_path) + ".pid")


def serve(socket_path: str, api: str, state_path: str, provider_name: str = "kms-plugin") -> None:
    """Run the plugin in this process until SIGTERM/SIGINT."""
    keys = KeyStore(Path(state_path))
    servicer, add = (_servicer_v1 if api == "v1" else _servicer_v2)(keys)
    sock = Path(socket_path)
    sock.parent.mkdir(parents=True, exist_ok=True)
    remove(sock)  # stale socket of a killed plugin
    wake = threading.Event()
    flags = {"stop": False, "hups": 0}

    def on_term(signum, frame):
        flags["stop"] = True
        wake.set()

    def on_hup(signum, frame):
        flags["hups"] += 1  # only the handler writes it; the loop compares with its own count
        wake.set()

    # Handlers before the pid file appears: a SIGHUP right after start() must rotate, not kill.
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    add(servicer, server)
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    pid_file = pid_file_for(sock)
    write_pid_file(pid_file)
    _log(f"KMS plugin {provider_name} ({api}) listening on unix://{sock}, current key {keys.refresh()['current']}")
    rotations = 0
    try:
        while not flags["stop"]:
            wake.wait(1.0)
            wake.clear()
            while rotations < flags["hups"] and not flags["stop"]:
                rotations += 1
                _log(f"SIGHUP: rotated to {keys.rotate()}")
    finally:
        server.stop(grace=1).wait(2)
        remove(sock, pid_file)
        _log("KMS plugin stopped")


def _log(msg: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg}\n")
    sys.stderr.flush()


# --- process handle (for tests and the sandbox control) ---------------------------------------------------


class KMSPluginProcess:
    """Start/stop the plugin as a child process; ``start()`` returns once the pid file shows it listening."""

    def __init__(self, socket_path, api: str, state_path, log_path=None, provider_name: str = "kms-plugin"):
        if api not in ("v1", "v2"):
            raise ValueError(f"api must be v1 or v2, not {api!r}")
        self.socket_path = Path(socket_path)
        self.api = api
        self.state_path = Path(state_path)
        self.log_path = Path(log_path) if log_path else self.socket_path.with_name("kms-plugin.log")
        self.provider_name = provider_name
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def start(self, timeout: float = 15.0) -> KMSPluginProcess:
        if self.pid:
            return self
        pid_file = pid_file_for(self.socket_path)
        remove(pid_file)
        self.proc = spawn_python("tests.sandbox.processes.kms_plugin", [
            "--socket", str(self.socket_path), "--api", self.api, "--state", str(self.state_path),
            "--provider-name", self.provider_name], self.log_path)
        wait_ready(self.proc, lambda: read_pid_file(pid_file) == self.proc.pid and self.socket_path.exists(),
                   timeout, "KMS plugin", self.log_path, not_ready=f"did not listen on {self.socket_path}")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM and wait (clean shutdown removes the socket); SIGKILL if it does not exit."""
        terminate(self.proc, timeout)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash: the socket file stays behind (the next start replaces it)."""
        kill_process(self.proc)
        self.proc = None

    def rotate(self, timeout: float = 5.0) -> str:
        """SIGHUP the running plugin and wait until the state file has a new current key id; return it."""
        if not self.pid:
            return rotate_state(self.state_path)
        return rotate_running(self.proc.pid, self.state_path, timeout)


def rotate_running(pid: int, state_path: Path, timeout: float = 5.0) -> str:
    """SIGHUP the plugin running as ``pid`` and wait until the state file has a new current key id; return it."""
    before = current_key_id(state_path)
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = current_key_id(state_path)
        if now != before:
            return now
        time.sleep(0.02)
    raise TimeoutError(f"KMS plugin did not rotate its key within {timeout}s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.sandbox.processes.kms_plugin", description=__doc__.split("\n")[0])
    p.add_argument("--socket", required=True, help="unix socket path to listen on")
    p.add_argument("--api", required=True, choices=("v1", "v2"), help="KMS plugin API version")
    p.add_argument("--state", required=True, help="JSON key state file (created if missing)")
    p.add_argument("--provider-name", default="kms-plugin", help="provider name, for logs")
    a = p.parse_args(argv)
    serve(a.socket, a.api, a.state, a.provider_name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
