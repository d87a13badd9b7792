"""etcdctl's text formats (``-w json`` and ``-w fields``), parsed for the tests only.

The product reads ``-w protobuf``; the tests parse the other two formats of the same real etcdctl outputs to
check that all three agree (tests/fixtures/etcdctl).
"""

from __future__ import annotations

import base64
import binascii
import json
import re

from azext_kmsverify.etcd.protobuf import _check_consistency, parse_protobuf
from azext_kmsverify.etcd.records import EtcdOutputError, KeyValue, RangeResult

from tests.support.gostrconv import go_unquote


def _json_int(obj: dict, name: str, where: str) -> int:
    raw = obj.get(name, 0)
    # Go's encoding/json prints int64 as numbers; protojson would print strings. Accept both.
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise EtcdOutputError(f'etcdctl json output: {where}.{name} is not an integer')
    if isinstance(raw, str):
        if not re.fullmatch(r'-?[0-9]{1,20}', raw):
            raise EtcdOutputError(f'etcdctl json output: {where}.{name} is not an integer')
        raw = int(raw)
    return raw


def _b64(raw, what: str) -> bytes:
    if not isinstance(raw, str):
        raise EtcdOutputError(f'etcdctl json output: {what} is not a base64 string')
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        pass  # raised below, outside the handler, so no exception chain carries the input
    raise EtcdOutputError(f'etcdctl json output: {what} is not valid base64')


def parse_json(data: bytes) -> RangeResult:
    """Parse ``etcdctl get -w json`` output (one line; base64 key/value; zero fields omitted)."""
    if isinstance(data, str):
        data = data.encode('utf-8')
    if not data or not bytes(data).strip():
        raise EtcdOutputError('etcdctl json output is empty')
    try:
        doc = json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError; both keep the input
        message = f"etcdctl json output does not parse ({type(exc).__name__} at offset {getattr(exc, 'pos', '?')})"
    else:
        message = None
    if message is not None:
        raise EtcdOutputError(message)
    if not isinstance(doc, dict) or not isinstance(doc.get('header'), dict):
        raise EtcdOutputError('etcdctl json output has no header object')
    revision = _json_int(doc['header'], 'revision', 'header')
    raw_kvs = doc.get('kvs', [])
    if not isinstance(raw_kvs, list):
        raise EtcdOutputError('etcdctl json output: kvs is not a list')
    kvs = []
    for i, item in enumerate(raw_kvs):
        where = f'kvs[{i}]'
        if not isinstance(item, dict) or 'key' not in item:
            raise EtcdOutputError(f'etcdctl json output: {where} is not a key/value object')
        kvs.append(KeyValue(
            key=_b64(item['key'], f'{where}.key'),
            value=_b64(item.get('value', ''), f'{where}.value'),
            create_revision=_json_int(item, 'create_revision', where),
            mod_revision=_json_int(item, 'mod_revision', where),
            version=_json_int(item, 'version', where),
            lease=_json_int(item, 'lease', where),
        ))
    more = doc.get('more', False)
    if not isinstance(more, bool):
        raise EtcdOutputError('etcdctl json output: more is not a boolean')
    result = RangeResult(revision, kvs, more, _json_int(doc, 'count', 'response'))
    return _check_consistency(result, 'json')


_FIELDS_LINE = re.compile(r'"([A-Za-z]+)" : (.*)')
_FIELDS_INT = re.compile(r'-?[0-9]{1,20}')
_KV_INT_FIELDS = {'CreateRevision': 'create_revision', 'ModRevision': 'mod_revision',
                  'Version': 'version', 'Lease': 'lease'}


