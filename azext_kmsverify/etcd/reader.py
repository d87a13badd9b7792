# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Reads keys from etcd through an injected ``run(argv)`` that execs etcdctl in the etcd pod. Pure.

Values are secrets (possibly plaintext): nothing here puts value bytes into a repr, a log message or an
exception message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from azext_kmsverify import defaults
from azext_kmsverify.etcd.argv import etcdctl_argv, prefix_range_end
from azext_kmsverify.etcd.protobuf import parse_protobuf
from azext_kmsverify.etcd.records import EtcdctlError, EtcdOutputError, KeyValue, RangeResult
from azext_kmsverify.etcd.stderr import explain_etcdctl_error, stderr_text, summarize_stderr


class EtcdReader:
    """Reads keys through an injected ``run(argv)`` that execs etcdctl in the etcd pod and returns a result
    with ``returncode``, ``stdout`` and ``stderr``.

    After :meth:`iter_prefix` starts, ``revision`` is the revision the scan is pinned to and
    ``total`` the number of keys in the range at that revision (for progress).

    ``page_bytes`` keeps pages near that many bytes of keys and values: etcd pages by count only, and a page
    is held whole in memory (by etcdctl's output, then here), so a count alone gives pages of a few hundred
    kilobytes of small secrets or of gigabytes of Helm releases. With it, the first page is small
    (:data:`FIRST_PAGE_KEYS`), and each next page's limit is what the average key/value of the page before
    gives for ``page_bytes``, growing at most fourfold per page, never above ``page_size``.
    """

    def __init__(self, run: Callable[[list[str]], Any], *, cacert: str | None = defaults.ETCD_CACERT,
                 cert: str | None = defaults.ETCD_CERT, key_file: str | None = defaults.ETCD_KEY,
                 endpoint: str = defaults.ETCD_ENDPOINT, command_timeout: int | None = None,
                 executable: str = 'etcdctl', page_size: int = defaults.PAGE_SIZE, page_bytes: int | None = None,
                 write_out: str = 'protobuf', parse: Callable[[bytes], RangeResult] = parse_protobuf):
        # ``write_out``/``parse``: the tests read the same ranges as -w json and -w fields to cross-check.
        _check_page_size(page_size)
        if page_bytes is not None:
            _check_page_size(page_bytes)
        self.page_bytes = page_bytes
        self._run = run
        self._common = {'cacert': cacert, 'cert': cert, 'key_file': key_file, 'endpoint': endpoint,
                        'command_timeout': command_timeout, 'executable': executable, 'write_out': write_out}
        self._parse = parse
        self.page_size = page_size
        self.revision: int | None = None
        self.total: int | None = None

    def _range(self, **kwargs) -> RangeResult:
        argv = etcdctl_argv(**kwargs, **self._common)
        result = self._run(argv)
        if result.returncode != 0:
            summary = summarize_stderr(result.stderr)
            raise EtcdctlError(
                f"etcdctl exited with code {result.returncode}: {summary or 'no error message'}",
                summary, result.returncode, hint=explain_etcdctl_error(stderr_text(result.stderr)))
        return self._parse(result.stdout)

    def get(self, key: str, *, rev: int | None = None) -> KeyValue | None:
        """The key/value stored at exactly ``key`` (at revision ``rev`` if given), or None."""
        return self._get(key, rev)[0]

    def _get(self, key: str, rev: int | None) -> tuple[KeyValue | None, int]:
        result = self._range(key=key, rev=rev)
        wanted = key.encode('ascii')
        found = [kv for kv in result.kvs if kv.key == wanted]
        if len(found) != len(result.kvs) or len(found) > 1:
            raise EtcdOutputError(f'etcdctl returned {len(result.kvs)} key(s) for a single-key get')
        return (found[0] if found else None), result.revision

    def iter_prefix(self, prefix: str, page_size: int | None = None, *, keys_only: bool = False
                    ) -> Iterator[KeyValue]:
        """Yield every key/value under ``prefix`` in key order, one page in memory at a time.

        The first page is read at the current revision R; later pages read ``[last key, range end)``
        pinned with ``--rev=R``, so the scan is one consistent snapshot. argv cannot carry the NUL
        that would make "just after the last key", so each later page starts AT the last key with
        ``--limit`` one higher and its first (already yielded) key is dropped (see :func:`_page_start` for
        keys argv cannot carry).
        """
        page_size = self.page_size if page_size is None else page_size
        _check_page_size(page_size)
        range_end = prefix_range_end(prefix)
        self.revision = None
        self.total = None

        limit = page_size if self.page_bytes is None else min(page_size, FIRST_PAGE_KEYS)
        page = self._range(key=prefix, range_end=range_end, limit=limit, keys_only=keys_only)
        self.revision = page.revision
        self.total = page.count
        kvs, more = page.kvs, page.more
        del page
        while True:
            yield from kvs
            if not more:
                return
            if not kvs:
                raise EtcdOutputError('etcdctl reported more keys but returned an empty page')
            last = kvs[-1].key
            if self.page_bytes is not None:
                limit = _next_limit(kvs, limit, page_size, self.page_bytes)
            del kvs  # hold at most one page
            start, exact = _page_start(last)
            want = limit + 1
            while True:
                page = self._range(key=start, range_end=range_end, limit=want, rev=self.revision,
                                   keys_only=keys_only)
                if exact and (not page.kvs or page.kvs[0].key != last):
                    raise EtcdOutputError(
                        f"page at revision {self.revision} does not start at the previous page's last key")
                kvs, more, returned = [kv for kv in page.kvs if kv.key > last], page.more, len(page.kvs)
                del page
                if kvs or not more:
                    break
                if exact or returned < want:
                    raise EtcdOutputError('etcdctl reported more keys but the page made no progress')
                want *= 2  # only keys up to the last one came back (a non-ASCII start): widen the page
            if not kvs and more:
                raise EtcdOutputError('etcdctl reported more keys but the page made no progress')


#: Keys in the first page when pages are sized by bytes: nothing is known of the values yet.
FIRST_PAGE_KEYS = 100


def _next_limit(kvs: list[KeyValue], limit: int, page_size: int, page_bytes: int) -> int:
    """The next page's key limit: ``page_bytes`` at this page's average key/value size, at most four times
    this page's limit (sizes change along the key space) and ``page_size``; at least one key."""
    size = sum(len(kv.key) + len(kv.value) for kv in kvs) / len(kvs)
    return max(1, min(page_size, 4 * limit, int(page_bytes / max(size, 1.0))))


def _check_page_size(page_size: int) -> None:
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise ValueError('page_size must be a positive integer')


def _page_start(key: bytes) -> tuple[str, bool]:
    """Where the next page starts after ``key``, as argv can carry it: ``(start, exact)``.

    argv is text (the exec API passes it through the container runtime as UTF-8), so a key with a byte of
    0x80 or more cannot be given as it is. The page then starts at the key's ASCII head followed by DEL (0x7f),
    which sorts before every such byte and after the head's other keys; a key with a NUL (which argv cannot
    carry either) starts the page at its head alone, which sorts before it. Either way the keys up to ``key``
    are read again and dropped. ``exact`` means the page starts at ``key`` itself.
    """
    if not key:
        raise EtcdOutputError('etcdctl returned an empty key')
    for index, byte in enumerate(key):
        if not 0x01 <= byte <= 0x7E:
            if index == 0:
                raise EtcdOutputError('etcdctl returned a key that cannot start a page')
            head = key[:index].decode('ascii')
            return (head if byte == 0 else head + '\x7f'), False
    return key.decode('ascii'), True
