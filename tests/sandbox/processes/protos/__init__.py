"""The real KMS plugin gRPC APIs (v1beta1 and v2), compiled at runtime.

The ``.proto`` files here are the source of truth; the ``_pb2``/``_pb2_grpc`` modules are generated with
``grpc_tools.protoc`` on first use and cached under ``tests/sandbox/processes/_gen/<hash>/`` (gitignored), so no
generated code lives in git and a grpcio-tools or proto change regenerates automatically (the hash covers the
proto sources and the grpcio-tools and protobuf versions). Generation writes to a private temporary directory
that is then renamed into place, so two processes generating at once cannot see a half-written cache.
Set ``KMSVERIFY_SANDBOX_GEN_DIR`` to cache elsewhere (e.g. when the checkout is read-only).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import threading
from importlib.metadata import version as _dist_version
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTOS = ("kmsv1beta1.proto", "kmsv2.proto")
_lock = threading.Lock()
_loaded: dict[str, tuple] = {}


def _cache_root() -> Path:
    env = os.environ.get("KMSVERIFY_SANDBOX_GEN_DIR")
    if env:
        return Path(env)
    root = PROTO_DIR.parent / "_gen"
    try:
        root.mkdir(exist_ok=True)
        if os.access(root, os.W_OK):
            return root
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / "kmsverify-sandbox-gen"


def _digest() -> str:
    h = hashlib.sha256()
    for name in PROTOS:
        h.update(name.encode() + b"\0" + (PROTO_DIR / name).read_bytes() + b"\0")
    for dist in ("grpcio-tools", "protobuf"):
        h.update(f"{dist}={_dist_version(dist)}\0".encode())
    return h.hexdigest()[:16]


def _generate(target: Path) -> None:
    from grpc_tools import protoc

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        include = Path(protoc.__file__).resolve().parent / "_proto"
        args = ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={tmp}",
                f"--grpc_python_out={tmp}", *PROTOS]
        rc = protoc.main(args)
        if rc != 0:
            raise RuntimeError(f"grpc_tools.protoc failed ({rc}) for {PROTOS} in {PROTO_DIR}")
        (tmp / "done").touch()  # inside tmp, so the rename publishes a complete directory atomically
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "done").exists():  # lost the race: the winner's directory must be complete
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _gen_dir() -> Path:
    target = _cache_root() / _digest()
    if not (target / "done").exists():
        _generate(target)
    return target


def _load_module(name: str, path: Path):
    """Load a generated module under its own top-level name: the ``_pb2_grpc`` module imports its ``_pb2``
    sibling absolutely (``import kmsv2_pb2``), so it must be in ``sys.modules`` under that name."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load(api: str) -> tuple:
    """``(pb2, pb2_grpc)`` for ``api`` ``"v1"``/``"v1beta1"`` or ``"v2"``."""
    stem = {"v1": "kmsv1beta1", "v1beta1": "kmsv1beta1", "v2": "kmsv2"}.get(api)
    if stem is None:
        raise ValueError(f"unknown KMS API {api!r} (expected v1 or v2)")
    with _lock:
        if stem not in _loaded:
            d = _gen_dir()
            pb2 = _load_module(stem + "_pb2", d / f"{stem}_pb2.py")
            grpc_mod = _load_module(stem + "_pb2_grpc", d / f"{stem}_pb2_grpc.py")
            _loaded[stem] = (pb2, grpc_mod)
        return _loaded[stem]
