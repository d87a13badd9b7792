# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""The one place where HTTP and Kubernetes failures become azclierrors: one line and a recommendation.

No response body, token or key reaches a message: a Kubernetes ``Status`` contributes its ``message`` (which
the API server writes for users), transport errors their root cause in a few words.
"""

from __future__ import annotations

import json
import random
import re

from azext_kmsverify import defaults
from azext_kmsverify.errors import make
from azext_kmsverify.text import printable, truncate

CLUSTER_CONNECT = ('Cloud Shell has no line of sight to an on-premises API server: go through Cluster Connect '
                   "('az connectedk8s proxy -g RG -n CLUSTER &', then this command with --kubeconfig on the "
                   'kubeconfig it writes), or run on a machine in the cluster network.')
NO_LINE_OF_SIGHT = ('hosted pipeline agents and Cloud Shell usually have none: run on a machine in the cluster '
                    "network, or go through Cluster Connect ('az connectedk8s proxy -g RG -n CLUSTER' in the "
                    "background, then this command with --kubeconfig on the kubeconfig it writes)")


class KubeErrors:
    """Error builders for one cluster: ``server`` and ``credential`` shape the recommendations."""

    def __init__(self, server: str, credential: str, deadline, proxy: str | None = None):
        self.server = printable(server)
        self.credential = credential
        self.deadline = deadline
        self.proxy = printable(proxy) if proxy else None

    def timeout(self, doing: str):
        from azure.cli.core.azclierror import AzureConnectionError
        return make(AzureConnectionError, f'Verification did not finish within the --timeout of '
                                          f'{self.deadline.seconds} s ({printable(doing)}).',
                    'Retry with a larger --timeout.')

    def transport(self, reason: BaseException | str, doing: str):
        """A request that got no HTTP answer: TLS, timeout, refused, proxy."""
        from azure.cli.core.azclierror import AzureConnectionError
        text = str(reason)
        root = network_reason(reason)
        doing = printable(doing)
        if 'CERTIFICATE_VERIFY_FAILED' in text or 'certificate verify failed' in text:
            return make(AzureConnectionError, f'The TLS certificate of the API server {self.server} is not trusted '
                                              'by the kubeconfig.',
                        'Fetch fresh credentials; the cluster CA in the kubeconfig does not match the server.')
        if 'timed out' in text.lower() or 'timeout' in type(reason).__name__.lower():
            if self.deadline.expired():
                return self.timeout(doing)
            return make(AzureConnectionError, f'The API server {self.server} did not answer in time ({doing}).',
                        'Check network line of sight to the cluster, then retry.')
        if self.proxy and _is_proxy_error(reason):
            return make(AzureConnectionError, f'Could not reach the proxy {self.proxy} of the kubeconfig: {root}.',
                        "Check the kubeconfig's proxy-url and that the proxy is running, then retry.")
        from azure.cli.core.util import in_cloud_console
        if in_cloud_console():
            return make(AzureConnectionError, f'Could not reach the API server {self.server} from Cloud Shell: '
                                              f'{root}.', CLUSTER_CONNECT)
        return make(AzureConnectionError, f'Could not reach the API server {self.server}: {root}.',
                    f'Check network line of sight to the cluster ({NO_LINE_OF_SIGHT}), then retry.')

    def redirect(self, status: int, location: str | None, doing: str):
        """A redirect answer: never followed, a credential goes only to the server it is for."""
        from azure.cli.core.azclierror import AzureResponseError
        where = f' to {printable(truncate(location, 200))}' if location else ''
        return make(AzureResponseError, f'The API server {self.server} answered {status} (a redirect{where}) while '
                                        f'{printable(doing)}; redirects are not followed, so no credential leaves '
                                        'the server it is for.',
                    "Point the kubeconfig's server at the API server itself (not at a proxy or load balancer that "
                    'redirects).')

    def api(self, status: int, body: bytes, doing: str, permission: str | None = None,
            not_found: tuple[str, str] | None = None):
        """An API error answer (a Kubernetes Status)."""
        from azure.cli.core.azclierror import (
            AzureResponseError,
            ForbiddenError,
            ResourceNotFoundError,
            UnauthorizedError,
        )
        message = status_message(body)
        doing = printable(doing)
        if status == 401:
            hint = ("Sign in again with 'az login'" if self.credential == 'user' else
                    'Fetch fresh credentials for the cluster')
            return make(UnauthorizedError, f'The API server rejected the credentials (401 Unauthorized) while '
                                           f'{doing}.', hint + ', then retry.')
        if status == 403:
            return make(ForbiddenError, f"Forbidden while {doing}: {message or 'access denied'}",
                        f'Ask a cluster admin for Kubernetes RBAC permission to {permission or doing}.')
        if status == 404 and not_found:
            return make(ResourceNotFoundError, printable(not_found[0]), not_found[1])
        if status == 429:  # API Priority and Fairness: a plain-text body, the reason is the status itself
            return make(AzureResponseError, f'The API server kept answering 429 Too Many Requests while {doing} '
                                            '(API Priority and Fairness throttles this identity), within the time '
                                            'given and its Retry-After.',
                        'Retry later, or with fewer --parallel rewrites; a cluster admin can find the FlowSchema '
                        'that throttles it by the X-Kubernetes-PF-FlowSchema-UID header of the answers.')
        return make(AzureResponseError, f"The API server answered {status} while {doing}: "
                                        f"{message or 'no details'}",
                    'Retry; if it persists, check the API server logs.')


def retry_after(headers: dict) -> float:
    """The seconds a 429's ``Retry-After`` (lower-case header names) asks for: kube-apiserver's API Priority and
    Fairness sends whole seconds, 1 to 32; none, a date, a negative or NaN value count as
    :data:`~azext_kmsverify.defaults.RETRY_AFTER_SECONDS`, more than
    :data:`~azext_kmsverify.defaults.RETRY_AFTER_MAX_SECONDS` as that."""
    try:
        asked = float(headers.get('retry-after') or defaults.RETRY_AFTER_SECONDS)
    except ValueError:
        asked = defaults.RETRY_AFTER_SECONDS
    if not asked >= 0.0:  # negative or NaN
        asked = defaults.RETRY_AFTER_SECONDS
    return min(asked, defaults.RETRY_AFTER_MAX_SECONDS)


def throttle_delay(headers: dict) -> float:
    """How long to wait after a 429: its :func:`retry_after`, plus up to a fifth more (and 50 ms), so requests
    throttled together do not all come back at the same moment."""
    return retry_after(headers) * random.uniform(1.0, 1.2) + random.uniform(0.0, 0.05)


def status_message(body: bytes | str) -> str:
    """The ``message`` (else ``reason``) of a Kubernetes Status body, on one safe line; '' for anything else."""
    try:
        status = json.loads(body)
        return printable(truncate(status.get('message') or status.get('reason') or ''))
    except (ValueError, AttributeError, TypeError, RecursionError):
        return ''


def network_reason(reason: BaseException | str) -> str:
    """The root cause of a transport error in a few words ("Connection refused"), not urllib3's
    "HTTPSConnectionPool(...): Max retries exceeded with url: ... (Caused by ...)" wrapper."""
    inner = getattr(reason, 'reason', None) or reason  # MaxRetryError wraps the real error
    args = getattr(inner, 'args', ())
    if len(args) > 1 and isinstance(args[1], BaseException):  # ProtocolError('Connection aborted.', cause)
        inner = args[1]
    text = str(inner)
    errno_text = re.search(r"\[Errno -?\d+\] ([^'\"()\[\]]+)", text)
    if errno_text:
        return printable(errno_text.group(1).strip())
    return printable(truncate(text or type(inner).__name__, 200))


def _is_proxy_error(reason) -> bool:
    import urllib3
    seen = reason
    for _ in range(4):
        if isinstance(seen, urllib3.exceptions.ProxyError):
            return True
        seen = getattr(seen, 'reason', None) or getattr(seen, '__context__', None)
        if seen is None:
            return False
    return False
