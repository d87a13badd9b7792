# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""etcdctl's stderr in one line, and what to do about it. Pure."""

from __future__ import annotations

import json
import re

from azext_kmsverify.text import printable, truncate


def stderr_text(stderr: bytes | str) -> str:
    if isinstance(stderr, (bytes, bytearray, memoryview)):
        return bytes(stderr).decode('utf-8', errors='replace')
    return stderr or ''


def _json_log_error(line: str) -> str | None:
    """The ``error`` (or ``msg``) of an etcd client JSON log line, else None."""
    if not line.startswith('{'):
        return None
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError):  # a deeply nested line is text, not a log entry
        return None
    if not isinstance(entry, dict) or 'level' not in entry:
        return None
    detail = entry.get('error') or entry.get('msg')
    return detail if isinstance(detail, str) else ''


def _innermost_grpc_desc(error: str) -> str:
    # "rpc error: code = X desc = ... desc = \"transport: ...\"": the last desc is the root cause.
    tail = error.rsplit('desc = ', 1)[-1].strip()
    return tail.strip('"')


def summarize_stderr(stderr: bytes | str) -> str:
    """The first meaningful line of etcdctl's stderr, trimmed to 300 characters.

    Prefers etcdctl's final ``Error: ...`` line; when that is the bare
    ``context deadline exceeded``, appends the root cause etcd 3.5's client logged before it
    (TLS or dial error), which is otherwise only in a JSON log line.
    """
    lines = [line.strip() for line in stderr_text(stderr).splitlines() if line.strip()]
    log_errors = [e for e in (_json_log_error(line) for line in lines) if e]
    summary = next((line for line in lines if line.startswith('Error:')), None)
    if summary is None:
        summary = next((line for line in lines if _json_log_error(line) is None), None)
    if summary is None:
        summary = log_errors[0] if log_errors else ''
    elif 'deadline exceeded' in summary and log_errors:
        cause = _innermost_grpc_desc(log_errors[-1])
        if cause and cause not in summary:
            summary = f'{summary} ({cause})'
    return truncate(summary)


_HINTS: list[tuple[re.Pattern, str]] = [
    (re.compile(r'executable file not found|exec: "[^"]*": stat |command not found|etcdctl: not found', re.I),
     'etcdctl was not found in the etcd container. Check the container name and that the image ships '
     'etcdctl (upstream and kubeadm etcd images do, at /usr/local/bin/etcdctl).'),
    (re.compile(r'open (\S+): no such file or directory', re.I),
     'A certificate or key file given to etcdctl does not exist in the etcd container ({0}). Check the '
     'certificate paths; kubeadm mounts them under /etc/kubernetes/pki/etcd/.'),
    (re.compile(r'open (\S+): permission denied', re.I),
     "etcdctl cannot read {0} in the etcd container. Use a certificate and key readable by the "
     "container's user (kubeadm: /etc/kubernetes/pki/etcd/server.crt and server.key)."),
    (re.compile(r'x509: certificate signed by unknown authority', re.I),
     "etcd's serving certificate is not signed by the given CA. Pass the etcd CA "
     "(kubeadm: /etc/kubernetes/pki/etcd/ca.crt), not the cluster CA."),
    (re.compile(r'x509: ', re.I),
     "etcd's serving certificate failed verification (expired, or not valid for the endpoint). "
     "Use the endpoint the certificate names, normally https://127.0.0.1:2379 inside the pod."),
    (re.compile(r'tls: bad certificate|certificate required|authentication handshake failed|tls: ', re.I),
     'etcd rejected the TLS handshake: the client certificate is missing or not signed by the etcd CA. '
     'Use an etcd client certificate (kubeadm: server.crt/server.key or healthcheck-client.crt/.key).'),
    (re.compile(r'connection refused', re.I),
     'Nothing is listening on the etcd endpoint. Check the endpoint (https://127.0.0.1:2379 inside the '
     'pod) and that the etcd member is running.'),
    (re.compile(r'required revision has been compacted', re.I),
     'etcd compacted the revision the scan was pinned to while it ran. Run the command again.'),
    (re.compile(r'etcdserver: (permission denied|user name is empty|authentication failed|invalid auth token)',
                re.I),
     'etcd authentication is enabled and refused this client. Use a client certificate whose common name '
     'is an etcd user allowed to read the keys (the kubeadm server certificate is).'),
    (re.compile(r'unknown (shorthand )?flag', re.I),
     'This etcdctl does not support a flag that was passed. Check the etcdctl version in the etcd image.'),
    (re.compile(r'no leader|leader changed|request timed out|too many requests', re.I),
     'The etcd cluster is unhealthy or busy. Check the etcd members and try again, or read from another '
     'member.'),
    (re.compile(r'deadline ?exceeded|TransientFailure', re.I),
     'etcd did not answer in time: the endpoint is unreachable, the TLS handshake is failing (etcdctl 3.4 '
     'reports certificate problems only this way), or the member is overloaded. Check the endpoint and '
     'certificates, or raise the command timeout.'),
]


def explain_etcdctl_error(stderr: str) -> str:
    """One-line cause and recommendation for a failed etcdctl run, from its stderr."""
    text = stderr_text(stderr)
    for pattern, hint in _HINTS:
        m = pattern.search(text)
        if m:
            return hint.format(*(truncate(g, 120) for g in m.groups() if g)) if m.groups() else hint
    summary = summarize_stderr(text)  # truncate() escapes what etcdctl (or a hostile pod) wrote
    return f'etcdctl failed: {printable(summary)}' if summary else 'etcdctl failed without an error message.'
