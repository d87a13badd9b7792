"""The pipeline recipes in examples/pipelines are parsed, checked for what their platform needs, and every
`az aksarc kms` command in them is run through the installed extension: the parser and validators must accept it
(exit 2 is a rejected argument; signed out, an accepted command stops at the sign-in instead)."""

import re
import shlex

import pytest
import yaml

from tests.conftest import PROJECT

RECIPES = PROJECT / 'examples' / 'pipelines'
GITHUB = RECIPES / 'github-actions.yml'
DEVOPS = sorted(RECIPES.glob('azure-pipelines*.yml'))


def _steps(doc):
    for step in doc.get('steps', []):
        yield step
    for job in doc.get('jobs', []) if isinstance(doc.get('jobs'), list) else (doc.get('jobs') or {}).values():
        yield from job.get('steps', [])


def _scripts(doc):
    for step in _steps(doc):
        script = step.get('run') or (step.get('inputs') or {}).get('inlineScript')
        if script:
            yield script


def _commands(doc):
    """Each command of the recipe's scripts, continuation lines joined."""
    for script in _scripts(doc):
        for line in script.replace('\\\n', ' ').splitlines():
            line = line.strip()
            if line.startswith('az '):
                yield line.split(' > ', 1)[0]


def _concrete(command, folder):
    """Pipeline variables replaced by values: paths by an existing folder, the shard by 1/4, the rest by a word."""
    command = re.sub(r'\$\(System\.JobPositionInPhase\)/\$\(System\.TotalJobsInPhase\)', '1/4', command)
    command = re.sub(r'\$\(Build\.ArtifactStagingDirectory\)|\$RUNNER_TEMP|\$\{\{ runner\.temp \}\}',
                     str(folder), command)
    command = re.sub(r'\$\([^)]*\)|\$\{\{[^}]*\}\}', 'x1', command)
    return shlex.split(command)


def _load(path):
    return yaml.safe_load(path.read_text(encoding='utf-8'))


def test_every_recipe_is_there_and_parses():
    assert GITHUB.is_file() and len(DEVOPS) >= 2
    for path in [GITHUB, *DEVOPS]:
        doc = _load(path)
        assert any(c.startswith('az aksarc kms ') for c in _commands(doc)), path
        assert 'az extension add --name kmsverify --yes --only-show-errors' in list(_commands(doc)), \
            f'{path.name}: installs by name from the index'


def test_github_workflow_signs_in_with_oidc_and_uploads_sarif_always():
    doc = _load(GITHUB)
    assert doc['permissions']['id-token'] == 'write'
    assert doc['permissions']['security-events'] == 'write'
    steps = list(_steps(doc))
    login = [s for s in steps if str(s.get('uses', '')).startswith('azure/login@')]
    assert login and 'client-secret' not in login[0]['with'] and 'creds' not in login[0]['with']
    sarif = [s for s in steps if str(s.get('uses', '')).startswith('github/codeql-action/upload-sarif@v4')]
    assert sarif and sarif[0]['if'] == 'always()'
    assert any('--sarif' in c for c in _commands(doc))
    assert any('GITHUB_STEP_SUMMARY' in s for s in _scripts(doc))
    assert any('junit' in str(s.get('uses', '')) and s.get('if') == 'always()' for s in steps)


@pytest.mark.parametrize('path', DEVOPS, ids=lambda p: p.name)
def test_devops_pipeline_publishes_junit_and_sarif_on_schedule(path):
    doc = _load(path)
    assert doc['schedules'] and doc['schedules'][0]['cron']
    steps = list(_steps(doc))
    tasks = {s.get('task') for s in steps}
    assert {'AzureCLI@2', 'PublishTestResults@2', 'AdvancedSecurity-Publish@1'} <= tasks
    publish = next(s for s in steps if s.get('task') == 'PublishTestResults@2')
    assert publish['inputs']['failTaskOnFailedTests'] is True and publish['condition'] == 'always()'
    for step in steps:
        if step.get('task') == 'AzureCLI@2':
            assert step['inputs']['failOnStandardError'] is True
    assert all('--only-show-errors' in c for c in _commands(doc) if c.startswith('az aksarc'))


@pytest.mark.parametrize('path', [GITHUB, *DEVOPS], ids=lambda p: p.name)
def test_the_extension_accepts_every_command(az, path, tmp_path):
    commands = [c for c in _commands(_load(path)) if c.startswith('az aksarc kms ')]
    assert commands
    for command in commands:
        args = _concrete(command, tmp_path)[1:]
        result = az(*args, timeout=120)
        assert result.code != 2, f'{command}\n{result}'
        assert 'unrecognized arguments' not in result.stderr and 'the following arguments' not in result.stderr
        assert 'Traceback' not in result.output
