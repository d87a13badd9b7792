"""The sandbox's child processes: start, wait until ready, stop, and find them again by pid.

    p = spawn([...], log_path, banner="--- starting etcd")       # own session, stdin /dev/null, log appended
    wait_ready(p, lambda: healthy(), timeout=20, what="etcd", log_path=log_path, not_ready="not healthy")
    terminate(p, timeout=10)                                       # SIGTERM, wait, SIGKILL, wait
    stop_pid(pid, marker)                                          # the same for a pid from sandbox.json

Every child runs in a session of its own, so a Ctrl-C in the terminal of ``up`` does not reach it and ``down``
from another process can stop it by pid. A recorded pid is only signalled while the process's command line
still names the sandbox (``marker``), so a recycled pid is never hit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[3]


class StartError(RuntimeError):
    """A child exited before it was ready, or was not ready in time (then it was killed); the message has its
    log's tail."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.log_tail = log_tail


# --- ports -------------------------------------------------------------------------------------------------

_GIVEN: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port a child can listen on. Taken below the kernel's ephemeral range: a port from ``bind(0)``
    is in that range, and between closing it and the child's bind, any outgoing connection (kube-apiserver opens
    dozens to etcd) may be given it. CI lost a module of tests to "bind: address already in use" that way. Never
    the same port twice in one process; chosen at random so concurrent test processes rarely meet."""
    import random
    import socket
    high = min(_ephemeral_low(), 65536) - 1
    low = 20000 if high > 21000 else 1024
    for _ in range(500):
        port = random.randint(low, high)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise OSError("no free loopback port below the ephemeral range")


# --- children of this process -----------------------------------------------------------------------------


def spawn(cmd: list[str], log_path, *, cwd=None, env: dict | None = None,
          banner: str | None = None) -> subprocess.Popen:
    """Start ``cmd`` in a new session with stdin from /dev/null and stdout and stderr appended to ``log_path``
    (after a ``banner`` line, if given)."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        if banner:
            log.write(f"{banner}\n".encode())
            log.flush()
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)


def spawn_python(module: str, args: list[str], log_path) -> subprocess.Popen:
    """``python -m module args`` with this interpreter, from the repository root (importable as ``tests``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return spawn([sys.executable, "-m", module, *args], log_path, cwd=REPO_ROOT, env=env)


def wait_ready(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float, what: str, log_path,
               not_ready: str = "was not ready", interval: float = 0.02) -> None:
    """Poll ``ready()`` until it holds. StartError if the process exits first, or (after SIGKILL) if
    ``timeout`` seconds pass: "<what> exited with <code>" / "<what> <not_ready> within <timeout>s"."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            log_tail = tail(log_path)
            raise StartError(f"{what} exited with {proc.returncode}; log {log_path}:\n{log_tail}", log_tail)
        if ready():
            return
        if time.monotonic() > deadline:
            kill_process(proc)
            log_tail = tail(log_path)
            raise StartError(f"{what} {not_ready} within {timeout}s; log {log_path}:\n{log_tail}", log_tail)
        time.sleep(interval)


def terminate(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM and wait up to ``timeout`` seconds; SIGKILL if it is still running. Reaps it either way."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_process(proc)
    with contextlib.suppress(Exception):
        proc.wait(0.1)


def kill_process(proc: subprocess.Popen | None) -> None:
    """SIGKILL (a crash: nothing is cleaned up) and reap."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def kill_quietly(proc) -> None:
    """SIGKILL a child (``subprocess.Popen`` or ``asyncio.subprocess.Process``) if it still runs, without
    waiting; one that is already gone is no error."""
    if proc is not None and proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


def tail(path, n: int = 30) -> str:
    """The last ``n`` lines of a log, for error messages."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return "(no log)"


# --- processes known by pid (sandbox.json, pid files) -----------------------------------------------------


def is_alive(pid: int | None) -> bool:
    """Running (a zombie counts as gone: it no longer runs, only waits for a parent that may never reap it)."""
    if not pid:
        return False
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def is_ours(pid: int, marker: str) -> bool:
    """The pid is still our process (its command line names ``marker``), not a recycled pid."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return marker.encode() in f.read()
    except OSError:
        return False


def stop_pid(pid: int | None, marker: str, timeout: float = 10.0, sig: int = signal.SIGTERM) -> bool:
    """Send ``sig`` (SIGTERM: a clean stop; SIGKILL: a crash), wait up to ``timeout`` seconds, then SIGKILL.
    True if a process was stopped; False if ``pid`` is not a running process of ours."""
    if not pid or not is_alive(pid) or not is_ours(pid, marker):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(pid):
            return True
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and is_alive(pid):
        time.sleep(0.02)
    return True


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line mentions ``text`` (a sandbox folder: what ``down`` must leave none of)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read() and is_alive(int(pid)):
                    found.append(int(pid))
        except OSError:
            pass
    return found


def write_pid_file(path, pid: int | None = None) -> None:
    """Write ``pid`` (default: this process) to ``path`` atomically: a reader never sees a partial file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{pid or os.getpid()}\n")
    os.replace(tmp, path)


def read_pid_file(path) -> int | None:
    """The pid in ``path``, or None when there is no such file (or it holds no number)."""
    try:
        return int(Path(path).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def remove(*paths) -> None:
    """Unlink files that may not exist (pid files, sockets)."""
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            Path(p).unlink()
