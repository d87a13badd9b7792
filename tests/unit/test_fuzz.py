"""A bounded, seeded mutation fuzz of everything that reads what a cluster (or a user) hands the command:
etcd values, etcdctl output and stderr, readyz bodies, Kubernetes Status and exec status frames, kubeconfigs.
Only the documented exceptions may come out. A few seconds in ``make test``; ``make fuzz`` runs it longer
(KMSVERIFY_FUZZ_SECONDS, KMSVERIFY_FUZZ_SEED)."""

import json
import os
import random
import time

import pytest
import yaml
from azure.cli.core.azclierror import AzCLIError

from azext_kmsverify.errors import exit_code
from azext_kmsverify.auth import kubeconfig as kc
from azext_kmsverify.etcd.protobuf import parse_protobuf
from azext_kmsverify.etcd.records import EtcdOutputError
from azext_kmsverify.etcd.stderr import explain_etcdctl_error, summarize_stderr
from azext_kmsverify.kube.errors import status_message
from azext_kmsverify.kube.execstream import ExecError, _exit_status
from azext_kmsverify.verdict.classify import classify
from azext_kmsverify.verdict.readyz import kms_checks, parse_check_error, parse_readyz

from tests.support.paths import FIXTURES

SECONDS = float(os.environ.get('KMSVERIFY_FUZZ_SECONDS', '0.6'))
SEED = int(os.environ.get('KMSVERIFY_FUZZ_SEED', '20261201'))


def _corpus(folder, pattern):
    return [p.read_bytes() for p in sorted((FIXTURES / folder).rglob(pattern))]


def _mutate(rng, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        if choice < 0.3 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice < 0.5 and data:
            del data[rng.randrange(len(data)):][:rng.randint(1, 64)]
        elif choice < 0.7:
            at = rng.randint(0, len(data))
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif choice < 0.85 and data:
            at = rng.randrange(len(data))
            data[at:at] = data[at:at + rng.randint(1, 256)] * rng.randint(1, 8)
        elif data:
            del data[rng.randrange(len(data)):]
    return bytes(data)


def _run(target, corpus):
    rng = random.Random(f'{SEED}-{target.__name__}')
    deadline = time.monotonic() + SECONDS
    runs = 0
    while time.monotonic() < deadline or runs < 50:
        target(_mutate(rng, rng.choice(corpus)))
        runs += 1
    return runs


def _classify(data):
    result = classify(data)
    assert result['storage'] in ('kms', 'aescbc', 'aesgcm', 'secretbox', 'identity', 'unknown')


def _protobuf(data):
    try:
        parse_protobuf(data)
    except EtcdOutputError:
        pass


def _readyz(data):
    text = data.decode('utf-8', 'replace')
    kms_checks(parse_readyz(text))
    assert isinstance(parse_check_error(text), str)


def _stderr(data):
    assert isinstance(summarize_stderr(data), str)
    assert isinstance(explain_etcdctl_error(data.decode('utf-8', 'replace')), str)


def _status(data):
    assert '\n' not in status_message(data)
    try:
        _exit_status('etcd-0', ['etcdctl'], data, 'etcd')
    except ExecError:
        pass


def _kubeconfig(data):
    config = kc.parse_kubeconfig(data.decode('utf-8', 'replace'))
    if config is None:
        return
    try:
        kc.resolve(config, None, source='k', base_dir='/nonexistent')
    except AzCLIError as error:
        assert exit_code(error) == 2


KUBECONFIG = yaml.safe_dump({
    'apiVersion': 'v1', 'kind': 'Config', 'current-context': 'c',
    'contexts': [{'name': 'c', 'context': {'cluster': 'k', 'user': 'u', 'namespace': 'n'}}],
    'clusters': [{'name': 'k', 'cluster': {'server': 'https://10.0.0.1:6443', 'certificate-authority-data': 'QUJD'}}],
    'users': [{'name': 'u', 'user': {'exec': {'command': 'kubelogin', 'args': ['get-token', '--login', 'azurecli',
                                                                             '--server-id', 'x']}}}]}).encode()
STATUS = [json.dumps(s).encode() for s in (
    {'status': 'Success'}, {'status': 'Failure', 'reason': 'NonZeroExitCode',
                            'details': {'causes': [{'reason': 'ExitCode', 'message': '2'}]}},
    {'kind': 'Status', 'message': 'pods "etcd-0" is forbidden', 'reason': 'Forbidden', 'code': 403})]
STDERR = [b'{"level":"warn","error":"rpc error: code = DeadlineExceeded desc = \\"transport: x\\""}\nError: context '
          b'deadline exceeded\n', b'Error: open /etc/kubernetes/pki/etcd/ca.crt: no such file or directory\n']


@pytest.mark.parametrize('target, corpus', [
    (_classify, _corpus('etcd-values', '*.bin')),
    (_protobuf, _corpus('etcdctl', '*.protobuf')),
    (_readyz, _corpus('readyz', '*.txt')),
    (_stderr, STDERR),
    (_status, STATUS),
    (_kubeconfig, [KUBECONFIG]),
], ids=['classify', 'protobuf', 'readyz', 'stderr', 'status', 'kubeconfig'])
def test_only_documented_exceptions(target, corpus):
    assert corpus, 'fixtures missing'
    assert _run(target, corpus) >= 50
