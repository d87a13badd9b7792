"""Go ``strconv.Unquote`` for double-quoted strings, returning the exact bytes.

etcdctl ``-w fields`` prints keys and values with Go ``%q``; kubectl quotes server error bodies
the same way. Python's ``unicode_escape`` is not equivalent (``\\xNN`` must be a raw byte, and raw
UTF-8 must stay as is), hence this decoder. Standard library only; errors carry offsets only.
"""

from __future__ import annotations

import re

# One token per match: a run of literal characters, or one escape sequence.
_TOKEN = re.compile(
    r'([^\\"\n]+)'
    r'|\\(?:x([0-9a-fA-F]{2})|([0-7]{3})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|([abfnrtv\\"\']))'
)
_SIMPLE_ESCAPES = {'a': 7, 'b': 8, 'f': 12, 'n': 10, 'r': 13, 't': 9, 'v': 11, '\\': 92, '"': 34, "'": 39}


def go_unquote(quoted: str) -> bytes:
    """Decode a Go double-quoted string literal (including its quotes) to bytes.

    ``\\xNN`` and ``\\NNN`` are raw bytes; ``\\uNNNN`` and ``\\UNNNNNNNN`` are runes encoded as
    UTF-8; literal characters are encoded as UTF-8. ``\\'`` is accepted although Go rejects it in
    double-quoted strings (``%q`` never emits it). Raises ValueError naming the offset only.
    """
    if len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"':
        raise ValueError('not a double-quoted string')
    end = len(quoted) - 1
    pos = 1
    out = bytearray()
    match = _TOKEN.match
    while pos < end:
        m = match(quoted, pos, end)
        if m is None:
            raise ValueError(f'invalid escape or unescaped character at offset {pos}')
        literal, hex2, octal, u4, u8, simple = m.groups()
        if literal is not None:
            try:
                encoded = literal.encode('utf-8')
            except UnicodeEncodeError:  # lone surrogates; raised outside so no chained data
                encoded = None
            if encoded is None:
                raise ValueError(f'unencodable character in literal text at offset {pos}')
            out += encoded
        elif hex2 is not None:
            out.append(int(hex2, 16))
        elif octal is not None:
            byte = int(octal, 8)
            if byte > 0xFF:
                raise ValueError(f'octal escape out of range at offset {pos}')
            out.append(byte)
        elif simple is not None:
            out.append(_SIMPLE_ESCAPES[simple])
        else:
            rune = int(u4 if u4 is not None else u8, 16)
            if rune > 0x10FFFF or 0xD800 <= rune <= 0xDFFF:
                raise ValueError(f'invalid Unicode code point escape at offset {pos}')
            out += chr(rune).encode('utf-8')
        pos = m.end()
    return bytes(out)
