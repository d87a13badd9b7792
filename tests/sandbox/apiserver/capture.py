"""Ground truth from the real kube-apiserver: etcd values per provider, /readyz bodies and /metrics pages,
captured from sandboxes on the built binary into a folder named after its version.

    python -m tests.sandbox.apiserver.capture --out tests/fixtures/kube-apiserver-v1.29.6

Writes ``etcd-values/<provider>.bin`` (the stored value of ``default/fixture-canary``, created through the API
with the data in ``expected.json``) and ``expected.json``, ``readyz/*.txt`` (``aggregate-ok`` with automatic
reload on, ``aggregate-failed.http500`` and its ``/readyz/kms-providers`` body with the KMS plugin killed,
``per-provider-ok`` with reload off and KMS v1, ``no-kms-ok`` for identity with reload off, ``no-kms-reload-ok``
for aescbc with reload on, ``nonverbose-ok``), and ``metrics/kms-v2.txt``, ``metrics/kms-v1.txt`` (the KMS and
storage families of the pages after two creates, a list, a key rotation taken by the server, and two updates).
``VERSION`` holds the server's ``gitVersion``. ``admission/*.json``: the Status bodies (HTTP code in the name) the
server answers an update refused by the sandbox's admission webhook (:mod:`.admission`): with its message
(``webhook-denied.http403``), with no status (``webhook-denied-without-explanation.http400``), and the webhook's
URL refusing connections under ``failurePolicy: Fail`` (``webhook-unreachable.http500``, the port replaced by
``PORT``). ``--only admission`` captures just these.
"""

from __future__ import annotations

import argparse
import base64
import json
import tempfile
import time
from pathlib import Path

from ..control import KEY_ID_METRICS, PROVIDERS, Sandbox

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
                capture_admission(box, out)
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


def _until(request, status: int, timeout: float = 30) -> tuple[int, object]:
    """The server picks webhook configurations up from its informer, within a second or so."""
    deadline = time.monotonic() + timeout
    while True:
        answer = request()
        if answer[0] == status or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


def capture_admission(box: Sandbox, out: Path) -> None:
    """``admission/*.json``: the server's answers to updates the sandbox's admission webhook refuses (or cannot
    be called for). The secrets are the sandbox's own (no value of them is in an answer)."""
    from . import admission
    d = out / "admission"
    d.mkdir(parents=True, exist_ok=True)
    secrets = "/api/v1/namespaces/default/secrets"

    def save(name: str, answer: tuple[int, object], expected: int, port: int | None = None) -> None:
        status, body = answer
        if status != expected:
            raise RuntimeError(f"{name}: HTTP {status} {body}")
        text = json.dumps(body, separators=(",", ":"))
        (d / f"{name}.http{status}.json").write_text(text.replace(str(port), "PORT") if port else text)

    box.admission_webhook()
    for name, label in (("webhook-denied", "true"), ("webhook-denied-without-explanation", "silent")):
        obj = box.create_secret("default", f"admission-{label}", {"k": "v"}, labels={admission.LABEL: label})
        save(name, box.api("PUT", f"{secrets}/admission-{label}?dryRun=All", obj), 403 if label == "true" else 400)
    box.admission_webhook(install=False)
    port = json.loads((box.dir / "serve-ready.json").read_text())["refused_port"]
    hooks = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
    config = admission.configuration(f"https://127.0.0.1:{port}{admission.PATH}",
                                     Path(box.info["pki"]["ca_cert"]).read_bytes())
    status, body = box.api("POST", hooks, config)
    if status != 201:
        raise RuntimeError(f"{admission.NAME}: HTTP {status} {body}")
    try:
        obj = box.api("GET", f"{secrets}/admission-true")[1]
        save("webhook-unreachable", _until(lambda: box.api("PUT", f"{secrets}/admission-true?dryRun=All", obj), 500),
             500, port)
    finally:
        box.api("DELETE", f"{hooks}/{admission.NAME}")
    for label in ("true", "silent"):
        box.api("DELETE", f"{secrets}/admission-{label}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.sandbox.apiserver.capture", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--only", choices=["admission"], help="capture only these fixtures (from one kms-v2 sandbox)")
    args = p.parse_args(argv)
    if args.only == "admission":
        box = Sandbox(tempfile.mkdtemp(prefix="capture-admission-"))
        box.up(provider="kms-v2", entra=False)
        try:
            capture_admission(box, args.out)
        finally:
            box.down()
        return 0
    capture(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
