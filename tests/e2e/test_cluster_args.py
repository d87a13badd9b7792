"""Cluster selection through the installed wheel: a configured default group never turns --kubeconfig into ARM,
and a failing -o table names the secrets and the fix."""

import pytest

from tests.conftest import Az, make_secret


def _kubeconfig_run(az, box, *args, env=None):
    return az('aksarc', 'kms', 'verify', '--kubeconfig', box.kubeconfig, '--secret', 'default/db-user-pass',
              *args, env=env)


def test_defaults_group_from_the_environment_does_not_break_kubeconfig(az, sandbox_factory):
    box = sandbox_factory(provider='kms-v2')
    result = _kubeconfig_run(az, box, '-o', 'json', env={'AZURE_DEFAULTS_GROUP': 'some-default-rg'})
    assert result.code == 0, result
    assert result.json()['cluster']['source'] == 'kubeconfig'


def test_defaults_group_from_az_config_does_not_break_kubeconfig(installed, sandbox_factory, tmp_path):
    box = sandbox_factory(provider='kms-v2')
    az = Az(tmp_path / 'azure-config')
    configured = az('config', 'set', 'defaults.group=configured-rg')
    assert configured.code == 0, configured
    assert 'configured-rg' in (tmp_path / 'azure-config' / 'config').read_text()
    result = _kubeconfig_run(az, box, '-o', 'json')
    assert result.code == 0, result
    assert result.json()['cluster']['resourceGroup'] is None


def test_an_explicit_group_with_kubeconfig_is_still_refused(az, sandbox_factory):
    box = sandbox_factory(provider='kms-v2')
    result = _kubeconfig_run(az, box, '-g', 'explicit-rg', env={'AZURE_DEFAULTS_GROUP': 'some-default-rg'})
    assert result.code == 2, result
    assert '--kubeconfig cannot be used with --resource-group/--name' in result.stderr


def test_a_default_group_with_name_selects_arm(az):
    result = az('aksarc', 'kms', 'verify', '-n', 'some-cluster', env={'AZURE_DEFAULTS_GROUP': 'default-rg'})
    # signed out: ARM mode was chosen (with the default group), and it fails on the missing sign-in, not on arguments
    assert result.code == 1, result
    assert 'az login' in result.stderr and 'No cluster given' not in result.stderr


@pytest.mark.parametrize('count', [1, 14])
def test_failing_table_names_the_secrets_and_the_fix(az, sandbox_factory, count):
    box = sandbox_factory(provider='identity')
    for i in range(count):
        make_secret(box, 'default', f'tablecheck{count}-{i:02d}', {'k': 'v'})
    args = ('aksarc', 'kms', 'verify', '--kubeconfig', box.kubeconfig, '--all-secrets')
    body = az(*args, '-o', 'json').json()
    findings = [f"{f['namespace']}/{f['name']}" for f in body['scan']['failing'] + body['scan']['stale']]
    assert sum(1 for f in findings if f.startswith(f'default/tablecheck{count}-')) == count
    result = az(*args, '-o', 'table')
    assert result.code == 4, result
    rows = [line.split()[1] for line in result.stdout.splitlines() if line.startswith('Secret ')
            and len(line.split()) > 1 and '/' in line.split()[1]]
    assert rows == findings[:10]
    more = [line for line in result.stdout.splitlines() if line.startswith('Secret') and ' more ' in line]
    assert bool(more) == (len(findings) > 10), result.stdout
    if more:
        assert f'and {len(findings) - 10} more' in more[0]
    remediation = [line for line in result.stdout.splitlines() if line.startswith('Remediation')]
    assert len(remediation) == 1 and 'az aksarc kms reencrypt' in remediation[0]
    assert len(remediation[0].rstrip()) < 200, 'the remediation is one short line (the full text: -o json)'
    assert 'kubectl replace' in body['scan']['remediation']
