"""The JSON of every command, from a fixed sandbox run, against goldens recorded before the run frame (issue 14).

A refactoring must not change what a user sees: each command's ``-o json`` (and its exit code) is compared with
``tests/fixtures/golden/*.json``, with what differs from run to run masked (times, revisions, key ids, ports,
the random probe's name, uids). ``KMSVERIFY_RECORD_GOLDEN=1`` writes the goldens anew instead of comparing (only
when the JSON is meant to change: say why in the commit).
"""

import difflib
import json
import os
import re

import pytest

from tests.sandbox.control import Sandbox
from tests.sandbox.fleet import Fleet

from tests.conftest import PROJECT

GOLDEN = PROJECT / 'tests' / 'fixtures' / 'golden'
RECORD = os.environ.get('KMSVERIFY_RECORD_GOLDEN') == '1'

# Keys whose values differ between runs of the same sandbox (numbers and ids), masked wherever they appear.
VOLATILE_KEYS = {'durationSeconds', 'writesPerSecond', 'revision', 'modRevision', 'modRevisionBefore',
                 'modRevisionAfter', 'keyId', 'keyIdAfter', 'currentKeyId', 'etcdPod', 'server', 'id',
                 'subscriptionId', 'throttled', 'lastWrite', 'writtenAt'}
VOLATILE_TEXT = [
    (re.compile(r'kmsverify-probe-[0-9a-z]+'), 'kmsverify-probe-X'),
    (re.compile(r'bootstrap-token-[0-9a-z]{6}'), 'bootstrap-token-X'),
    (re.compile(r'https://[0-9a-zA-Z.\-]+:\d+'), 'https://HOST:PORT'),
    (re.compile(r'\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z?'), 'TIME'),
    (re.compile(r'key id [^\s,;)]+'), 'key id K'),
    (re.compile(r'(?:sha256:)?[0-9a-f]{16,}'), 'HEX'),
    (re.compile(r'\b\d+(\.\d+)? ?s\b'), 'N s'),
    (re.compile(r'etcd-[0-9a-z\-]+'), 'etcd-POD'),
    (re.compile(r'revision \d+'), 'revision N'),
    (re.compile(r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}'), 'UUID'),
]


# Fields the versioned contract added after the goldens were recorded (schema 1.0: additions only). They are
# checked here to be there, then left out of the comparison, which proves that nothing else changed.
CONTRACT_FIELDS = ('schemaVersion', 'extensionVersion', 'command', 'startedAt', 'finishedAt')


def without_additions(result):
    for key in CONTRACT_FIELDS:
        assert key in result, f'{key} missing'
        del result[key]
    for entry in [result, *(result.get('clusters') or [])]:
        cluster = entry.get('cluster') or {}
        if cluster.get('source') == 'azure':
            assert cluster.pop('id').startswith('/subscriptions/')
    return result


def mask(value, key=None):
    if key in VOLATILE_KEYS and value is not None:
        return '<masked>'
    if isinstance(value, dict):
        return {k: mask(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v) for v in value]
    if isinstance(value, str):
        for pattern, replacement in VOLATILE_TEXT:
            value = pattern.sub(replacement, value)
    return value


@pytest.fixture(scope='module')
def box(tmp_path_factory):
    box = Sandbox(str(tmp_path_factory.mktemp('golden')))
    box.up(provider='kms-v2', history=True)
    yield box
    box.down()


@pytest.fixture(scope='module')
def fleet(tmp_path_factory):
    box = Fleet(str(tmp_path_factory.mktemp('golden-fleet')))
    box.up(clusters=3, providers='kms-v2,identity', disconnected='sandbox-3')
    yield box
    box.down()


def _compare(name, result):
    assert result.code in (0, 1, 3, 4), result
    got = {'exitCode': result.code, 'json': mask(without_additions(result.json()))}
    path = GOLDEN / f'{name}.json'
    if RECORD:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(got, indent=2, sort_keys=True) + '\n')
    want = json.loads(path.read_text())
    if isinstance(got['json'], dict) and 'durationSeconds' not in want['json']:  # verify had none before 1.0
        assert got['json'].pop('durationSeconds') == '<masked>'
    diff = difflib.unified_diff(json.dumps(want, indent=1, sort_keys=True).splitlines(),
                                json.dumps(got, indent=1, sort_keys=True).splitlines(), 'golden', name, lineterm='')
    assert got == want, f'{name}: the JSON changed:\n' + '\n'.join(diff)


def test_every_command_keeps_its_json(sign_in, box, fleet):
    az = sign_in(box)
    arm = box.info['arm']
    where = ['-g', arm['resource_group'], '-n', arm['cluster']]
    seeded = sorted(box.info['seeded'])[0]
    steps = [
        ('verify-probe', ['verify', *where]),
        ('verify-secret', ['verify', *where, '--secret', seeded]),
        ('verify-all-secrets', ['verify', *where, '--all-secrets']),
        ('reencrypt-dry-run', ['reencrypt', *where, '--dry-run']),
        ('reencrypt-yes', ['reencrypt', *where, '--yes']),
        ('verify-all-secrets-after', ['verify', *where, '--all-secrets', '--fail-on-stale']),
    ]
    for name, args in steps:
        _compare(name, az('aksarc', 'kms', *args, '-o', 'json'))
    fleet_az = sign_in(fleet)
    _compare('fleet', fleet_az('aksarc', 'kms', 'verify', '--all-clusters', '--all-secrets', '--max-parallel', '2',
                               '-o', 'json'))
