"""--sarif through the installed wheel: a SARIF 2.1.0 file valid against the OASIS schema, beside the JSON result
it projects (one result per failing or stale secret, stable fingerprints across runs), for verify and reencrypt;
the JSON keeps to the result contract (tests/conftest.py validates every result)."""

import json
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import verify

SARIF_SCHEMA = json.loads((Path(__file__).parents[1] / 'schemas' / 'sarif-schema-2.1.0.json').read_text())


@pytest.fixture(scope='module')
def box(tmp_path_factory):
    """A sandbox of this module's own: the shared ones are rewritten by other tests (reencrypt, rotations)."""
    from tests.sandbox.control import Sandbox
    box = Sandbox(str(tmp_path_factory.mktemp('sarif')))
    box.up(provider='kms-v2', history=True)
    yield box
    box.down()


def _sarif(path):
    log = json.loads(path.read_text(encoding='ascii'))
    jsonschema.validate(log, SARIF_SCHEMA)
    return log['runs'][0]


def test_verify_all_secrets_writes_valid_sarif_with_stable_fingerprints(az, box, tmp_path):
    first = verify(az, box, '--all-secrets', '--sarif', tmp_path / 'a.sarif', '-o', 'json')
    assert first.code == 4, first
    result = first.json()
    assert result['schemaVersion'].startswith('1.') and result['command'] == 'verify'
    assert result['cluster']['server'] and result['startedAt'] <= result['finishedAt']
    run = _sarif(tmp_path / 'a.sarif')
    assert run['tool']['driver']['version'] == result['extensionVersion']
    assert run['invocations'][0]['exitCode'] == 4 and run['invocations'][0]['executionSuccessful'] is True
    secrets = {(r['ruleId'], r['locations'][0]['logicalLocations'][0]['fullyQualifiedName'].rsplit('/', 2)[-1])
               for r in run['results'] if r['locations'][0]['logicalLocations'][0]['kind'] == 'resource'}
    failing = {(f['name']) for f in result['scan']['failing']}
    stale = {(s['name']) for s in result['scan']['stale']}
    assert {n for rule, n in secrets if rule == 'AllSecretsEncrypted'} == failing
    assert {n for rule, n in secrets if rule == 'KmsV2CurrentKey'} == stale
    again = verify(az, box, '--all-secrets', '--sarif', tmp_path / 'b.sarif', '-o', 'none')
    assert again.code == 4
    prints = [sorted(r['partialFingerprints'].values()) for r in run['results']]
    assert prints == [sorted(r['partialFingerprints'].values()) for r in _sarif(tmp_path / 'b.sarif')['results']]


def test_reencrypt_dry_run_writes_planned_targets_as_notes(az, box, tmp_path):
    dry = az('aksarc', 'kms', 'reencrypt', '--kubeconfig', box.kubeconfig, '--dry-run', '--sarif',
             tmp_path / 'r.sarif', '-o', 'json')
    assert dry.code == 4, dry
    planned = {t['name'] for t in dry.json()['targets'] if t['outcome'] == 'planned'}
    run = _sarif(tmp_path / 'r.sarif')
    notes = [r for r in run['results'] if r['ruleId'] == 'SecretReencrypted']
    assert planned and {r['level'] for r in notes} == {'note'} and len(notes) == len(planned)


def test_a_run_that_could_not_verify_still_writes_sarif_saying_why(az, tmp_path):
    missing = tmp_path / 'nowhere.kubeconfig'
    missing.write_text('apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: '
                       'https://127.0.0.1:1\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n'
                       'current-context: c\nusers:\n- name: u\n  user:\n    token: abc\n')
    result = az('aksarc', 'kms', 'verify', '--kubeconfig', missing, '--timeout', '10', '--sarif',
                tmp_path / 'f.sarif', '--junit-xml', tmp_path / 'f.xml')
    assert result.code == 1, result
    run = _sarif(tmp_path / 'f.sarif')
    assert run['invocations'][0]['executionSuccessful'] is False and run['invocations'][0]['exitCode'] == 1
    assert [r['ruleId'] for r in run['results']] == ['Verification']


def test_junit_and_sarif_cannot_share_a_file(az, box, tmp_path):
    same = verify(az, box, '--sarif', tmp_path / 'r', '--junit-xml', tmp_path / 'r')
    assert same.code == 2 and 'same file' in same.stderr
