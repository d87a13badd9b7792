"""Ground truth from the real kube-apiserver: etcd values per provider, /readyz bodies and /metrics pages,
captured from sandboxes on the built binary into a folder named after its version.

    python -m tests.sandbox.capture --out tests/fixtures/kube-apiserver-v1.29.6

Writes ``etcd-values/<provider>.bin`` (the stored value of ``default/fixture-canary``, created through the API
with the data in ``expected.json``) and ``expected.json``, ``readyz/*.txt`` (``aggregate-ok`` with automatic
reload on, ``aggregate-failed.http500`` and its ``/readyz/kms-providers`` body with the KMS plugin killed,
``per-provider-ok`` with reload off and KMS v1, ``no-kms-ok`` for identity with reload off, ``no-kms-reload-ok``
for aescbc with reload on, ``nonverbose-ok``), and ``metrics/kms-v2.txt``, ``metrics/kms-v1.txt`` (the KMS and
storage families of the pages after two creates, a list, a key rotation taken by the server, and two updates).
``VERSION`` holds the server's ``gitVersion``.
"""

from __future__ import annotations

import argparse
import base64
import json
import tempfile
import time
from pathlib import Path

from .control import KEY_ID_METRICS, PROVIDERS, Sandbox

CANARY = "fixture-canary-7c1e"
# The families of /metrics kept (the full page is 1.5 MB): what the product and the KMS checks read.
FAMILIES = ("apiserver_envelope_encryption_", "apiserver_storage_transformation_", "apiserver_storage_envelope_",
            "apiserver_storage_objects", "process_start_time_seconds")
LOCAL = ("aescbc", "aesgcm", "secretbox")


def _readyz(box: Sandbox, path: str, ok: bool, timeout: float = 90) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = box.api("GET", path)
        if (status == 200) == ok or time.monotonic() > deadline:
            return status, body if isinstance(body, str) else json.dumps(body)
        time.sleep(1)


def _kms_families(page: str) -> str:
    kept = []
    for line in page.splitlines():
        words = line.split()
        name = words[2] if line.startswith("# ") and len(words) > 2 else line.split("{", 1)[0].split(" ", 1)[0]
        if name.startswith(FAMILIES):
            kept.append(line)
    return "\n".join(kept) + "\n"


def _expected(provider: str, box: Sandbox) -> dict:
    kind = "kms" if provider.startswith("kms-") else provider
    entry = {"storage": kind, "encrypted": provider != "identity",
             "kmsVersion": provider.split("-")[1] if kind == "kms" else None,
             "provider": "kms-plugin" if kind == "kms" else ("key1" if provider in LOCAL else None),
             "keyId": None, "canary": CANARY if provider == "identity" else None}
    if provider == "kms-v2":
        entry["keyId"] = json.loads(Path(box.info["kms_state"]).read_text())["current"]
    return entry


def capture(out: Path) -> None:
    (out / "etcd-values").mkdir(parents=True, exist_ok=True)
    (out / "readyz").mkdir(exist_ok=True)
    (out / "metrics").mkdir(exist_ok=True)
    expected = {}
    for provider in PROVIDERS:
        style = "per-provider" if provider in ("kms-v1", "identity") else "aggregate"
        box = Sandbox(tempfile.mkdtemp(prefix=f"capture-{provider}-"))
        box.up(provider=provider, readyz_style=style, entra=False)
        try:
            (out / "VERSION").write_text(box.api("GET", "/version")[1]["gitVersion"] + "\n")
            box.create_secret("default", "fixture-canary", {"password": CANARY})
            (out / "etcd-values" / f"{provider}.bin").write_bytes(
                box.etcdctl_get("/registry/secrets/default/fixture-canary"))
            expected[provider] = _expected(provider, box)
            if provider == "identity":
                (out / "readyz" / "no-kms-ok.txt").write_text(_readyz(box, "/readyz?verbose", True)[1])
                (out / "readyz" / "nonverbose-ok.txt").write_text(_readyz(box, "/readyz", True)[1])
            if provider == "aescbc":  # reload on: a kms-providers check although no KMS provider is configured
                (out / "readyz" / "no-kms-reload-ok.txt").write_text(_readyz(box, "/readyz?verbose", True)[1])
            if provider == "kms-v1":
                (out / "readyz" / "per-provider-ok.txt").write_text(_readyz(box, "/readyz?verbose", True)[1])
            if provider.startswith("kms-"):
                box.create_secret("default", "second", {"k": "v"})
                box.api("GET", "/api/v1/secrets")
                box.kms("rotate")  # KMS v2: waits until the server has taken the new key id
                for name in ("fixture-canary", "second"):
                    status, obj = box.api("GET", f"/api/v1/namespaces/default/secrets/{name}")
                    obj["data"]["updated"] = base64.b64encode(b"yes").decode()
                    box.api("PUT", f"/api/v1/namespaces/default/secrets/{name}", obj)
                (out / "metrics" / f"{provider}.txt").write_text(_kms_families(box.api("GET", "/metrics")[1]))
            if provider == "kms-v2":
                # the same server built without the KMS v2 key-id metrics (up/restart_apiserver without_metrics)
                box.restart_apiserver(without_metrics=KEY_ID_METRICS)
                box.create_secret("default", "third", {"k": "v"})
                box.api("GET", "/api/v1/secrets")
                (out / "metrics" / "kms-v2-without-key-id-metrics.txt").write_text(
                    _kms_families(box.api("GET", "/metrics")[1]))
                (out / "readyz" / "aggregate-ok.txt").write_text(_readyz(box, "/readyz?verbose", True)[1])
                box.kms("kill")
                (out / "readyz" / "aggregate-failed.http500.txt").write_text(
                    _readyz(box, "/readyz?verbose", False)[1])
                (out / "readyz" / "aggregate-failed.kms-providers.http500.txt").write_text(
                    _readyz(box, "/readyz/kms-providers", False)[1])
        finally:
            box.down()
    (out / "etcd-values" / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.sandbox.capture", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path)
    capture(p.parse_args(argv).out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
