"""verdict.classify against the etcd value fixtures and synthetic edge cases."""

import base64
import json
import os
import random
import struct

import pytest

from azext_kmsverify.etcd import protowire as pw
from azext_kmsverify.verdict.classify import KEY_ID_MAX_BYTES, NAME_MAX_BYTES, classify

from tests.support.paths import FIXTURES
VALUES = FIXTURES / 'etcd-values'
RESULT_KEYS = {'storage', 'kmsVersion', 'provider', 'keyId', 'encrypted', 'malformed'}
COMPARED = ('storage', 'kmsVersion', 'provider', 'keyId', 'encrypted')


def _expected():
    path = VALUES / 'expected.json'
    assert path.is_file(), f'fixtures missing: {path} (tests/fixtures)'
    return json.loads(path.read_text())


EXPECTED = _expected()


def _canary_forms(canary):
    """The canary as stored: raw (protobuf Secret) or base64 (JSON Secret .data)."""
    return [canary, base64.b64encode(canary.encode()).decode().rstrip('=')]


# -- tiny protobuf encoder for synthetic EncryptedObjects -------------
# The sandbox's codec writes protobuf independently of the product's readers under test.
from tests.sandbox.codec import field_bytes as _ld  # noqa: E402
from tests.sandbox.codec import field_varint as _vi  # noqa: E402


def _encrypted_object(key_id=b'kms-test', data=b'\x11' * 40, dek=b'\x22' * 32, annotations=None, dek_type=1,
                      extra=b''):
    body = _ld(1, data) + _ld(2, key_id) + _ld(3, dek)
    for k, v in (annotations or {}).items():
        body += _ld(4, _ld(1, k) + _ld(2, v))
    if dek_type:
        body += _vi(5, dek_type)
    return body + extra


def _kms_v1(name=b'kms-plugin', dek_len=256, data_len=64, declared=None):
    declared = dek_len if declared is None else declared
    return b'k8s:enc:kms:v1:' + name + b':' + struct.pack('>H', declared) + os.urandom(dek_len + data_len)


# -- fixtures ------------------------------------------------------------------------------------------

def test_every_fixture_value_has_an_expectation():
    bins = {p.stem for p in VALUES.glob('*.bin')}
    assert bins, f'no .bin fixtures in {VALUES}'
    assert bins == set(EXPECTED)


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_fixture_classification(name):
    value = (VALUES / f'{name}.bin').read_bytes()
    result = classify(value)
    assert set(result) == RESULT_KEYS
    assert {k: result[k] for k in COMPARED} == {k: EXPECTED[name][k] for k in COMPARED}
    assert result['malformed'] is None


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_fixture_result_carries_no_value_bytes(name):
    value = (VALUES / f'{name}.bin').read_bytes()
    result = classify(value)
    text = repr(result) + str(result) + json.dumps(result)
    canary = EXPECTED[name]['canary']
    if canary:
        forms = _canary_forms(canary)
        assert any(f.encode() in value for f in forms)  # the canary really is in the plaintext value
        assert not any(f in text for f in forms)
    # Beyond the prefix fields, nothing: every string in the result is short and is a known field.
    for key in ('provider', 'keyId'):
        if result[key] is not None:
            assert result[key] == EXPECTED[name][key]


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_accepts_bytearray_and_memoryview(name):
    value = (VALUES / f'{name}.bin').read_bytes()
    assert classify(bytearray(value)) == classify(value) == classify(memoryview(value))


# -- identity / unknown --------------------------------------------------------------------------------

@pytest.mark.parametrize('value', [b'k8s\x00', b'k8s\x00\n\x0c', b'{', b'{"kind":"Secret"}'])
def test_identity(value):
    assert classify(value) == {'storage': 'identity', 'kmsVersion': None, 'provider': None, 'keyId': None,
                               'encrypted': False, 'malformed': None}


@pytest.mark.parametrize('value', [b'', b'k8s', b'k8s:', b'k8s:enc', b'hello', b'\x00\x01', b' {', b'[1]'])
def test_unknown(value):
    result = classify(value)
    assert result['storage'] == 'unknown' and result['encrypted'] is False and result['provider'] is None


def test_future_transformer_prefix_is_unknown_and_named():
    result = classify(b'k8s:enc:kms:v3:prov:' + os.urandom(64))
    assert result['storage'] == 'unknown' and result['encrypted'] is False
    assert result['malformed'] == 'unrecognized transformer prefix k8s:enc:kms:v3:'
    binary = classify(b'k8s:enc:\xff\xfe:' + os.urandom(64))
    assert binary['storage'] == 'unknown' and binary['malformed'] == 'unrecognized k8s:enc: transformer prefix'