def parse_fields(data: bytes) -> RangeResult:
    """Parse ``etcdctl get -w fields`` output (``"Name" : value`` lines; Key/Value Go-quoted)."""
    if not isinstance(data, bytes):
        data = bytes(data)
    if not data.strip():
        raise EtcdOutputError('etcdctl fields output is empty')
    try:
        text = data.decode('utf-8')  # %q escapes invalid UTF-8, so valid output always decodes
    except UnicodeDecodeError as exc:
        message = f'etcdctl fields output is not UTF-8 (byte offset {exc.start})'
    else:
        message = None
    if message is not None:
        raise EtcdOutputError(message)

    revision = None
    kvs: list[KeyValue] = []
    current: KeyValue | None = None
    more = None
    count = None
    for lineno, line in enumerate(text.split('\n'), 1):
        if line.endswith('\r'):
            line = line[:-1]  # lossless: a CR inside a quoted value is always escaped
        if not line:
            continue
        m = _FIELDS_LINE.fullmatch(line)
        if m is None:
            raise EtcdOutputError(f"etcdctl fields output line {lineno} is not a '\"Name\" : value' line")
        name, raw = m.groups()
        if count is not None or (more is not None and (name in ('Key', 'Value', 'More') or name in _KV_INT_FIELDS)):
            raise EtcdOutputError(f'etcdctl fields output line {lineno}: {name} after More/Count')
        if name in ('Key', 'Value'):
            try:
                decoded = go_unquote(raw)
            except ValueError as exc:
                message = f'etcdctl fields output line {lineno}: {name} is not a Go quoted string ({exc})'
            else:
                message = None
            if message is not None:
                raise EtcdOutputError(message)
            if name == 'Key':
                current = KeyValue(decoded, b'')
                kvs.append(current)
            elif current is None:
                raise EtcdOutputError(f'etcdctl fields output line {lineno}: Value before any Key')
            else:
                current.value = decoded
        elif name == 'More':
            if raw not in ('true', 'false'):
                raise EtcdOutputError(f'etcdctl fields output line {lineno}: More is not true/false')
            more = raw == 'true'
        else:
            if not _FIELDS_INT.fullmatch(raw):
                # Unknown fields from newer etcdctl releases are tolerated; known ones must be ints.
                if name in _KV_INT_FIELDS or name in ('Revision', 'Count', 'ClusterID', 'MemberID', 'RaftTerm'):
                    raise EtcdOutputError(f'etcdctl fields output line {lineno}: {name} is not an integer')
                continue
            number = int(raw)
            if name in _KV_INT_FIELDS:
                if current is None:
                    raise EtcdOutputError(f'etcdctl fields output line {lineno}: {name} before any Key')
                setattr(current, _KV_INT_FIELDS[name], number)
            elif name == 'Revision':
                revision = number
            elif name == 'Count':
                count = number
    if count is None:
        raise EtcdOutputError('etcdctl fields output has no Count line: truncated?')
    if revision is None:
        revision = 0  # etcdctl 3.6 omits a zero Revision
    return _check_consistency(RangeResult(revision, kvs, bool(more), count), 'fields')


PARSERS = {'protobuf': parse_protobuf, 'json': parse_json, 'fields': parse_fields}


def parse_output(data: bytes, write_out: str) -> RangeResult:
    """Parse etcdctl output of the given ``--write-out`` format."""
    try:
        parser = PARSERS[write_out]
    except KeyError:
        raise ValueError(f'unsupported write_out {write_out!r}; expected one of {tuple(PARSERS)}') from None
    return parser(data)


def text_reader(run, write_out: str = 'protobuf', **kwargs):
    """An EtcdReader that asks etcdctl for ``write_out`` and parses it with that format's parser."""
    from azext_kmsverify.etcd.reader import EtcdReader
    if write_out not in PARSERS:
        raise ValueError(f'unsupported write_out {write_out!r}; expected one of {tuple(PARSERS)}')
    return EtcdReader(run, write_out=write_out, parse=PARSERS[write_out], **kwargs)


def get_many(reader, keys):
    """Each key's value, all read at the revision of the first read (one etcdctl exec per key)."""
    out, rev = {}, None
    for key in keys:
        kv, revision = reader._get(key, rev)  # pylint: disable=protected-access
        if rev is None:
            rev = revision
        out[key] = kv
    return out
