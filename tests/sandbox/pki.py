"""Certificates for the sandbox, laid out like a kubeadm control plane.

The product talks to the sandbox exactly as to a real cluster, so every hop is real TLS: etcd requires client
certificates (``--client-cert-auth``), the API server authenticates users by client certificate, and the ARM
emulator serves HTTPS under its own CA. EC P-256 keys keep generation in the milliseconds.

Layout under ``root`` (what :func:`make_pki` returns, as ``Path`` values in a flat dict plus ``nodes``):

- ``pki/etcd/ca.{crt,key}``: the etcd CA.
- ``nodes/<node>/pki/etcd/{ca.crt,server.crt,server.key,peer.crt,peer.key,healthcheck-client.crt,
  healthcheck-client.key}``: what kubeadm puts in ``/etc/kubernetes/pki/etcd`` on each control-plane node
  (the etcd pod mounts it; ``etcdctl`` inside the pod uses ``server.crt``/``server.key`` as client cert, so the
  server and peer certs carry both serverAuth and clientAuth, as kubeadm's do).
- ``pki/etcd-client.{crt,key}``: host-side etcd client (kubeadm's ``apiserver-etcd-client``).
- ``pki/ca.{crt,key}``: the Kubernetes CA; ``pki/apiserver.{crt,key}`` its serving cert;
  ``pki/admin.{crt,key}`` (CN=kubernetes-admin, O=system:masters) and ``pki/restricted.{crt,key}``
  (CN=restricted-user) client certs.
- ``pki/arm-ca.{crt,key}`` and ``pki/arm.{crt,key}``: the ARM emulator's own CA and serving cert;
  ``pki/entra.{crt,key}``: the Entra ID emulator's serving cert, from the same CA (the Azure side of the sandbox).
- ``pki/ca-bundle.pem``: Kubernetes CA + ARM CA, for clients that trust both servers.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOCAL_SANS = ("127.0.0.1", "localhost")
APISERVER_SANS = LOCAL_SANS + (
    "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
)
NODE_ETCD_FILES = (
    "ca.crt", "server.crt", "server.key", "peer.crt", "peer.key", "healthcheck-client.crt",
    "healthcheck-client.key",
)

_SERVER = [ExtendedKeyUsageOID.SERVER_AUTH]
_CLIENT = [ExtendedKeyUsageOID.CLIENT_AUTH]
_BOTH = _SERVER + _CLIENT


class _CA:
    def __init__(self, cn: str):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        now = _now()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(ski, critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, cn: str, usages, sans=(), orgs=()):
        """A leaf cert with AKI/SKI: Python 3.13's default X509_STRICT verification rejects leaves without AKI."""
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs)).issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName([_san(s) for s in sans]), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False)


def _san(value: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_cert_pem(cert))
    return path


def _write_key(path: Path, key) -> Path:
    """Write a private key 0600 from the start (no window where it is world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def _write_pair(paths: dict, name: str, crt: Path, key_path: Path, issued) -> None:
    cert, key = issued
    paths[name + "_cert"] = _write_cert(crt, cert)
    paths[name + "_key"] = _write_key(key_path, key)


def make_pki(root: Path, nodes: list[str]) -> dict:
    """Create every certificate the sandbox needs under ``root``; return their paths (see module docstring).

    Keys: ``etcd_ca_cert``, ``etcd_ca_key``, ``etcd_client_cert``, ``etcd_client_key``, ``ca_cert``, ``ca_key``,
    ``apiserver_cert``, ``apiserver_key``, ``admin_cert``, ``admin_key``, ``restricted_cert``, ``restricted_key``,
    ``arm_ca_cert``, ``arm_ca_key``, ``arm_cert``, ``arm_key``, ``entra_cert``, ``entra_key``, ``ca_bundle``, and
    ``nodes``:
    ``{node: {"dir": Path, "ca.crt": Path, "server.crt": Path, ...}}``.
    """
    root = Path(root)
    pki = root / "pki"
    paths: dict = {"root": root}

    etcd_ca = _CA("etcd-ca")
    paths["etcd_ca_cert"] = _write_cert(pki / "etcd" / "ca.crt", etcd_ca.cert)
    paths["etcd_ca_key"] = _write_key(pki / "etcd" / "ca.key", etcd_ca.key)
    _write_pair(paths, "etcd_client", pki / "etcd-client.crt", pki / "etcd-client.key",
                etcd_ca.issue("kube-apiserver-etcd-client", _CLIENT, orgs=("system:masters",)))

    paths["nodes"] = {}
    for node in nodes:
        d = root / "nodes" / node / "pki" / "etcd"
        entry = {"dir": d, "ca.crt": _write_cert(d / "ca.crt", etcd_ca.cert)}
        for stem, cn, usages, sans, orgs in (
            ("server", node, _BOTH, LOCAL_SANS + (node,), ()),
            ("peer", node, _BOTH, LOCAL_SANS + (node,), ()),
            ("healthcheck-client", "kube-etcd-healthcheck-client", _CLIENT, (), ("system:masters",)),
        ):
            cert, key = etcd_ca.issue(cn, usages, sans=sans, orgs=orgs)
            entry[stem + ".crt"] = _write_cert(d / (stem + ".crt"), cert)
            entry[stem + ".key"] = _write_key(d / (stem + ".key"), key)
        paths["nodes"][node] = entry

    k8s_ca = _CA("kubernetes")
    paths["ca_cert"] = _write_cert(pki / "ca.crt", k8s_ca.cert)
    paths["ca_key"] = _write_key(pki / "ca.key", k8s_ca.key)
    _write_pair(paths, "apiserver", pki / "apiserver.crt", pki / "apiserver.key",
                k8s_ca.issue("kube-apiserver", _SERVER, sans=APISERVER_SANS))
    _write_pair(paths, "admin", pki / "admin.crt", pki / "admin.key",
                k8s_ca.issue("kubernetes-admin", _CLIENT, orgs=("system:masters",)))
    _write_pair(paths, "restricted", pki / "restricted.crt", pki / "restricted.key",
                k8s_ca.issue("restricted-user", _CLIENT))

    arm_ca = _CA("sandbox-arm-ca")
    paths["arm_ca_cert"] = _write_cert(pki / "arm-ca.crt", arm_ca.cert)
    paths["arm_ca_key"] = _write_key(pki / "arm-ca.key", arm_ca.key)
    _write_pair(paths, "arm", pki / "arm.crt", pki / "arm.key", arm_ca.issue("management.sandbox", _SERVER,
                                                                          sans=LOCAL_SANS))
    _write_pair(paths, "entra", pki / "entra.crt", pki / "entra.key", arm_ca.issue("login.sandbox", _SERVER,
                                                                                sans=LOCAL_SANS))

    paths["ca_bundle"] = pki / "ca-bundle.pem"
    paths["ca_bundle"].write_bytes(_cert_pem(k8s_ca.cert) + _cert_pem(arm_ca.cert))
    return paths
