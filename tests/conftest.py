"""Shared fixtures: the installed extension run through ``az``, and sandbox clusters.

The command under test is always the built wheel installed with ``az extension add`` (``make test`` does that
into ``.az/extensions``), run as a user runs it: ``.venv-az/bin/az aksarc kms verify ...`` in a subprocess with a
private ``AZURE_CONFIG_DIR``. Nothing in az is substituted: sandboxes run the Entra ID emulator (PoP enforced), and a
test that needs an az sign-in gets a real ``az login`` to it (``python -m tests.sandbox az-login``, or a device-code
sign-in as one of its users), once per session per sandbox and identity (the ``sign_in`` fixture); az then runs with
``REQUESTS_CA_BUNDLE`` on the sandbox's CA bundle. Raw tokens come from the emulator as a client gets them.
"""

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
# azure-cli alone (the Makefile's .venv-az): the extension's dependencies come only from its own folder.
AZ = Path(os.environ.get('KMSVERIFY_TEST_AZ') or PROJECT / '.venv-az' / 'bin' / 'az')  # override: a session's own az
EXTENSION_DIR = Path(os.environ.get('AZURE_EXTENSION_DIR') or PROJECT / '.az' / 'extensions')
SUBSCRIPTION = '00000000-0000-0000-0000-00000000c0de'
ENTRA_SERVER_ID = '6256c85f-0aad-4d50-b960-e6e9b21efe35'  # the AKS Arc Entra server application
JWT_MARK = 'eyJ'  # every JWT starts with this; no token may appear in any output


def result_schema():
    """The result contract's schema as the installed extension ships it (so the test also proves it ships)."""
    import jsonschema
    global _VALIDATOR
    if _VALIDATOR is None:
        shipped = EXTENSION_DIR / 'kmsverify' / 'azext_kmsverify' / 'schemas' / 'result-1.json'
        schema = json.loads((shipped if shipped.is_file() else PROJECT / 'azext_kmsverify' / 'schemas' /
                             'result-1.json').read_text(encoding='utf-8'))
        jsonschema.Draft202012Validator.check_schema(schema)
        _VALIDATOR = jsonschema.Draft202012Validator(schema)
    return _VALIDATOR


_VALIDATOR = None


class AzResult:
    def __init__(self, proc, args=()):
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.args = tuple(args)

    @property
    def output(self):
        return self.stdout + self.stderr

    def json(self):
        try:
            data = json.loads(self.stdout)
        except ValueError:
            raise AssertionError('stdout is not JSON (exit {}):\n{}\n{}'.format(self.code, self.stdout, self.stderr))
        # Every result of the extension printed whole keeps to the contract's schema.
        if self.args[:2] == ('aksarc', 'kms') and '--query' not in self.args and isinstance(data, dict):
            errors = sorted(result_schema().iter_errors(data), key=lambda e: list(e.absolute_path))
            assert not errors, 'the result breaks the schema: ' + '; '.join(
                '{}: {}'.format('/'.join(map(str, e.absolute_path)), e.message[:200]) for e in errors[:5])
        return data

    def __repr__(self):
        return '<az exit {}\nstdout: {}\nstderr: {}>'.format(self.code, self.stdout[-3000:], self.stderr[-3000:])


class Az:
    """Runs the installed ``az`` with a private config dir."""

    def __init__(self, config_dir, env=None):
        self.config_dir = Path(config_dir)
        self.env = dict(env or {})

    def __call__(self, *args, env=None, timeout=180):
        full_env = dict(os.environ)
        full_env.update({
            'AZURE_CONFIG_DIR': str(self.config_dir),
            'AZURE_EXTENSION_DIR': str(EXTENSION_DIR),
            'AZURE_CORE_COLLECT_TELEMETRY': 'false',
            'AZURE_CORE_NO_COLOR': 'true',
            'AZURE_CORE_SURVEY_MESSAGE': 'false',
            'AZURE_CORE_ONLY_SHOW_ERRORS': 'false',
            'KUBECONFIG': str(self.config_dir / 'no-kubeconfig'),
            # az runs `python -m azure.cli`, which puts the working directory first on sys.path: run from the
            # project, it would import ./azext_kmsverify (the working tree) instead of the installed wheel.
            'PYTHONSAFEPATH': '1',
        })
        full_env.update(self.env)
        full_env.update(env or {})
        proc = subprocess.run([str(AZ)] + [str(a) for a in args], capture_output=True, text=True, env=full_env,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        return AzResult(proc, [str(a) for a in args])


@pytest.fixture(scope='session')
def installed():
    """The extension as `make test` installed it from the wheel."""
    if not AZ.exists():
        pytest.fail('{} not found: run the tests with `make test`.'.format(AZ))
    if not (EXTENSION_DIR / 'kmsverify').is_dir():
        pytest.fail('kmsverify is not installed in {}: run the tests with `make test`.'.format(EXTENSION_DIR))
    return EXTENSION_DIR / 'kmsverify'


@pytest.fixture
def az(installed, tmp_path):
    """az with an empty (signed-out) config dir."""
    return Az(tmp_path / 'azure-config')


def az_login(box, config_dir, identity='sp'):
    """A real ``az login`` of ``config_dir`` to ``box``'s Entra emulator: ``sp``, ``cert`` or ``federated`` with
    ``python -m tests.sandbox az-login``; ``user`` or ``restricted`` (the sandbox's operator or restricted user) by
    device code after it (az prints the code, the test opens the device-login page as that user)."""
    config_dir = Path(config_dir)
    config_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith('AZURE_')}
    env.update(AZURE_CONFIG_DIR=str(config_dir), AZURE_CORE_COLLECT_TELEMETRY='false')
    login = subprocess.run([sys.executable, '-m', 'tests.sandbox', 'az-login', '--dir', str(box.dir), '--az', str(AZ),
                            '--identity', identity if identity in ('sp', 'cert', 'federated') else 'sp'],
                           capture_output=True, text=True, env=env, cwd=str(PROJECT), timeout=300)
    if login.returncode != 0:
        pytest.fail('az-login to the sandbox in {} failed: {}'.format(box.dir, login.stderr.strip()))
    if identity in ('user', 'restricted'):
        # az login merges the subscriptions of every identity signed in: forget the service principal's first, so
        # the profile holds what the user can see, and nothing more (the cloud registration stays).
        subprocess.run([str(AZ), 'account', 'clear'], env=dict(env, PYTHONSAFEPATH='1',
                                                               REQUESTS_CA_BUNDLE=box.info['ca_bundle']),
                       capture_output=True, timeout=120, check=True)
        _device_code_login(box, config_dir, box.info['entra']['user' if identity == 'user' else 'restricted_user'])
    return config_dir