# -- local-key providers -------------------------------------------------------------------------------

@pytest.mark.parametrize('storage,payload', [('aescbc', 16 + 32), ('aesgcm', 12 + 40), ('secretbox', 24 + 50)])
def test_local_providers(storage, payload):
    value = f'k8s:enc:{storage}:v1:my-key:'.encode() + os.urandom(payload)
    result = classify(value)
    assert result == {'storage': storage, 'kmsVersion': None, 'provider': 'my-key', 'keyId': None,
                      'encrypted': True, 'malformed': None}


def test_local_provider_structure_problems():
    assert 'at least' in classify(b'k8s:enc:aesgcm:v1:k:' + b'\x00' * 10)['malformed']
    assert 'AES blocks' in classify(b'k8s:enc:aescbc:v1:k:' + b'\x00' * 33)['malformed']
    no_end = classify(b'k8s:enc:secretbox:v1:' + b'k' * (NAME_MAX_BYTES + 5))
    assert no_end['provider'] is None and "no ':'" in no_end['malformed'] and no_end['encrypted'] is True
    assert classify(b'k8s:enc:aescbc:v1::' + b'\x00' * 32)['malformed'] == 'empty key name'


# -- KMS v1 --------------------------------------------------------------------------------------------

def test_kms_v1_plain_name():
    result = classify(_kms_v1())
    assert result == {'storage': 'kms', 'kmsVersion': 'v1', 'provider': 'kms-plugin', 'keyId': None,
                      'encrypted': True, 'malformed': None}


def test_kms_v1_name_with_colons():
    # ':' after "a" and "a:b" are followed by printable bytes whose uint16 overruns; the real split wins.
    result = classify(_kms_v1(name=b'a:b:c', dek_len=300, data_len=40))
    assert result['provider'] == 'a:b:c' and result['malformed'] is None


def test_kms_v1_first_consistent_split_wins():
    # After "x:" the next two bytes are "\x00\x01": a consistent DEK length of 1, so "x" wins.
    value = b'k8s:enc:kms:v1:x:\x00\x01' + b'\x00' * 60
    assert classify(value)['provider'] == 'x'


def test_kms_v1_dek_length_overrun_is_malformed():
    result = classify(_kms_v1(dek_len=10, data_len=5, declared=4000))
    assert result['storage'] == 'kms' and result['kmsVersion'] == 'v1' and result['encrypted'] is True
    assert result['provider'] == 'kms-plugin'
    assert 'DEK length 4000' in result['malformed']


def test_kms_v1_zero_dek_length_and_short_values():
    assert 'DEK length 0' in classify(_kms_v1(dek_len=0, data_len=40))['malformed']
    assert 'too short' in classify(b'k8s:enc:kms:v1:p:\x01')['malformed']
    none = classify(b'k8s:enc:kms:v1:no-terminator')
    assert none['provider'] is None and none['malformed']


def test_kms_v1_name_search_stops_at_binary():
    # Binary DEK bytes cannot be part of a name: a later ':' inside them is never taken as the split.
    value = b'k8s:enc:kms:v1:p:' + b'\xff\xff\x01\x02:' + b'\x00\x01' + b'\x00' * 60
    result = classify(value)
    assert result['provider'] == 'p' and 'inconsistent' in result['malformed']


# -- KMS v2 --------------------------------------------------------------------------------------------

def test_kms_v2_minimal():
    result = classify(b'k8s:enc:kms:v2:prov:' + _encrypted_object())
    assert result == {'storage': 'kms', 'kmsVersion': 'v2', 'provider': 'prov', 'keyId': 'kms-test',
                      'encrypted': True, 'malformed': None}


def test_kms_v2_unknown_fields_and_annotations_are_tolerated():
    extra = _vi(9, 7) + _ld(10, b'zz') + b'\x5d\x01\x02\x03\x04' + b'\x61' + b'\x00' * 8  # varint, len, i32, i64
    value = b'k8s:enc:kms:v2:prov:' + _encrypted_object(
        annotations={b'version.encryption.remote.io': b'1'}, extra=extra)
    result = classify(value)
    assert result['keyId'] == 'kms-test' and result['malformed'] is None


def test_kms_v2_last_key_id_wins_like_proto3():
    value = b'k8s:enc:kms:v2:p:' + _encrypted_object(key_id=b'old') + _ld(2, b'new')
    assert classify(value)['keyId'] == 'new'


def test_kms_v2_key_id_cap():
    long_id = b'k' * (KEY_ID_MAX_BYTES + 100)
    result = classify(b'k8s:enc:kms:v2:p:' + _encrypted_object(key_id=long_id))
    assert result['keyId'] == 'k' * KEY_ID_MAX_BYTES
    assert 'over the 1024-byte limit' in result['malformed']


