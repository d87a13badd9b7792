"""Cluster.exec keeps every byte of etcdctl's output, whichever of its reads meets the end of the stream.

The kubernetes client's WSClient buffers frames per channel; *any* read of a channel with nothing buffered
runs an ``update()``, which takes every frame already there, the close included. So the close can arrive
inside ``read_stderr()``, together with the last stdout frames. This fake delivers one batch of frames per
``update()``, exactly as WSClient buffers them, to make that order deterministic.
"""

import json

import pytest

from azext_kmsverify.cluster import Cluster
from azext_kmsverify.credentials import Deadline

SUCCESS = json.dumps({'metadata': {}, 'status': 'Success'}).encode()


class FakeExecClient:
    """WSClient's buffering: update() appends one arriving batch to per-channel buffers; a read takes the
    buffer, and runs update() first when the channel has nothing buffered."""

    def __init__(self, batches):
        self.batches = list(batches)
        self.buffers = {}
        self.open = True
        self.updates = 0

    def is_open(self):
        return self.open

    def update(self, timeout=0):
        if not self.open or not self.batches:
            return
        self.updates += 1
        for channel, data in self.batches.pop(0):
            if channel is None:
                self.open = False
                return
            self.buffers[channel] = self.buffers.get(channel, b'') + data

    def read_channel(self, channel, timeout=0):
        if channel not in self.buffers:
            self.update(timeout)
        return self.buffers.pop(channel, b'')

    def read_stdout(self, timeout=0):
        return self.read_channel(1, timeout)

    def read_stderr(self, timeout=0):
        return self.read_channel(2, timeout)

    def close(self):
        self.open = False


def _cluster():
    cluster = object.__new__(Cluster)
    cluster.deadline = Deadline(30)
    cluster.credential = 'kubeconfig'
    cluster.server = 'https://127.0.0.1:6443'
    cluster.core = type('Core', (), {'connect_get_namespaced_pod_exec': lambda *a, **k: None})()
    return cluster


@pytest.mark.parametrize('batches', [
    # the close comes with the last stdout, in the update run by read_stderr()
    [[(1, b'A' * 1000)], [(1, b'B' * 5000), (3, SUCCESS), (None, b'')]],
    # the close comes in the update run by read_stdout() after an empty stderr read
    [[(2, b'warn ')], [(1, b'A' * 10), (2, b'more'), (3, SUCCESS), (None, b'')]],
    # everything at once
    [[(1, b'A' * 7), (1, b'B' * 9), (2, b'e'), (3, SUCCESS), (None, b'')]],
])
def test_exec_keeps_output_buffered_with_the_close(monkeypatch, batches):
    import kubernetes.stream
    expected_out = b''.join(d for batch in batches for ch, d in batch if ch == 1)
    expected_err = b''.join(d for batch in batches for ch, d in batch if ch == 2)
    fake = FakeExecClient(batches)
    monkeypatch.setattr(kubernetes.stream, 'stream', lambda *a, **k: fake)
    result = _cluster().exec('etcd-node', 'etcd', ['etcdctl', 'get', '--', '/registry/secrets/'])
    assert result.returncode == 0
    assert result.stdout == expected_out
    assert result.stderr == expected_err
