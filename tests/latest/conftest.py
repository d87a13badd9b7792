"""Shared fixtures: the installed extension run through ``az``, and sandbox clusters.

The command under test is always the built wheel installed with ``az extension add`` (``make test`` does that
into ``.az/extensions``), run as a user runs it: ``.venv-az/bin/az aksarc kms verify ...`` in a subprocess with a
private ``AZURE_CONFIG_DIR``. The only substitution is the Entra token source (``tests/fakeaz``).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
SHARED = PROJECT.parent / 'shared'
FIXTURES = SHARED / 'fixtures'
# azure-cli alone (the Makefile's .venv-az): the extension's dependencies come only from its own folder.
AZ = Path(os.environ.get('KMSVERIFY_TEST_AZ') or PROJECT / '.venv-az' / 'bin' / 'az')  # override: a session's own az
EXTENSION_DIR = Path(os.environ.get('AZURE_EXTENSION_DIR') or PROJECT / '.az' / 'extensions')
FAKEAZ = PROJECT / 'tests' / 'fakeaz'
SUBSCRIPTION = '00000000-0000-0000-0000-00000000c0de'
JWT_MARK = 'eyJ'  # every JWT starts with this; no token may appear in any output

if str(FAKEAZ) not in sys.path:
    sys.path.insert(0, str(FAKEAZ))


def fixtures_dir():
    if not FIXTURES.is_dir():
        pytest.fail('Fixtures not found at {} (expected ../shared/fixtures from the project root).'.format(FIXTURES))
    return FIXTURES


class AzResult:
    def __init__(self, proc):
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    @property
    def output(self):
        return self.stdout + self.stderr

    def json(self):
        try:
            return json.loads(self.stdout)
        except ValueError:
            raise AssertionError('stdout is not JSON (exit {}):\n{}\n{}'.format(self.code, self.stdout, self.stderr))

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
            'PYTHONPATH': str(FAKEAZ),
            'FAKEAZ_TOKENS': '1',
            'KUBECONFIG': str(self.config_dir / 'no-kubeconfig'),
            # az runs `python -m azure.cli`, which puts the working directory first on sys.path: run from the
            # project, it would import ./azext_kmsverify (the working tree) instead of the installed wheel.
            'PYTHONSAFEPATH': '1',
        })
        full_env.update(self.env)
        full_env.update(env or {})
        proc = subprocess.run([str(AZ)] + [str(a) for a in args], capture_output=True, text=True, env=full_env,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        return AzResult(proc)


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


def signed_in_config(path, arm_url=None, ca_bundle=None):
    """A config dir signed in to a sandbox cloud: a real clouds.config and azureProfile.json."""
    from tokens import write_profile
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if arm_url:
        arm_url = arm_url.rstrip('/') + '/'
        (path / 'clouds.config').write_text(
            '[SandboxCloud]\n'
            'endpoint_resource_manager = {}\n'
            'endpoint_active_directory = https://login.microsoftonline.com\n'
            'endpoint_active_directory_resource_id = https://management.core.windows.net/\n'
            'endpoint_active_directory_graph_resource_id = https://graph.windows.net/\n'
            'endpoint_management = https://management.core.windows.net/\n'
            'profile = latest\n'
            'endpoint_microsoft_graph_resource_id = https://graph.microsoft.com/\n'.format(arm_url))
        (path / 'config').write_text('[cloud]\nname = SandboxCloud\n\n[core]\ncollect_telemetry = false\n')
    write_profile(str(path), SUBSCRIPTION)
    if arm_url:
        profile = json.loads((path / 'azureProfile.json').read_text(encoding='utf-8-sig'))
        for sub in profile['subscriptions']:
            sub['environmentName'] = 'SandboxCloud'
        (path / 'azureProfile.json').write_text(json.dumps(profile), encoding='utf-8-sig')
    env = {'REQUESTS_CA_BUNDLE': str(ca_bundle)} if ca_bundle else {}
    return path, env


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