def test_kms_v2_key_id_invalid_utf8_is_replaced():
    result = classify(b'k8s:enc:kms:v2:p:' + _encrypted_object(key_id=b'key-\xff'))
    assert result['keyId'] == 'key-\ufffd'


@pytest.mark.parametrize('obj,needle', [
    (b'', 'keyID is empty'),
    (_encrypted_object(key_id=b''), 'keyID is empty'),
    (_encrypted_object(data=b''), 'encryptedData is empty'),
    (_encrypted_object(dek=b''), 'encryptedDEKSource is empty'),
    (_encrypted_object(dek=b'd' * 1025), 'encryptedDEKSource is 1025 bytes'),
    (_encrypted_object(dek_type=7), 'unknown encryptedDEKSourceType 7'),
    (_encrypted_object(annotations={b'a': b'v' * 33000}), 'annotations total'),
    (_vi(2, 5), 'field 2 has wire type 0'),
    (_ld(5, b'x'), 'field 5 has wire type 2'),
    (b'\x0a\x7f\x00', 'does not parse'),
    (b'\x0b', 'does not parse'),  # wire type 3 (group)
    (b'\x0a', 'does not parse'),
    (b'\x00', 'does not parse'),  # field number 0
    (b'\xff' * 11, 'does not parse'),
])
def test_kms_v2_malformed(obj, needle):
    result = classify(b'k8s:enc:kms:v2:prov:' + obj)
    assert result['storage'] == 'kms' and result['kmsVersion'] == 'v2' and result['provider'] == 'prov'
    assert needle in result['malformed']


def test_kms_v2_name_problems():
    assert classify(b'k8s:enc:kms:v2::' + _encrypted_object())['malformed'] == 'empty provider name'
    assert "no ':'" in classify(b'k8s:enc:kms:v2:' + b'n' * 300)['malformed']


def test_kms_v2_fixture_truncations_never_raise():
    value = (VALUES / 'kms-v2-mock.bin').read_bytes()
    for cut in range(len(value)):
        result = classify(value[:cut])
        assert set(result) == RESULT_KEYS


def test_random_garbage_never_raises():
    rnd = random.Random(20240501)
    prefixes = [b'', b'k8s:enc:kms:v1:', b'k8s:enc:kms:v2:p:', b'k8s:enc:kms:v2:', b'k8s:enc:aescbc:v1:',
                b'k8s:enc:', b'k8s\x00']
    for _ in range(3000):
        value = rnd.choice(prefixes) + bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 80)))
        result = classify(value)
        assert set(result) == RESULT_KEYS
        assert result['storage'] in ('kms', 'aescbc', 'aesgcm', 'secretbox', 'identity', 'unknown')


def test_plaintext_after_an_encryption_prefix_does_not_leak():
    canary = EXPECTED['identity-protobuf']['canary']
    for prefix in (b'k8s:enc:kms:v2:p:', b'k8s:enc:kms:v1:p:', b'k8s:enc:aescbc:v1:k:', b'k8s:enc:nope:v1:'):
        result = classify(prefix + b'\n\x12' + canary.encode() + b'\x00' * 40)
        assert canary not in repr(result)


# -- protowire reader ----------------------------------------------------------------------------------

def test_protowire_reader_basics():
    buf = _vi(1, 300) + _ld(2, b'abc') + b'\x1d\x01\x00\x00\x00' + b'\x21' + (5).to_bytes(8, 'little')
    fields = list(pw.iter_fields(buf))
    assert fields[0] == (1, pw.VARINT, 300, 0)
    assert fields[1][:2] == (2, pw.LEN) and buf[fields[1][2]:fields[1][3]] == b'abc'
    assert fields[2] == (3, pw.I32, 1, 0)
    assert fields[3] == (4, pw.I64, 5, 0)
    assert pw.to_int64(2**64 - 1) == -1 and pw.to_int64(5) == 5


@pytest.mark.parametrize('buf', [b'\x08', b'\x08\x80', b'\x12\x05ab', b'\x1d\x01', b'\x21\x00', b'\x80' * 11,
                                 b'\x08' + b'\xff' * 9 + b'\x02', b'\x0c', b'\x0f'])
def test_protowire_reader_rejects(buf):
    with pytest.raises(pw.ProtoWireError):
        list(pw.iter_fields(buf))


def test_protowire_reader_bounds_nested():
    with pytest.raises(pw.ProtoWireError):
        list(pw.iter_fields(b'\x08\x01', 0, 5))



