"""EtcdReader pages sized by bytes (``page_bytes``): the same keys in the same order, pages near that size."""

import re

import pytest

from azext_kmsverify.etcd.reader import FIRST_PAGE_KEYS, EtcdReader

from tests.unit.test_etcd_parse import TLS, FakeEtcd

PREFIX = '/registry/secrets/'


def _store(sizes):
    """Keys ns/s00000.. in order, with values of the given sizes."""
    return {'{}ns/s{:05d}'.format(PREFIX, i).encode(): b'k8s\x00' + b'v' * size for i, size in enumerate(sizes)}


def _limits(fake):
    return [int(re.search(r'--limit=(\d+)', ' '.join(call)).group(1)) for call in fake.calls]


def test_pages_follow_the_value_sizes():
    store = _store([1000] * 3000)
    fake = FakeEtcd(store)
    reader = EtcdReader(fake, page_size=1000, page_bytes=50_000, **TLS)
    assert [kv.key for kv in reader.iter_prefix(PREFIX)] == sorted(store)
    limits = _limits(fake)
    assert limits[0] == FIRST_PAGE_KEYS
    per_kv = 1000 + 4 + len(PREFIX) + len('ns/s00000')
    assert set(limits[1:]) == {50_000 // per_kv + 1}  # + 1: each later page starts at the previous last key


def test_small_values_grow_pages_fourfold_up_to_page_size():
    store = _store([10] * 5000)
    fake = FakeEtcd(store)
    reader = EtcdReader(fake, page_size=2000, page_bytes=4 << 20, **TLS)
    assert [kv.key for kv in reader.iter_prefix(PREFIX)] == sorted(store)
    assert _limits(fake) == [100, 401, 1601, 2001, 2001]


def test_a_block_of_large_values_shrinks_the_next_pages():
    store = _store([10] * 300 + [10_000] * 1000 + [10] * 2000)
    fake = FakeEtcd(store)
    reader = EtcdReader(fake, page_size=1000, page_bytes=100_000, **TLS)
    assert [kv.key for kv in reader.iter_prefix(PREFIX)] == sorted(store)
    limits = _limits(fake)
    # the page that runs into the large values is the only big one; then ~10 of them (100 kB) per page, then
    # pages grow again, fourfold per page, over the small values
    assert limits[:2] == [100, 401]
    assert max(limits[2:]) == 1001 and min(limits) <= 21
    big = limits.index(min(limits))
    assert all(b >= a for a, b in zip(limits[big + 1:], limits[big + 2:]))
    assert len(fake.calls) < 150


def test_without_page_bytes_pages_are_page_size():
    store = _store([10] * 25)
    fake = FakeEtcd(store)
    list(EtcdReader(fake, page_size=10, **TLS).iter_prefix(PREFIX))
    assert _limits(fake) == [10, 11, 11]


@pytest.mark.parametrize('page_bytes', [0, -1, True])
def test_page_bytes_must_be_positive(page_bytes):
    with pytest.raises(ValueError):
        EtcdReader(FakeEtcd({}), page_bytes=page_bytes, **TLS)


@pytest.mark.parametrize('page_size', [1, 2, 3])
def test_keys_with_a_nul_byte_at_every_page_boundary_are_paged_past(page_size):
    """argv cannot carry NUL: a page after such a key starts at its head and the keys up to it are dropped."""
    store = {(PREFIX + 'zz/a').encode(): b'k8s\x00v', (PREFIX + 'zz/a\x00').encode(): b'k8s\x00v',
             (PREFIX + 'zz/a\x00\x00b').encode(): b'k8s\x00v', (PREFIX + 'zz/a\x00c').encode(): b'k8s\x00v',
             (PREFIX + 'zz/a\x01').encode(): b'k8s\x00v', (PREFIX + 'zz/b\x00\xff').encode(): b'k8s\x00v',
             (PREFIX + 'zz/c').encode(): b'k8s\x00v'}
    fake = FakeEtcd(store)
    keys = [kv.key for kv in EtcdReader(fake, page_size=page_size, **TLS).iter_prefix(PREFIX)]
    assert keys == sorted(store)
    assert all('\x00' not in arg for call in fake.calls for arg in call)
