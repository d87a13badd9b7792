"""What kubectl prints around an API answer, unwrapped for the tests' cross-checks (not product code)."""

from __future__ import annotations

import re

from tests.support.gostrconv import go_unquote

# kubectl get --raw on a 500: the body Go-quoted inside this sentence. Tests only: the product reads raw bodies.
_KUBECTL_WRAPPED = re.compile(
    r'Error from server \(\w+\): an error on the server \(("(?:[^"\\]|\\.)*")\) has prevented the request from '
    r'succeeding')


def unwrap_kubectl_error(text: str) -> str:
    """The raw body inside kubectl's ``Error from server (...): an error on the server ("<body>") ...``."""
    m = _KUBECTL_WRAPPED.search(text)
    if not m:
        return text
    try:
        return go_unquote(m.group(1)).decode('utf-8', errors='replace').strip()
    except ValueError:
        return m.group(1)[1:-1].strip()
