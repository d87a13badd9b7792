"""The install path users get: an extension index served over HTTPS, `az extension add --name kmsverify`, and after a
newer build is published, `az extension update --name kmsverify` (a wheel added with --source can never be updated
by name). The index is written by scripts/make_index.py, the script `make dist` runs."""

import hashlib
import http.server
import json
import re
import shutil
import ssl
import subprocess
import sys
import threading

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from packaging.version import Version

from tests.conftest import AZ, PROJECT, Az
from tests.sandbox.pki import _CA

VERSION = re.search(r"^VERSION = '(.+)'$", (PROJECT / 'setup.py').read_text(), re.M).group(1)
AZ_PYTHON = AZ.parent / 'python'


def _next_version(version):
    """The next pre-release (1.0.0b1 -> 1.0.0b2), or the next micro release."""
    v = Version(version)
    if v.pre:
        return f'{v.base_version}{v.pre[0]}{v.pre[1] + 1}'
    return f'{v.major}.{v.minor}.{v.micro + 1}'


def _build_wheel(version, work, out):
    """The project's wheel at ``version``: a copy of the sources with setup.py's VERSION changed."""
    src = work / f'src-{version}'
    shutil.copytree(PROJECT / 'azext_kmsverify', src / 'azext_kmsverify',
                    ignore=shutil.ignore_patterns('__pycache__'))
    for name in ('README.md', 'HISTORY.rst'):
        shutil.copy(PROJECT / name, src / name)
    setup = (PROJECT / 'setup.py').read_text().replace(f"VERSION = '{VERSION}'", f"VERSION = '{version}'")
    (src / 'setup.py').write_text(setup)
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation', '-w', str(out),
                    str(src)], check=True, capture_output=True, cwd=work)
    return out / f'kmsverify-{version}-py3-none-any.whl'


def _publish(wheel, root, base_url):
    """Copy ``wheel`` to the served folder and add it to the served index, as `make dist DIST_INDEX=...` does."""
    shutil.copy(wheel, root / wheel.name)
    index = root / 'index.json'
    subprocess.run([str(AZ_PYTHON), str(PROJECT / 'scripts' / 'make_index.py'), '--base-url', base_url,
                    '--out', str(index), '--merge', str(index), str(root / wheel.name)], check=True,
                   capture_output=True)
    return json.loads(index.read_text())


@pytest.fixture
def https_index(tmp_path):
    """A folder served over local HTTPS with a certificate from a private CA; yields (root, base url, CA bundle)."""
    ca = _CA('kmsverify-index-ca')
    cert, key = ca.issue('127.0.0.1', [ExtendedKeyUsageOID.SERVER_AUTH], sans=['127.0.0.1'])
    pem = tmp_path / 'server.pem'
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ca_bundle = tmp_path / 'ca.pem'
    ca_bundle.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    root = tmp_path / 'www'
    root.mkdir()
    requests_seen = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, fmt, *args):
            requests_seen.append(self.path)

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield root, f'https://127.0.0.1:{server.server_address[1]}', ca_bundle, requests_seen
    finally:
        server.shutdown()


def test_add_and_update_by_name_from_a_published_index(installed, tmp_path, https_index):
    root, base_url, ca_bundle, served = https_index
    newer = _next_version(VERSION)
    assert Version(newer) > Version(VERSION)
    wheels = tmp_path / 'wheels'
    first = _build_wheel(VERSION, tmp_path, wheels)
    index = _publish(first, root, base_url)
    [entry] = index['extensions']['kmsverify']
    assert entry['sha256Digest'] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert entry['metadata']['version'] == VERSION
    assert entry['metadata']['azext.minCliCoreVersion']

    # A fresh az: its own config and extension folder, and only the index configured.
    extensions = tmp_path / 'extensions'
    az = Az(tmp_path / 'config', env={'AZURE_EXTENSION_DIR': str(extensions), 'REQUESTS_CA_BUNDLE': str(ca_bundle)})
    assert az('config', 'set', f'extension.index_url={base_url}/index.json', '--only-show-errors').code == 0

    added = az('extension', 'add', '--name', 'kmsverify', '--yes', timeout=600)
    assert added.code == 0, added
    assert (extensions / 'kmsverify').is_dir()
    assert az('extension', 'show', '--name', 'kmsverify', '--query', 'version', '-o', 'tsv').stdout.strip() == VERSION
    assert f'/{first.name}' in served

    # Nothing newer published: update says so and changes nothing.
    same = az('extension', 'update', '--name', 'kmsverify', timeout=600)
    assert same.code == 0 and 'already installed' in same.stderr, same

    second = _build_wheel(newer, tmp_path, wheels)
    index = _publish(second, root, base_url)
    assert [e['metadata']['version'] for e in index['extensions']['kmsverify']] == [VERSION, newer]
    updated = az('extension', 'update', '--name', 'kmsverify', timeout=600)
    assert updated.code == 0, updated
    assert az('extension', 'show', '--name', 'kmsverify', '--query', 'version', '-o', 'tsv').stdout.strip() == newer
    assert az('aksarc', 'kms', 'verify', '--help').code == 0


def test_a_wheel_that_does_not_match_the_index_digest_is_refused(installed, tmp_path, https_index):
    root, base_url, ca_bundle, _ = https_index
    wheel = _build_wheel(VERSION, tmp_path, tmp_path / 'wheels')
    index = _publish(wheel, root, base_url)
    index['extensions']['kmsverify'][0]['sha256Digest'] = '0' * 64
    (root / 'index.json').write_text(json.dumps(index))
    extensions = tmp_path / 'extensions'
    az = Az(tmp_path / 'config', env={'AZURE_EXTENSION_DIR': str(extensions), 'REQUESTS_CA_BUNDLE': str(ca_bundle),
                                      'AZURE_EXTENSION_INDEX_URL': f'{base_url}/index.json'})
    assert az('config', 'set', f'extension.index_url={base_url}/index.json', '--only-show-errors').code == 0
    refused = az('extension', 'add', '--name', 'kmsverify', '--yes', timeout=600)
    assert refused.code != 0
    assert 'checksum of the extension does not match' in refused.stderr, refused
    assert not (extensions / 'kmsverify').exists()