def _device_code_login(box, config_dir, user):
    import requests
    entra = box.info['entra']
    env = dict(os.environ, AZURE_CONFIG_DIR=str(config_dir), REQUESTS_CA_BUNDLE=box.info['ca_bundle'],
               AZURE_CORE_COLLECT_TELEMETRY='false', PYTHONSAFEPATH='1')
    proc = subprocess.Popen([str(AZ), 'login', '--use-device-code', '--tenant', entra['tenant'], '-o', 'none',
                             '--only-show-errors'], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, cwd=str(config_dir))
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            code = re.search(r'enter the code (\S+)', line)
            if code:
                page = requests.get(entra['url'] + '/devicelogin', params={'user_code': code.group(1),
                                                                          'username': user['upn']},
                                    verify=box.info['ca_bundle'], timeout=30)
                assert page.status_code == 200, page.text
                break
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode != 0:
        pytest.fail('az login --use-device-code as {} failed: {}'.format(user['upn'], ''.join(lines) + err))


def signed_in_config(box, path, identity='sp'):
    """``path`` as a config dir signed in to ``box`` for real (see :func:`az_login`): (path, the env az needs)."""
    return az_login(box, path, identity), {'REQUESTS_CA_BUNDLE': box.info['ca_bundle']}


@pytest.fixture(scope='session')
def sign_in(installed, tmp_path_factory):
    """``sign_in(box, identity='sp')``: an :class:`Az` signed in to ``box``; the az login is done once per session
    per sandbox and identity (tests that change the sign-in work on a :func:`copy_of` it)."""
    done = {}

    def get(box, identity='sp'):
        key = (str(box.dir), identity)
        if key not in done:
            done[key] = signed_in_config(box, tmp_path_factory.mktemp('azure-' + identity), identity)
        return Az(*done[key])

    return get


def copy_of(az, path):
    """An :class:`Az` on a copy of ``az``'s config dir (its sign-in and token cache), for a test that changes it."""
    shutil.copytree(az.config_dir, path, ignore=shutil.ignore_patterns('commands', '*.lock'))
    return Az(path, az.env)


def expire_cached_tokens(config_dir):
    """az's token cache as it is once its access tokens are past expiry (what time does to a sign-in)."""
    path = Path(config_dir) / 'msal_token_cache.json'
    cache = json.loads(path.read_text())
    past = str(int(time.time()) - 60)
    for entry in (cache.get('AccessToken') or {}).values():
        entry['expires_on'] = entry['extended_expires_on'] = past
    path.write_text(json.dumps(cache))


def _b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b'=').decode()


