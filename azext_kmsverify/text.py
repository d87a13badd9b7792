# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Text that reaches a user: one truncation rule, and names made safe for a terminal. Pure and light."""

from __future__ import annotations

import re
import unicodedata

#: Longest reason, message or name echoed in one line.
LINE_MAX = 300
# C0 and C1 controls, DEL, and the Unicode format characters that reorder or hide text (bidi overrides,
# zero-width): a name from etcd or an argument echoed back must not move the cursor or forge a tsv row.
_UNSAFE = re.compile('[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]')


def truncate(text: object, limit: int = LINE_MAX) -> str:
    """``text`` on one line (whitespace runs become one space), at most ``limit`` characters."""
    text = ' '.join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + '...'


def printable(text: object) -> str:
    """``text`` with every control or invisible formatting character written as a visible escape: C0, DEL, C1,
    and the Unicode categories Cc, Cf (bidi, zero-width, soft hyphen, tags), Zl and Zp (line and paragraph
    separators), which reorder, hide or break lines in a terminal, a tsv row or a log."""
    text = str(text)
    if text.isascii():
        return _UNSAFE.sub(_escape, text)
    return ''.join(_escape_char(c) if unicodedata.category(c) in _UNSAFE_CATEGORIES else c for c in text)


_UNSAFE_CATEGORIES = frozenset(('Cc', 'Cf', 'Cs', 'Zl', 'Zp'))


def _escape(match: re.Match) -> str:
    return _escape_char(match.group(0))


def _escape_char(char: str) -> str:
    code = ord(char)
    if code <= 0xff:
        return f'\\x{code:02x}'
    return f'\\u{code:04x}' if code <= 0xffff else f'\\U{code:08x}'
