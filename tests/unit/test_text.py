"""text: the one sanitiser for every string from outside (pure)."""

import json
import logging

import pytest

from azext_kmsverify.text import LogSanitiser, printable, sanitise, sanitise_log_handlers, unsafe

HOSTILE = ['\x00', '\x07', '\x1b', '\n', '\r', '\t', '\x7f', '\x85', '\x9b', '\u00ad', '\u061c', '\u200b', '\u200e',
           '\u202e', '\u2028', '\u2029', '\u2060', '\u2066', '\ufeff', '\U000e0001', '\U000e0041', '\U000e007f',
           '\ud800']
SAFE = ['a', ' ', '~', '\\', 'é', 'ß', '中', '😀', '\u00a0', 'ا']


@pytest.mark.parametrize('char', HOSTILE, ids=lambda c: f'U+{ord(c):04X}')
def test_every_control_format_and_separator_character_is_escaped_visibly(char):
    out = printable(f'a{char}b')
    assert char not in out and out.startswith('a\\') and out.endswith('b')
    assert all(not unsafe(c) for c in out) and out.isprintable()
    code = ord(char)
    assert (f'\\x{code:02x}' if code <= 0xff else f'\\u{code:04x}' if code <= 0xffff else f'\\U{code:08x}') in out


@pytest.mark.parametrize('char', SAFE)
def test_printable_text_is_kept(char):
    assert printable(f'x{char}y') == f'x{char}y'


def test_idempotent_and_for_any_object():
    once = printable('evil\x1b]0;owned\x07\u2028row')
    assert printable(once) == once
    assert printable(42) == '42' and printable(None) == 'None'


def test_every_category_of_the_rule_over_the_whole_range():
    import unicodedata
    for code in range(0x110000):
        char = chr(code)
        expected = code < 0x20 or 0x7f <= code <= 0x9f or unicodedata.category(char) in ('Cc', 'Cf', 'Cs', 'Zl', 'Zp')
        assert unsafe(char) == expected, hex(code)


def test_sanitise_walks_a_result_keys_included():
    result = {'cluster\x1b': {'name': 'a\u2028b', 'n': 3, 'ok': True, 'none': None},
              'items': [{'pod': 'etcd\x9b31m'}, ('x\u202e',), b'raw\x1b']}
    clean = sanitise(result)
    text = json.dumps(clean, ensure_ascii=False)
    for char in ('\x1b', '\u2028', '\x9b', '\u202e'):
        assert char not in text
    assert clean['cluster\\x1b']['n'] == 3 and clean['cluster\\x1b']['ok'] is True
    assert clean['cluster\\x1b']['none'] is None
    assert clean['items'][1] == ('x\\u202e',) and clean['items'][2] == 'raw\\x1b'
    # JSON shows the escape, never the character: a consumer that decodes the JSON gets the escape text
    assert '"a\\\\u2028b"' in text and json.loads(text)['cluster\\x1b']['name'] == 'a\\u2028b'


def test_sanitise_survives_deep_nesting():
    deep = current = {}
    for _ in range(500):
        current['x'] = {}
        current = current['x']
    current['leaf'] = '\x1b'
    assert '\x1b' not in json.dumps(sanitise(deep))


def test_log_records_are_sanitised_at_the_handler():
    import io
    stream = io.StringIO()
    logger = logging.getLogger('kmsverify-test-text')
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        sanitise_log_handlers(logger)
        sanitise_log_handlers(logger)  # idempotent
        assert sum(isinstance(f, LogSanitiser) for f in handler.filters) == 1
        logger.warning('pod %s said %s', 'etcd\x1b[2J', 'line\u2028forged')
        logger.warning('plain %d', 3)
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert '\x1b' not in text and '\u2028' not in text
    assert text.splitlines() == ['pod etcd\\x1b[2J said line\\u2028forged', 'plain 3']


def test_every_error_message_and_recommendation_is_sanitised():
    from azure.cli.core.azclierror import AzureResponseError

    from azext_kmsverify.errors import make
    from azext_kmsverify.etcd.stderr import explain_etcdctl_error
    from azext_kmsverify.text import truncate
    error = make(AzureResponseError, 'Entra said: \x1b[2Jcode\u2028x\u202e', 'Check pod etcd\x9b31m.\nThen retry.')
    assert error.error_msg == 'Entra said: \\x1b[2Jcode x\\u202e'  # U+2028 is whitespace to split(): one space
    assert error.recommendations == ['Check pod etcd\\x9b31m.\nThen retry.']
    assert '\x1b' not in explain_etcdctl_error(b'Error: bad key \x1b]0;owned\x07 \xc2\x9b31m\n')
    assert truncate('a\x1bb' * 200, 20) == 'a\\x1bba\\x1bba\\x1b...'


def test_entra_trace_and_correlation_ids_are_kept_whole():
    from azext_kmsverify.text import with_support_ids
    trace, corr = '25c9a1b2-0000-4000-8000-00000000abcd', '0f1e2d3c-4b5a-4678-9abc-def012345678'
    whole = f'AADSTS7000215: Invalid client secret provided. {"x" * 300} Trace ID: {trace}\r\nCorrelation ID: {corr}'
    shown = with_support_ids(whole.splitlines()[0], whole, 240)
    assert f'Trace ID: {trace}' in shown and f'Correlation ID: {corr}' in shown and len(shown) < 360
    assert '\n' not in shown and '\r' not in shown
    short = f'AADSTS7000215: bad secret. Trace ID: {trace}'
    assert with_support_ids(short, short) == short  # already whole: not repeated