def entra_token(box, resource=ENTRA_SERVER_ID, principal='service_principal', data=None):
    """An access token from ``box``'s Entra emulator as a client gets one: client credentials of ``principal``."""
    import requests
    entra = box.info['entra']
    form = {'grant_type': 'client_credentials', 'client_id': entra[principal]['client_id'],
            'client_secret': entra[principal]['secret'], 'scope': resource.rstrip('/') + '/.default', **(data or {})}
    answer = requests.post(entra['token_endpoint'], data=form, verify=box.info['ca_bundle'], timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()['access_token']


def pop_token(box):
    """A signed PoP token for ``box``'s API server, as kubelogin makes one: an access token bound to a fresh RSA
    key (``req_cnf``), in a JWS signed with that key (``at``, ``ts``, ``u``, ``cnf.jwk``, ``nonce``; 15 minutes)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    key = rsa.generate_private_key(65537, 2048)
    numbers = key.public_key().public_numbers()
    jwk = {'e': _b64(numbers.e.to_bytes(3, 'big')), 'kty': 'RSA', 'n': _b64(numbers.n.to_bytes(256, 'big'))}
    kid = _b64(hashlib.sha256(json.dumps(jwk, separators=(',', ':'), sort_keys=True).encode()).digest())
    access = entra_token(box, data={'token_type': 'pop', 'req_cnf': _b64(json.dumps({'kid': kid}).encode())})
    header = {'typ': 'pop', 'alg': 'RS256', 'kid': kid}
    payload = {'at': access, 'ts': int(time.time()), 'u': box.info['entra']['cluster_id'],
               'cnf': {'jwk': dict(jwk, alg='RS256', kid=kid)}, 'nonce': uuid.uuid4().hex}
    signing_input = _b64(json.dumps(header).encode()) + '.' + _b64(json.dumps(payload).encode())
    return signing_input + '.' + _b64(key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()))


def verify(az, target, *args, **kwargs):
    """``az aksarc kms verify`` on ``target``: a sandbox (its admin kubeconfig), a kubeconfig path, or
    ``('arm', box)`` for ``-g/-n`` through the box's ARM emulator. The one way every e2e test runs the command."""
    if isinstance(target, tuple) and target[0] == 'arm':
        arm = target[1].info['arm']
        where = ['-g', arm['resource_group'], '-n', arm['cluster']]
    else:
        where = ['--kubeconfig', getattr(target, 'kubeconfig', target)]
    return az('aksarc', 'kms', 'verify', *where, *args, **kwargs)


def assert_no_leak(result, canaries=()):
    """No token, key or kubeconfig content, and none of ``canaries``, in stdout or stderr."""
    text = result.output
    assert JWT_MARK not in text, 'a token leaked:\n{!r}'.format(result)
    for marker in ('BEGIN EC PRIVATE KEY', 'BEGIN PRIVATE KEY', 'BEGIN RSA PRIVATE KEY', 'client-key-data',
                   'client-certificate-data', 'certificate-authority-data'):
        assert marker not in text, '{} leaked:\n{!r}'.format(marker, result)
    for canary in canaries:
        assert canary and canary not in text, 'canary {!r} leaked:\n{!r}'.format(canary, result)


@pytest.fixture(scope='session')
def sandbox_factory(tmp_path_factory):
    """Start sandboxes by options, once per session each; all are stopped at the end."""
    from tests.sandbox.control import Sandbox
    started = {}

    def get(**options):
        key = tuple(sorted(options.items()))
        if key not in started:
            directory = tmp_path_factory.mktemp('sandbox')
            box = Sandbox(str(directory))
            box.up(**options)
            started[key] = box
        return started[key]

    yield get
    for box in started.values():
        box.down()


def fresh_sandbox(tmp_path, **options):
    """A sandbox of the test's own (for tests that break it); the caller must call down()."""
    from tests.sandbox.control import Sandbox
    box = Sandbox(str(tmp_path / 'sandbox'))
    box.up(**options)
    return box


def wait_kms_health(box, healthy, timeout=90):
    """Wait until the API server's /readyz/kms-providers passes (healthy) or fails. A real kube-apiserver caches
    its KMS health (a healthy answer for 20s, the KMS v2 key id until the next Status call), so a plugin stopped
    or started shows there only some seconds later; returns the last (status, body)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = box.api('GET', '/readyz/kms-providers', timeout=10)
        except OSError as e:
            status, body = None, str(e)
        if (status == 200) == healthy or time.monotonic() > deadline:
            return status, body
        time.sleep(1)


def which_kubectl():
    return shutil.which('kubectl')


def core_api(box, kubeconfig_name='kubeconfig'):
    """A Python kubernetes client for the sandbox (test set-up and inspection only)."""
    from kubernetes import client, config
    api_client = config.new_client_from_config(str(Path(box.dir) / kubeconfig_name))
    return client.CoreV1Api(api_client)


def make_secret(box, namespace, name, data):
    """Create a secret through the sandbox API (so it is stored as the API server stores it)."""
    import base64

    from kubernetes import client
    api = core_api(box)
    body = client.V1Secret(metadata=client.V1ObjectMeta(name=name, namespace=namespace),
                           data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()})
    try:
        api.delete_namespaced_secret(name, namespace)
    except client.exceptions.ApiException:
        pass
    api.create_namespaced_secret(namespace, body)


def probe_secrets_left(box):
    api = core_api(box)
    items = api.list_secret_for_all_namespaces(label_selector='app.kubernetes.io/managed-by=kmsverify').items
    return [i.metadata.namespace + '/' + i.metadata.name for i in items] + [
        i.metadata.namespace + '/' + i.metadata.name for i in api.list_secret_for_all_namespaces().items
        if i.metadata.name.startswith('kmsverify-probe-')]
