# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""The kubernetes client, whichever copy comes first on ``sys.path``, used only for kubeconfig semantics.

az appends extension folders to ``sys.path`` in name order, so the ``aksarc`` extension's bundled kubernetes
(24.2.0 in connectedk8s' pin) is imported before ours. Only what every release from 24.2.0 on shares is used:
``KubeConfigLoader`` (contexts, exec plugins, token files, expiry refresh) filling a ``Configuration``
(host, TLS files, proxy, the ``authorization`` API key). HTTP and the exec stream are this package's own
(urllib3 and websocket-client, both shipped with az).
"""

from __future__ import annotations

import os
import re

from knack.log import get_logger

from azext_kmsverify.auth.kubeconfig import Kubeconfig
from azext_kmsverify.auth.quiet import quiet
from azext_kmsverify.errors import argument_error, make
from azext_kmsverify.text import truncate

logger = get_logger(__name__)

MIN_VERSION = (24, 2, 0)
MIN_VERSION_TEXT = '.'.join(map(str, MIN_VERSION))


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for part in str(text).split('.')[:3]:
        digits = ''.join(c for c in part if c.isdigit()) if not part.isdigit() else part
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def kubernetes_client():
    """The ``kubernetes`` module first on ``sys.path``, if it is recent enough."""
    from azure.cli.core.azclierror import CLIInternalError, ValidationError
    try:
        import kubernetes
    except ImportError as ex:
        raise make(CLIInternalError, f'The kubernetes Python client could not be imported ({type(ex).__name__}).',
                   'Reinstall the extension: az extension remove --name kmsverify, then az extension add.') from None
    version = str(getattr(kubernetes, '__version__', '0'))
    where = os.path.dirname(os.path.dirname(os.path.abspath(kubernetes.__file__)))
    logger.debug('kubernetes client %s from %s', version, where)
    if _version_tuple(version) < MIN_VERSION:
        raise make(ValidationError, f'The kubernetes client {truncate(version, 40)} found first on the path '
                                    f'(in {where}) is older than kmsverify supports (>= {MIN_VERSION_TEXT}).',
                   'Update the extension that bundles it (for example az extension update --name aksarc), or '
                   'remove it while running this command.')
    return kubernetes


class LoadedKubeconfig:  # pylint: disable=too-many-instance-attributes  # one field per part of the transport
    """The kubeconfig's context as the kubernetes loader resolved it (server, CA, client certificate, token from
    the file or an exec plugin), with what the loader does not carry (``proxy-url``, ``tls-server-name``, the
    token source that replaces kubelogin): the one thing the API client reads."""

    def __init__(self, kubeconfig: Kubeconfig, configuration):
        self.source, self.user_name = kubeconfig.source, kubeconfig.user_name
        self.server = configuration.host.rstrip('/')
        self.proxy_url = kubeconfig.cluster.get('proxy-url') or None
        self.tls_server_name = kubeconfig.cluster.get('tls-server-name') or None
        self.token_source = kubeconfig.token_source
        self.verify_tls = getattr(configuration, 'verify_ssl', True)
        self.ca_file, self.cert_file, self.key_file = (configuration.ssl_ca_cert, configuration.cert_file,
                                                       configuration.key_file or None)
        self._configuration = configuration

    def token(self) -> str | None:
        """The kubeconfig's token with its scheme ('Bearer ...'), refreshing an expiring exec-plugin token as the
        kubernetes client does; None when it has none."""
        configuration = self._configuration
        # kubernetes < 35 keeps the token under 'authorization', later releases under 'BearerToken'; both call
        # the loader's refresh hook (an expiring exec-plugin token) through get_api_key_with_prefix.
        key = next((k for k in ('authorization', 'BearerToken') if (configuration.api_key or {}).get(k)), None)
        return configuration.get_api_key_with_prefix(key) if key else None

    def basic_auth(self) -> str | None:
        configuration = self._configuration
        if getattr(configuration, 'username', None) and getattr(configuration, 'password', None):
            return configuration.get_basic_auth_token()
        return None


def load(kubeconfig: Kubeconfig, add_file) -> LoadedKubeconfig:
    """The kubeconfig's context, loaded by the kubernetes client (runs its exec plugin, if any)."""
    kubernetes_client()
    from kubernetes.client import Configuration
    from kubernetes.config.config_exception import ConfigException
    from kubernetes.config.kube_config import KubeConfigLoader
    # The loader logs an exec plugin's failure (with the plugin's stderr, which may hold anything) through the
    # root logger, which az prints: silence it while it runs; its outcome is reported below, without that text.
    with quiet():
        try:
            loader = KubeConfigLoader(config_dict=kubeconfig.loader_dict(add_file),
                                      active_context=kubeconfig.context_name, config_base_path=kubeconfig.base_dir)
            configuration = Configuration()
            loader.load_and_set(configuration)
        except ConfigException as ex:
            # Loader messages name fields and commands, not values; keep the first line only.
            from azure.cli.core.azclierror import InvalidArgumentValueError
            first = str(ex).splitlines()[0] if str(ex) else type(ex).__name__
            if first.startswith('exec'):  # "exec: process returned 1. <the plugin's stderr>": keep the code only
                code = re.search(r'returned (-?\d+)', first)
                first = f"its exec plugin '{os.path.basename(kubeconfig.user['exec']['command'])}' failed" + (
                    f' (exit code {code.group(1)})' if code else '')
            raise argument_error(make(InvalidArgumentValueError, f'{kubeconfig.source} is not usable: '
                                      f'{truncate(first, 200)}.',
                                      'Fetch fresh credentials (az aksarc get-credentials, or -g/-n with this '
                                      'command).')) from None
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as ex:
            # What the loader raises on shapes its releases disagree about; its text may quote the file.
            from azure.cli.core.azclierror import InvalidArgumentValueError
            raise argument_error(make(InvalidArgumentValueError, f'{kubeconfig.source} is not usable: the kubernetes '
                                      f'client could not load it ({type(ex).__name__}).',
                                      'Fix the kubeconfig, or fetch fresh credentials.')) from None
    plugin = kubeconfig.user.get('exec')
    if plugin and not (configuration.api_key or {}) and not configuration.cert_file:
        # The loader swallows a failing plugin (it logs and goes on without credentials): say so here.
        from azure.cli.core.azclierror import AuthenticationError
        raise make(AuthenticationError, f"The exec plugin '{os.path.basename(plugin['command'])}' of "
                                        f'{kubeconfig.source} gave no credentials (it failed, or printed neither a '
                                        'token nor a client certificate).',
                   f"Run it as kubectl would ('{os.path.basename(plugin['command'])}' with the args in the kubeconfig) "
                   'to see why, then retry.')
    return LoadedKubeconfig(kubeconfig, configuration)
