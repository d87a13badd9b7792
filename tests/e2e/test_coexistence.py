"""Beside the aksarc extension: every AKS Arc user has it, and it bundles its own kubernetes client.

az appends extension folders to ``sys.path`` in name order, so ``aksarc``'s kubernetes is imported before ours
(``kmsverify``): the command must work with whatever client aksarc brings, from the oldest we support to the latest.
A stand-in ``aksarc`` extension (that kubernetes with its dependencies, ``pip install --target`` as a bundling
extension has them, plus one command ``az aksarc standin-version``) is built once per version under
``.tools/standins/`` and reused; each test puts it beside the installed kmsverify in an extension folder of its own.
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import PROJECT, Az, assert_no_leak

STANDINS = PROJECT / '.tools' / 'standins'
SUPPORTED = '>= 24.2.0'
OLDEST, MIDDLE, LATEST = '24.2.0', '29.0.0', '37.0.2'
TOO_OLD = '23.6.0'

STANDIN_INIT = '''\
"""Stand-in for the aksarc extension (kmsverify tests): its own kubernetes and one command in the aksarc group."""

from azure.cli.core import AzCommandsLoader


class StandinCommandsLoader(AzCommandsLoader):

    def __init__(self, cli_ctx=None):
        from azure.cli.core.commands import CliCommandType
        custom = CliCommandType(operations_tmpl='azext_aksarc.custom#{}')
        super().__init__(cli_ctx=cli_ctx, custom_command_type=custom)

    def load_command_table(self, args):
        with self.command_group('aksarc') as g:
            g.custom_command('standin-version', 'standin_version')
        return self.command_table


COMMAND_LOADER_CLS = StandinCommandsLoader
'''
STANDIN_CUSTOM = """\
def standin_version():
    import kubernetes
    return kubernetes.__version__
"""
STANDIN_METADATA = """\
Metadata-Version: 2.1
Name: aksarc
Version: 1.0.0
Summary: Stand-in for the aksarc extension (kmsverify tests only), bundling kubernetes {version}
"""
STANDIN_AZEXT = '{"azext.minCliCoreVersion": "2.60.0"}\n'


def standin(version):
    """The stand-in aksarc extension folder bundling kubernetes ``version``: built once, then reused."""
    recipe = '\n'.join([version, STANDIN_INIT, STANDIN_CUSTOM, STANDIN_METADATA, STANDIN_AZEXT, sys.version])
    root = STANDINS / 'aksarc-kubernetes-{}-{}'.format(version, hashlib.sha256(recipe.encode()).hexdigest()[:10])
    if (root / '.complete').exists():
        return root / 'aksarc'
    STANDINS.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix='.building-', dir=STANDINS))
    try:
        ext = building / 'aksarc'
        # --target installs every dependency into the folder (none is taken from an environment); --no-compile
        # saves two thirds of the build (Python writes the .pyc files of what az imports, once, on the first run).
        proc = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--disable-pip-version-check',
                               '--no-compile', '--target', str(ext), 'kubernetes=={}'.format(version)],
                              capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            pytest.fail('pip could not install kubernetes=={} for the aksarc stand-in:\n{}'.format(
                version, proc.stderr[-3000:]))
        (ext / 'azext_aksarc').mkdir()
        (ext / 'azext_aksarc' / '__init__.py').write_text(STANDIN_INIT)
        (ext / 'azext_aksarc' / 'custom.py').write_text(STANDIN_CUSTOM)
        (ext / 'azext_aksarc' / 'azext_metadata.json').write_text(STANDIN_AZEXT)
        # az lists a folder as an extension by its NAME*.dist-info (name and version read from METADATA).
        (ext / 'aksarc-1.0.0.dist-info').mkdir()
        (ext / 'aksarc-1.0.0.dist-info' / 'METADATA').write_text(STANDIN_METADATA.format(version=version))
        (building / '.complete').write_text(recipe)
        try:
            os.rename(building, root)
        except OSError:  # built meanwhile by another run, or an unfinished leftover
            if not (root / '.complete').exists():
                shutil.rmtree(root, ignore_errors=True)
                os.rename(building, root)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return root / 'aksarc'


def beside_aksarc(tmp_path, installed, version):
    """az with an extension folder holding the aksarc stand-in (kubernetes ``version``) and our installed wheel."""
    aksarc = standin(version)
    ext_dir = tmp_path / 'extensions'
    ext_dir.mkdir()
    (ext_dir / 'aksarc').symlink_to(aksarc, target_is_directory=True)
    (ext_dir / 'kmsverify').symlink_to(installed, target_is_directory=True)
    az = Az(tmp_path / 'azure-config', env={'AZURE_EXTENSION_DIR': str(ext_dir)})
    listed = az('extension', 'list', '--query', '[].[name, version]', '-o', 'tsv')
    assert listed.code == 0, listed
    ours = re.search(r"^VERSION = '(.*)'", (PROJECT / 'setup.py').read_text(), re.M).group(1)
    assert [line.split('\t') for line in listed.stdout.splitlines()] == [['aksarc', '1.0.0'], ['kmsverify', ours]], \
        listed
    shown = az('aksarc', 'standin-version', '-o', 'tsv')
    assert shown.code == 0, shown
    assert shown.stdout.strip() == version, 'the aksarc stand-in is not loaded with its kubernetes:\n{!r}'.format(shown)
    return az, (ext_dir / 'aksarc', aksarc)


@pytest.mark.parametrize('version', [OLDEST, MIDDLE, LATEST])
def test_verify_passes_with_the_kubernetes_client_of_aksarc(installed, sandbox_factory, tmp_path, version):
    az, folders = beside_aksarc(tmp_path, installed, version)
    box = sandbox_factory(provider='kms-v2')
    result = az('aksarc', 'kms', 'verify', '--kubeconfig', box.kubeconfig, '--secret', 'default/db-user-pass',
                '-o', 'json', '--debug')
    # with --debug the end of stderr is az's own trace: name the error lines first
    errors = [line for line in result.stderr.splitlines() if 'Error' in line or line.startswith('ERROR')]
    assert result.code == 0, '{}\n{!r}'.format('\n'.join(errors[-5:]), result)
    assert result.json()['passed'] is True
    # The command logs which client it imported: it must be aksarc's, which comes first on sys.path.
    found = re.findall(r'kubernetes client (\S+) from (\S+)', result.stderr)
    assert found, 'no "kubernetes client <version> from <path>" line in the --debug output:\n{}'.format(
        result.stderr[-3000:])
    client_version, client_path = found[0]
    assert client_version == version, found
    assert any(client_path.startswith(str(folder)) for folder in folders), (found, folders)
    assert_no_leak(result)


def test_a_client_older_than_supported_is_one_clear_error(installed, sandbox_factory, tmp_path):
    az, _ = beside_aksarc(tmp_path, installed, TOO_OLD)
    box = sandbox_factory(provider='kms-v2')
    result = az('aksarc', 'kms', 'verify', '--kubeconfig', box.kubeconfig, '--secret', 'default/db-user-pass',
                '-o', 'json')
    assert result.code in (1, 2), result
    assert 'Traceback' not in result.output, result
    naming_both = [line for line in result.stderr.splitlines() if SUPPORTED in line and TOO_OLD in line]
    assert len(naming_both) == 1, 'expected one line naming {!r} and {}:\n{!r}'.format(SUPPORTED, TOO_OLD, result)
    assert_no_leak(result)
