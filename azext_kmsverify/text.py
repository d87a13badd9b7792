# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Text that reaches a user: one truncation rule, and THE sanitiser for every string from outside. Pure and light.

Every string that comes from a peer (etcd keys and values, the API server, ARM, Entra, Resource Graph) or from an
argument echoed back passes through :func:`printable` (one string), :func:`sanitise` (a whole result: dicts, lists,
strings) or :class:`LogSanitiser` (log records: stderr and ``--debug``) before any output format sees it. What it
escapes: C0 controls, DEL, C1 controls (U+009B is a terminal's CSI), and every character of the Unicode categories
Cc, Cf (bidi controls, U+061C, U+00AD, U+2060, zero-width, the U+E0000 tag block), Cs (lone surrogates), Zl and Zp
(U+2028, U+2029). Each becomes a visible escape, ``\\x1b`` (up to U+00FF), ``\\u2028``, ``\\U000e0041``: in JSON
the value holds the escape text (``"\\\\u2028"``), never the character, so ``jq -r`` and terminals stay safe too.
Idempotent: an escaped string is printable.
"""

from __future__ import annotations

import re
import unicodedata

#: Longest reason, message or name echoed in one line.
LINE_MAX = 300
_UNSAFE_CATEGORIES = frozenset({'Cc', 'Cf', 'Cs', 'Zl', 'Zp'})


def truncate(text: object, limit: int = LINE_MAX) -> str:
    """``text`` on one line (whitespace runs become one space), :func:`printable`, at most ``limit`` characters."""
    text = printable(' '.join(str(text).split()))
    return text if len(text) <= limit else text[:limit - 3] + '...'


_SUPPORT_IDS = re.compile(r'\b(Trace ID|Correlation ID): ?([0-9A-Fa-f]{8}-[0-9A-Fa-f-]{27})')


def with_support_ids(first: str, whole: object, limit: int = LINE_MAX) -> str:
    """``first`` (an error's first line) :func:`truncate`-d to ``limit``, followed by the Entra Trace ID and
    Correlation ID found anywhere in ``whole`` (the whole error) that the short text does not hold whole: support
    needs them entire."""
    short = truncate(first, limit)
    ids = [f'{name}: {value}' for name, value in _SUPPORT_IDS.findall(str(whole)) if value not in short]
    return short + (f" ({', '.join(dict.fromkeys(ids))})" if ids else '')


def unsafe(char: str) -> bool:
    """Whether ``char`` (one character) could move a cursor, hide or reorder text, or break a line or a row."""
    code = ord(char)
    if code < 0x20 or 0x7f <= code <= 0x9f:
        return True
    return code > 0x7e and unicodedata.category(char) in _UNSAFE_CATEGORIES


def printable(text: object) -> str:
    """``text`` with every control, format or line-separator character written as a visible escape."""
    text = str(text)
    if text.isascii() and text.isprintable():  # the common case, fast
        return text
    return ''.join(_escape(char) if unsafe(char) else char for char in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xff:
        return f'\\x{code:02x}'
    return f'\\u{code:04x}' if code <= 0xffff else f'\\U{code:08x}'


def sanitise(value, _depth: int = 0):
    """``value`` (a result: dicts, lists, tuples, strings, numbers) with every string, keys included, made
    :func:`printable`. Apply once to a result before any output format: table, tsv, json, yaml, ``--query``,
    JUnit, SARIF. Other types are returned as they are; nesting deeper than 100 is cut (a result is shallow)."""
    if isinstance(value, str):
        return printable(value)
    if _depth > 100:
        return '...'
    if isinstance(value, dict):
        return {(printable(k) if isinstance(k, str) else k): sanitise(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(sanitise(v, _depth + 1) for v in value)
    if isinstance(value, (bytes, bytearray)):
        return printable(bytes(value).decode('utf-8', 'backslashreplace'))
    return value


class LogSanitiser:  # pylint: disable=too-few-public-methods  # a logging filter: one method
    """A ``logging`` filter that makes every record's message printable (stderr, ``--debug``, az's command log).

    Add it to the handlers (a filter on a logger does not see records propagated from its children):
    :func:`sanitise_log_handlers`. The record's exception text (az's own traceback under ``--debug``) keeps its
    lines; its message is escaped. Never drops a record.
    """

    def filter(self, record) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # pylint: disable=broad-except  # a record whose arguments do not format: as logging does
            return True
        clean = printable(message)
        if clean != message or record.args:
            record.msg, record.args = clean, ()
        return True


def sanitise_log_handlers(logger) -> None:
    """Add one :class:`LogSanitiser` to every handler of ``logger`` (the root logger: knack's stderr handler and
    az's command-log handler). Idempotent."""
    for handler in getattr(logger, 'handlers', ()):
        if not any(isinstance(f, LogSanitiser) for f in getattr(handler, 'filters', ())):
            handler.addFilter(LogSanitiser())
