# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Text that reaches a user: one truncation rule, and names made safe for a terminal. Pure and light."""

from __future__ import annotations

import re

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
    """``text`` with every control or invisible formatting character written as a visible escape."""
    return _UNSAFE.sub(_escape, str(text))


def _escape(match: re.Match) -> str:
    code = ord(match.group(0))
    return f'\\x{code:02x}' if code <= 0xff else f'\\u{code:04x}'
