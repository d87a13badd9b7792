# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""The argv of an ``etcdctl get`` for a direct exec (no shell, so no quoting). Pure."""

from __future__ import annotations

from azext_kmsverify import defaults

WRITE_OUT_FORMATS = ('protobuf', 'json', 'fields')


def _check_key(name: str, key: str, *, allow_del: bool = False) -> None:
    if not isinstance(key, str):
        raise TypeError(f'{name} must be str, not {type(key).__name__}')
    if not key:
        raise ValueError(f'{name} must not be empty')
    if '\x00' in key:
        raise ValueError(f'{name} must not contain NUL (exec argv cannot carry it)')
    top = 0x7F if allow_del else 0x7E
    if not all(0x01 <= ord(c) <= top for c in key):
        # Kubernetes keys are ASCII; anything else would depend on how the exec layer encodes argv.
        raise ValueError(f'{name} must be ASCII')


def _check_arg(name: str, value: str) -> None:
    if not isinstance(value, str) or not value or '\x00' in value:
        raise ValueError(f'{name} must be a non-empty string without NUL')


def etcdctl_argv(*, key: str, range_end: str | None = None, prefix: bool = False, limit: int | None = None,
                 rev: int | None = None, keys_only: bool = False, write_out: str = 'protobuf',
                 endpoint: str = defaults.ETCD_ENDPOINT, cacert: str | None, cert: str | None, key_file: str | None,
                 command_timeout: int | None = None, executable: str = 'etcdctl') -> list[str]:
    """Build the argv of an ``etcdctl get`` for a direct exec (no shell, so no quoting).

    Global flags come before ``get``; the key (and range end) come after ``--`` so a key starting
    with '-' is never read as a flag (checked with etcdctl 3.4.23 and 3.5.1). ``--flag=value``
    forms throughout. ``cacert``/``cert``/``key_file`` set to None omit the flag (plain HTTP).
    """
    _check_key('key', key, allow_del=True)
    if range_end is not None:
        _check_key('range_end', range_end, allow_del=True)
        if prefix:
            raise ValueError('range_end and prefix are mutually exclusive')
    if write_out not in WRITE_OUT_FORMATS:
        raise ValueError(f'unsupported write_out {write_out!r}; expected one of {WRITE_OUT_FORMATS}')
    for name, number in (('limit', limit), ('rev', rev), ('command_timeout', command_timeout)):
        if number is not None and (isinstance(number, bool) or not isinstance(number, int) or number < 1):
            raise ValueError(f'{name} must be a positive integer or None')
    _check_arg('executable', executable)
    _check_arg('endpoint', endpoint)

    argv = [executable, f'--endpoints={endpoint}']
    for flag, path in (('--cacert', cacert), ('--cert', cert), ('--key', key_file)):
        if path is not None:
            _check_arg(flag, path)
            argv.append(f'{flag}={path}')
    if command_timeout is not None:
        argv.append(f'--command-timeout={command_timeout}s')
    argv += ['get', f'--write-out={write_out}']
    if prefix:
        argv.append('--prefix')
    if limit is not None:
        argv.append(f'--limit={limit}')
    if rev is not None:
        argv.append(f'--rev={rev}')
    if keys_only:
        argv.append('--keys-only')
    argv += ['--', key]
    if range_end is not None:
        argv.append(range_end)
    return argv


def prefix_range_end(prefix: str) -> str:
    """etcd's range end for ``prefix``: drop trailing 0xff bytes, increment the last byte.

    Only ASCII prefixes are accepted (argv carries text); an empty prefix would need the
    range end "\\x00" (all keys), which argv cannot carry, so it is rejected.
    """
    _check_key('prefix', prefix)
    raw = bytearray(prefix.encode('ascii'))
    raw[-1] += 1  # keys are 0x01..0x7e, so this stays ASCII (at most 0x7f) and never carries
    return raw.decode('ascii')
