"""Start-up cost: az imports the loader, commands and _params on every relevant call."""

import json
import subprocess

from tests.conftest import AZ, EXTENSION_DIR

HEAVY = ('kubernetes', 'azure.identity', 'cryptography', 'websocket', 'yaml', 'requests', 'urllib3', 'grpc')

PROBE = """
import json, sys
sys.path.insert(0, {ext!r})
from azure.cli.core.mock import DummyCli
before = set(sys.modules)
import azext_kmsverify as ext
loader = ext.COMMAND_LOADER_CLS(cli_ctx=DummyCli())
loader.load_command_table(None)
loader.load_arguments("aksarc kms verify")
print(json.dumps({{"file": ext.__file__, "new": sorted(set(sys.modules) - before),
                  "commands": sorted(loader.command_table)}}))
"""


def test_loading_the_command_table_imports_nothing_heavy(installed):
    python = AZ.parent / 'python'
    out = subprocess.run([str(python), '-c', PROBE.format(ext=str(EXTENSION_DIR / 'kmsverify'))],
                         capture_output=True, text=True, check=True).stdout
    report = json.loads(out)
    assert report['file'].startswith(str(EXTENSION_DIR)), 'the installed wheel must be the code under test'
    assert report['commands'] == ['aksarc kms reencrypt', 'aksarc kms status', 'aksarc kms verify']
    loaded_heavy = [m for m in report['new'] if m.split('.')[0] in HEAVY or m.startswith(HEAVY)]
    assert not loaded_heavy, 'loading the command table imported: {}'.format(loaded_heavy)
    ours = [m for m in report['new'] if m.startswith('azext_kmsverify')]
    # Only the wiring and the light helpers it needs; every step (auth, kube, etcd, verdict, operations) and
    # custom.py load only when the command runs.
    assert set(ours) <= {'azext_kmsverify', 'azext_kmsverify._help', 'azext_kmsverify.commands',
                         'azext_kmsverify._params', 'azext_kmsverify._validators', 'azext_kmsverify.errors',
                         'azext_kmsverify.defaults', 'azext_kmsverify.text', 'azext_kmsverify.names',
                         'azext_kmsverify.report',
                         'azext_kmsverify.report.table'}, ours


def test_help_lists_the_command_with_examples(az):
    result = az('aksarc', 'kms', 'verify', '--help')
    assert result.code == 0, result
    for text in ('--resource-group', '--kubeconfig', '--secret', '--all-secrets', '--timeout', 'Examples',
                 'Exit codes', 'app.kubernetes.io/managed-by=kmsverify', '--all-clusters', '--shard'):
        assert text in result.stdout, text
